"""The newcomer's path, as README gives it: `sft-callbacks demo` -> `sft-callbacks export` -> `sft-callbacks preview`
in headless Chromium. Everything the demo's callbacks recorded reaches the export's card and the preview: the
weights tab is populated and no column the demo produces is "not recorded"; the console shows a progress bar and
the summary, the per-step metrics are in the output folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import pytest

from sft_callbacks.demo import format_summary
from sft_callbacks.engine.columns import COLUMN_MEANINGS

from ..support.hub_server import HubServer

DEMO_CALLBACKS = ["TrainingDynamicsCallback", "ValidationGuidedResamplingCallback", "DataMapCallback"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_callbacks.cli", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """The demo and the export, run as a newcomer runs them (the demo's default output folder, in a fresh cwd)."""
    work = tmp_path_factory.mktemp("newcomer")
    demo = _cli("demo", "--tiny", "--epochs", "3", "--train-rows", "48", "--noise", "0.25", cwd=work)
    assert demo.returncode == 0, demo.stderr[-3000:]
    export = _cli("export", "sft_callbacks_output/annotated", "--output-dir", "curated", "--group-column", "domain",
                  cwd=work)
    assert export.returncode == 0, export.stderr[-3000:]
    return SimpleNamespace(work=work, out=work / "sft_callbacks_output", curated=work / "curated", demo=demo,
                           summary=json.loads((work / "sft_callbacks_output" / "summary.json").read_text()))


def test_demo_console_is_a_progress_bar_and_the_summary(newcomer):
    stdout, stderr = newcomer.demo.stdout, newcomer.demo.stderr
    summary = dict(newcomer.summary, output_dir="sft_callbacks_output")
    assert format_summary(summary) in stdout
    trainer_dicts = [line for line in (stdout + "\n" + stderr).splitlines() if re.match(r"\s*\{'", line)]
    assert not trainer_dicts, trainer_dicts[:3]  # the Trainer's per-step dicts are not printed
    assert re.search(r"100%\|.*\| 20/20 ", stderr.replace("\r", "\n"))  # the progress bar reached the last step
    assert "per-step metrics: sft_callbacks_output/metrics.jsonl" in stdout
    lines = [json.loads(x) for x in (newcomer.out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*lines)
    assert {"step", "loss", "eval_loss", "sft/tracker/samples_seen", "sft/mixture/topic"} <= keys
    assert [x["step"] for x in lines] == sorted(x["step"] for x in lines) and lines[-1]["step"] == 20


def test_annotated_folder_has_every_annotation_and_the_run(newcomer):
    annotated = datasets.load_from_disk(str(newcomer.out / "annotated"))
    added = [c for c in annotated.column_names
             if c not in ("prompt", "completion", "domain", "answer", "split", "source", "corrupted")]
    assert {"weight", "confidence", "variability", "region", "epochs_seen", "flag_noisy",
            "dropped_by_trl"} <= set(added)
    assert not [c for c in added if c not in COLUMN_MEANINGS]
    run = json.loads((newcomer.out / "annotated" / "sft_run.json").read_text())
    assert [c["name"] for c in run["callbacks"]] == DEMO_CALLBACKS
    assert run["source"]["id"] == "benchmark_sft.jsonl" and run["source"]["fingerprint"].startswith("sha256:")
    assert run["model"]["architecture"] == "LlamaForCausalLM" and run["training"]["global_step"] == 20
    assert run["mixture_over_training"]  # the validation policy logged its mixture


def test_data_map_images_and_summary_count_rows_seen_once_alike(newcomer):
    dm, frame = newcomer.summary["data_map"], pd.read_csv(newcomer.out / "data_map.csv")
    placed = np.isfinite(frame.confidence) & np.isfinite(frame.variability)
    assert dm["rows_mapped"] == int(placed.sum())
    assert dm["rows_seen_once"] == int((np.isfinite(frame.confidence) & ~placed).sum())
    assert (frame.epochs_seen[~placed & np.isfinite(frame.confidence)] == 1).all()
    assert f"{dm['rows_mapped']} rows placed" in newcomer.demo.stdout
    if dm["rows_seen_once"]:
        assert f"{dm['rows_seen_once']} seen in one epoch only, not placed" in newcomer.demo.stdout


def test_cli_export_card_names_source_model_callbacks_and_every_column(newcomer):
    card = (newcomer.curated / "README.md").read_text()
    assert "(in-memory dataset)" not in card and "`benchmark_sft.jsonl`" in card
    assert "## Model" in card and "LlamaForCausalLM" in card and "SFTTrainer, 20 optimizer steps" in card
    assert all(f"**{name}**" in card for name in DEMO_CALLBACKS)
    table = card.split("## Annotation columns", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) >= 20 and all(r[2].strip() for r in rows), [r[1] for r in rows if not r[2].strip()]
    provenance = json.loads((newcomer.curated / "provenance.json").read_text())
    assert {"weight", "confidence", "epochs_seen"} <= set(provenance["annotation_columns"])
    assert sorted(p.name for p in (newcomer.curated / "plots").iterdir()) == ["data_map.png", "mixture.png",
                                                                              "weights.png"]


def test_preview_opens_with_the_weights_tab_populated_and_nothing_not_recorded(newcomer, tmp_path):
    pytest.importorskip("gradio")  # the `space` extra (the oldest-versions job does not install it)
    from .test_space import CHROMIUM, _chromium, _free_port, app_env, serve

    sync_api = _chromium()
    port = _free_port()
    with HubServer(tmp_path / "hub") as hub:
        env = app_env(hub, tmp_path, port)
        del env["GRADIO_SERVER_PORT"]
        with serve([sys.executable, "-m", "sft_callbacks.cli", "preview", "curated", "--port", str(port)], env,
                   newcomer.work, port) as (url, output):
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])  # fmt: skip
                try:
                    page = browser.new_page(viewport={"width": 1500, "height": 1100})
                    page.set_default_timeout(60_000)
                    page.goto(url)
                    status = page.locator("#sft-status")
                    sync_api.expect(status).to_contain_text("train (", timeout=90_000)
                    assert "not recorded" not in status.inner_text().lower(), status.inner_text()

                    page.get_by_role("tab", name="Weights & mixture").click()
                    for elem in ("sft-weights", "sft-mixture"):
                        page.wait_for_function(
                            f"() => {{ const i = document.querySelector('#{elem} img');"
                            " return i && i.complete && i.naturalWidth > 0; }")  # fmt: skip
                    for note in ("#sft-weights-note", "#sft-mixture-note"):
                        assert "not recorded" not in page.locator(note).inner_text().lower()

                    page.get_by_role("tab", name="Rows").click()
                    page.locator("#sft-table [role=row]").nth(1).locator("[role=gridcell]").first.click()
                    stats = page.locator("#sft-stats")
                    sync_api.expect(stats).to_contain_text("weight")
                    assert "not recorded" not in stats.inner_text().lower(), stats.inner_text()
                    tip = stats.locator("th", has_text=re.compile(r"^weight$")).get_attribute("title")
                    assert tip == COLUMN_MEANINGS["weight"]  # the registry's meaning, as the tooltip
                finally:
                    browser.close()
        hub.assert_hermetic()
    assert "Traceback" not in output["log"], output["log"][-3000:]
