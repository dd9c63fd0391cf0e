"""Export + provenance card + push of curated datasets, against the test Hub (tests/support/hub_server.py).

One tiny SFTTrainer run (module fixture) feeds every test. Hub clients run in a subprocess (`run_client`):
`datasets` / `huggingface_hub` read HF_ENDPOINT and HF_HOME at import, and conftest.py imports them offline.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
from pathlib import Path

import datasets
import pytest
import transformers
from trl import SFTConfig, SFTTrainer

from sft_callbacks import DataMapCallback, GroupBalanceCallback, TrainingDynamicsCallback
from sft_callbacks.engine.frames import annotate_dataset
from sft_callbacks.cli import build_parser, main
from sft_callbacks.curation import curate
from sft_callbacks.models import build_tiny_llama
from sft_callbacks.hub.card import build_card, card_metadata
from sft_callbacks.hub.publish import load_export, save_curated_dataset
from sft_callbacks.hub.scrub import sanitize

from ..support.helpers import sft_rows
from ..support.hub_server import TOKEN, USER, last_json, parse_card_data, run_client
from sft_callbacks.engine.compat import checkpointing_off

REPO = f"{USER}/curated-sft"

PRELUDE = r"""
import json, sys
from datasets import load_dataset
from huggingface_hub import DatasetCard, HfApi
from sft_callbacks.hub.publish import PublishError, push_curated_dataset
api = HfApi()
out = {}
def rows(repo, **kw):
    d = load_dataset(repo, **kw)
    return {s: {"n": len(d[s]), "columns": d[s].column_names, "source_row": list(d[s]["source_row"])} for s in d}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """A tiny model saved to (and loaded from) a local path, trained 2 epochs with 3 callbacks; its export."""
    root = tmp_path_factory.mktemp("publish")
    base = root / "my-base-model"
    build_tiny_llama(tokenizer, seed=0, attn_implementation="eager").save_pretrained(base)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)  # name_or_path: an absolute local path
    train = sft_rows(24)
    source = root / "raw-sft.jsonl"
    train.to_json(str(source))
    callbacks = [TrainingDynamicsCallback(), DataMapCallback(noise_rate=0.1), GroupBalanceCallback(group_column="domain", beta=0.5)]
    args = SFTConfig(
        output_dir=str(root / "ckpt"), max_steps=6, per_device_train_batch_size=8, learning_rate=3e-3, logging_steps=2,
        save_strategy="no", report_to=[], use_cpu=True, max_length=128, seed=7, disable_tqdm=True,
        **checkpointing_off(),
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=callbacks)
    trainer.train()
    curated = curate(train, callbacks, group_column="domain", quotas=5, score="loss_mean")
    export = save_curated_dataset(root / "export", curated, trainer=trainer, source=str(source), license="mit",
                                  language="en", splits={"train": 0.75, "test": 0.25})  # fmt: skip
    return {"root": root, "export": export, "curated": curated, "trainer": trainer, "source": source,
            "train": train, "callbacks": callbacks}


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _leaks(blobs: dict[str, bytes], tmp_path) -> list[str]:
    """Absolute paths, the home directory, the user name as a path component, the token: none may appear."""
    user = getpass.getuser()
    needles = {str(tmp_path), str(Path(tmp_path).resolve()), os.path.expanduser("~") + "/", TOKEN}
    patterns = [re.compile(rf"[/\\]{re.escape(user)}([/\\]|\b)".encode()), re.compile(rb"/tmp/|/home/|/Users/")]
    found = []
    for name, data in blobs.items():
        found += [f"{name}: {n}" for n in needles if n.encode() in data]
        found += [f"{name}: {p.pattern!r}" for p in patterns if p.search(data)]
    return found


def test_export_folder_card_and_provenance(trained, tmp_path):
    export, curated = trained["export"], trained["curated"]
    assert sorted(_digest(export)) == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet", "plots/data_map.png",
        "plots/mixture.png", "plots/weights.png", "provenance.json",
    ]  # fmt: skip
    prov, shards = load_export(export)
    # the folder loads as it is, rows and annotation columns intact, split by source_row
    local = datasets.load_dataset(str(export))
    assert set(local) == {"train", "test"} and local["train"].column_names == curated.dataset.column_names
    assert sorted([*local["train"]["source_row"], *local["test"]["source_row"]]) == sorted(curated.dataset["source_row"])
    assert prov["splits"] == {"train": len(local["train"]), "test": len(local["test"])}
    # provenance: local source and model become basename + content fingerprint
    assert prov["source"]["id"] == "raw-sft.jsonl" and prov["source"]["fingerprint"].startswith("sha256:")
    assert prov["source"]["license"] == "mit" and prov["source"]["language"] == ["en"]
    assert prov["model"]["id"] == "my-base-model" and prov["model"]["fingerprint"].startswith("sha256:")
    assert prov["training"]["arguments"]["learning_rate"] == 3e-3 and prov["seed"] == 7
    assert prov["training"]["global_step"] == 6 and "output_dir" not in prov["training"]["arguments"]
    assert [c["name"] for c in prov["callbacks"]] == ["TrainingDynamicsCallback", "DataMapCallback", "GroupBalanceCallback"]
    assert prov["callbacks"][2]["config"]["beta"] == 0.5
    assert prov["counts"] == {"rows_in": 24, "rows_out": curated.rows_out, "dropped": curated.dropped}
    assert sum(prov["counts"]["dropped"].values()) == 24 - curated.rows_out and "quota" in prov["counts"]["dropped"]
    assert prov["group_counts"] == curated.counts_by_group("domain")
    assert prov["mixture_over_training"] and prov["packages"]["datasets"] == datasets.__version__
    assert set(prov["plots"]) == {"data_map", "mixture", "weights"} and re.match(r"\d{4}-\d\d-\d\dT", prov["created_at"])
    # card: YAML configs for both splits + the provenance metadata; body names the plots and the counts
    readme = (export / "README.md").read_bytes()
    meta = parse_card_data(readme)
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]
    assert meta["license"] == "mit" and meta["language"] == ["en"] and meta["size_categories"] == ["n<1K"]
    assert {"sft-callbacks", "curated"} <= set(meta["tags"]) and "source_datasets" not in meta  # local source
    text = readme.decode()
    for needle in ("![Data map](plots/data_map.png)", "GroupBalanceCallback", "sha256:", "dropped: quota", "| `seed` | 7 |"):
        assert needle in text, needle
    # nothing written carries a local path, the home directory, the user name or a token
    assert not _leaks({k: (export / k).read_bytes() for k in _digest(export)}, trained["root"])
    assert not _leaks({"card": str(build_card(prov)).encode()}, tmp_path)


def test_sanitize_and_card_merge_units(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    home = os.path.expanduser("~")
    dirty = {"model": f"{home}/models/llama-ft", "cfg": f"<Scorer at {tmp_path}/s.py>", "url": "https://x.org/a/b",
             "t": "use hf_secretsecretsecret or hf_" + "a" * 34, "plain": "sft/mixture/math", "pacing": "root"}  # fmt: skip
    clean = sanitize(dirty)
    assert clean["model"] == "llama-ft" and clean["cfg"] == "<Scorer at s.py>" and clean["url"] == "https://x.org/a/b"
    assert clean["t"] == "use <redacted> or <redacted>" and clean["plain"] == "sft/mixture/math" and clean["pacing"] == "root"
    # the card's YAML keeps what push_to_hub wrote (configs, dataset_info) and unions the tags
    existing = {"configs": [{"config_name": "default", "data_files": "data/*"}], "dataset_info": {"splits": []}, "tags": ["mine"]}
    prov = {"metadata": {"license": "apache-2.0", "tags": ["sft-callbacks"], "size_categories": ["n<1K"]},
            "source": {"id": "org/raw", "local": False}}  # fmt: skip
    meta = card_metadata(prov, existing)
    assert meta["configs"] == existing["configs"] and meta["dataset_info"] == existing["dataset_info"]
    assert meta["tags"] == ["mine", "sft-callbacks"] and meta["source_datasets"] == ["org/raw"] and meta["license"] == "apache-2.0"


def test_push_round_trip_private_branch_and_idempotent(hub, trained, tmp_path):
    export = trained["export"]
    before = _digest(export)
    top8 = curate(trained["train"], trained["callbacks"], top_k=8, score="loss_mean")
    v2 = save_curated_dataset(tmp_path / "top8", top8, trainer=trained["trainer"], fetch_source_card=False)
    hub.create_repo("test-user/raw-source")
    hub.commit("test-user/raw-source", {"README.md": "---\nlicense: apache-2.0\nlanguage:\n- fr\n---\n# raw\n",
                                        "data/train.csv": "text\nx\n"})  # fmt: skip
    out = last_json(run_client(hub, PRELUDE + rf"""
import datasets, pandas as pd
from sft_callbacks.curation import curate
EXPORT = {str(export)!r}
# a CuratedDataset straight from memory, its source on the Hub: license, language and revision come from there
toy = curate(datasets.Dataset.from_dict({{"text": ["a", "b", "c"]}}), annotations=pd.DataFrame({{"loss_mean": [3.0, 1.0, 2.0]}}),
             top_k=2, score="loss_mean")
push_curated_dataset("test-user/from-hub-source", toy, source="test-user/raw-source", export_dir={str(tmp_path / "toy")!r})
out["toy"] = list(load_dataset("test-user/from-hub-source", split="train")["text"])
r1 = push_curated_dataset({REPO!r}, EXPORT, private=True, commit_message="Curated v1")
out["rows"] = rows({REPO!r})
card = DatasetCard.load({REPO!r})
out["card"] = {{"license": card.data.license, "configs": card.data.configs, "text": card.text}}
out["provenance"] = json.load(open(api.hf_hub_download({REPO!r}, "provenance.json", repo_type="dataset")))
r2 = push_curated_dataset({REPO!r}, EXPORT, private=True, commit_message="Curated v1")  # same content again
out["commits"] = [r1.commit, r2.commit]
r3 = push_curated_dataset({REPO!r}, {str(v2)!r}, revision="dev", commit_message="On a branch")
out["dev"] = rows({REPO!r}, revision="dev")
out["private"] = api.dataset_info({REPO!r}).private
out["attempts"] = r1.attempts
print(json.dumps(out))
""", tmp_path / "home"))
    local = datasets.load_dataset(str(export))
    for split in ("train", "test"):
        assert out["rows"][split] == {"n": len(local[split]), "columns": local[split].column_names,
                                      "source_row": list(local[split]["source_row"])}  # fmt: skip
    # the branch holds the other export (one split: push_to_hub replaced the data files and the YAML splits)
    assert out["dev"] == {"train": {"n": 8, "columns": top8.dataset.column_names, "source_row": list(top8.dataset["source_row"])}}
    assert out["toy"] == ["a", "c"]
    toy_meta = parse_card_data(hub.files("test-user/from-hub-source")["README.md"])
    assert toy_meta["license"] == "apache-2.0" and toy_meta["language"] == ["fr"]
    assert toy_meta["source_datasets"] == ["test-user/raw-source"] and toy_meta["configs"]
    toy_prov = json.loads(hub.files("test-user/from-hub-source")["provenance.json"])
    assert toy_prov["source"]["revision"] == hub.head("test-user/raw-source") and toy_prov["model"] is None
    assert (tmp_path / "toy" / "provenance.json").is_file()  # export_dir: the export is kept
    assert out["private"] is True and hub.is_private(REPO)
    assert out["card"]["license"] == "mit" and "GroupBalanceCallback" in out["card"]["text"]
    assert out["provenance"] == json.loads((export / "provenance.json").read_text())
    # the configs YAML that push_to_hub wrote survives the card commit
    assert out["card"]["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]
    meta = parse_card_data(hub.files(REPO)["README.md"])
    assert meta["dataset_info"]["splits"] and meta["size_categories"] == ["n<1K"]
    # idempotent: the second push sent no commit at all
    assert out["commits"][0] == out["commits"][1]
    summaries = [c["summary"] for c in hub.commits(REPO)]
    assert summaries == ["Curated v1: card and provenance", "Curated v1", "initial commit"]
    assert [c["summary"] for c in hub.commits(REPO, "dev")][:2] == ["On a branch: card and provenance", "On a branch"]
    assert set(hub.files(REPO)) >= {"plots/data_map.png", "plots/mixture.png", "plots/weights.png", "provenance.json"}
    assert set(out["attempts"].values()) == {1}
    assert _digest(export) == before  # pushing only reads the export
    assert not _leaks(hub.files(REPO), trained["root"]) and not _leaks(hub.files(REPO, "dev"), tmp_path)
    hub.assert_hermetic()


def test_push_failures_then_retry(hub, trained, tmp_path):
    export = trained["export"]
    before = _digest(export)
    hub.fail_next("commit", 500, times=2)  # 1st push, data commit: 500 twice -> gives up (max_retries=1)
    hub.drop_next("commit")  # 2nd push, data commit: connection dropped, nothing applied
    hub.fail_next("commit", 412)  # ... then a stale parent, then it goes through
    hub.fail_next("commit", 412, skip=1)  # card commit (after the data commit went through): stale parent
    hub.drop_next("commit", after_apply=True)  # ... then applied, but the response is lost: the retry finds
    # the card already there and sends no commit
    out = last_json(run_client(hub, PRELUDE + rf"""
EXPORT = {str(export)!r}
try:
    push_curated_dataset({REPO!r}, EXPORT, max_retries=1, retry_delay=0.01)
except PublishError as e:
    out["error"] = str(e)
    out["cause"] = type(e.__cause__).__name__
r = push_curated_dataset({REPO!r}, EXPORT, max_retries=3, retry_delay=0.01)
out["attempts"] = r.attempts
out["rows"] = rows({REPO!r})
try:
    push_curated_dataset({REPO!r}, EXPORT, token="hf_test_other_token", retry_delay=0.01)  # not the owner
except PublishError as e:
    out["denied"] = str(e)
print(json.dumps(out))
""", tmp_path / "home"))
    assert "step 'push data' failed (still failing after 2 attempt(s))" in out["error"], out["error"]
    assert "500" in out["error"] and "Run the same push again" in out["error"] and out["cause"] == "HfHubHTTPError"
    assert out["attempts"] == {"push data": 3, "push card, provenance.json and plots": 3, "read the new head": 1}
    assert [r.status for r in hub.requests("commit")] == [500, 500, "dropped", 412, 200, 412, "dropped"]
    assert hub.pending_faults() == 0
    assert out["rows"]["train"]["source_row"] == list(datasets.load_dataset(str(export), split="train")["source_row"])
    assert "not a transient error" in out["denied"] and "403" in out["denied"]
    assert parse_card_data(hub.files(REPO)["README.md"])["configs"][0]["data_files"][1]["split"] == "test"
    assert "provenance.json" in hub.files(REPO) and _digest(export) == before
    hub.assert_hermetic()


def test_cli_help_export_push_and_demo_push(hub, trained, tmp_path):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert "--repo-id" in sub["push"].format_help() and "--quota" in sub["export"].format_help()
    assert "--push REPO" in sub["demo"].format_help()
    # export from an annotated dataset on disk (the demo's `annotated/` layout): callbacks' columns in the data
    annotated = trained["root"] / "annotated"
    frame = trained["curated"].annotations.drop(columns=["kept", "drop_reason", "domain"])
    annotate_dataset(sft_rows(24), frame).save_to_disk(str(annotated))
    assert main(["export", str(annotated), "--output-dir", str(tmp_path / "exp"), "--group-column", "domain",
                 "--quota", "3", "--score", "loss_mean", "--top-k", "10", "--license", "mit"]) == 0  # fmt: skip
    assert main(["export", str(annotated), "--output-dir", str(tmp_path / "bad"), "--quota", "3"]) == 2
    prov, _ = load_export(tmp_path / "exp")
    assert prov["counts"]["rows_out"] == 10 and prov["filters"]["top_k"] == 10 and "flag_noisy" in prov["filters"]["drop"]
    # the annotation columns on disk feed the card's summary and plots
    assert {"loss_mean", "confidence"} <= set(prov["annotation_columns"]) and "data_map" in prov["plots"]
    out = last_json(run_client(hub, PRELUDE + rf"""
from sft_callbacks.cli import main
out["push"] = main(["push", {str(tmp_path / "exp")!r}, "--repo-id", "test-user/exported", "--private"])
out["exported"] = rows("test-user/exported")
out["demo"] = main(["demo", "--tiny", "--train-rows", "16", "--epochs", "2", "--noise", "0.25",
                    "--output-dir", {str(tmp_path / "demo")!r}, "--push", "test-user/demo-curated"])
out["demo_rows"] = rows("test-user/demo-curated")
out["demo_card"] = DatasetCard.load("test-user/demo-curated").text
print(json.dumps(out))
""", tmp_path / "home", timeout=300, env={"HF_HUB_DISABLE_TELEMETRY": "1"}))  # TRL pings /api/telemetry
    assert out["push"] == 0 and out["demo"] == 0 and hub.is_private("test-user/exported")
    assert out["exported"]["train"]["n"] == 10
    demo_prov = json.loads(hub.files("test-user/demo-curated")["provenance.json"])
    assert out["demo_rows"]["train"]["n"] == demo_prov["counts"]["rows_out"] and demo_prov["counts"]["rows_in"] == 16
    assert demo_prov["source"]["id"] == "benchmark_sft.jsonl" and demo_prov["model"]["note"].startswith("built in code")
    assert "ValidationGuidedResamplingCallback" in out["demo_card"]
    assert (tmp_path / "demo" / "summary.json").is_file() and (tmp_path / "demo" / "curated" / "README.md").is_file()
    assert not _leaks(hub.files("test-user/demo-curated"), tmp_path)
    hub.assert_hermetic()


def test_annotated_folder_keeps_its_run_record_and_a_broken_record_is_a_clear_error(tmp_path):
    import datasets

    from sft_callbacks import load_run_record, save_annotated_dataset

    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "loss_mean": [0.1, 0.2]})
    source = tmp_path / "raw.jsonl"
    source.write_text('{"text": "a"}\n')
    out = save_annotated_dataset(tmp_path / "annotated", ds, source=str(source), fetch_source_card=False)
    assert datasets.load_from_disk(str(out))["text"] == ["a", "b"]  # the record does not disturb load_from_disk
    run = load_run_record(out)
    assert run["source"]["id"] == "raw.jsonl" and run["source"]["fingerprint"].startswith("sha256:")
    assert run["training"] is None and run["callbacks"] == [] and str(tmp_path) not in json.dumps(run)
    assert load_run_record(tmp_path) is None  # a folder without a record
    (out / "sft_run.json").write_text("{not json")
    with pytest.raises(ValueError, match="sft_run.json is not valid JSON"):
        load_run_record(out)


def test_export_of_a_plain_folder_claims_no_annotations_and_an_annotated_one_names_what_it_holds(tmp_path, capsys):
    rows = {"prompt": ["2+2?", "3+3?", "4+4?"], "completion": ["4", "6", "8"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "plain"))
    assert main(["export", str(tmp_path / "plain"), "--output-dir", str(tmp_path / "out_plain")]) == 0
    card = (tmp_path / "out_plain" / "README.md").read_text()
    assert "learnt about it" not in card and "carry no annotations from a fine-tuning run" in card
    assert "**3 rows in, 3 kept.**" in card

    annotated = {**rows, "loss_mean": [0.1, 0.2, 0.3], "weight": [1.0, 2.0, 0.5]}
    datasets.Dataset.from_dict(annotated).save_to_disk(str(tmp_path / "annotated"))
    assert main(["export", str(tmp_path / "annotated"), "--output-dir", str(tmp_path / "out_annotated")]) == 0
    card = (tmp_path / "out_annotated" / "README.md").read_text()
    assert "learnt about it (per-sample training dynamics, sampling weights); no row was dropped" in card
    assert "data-map" not in card.split("\n\n")[1]  # the opening claims no data map: the rows have none


def test_a_run_record_of_the_wrong_shape_names_the_file_and_the_field(tmp_path, capsys):
    from sft_callbacks import load_run_record

    folder = tmp_path / "annotated"
    datasets.Dataset.from_dict({"prompt": ["a?"], "completion": ["b"]}).save_to_disk(str(folder))
    record = folder / "sft_run.json"
    for content, message in (([1, 2], "sft_run.json must hold a JSON object"),
                             ({"model": "gpt2"}, "sft_run.json: field 'model' must be an object or null, got a str"),
                             ({"training": {"arguments": "lr=1"}}, "field 'training.arguments' must be an object"),
                             ({"callbacks": ["GroupBalanceCallback"]}, "field 'callbacks' must be a list of objects"),
                             ({"seed": "0"}, "field 'seed' must be an integer")):
        record.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=re.escape(message)):
            load_run_record(folder)
    assert main(["export", str(folder), "--output-dir", str(tmp_path / "out")]) == 2
    assert "field 'seed' must be an integer or null" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written
