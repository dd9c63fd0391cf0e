#!/usr/bin/env python
"""Build the packaged demo SFT dataset from the ``evals`` wheel on PyPI.

The Hub is unreachable in our environments, but the MIT-licensed ``evals`` wheel ships hundreds
of chat-format ``{"input": [messages], "ideal": ...}`` jsonl files. This script reads six of them
straight out of the wheel with :mod:`zipfile` (nothing is installed) and writes

* ``sft_callbacks/data/demo_sft.jsonl``: rows in TRL's conversational prompt-completion format
  plus ``domain``, ``answer``, ``split`` and ``source`` columns;
* ``sft_callbacks/data/DEMO_DATA_LICENSE.md``: where every domain came from and its licence.

Usage::

    python scripts/build_demo_data.py                      # pip-downloads evals==3.0.1.post1
    python scripts/build_demo_data.py --wheel /tmp/wheels/evals-3.0.1.post1-py3-none-any.whl

The output is deterministic for a given wheel and ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

EVALS_VERSION = "3.0.1.post1"
DATA_PREFIX = "evals/registry/data/"
LICENSE_MEMBER = f"evals-{EVALS_VERSION}.dist-info/LICENSE.md"

# Folders that the evals LICENSE.md lists as carrying their own (often non-commercial) licence.
# None of our domains come from them; the check below keeps it that way if SOURCES is edited.
FOLDERS_WITH_OWN_LICENCE = {
    "text_compression",
    "steganography",
    "schelling_point",
    "ballots",
    "sandbagging",
    "theory_of_mind",
    "already_said_that",
}

MAX_PROMPT_CHARS = 600  # short prompts keep tiny-model tests and CPU demos fast
N_VALIDATION = 40
N_TEST = 40


@dataclass(frozen=True)
class Source:
    """One demo domain: a jsonl file inside the evals wheel and how many train rows to keep."""

    domain: str
    path: str  # relative to evals/registry/data/
    n_train: int
    description: str


# Deliberately imbalanced train mix (300/250/150/100/60/40) so group-aware callbacks have work.
SOURCES = [
    Source("sarcasm", "sarcasm/samples.jsonl", 300,
           "news headline -> 1 if sarcastic else 0"),
    Source("logic", "formal_logic/formal_logic_expressions.jsonl", 250,
           "boolean expression -> true / false"),
    Source("food", "food/samples.jsonl", 150,
           "is this string food-related? -> Yes / No"),
    Source("science_mcq", "quartz/samples.jsonl", 100,
           "qualitative science question, two options -> A / B"),
    Source("binary_math", "positive-binary-operations/samples.jsonl", 60,
           "binary addition / subtraction -> decimal number"),
    Source("radio_exam", "fcc_amateur_extra/samples.jsonl", 40,
           "FCC Amateur Extra question pool, four options -> A / B / C / D"),
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "sft_callbacks" / "data"


def download_evals_wheel(dest: Path) -> Path:
    """Download the evals wheel (no dependencies) into ``dest`` and return its path.

    Example::

        wheel = download_evals_wheel(Path("/tmp/w"))
    """
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         f"evals=={EVALS_VERSION}", "-d", str(dest)],
        check=True,
    )
    wheels = sorted(dest.glob(f"evals-{EVALS_VERSION}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download produced no evals wheel in {dest}")
    return wheels[0]


def render_prompt(messages: list[dict]) -> str:
    """Plain text of a message list, used for the length filter and de-duplication.

    Example::

        render_prompt([{"role": "user", "content": "hi"}])  # -> "hi"
    """
    return "\n".join(str(m.get("content", "")) for m in messages)


def _ideal_to_str(ideal) -> str:
    # evals allows several accepted answers; the first is the canonical one.
    if isinstance(ideal, list):
        ideal = ideal[0] if ideal else ""
    return str(ideal).strip()


def read_domain_rows(zf: zipfile.ZipFile, src: Source) -> list[dict]:
    """Usable, de-duplicated rows of one source file, in file order.

    Example::

        rows = read_domain_rows(zipfile.ZipFile(wheel), SOURCES[0])
    """
    task_folder = src.path.split("/")[0]
    if task_folder in FOLDERS_WITH_OWN_LICENCE:
        raise ValueError(f"{task_folder} carries its own licence; pick another folder")
    # A licence/readme inside the task folder would override the package's MIT licence.
    own = [n for n in zf.namelist()
           if n.startswith(f"{DATA_PREFIX}{task_folder}/")
           and n.rsplit("/", 1)[-1].lower().startswith(("license", "licence", "readme", "copying"))]
    if own:
        raise ValueError(f"{task_folder} ships its own licence/readme files: {own}")

    rows, seen = [], set()
    with zf.open(DATA_PREFIX + src.path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            messages = rec.get("input")
            if not isinstance(messages, list) or "ideal" not in rec:
                continue
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
            # TRL's prompt-completion format wants the prompt to end with a user turn.
            if not messages or messages[-1]["role"] != "user":
                if messages and messages[-1]["role"] == "system" and len(messages) == 1:
                    # some tasks put the whole question in a lone system message
                    messages = [{"role": "user", "content": messages[0]["content"]}]
                else:
                    continue
            answer = _ideal_to_str(rec["ideal"])
            text = render_prompt(messages)
            if not answer or len(text) > MAX_PROMPT_CHARS or text in seen:
                continue  # duplicates would leak between splits
            seen.add(text)
            rows.append({"prompt": messages, "answer": answer})
    return rows


def build_rows(zf: zipfile.ZipFile, seed: int = 0) -> list[dict]:
    """All output rows (test, validation, train per domain) in a deterministic order.

    Example::

        rows = build_rows(zipfile.ZipFile(wheel), seed=0)
    """
    out = []
    for i, src in enumerate(SOURCES):
        rows = read_domain_rows(zf, src)
        need = N_TEST + N_VALIDATION + src.n_train
        if len(rows) < need:
            raise ValueError(f"{src.path}: only {len(rows)} usable rows, need {need}")
        # One RNG per domain so editing one source does not reshuffle the others.
        rng = random.Random(seed * 1000 + i)
        picked = rng.sample(rows, need)
        splits = (["test"] * N_TEST + ["validation"] * N_VALIDATION + ["train"] * src.n_train)
        for row, split in zip(picked, splits):
            out.append({
                "prompt": row["prompt"],
                "completion": [{"role": "assistant", "content": row["answer"]}],
                "domain": src.domain,
                "answer": row["answer"],
                "split": split,
                "source": f"evals/{src.path}",
            })
    # Interleave domains in train so the file is not sorted by group.
    order = {"train": 0, "validation": 1, "test": 2}
    rng = random.Random(seed)
    rng.shuffle(out)
    out.sort(key=lambda r: order[r["split"]])  # stable: shuffled within each split
    return out


def license_text(zf: zipfile.ZipFile, rows: list[dict]) -> str:
    """Markdown licence/provenance note for the demo data.

    Example::

        Path("DEMO_DATA_LICENSE.md").write_text(license_text(zf, rows))
    """
    mit = zf.read(LICENSE_MEMBER).decode("utf-8")
    # Only the MIT grant itself: the rest of that file lists folders we do not use.
    mit = mit.split("NOTE:", 1)[0].strip()
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["domain"], r["split"])] = counts.get((r["domain"], r["split"]), 0) + 1
    lines = [
        "# Demo data: provenance and licence",
        "",
        "`demo_sft.jsonl` is a small sample of the OpenAI `evals` package, "
        f"version {EVALS_VERSION}, from PyPI (https://pypi.org/project/evals/{EVALS_VERSION}/, "
        "source https://github.com/openai/evals), read from the wheel's "
        "`evals/registry/data/` folders and reformatted by `scripts/build_demo_data.py` "
        "into TRL's conversational prompt-completion format.",
        "",
        "None of the folders used is among those that the package's LICENSE.md lists as carrying "
        "their own licence, and none contains a licence or readme file of its own, so all rows are "
        "covered by the package's MIT licence reproduced below.",
        "",
        "| domain | evals folder / file | task | train | validation | test | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for src in SOURCES:
        lines.append(
            f"| {src.domain} | `evals/registry/data/{src.path}` | {src.description} | "
            f"{counts.get((src.domain, 'train'), 0)} | {counts.get((src.domain, 'validation'), 0)} | "
            f"{counts.get((src.domain, 'test'), 0)} | MIT (evals {EVALS_VERSION}) |"
        )
    lines += [
        "",
        "Upstream origin (our reading; the evals package records no separate licence for these "
        "folders): `sarcasm` looks like the public News Headlines Dataset for Sarcasm Detection "
        "(Misra & Arora), `science_mcq` like AllenAI's QuaRTz questions, and `radio_exam` is from "
        "the US FCC Amateur Extra question pool (the evals registry says so). `logic`, `food` and "
        "`binary_math` are contributed to evals directly. Check upstream terms before reusing these "
        "rows beyond demos and tests.",
        "",
        "Changes made: prompts longer than "
        f"{MAX_PROMPT_CHARS} characters and duplicate prompts were dropped; where `ideal` is a list "
        "its first element is the completion; rows were sampled with a fixed seed.",
        "",
        "## MIT licence of the evals package (from its dist-info LICENSE.md)",
        "",
        "```",
        mit,
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Example::

        main(["--wheel", "/tmp/wheels/evals-3.0.1.post1-py3-none-any.whl"])
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, default=None,
                    help=f"path to evals-{EVALS_VERSION}-py3-none-any.whl (default: pip download)")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_evals_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            rows = build_rows(zf, seed=args.seed)
            lic = license_text(zf, rows)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    data_path = args.out_dir / "demo_sft.jsonl"
    with open(data_path, "w", encoding="utf-8", newline="\n") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    (args.out_dir / "DEMO_DATA_LICENSE.md").write_text(lic, encoding="utf-8")

    size = data_path.stat().st_size
    print(f"wrote {len(rows)} rows, {size / 1e6:.2f} MB -> {data_path}")
    for src in SOURCES:
        n = {s: sum(r["domain"] == src.domain and r["split"] == s for r in rows)
             for s in ("train", "validation", "test")}
        print(f"  {src.domain:12s} {n}")
    if size > 1_500_000:
        print("warning: demo data is over 1.5 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
