"""The dataset-preview Space (sft_callbacks/app/), end to end.

The app runs as a subprocess on 127.0.0.1 (module fixture) with the Hub pointed at tests/support/hub_server.py (every
other host trapped by it), then is driven through its API with ``gradio_client`` and in headless Chromium
(Debian ``chromium`` + pip ``playwright``; the browser tests skip when either is missing). The export folder is
built here with pyarrow in the curated format, independent of publish.py, with one sample made of HTML / JS.

``SFT_WRITE_SCREENSHOT=1`` also saves the page screenshot to docs/space_screenshot.png (the README's).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ..support.hub_server import HubServer, client_env

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
# A sample that would run script, load an image / frame / link, or evaluate a template if rendered as HTML
EVIL = (
    '<script>window.__pwned=1</script><img src="http://evil.example/x.png" onerror="window.__pwned=2;alert(1)">'
    '<iframe src="http://evil.example/frame"></iframe> [click](http://evil.example/link) '
    "![x](http://evil.example/img.png) ${window.__pwned=3} {{constructor}} <b>bold</b> EVIL-MARKER"
)
N_TRAIN = 120
REGIONS = ["easy-to-learn", "ambiguous", "hard-to-learn", ""]


def _rows(n: int, start: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        out.append({
            "prompt": [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": EVIL if i == 0 else f"question number {i}"}],
            "completion": [{"role": "assistant", "content": f"answer number {i}"}],
            "domain": ["math", "code", "chat"][i % 3],
            "source_row": i, "times_seen": 3, "loss_mean": round(1.0 + (i * 37 % 100) / 50, 4),
            "weight": 0.5 + (i % 20) / 10, "confidence": (i * 13 % 100) / 100, "variability": (i * 7 % 40) / 100,
            "correctness": (i % 4) / 4, "region": REGIONS[i % 4], "flag_noisy": i % 10 == 0,
            "conflict": i % 15 == 0, "difficulty": float(i % 9),
        })  # fmt: skip
    return out


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_export(d: Path, *, n_train: int = N_TRAIN, with_test: bool = True) -> Path:
    """An export folder in the curated format: train in two shards of several row groups, a test split."""
    (d / "data").mkdir(parents=True, exist_ok=True)
    t = pa.Table.from_pylist(_rows(n_train))
    # several shards and row groups, so positional reads cross file and row-group boundaries
    pq.write_table(t.slice(0, 70), d / "data/train-00000-of-00002.parquet", row_group_size=25)
    pq.write_table(t.slice(70), d / "data/train-00001-of-00002.parquet", row_group_size=25)
    splits = {"train": n_train}
    if with_test:
        pq.write_table(pa.Table.from_pylist(_rows(30, 1000)), d / "data/test-00000-of-00001.parquet")
        splits["test"] = 30
    (d / "plots").mkdir(exist_ok=True)
    (d / "plots/data_map.png").write_bytes(_png())
    provenance = {
        "schema": "sft-callbacks/provenance/1", "created_at": "2025-01-01T00:00:00Z",
        "source": {"id": "demo/raw-sft", "revision": "abc123"}, "model": {"id": "tiny-llama"},
        "counts": {"rows_in": 200, "rows_out": n_train, "dropped": {"flag_noisy": 200 - n_train}},
        "splits": splits, "filters": {"group_column": "domain", "drop": ["flag_noisy"]},
        "callbacks": [{"name": "DataMapCallback", "config": {"num_epochs": 3}}],
        "mixture_over_training": [{"step": s, "shares": {"math": 0.2 + s / 100, "code": 0.4, "chat": 0.4 - s / 100}}
                                  for s in range(0, 30, 5)],
        "group_counts": {"math": {"before": 70, "after": 40}}, "plots": {"data_map": "plots/data_map.png"},
    }  # fmt: skip
    (d / "provenance.json").write_text(json.dumps(provenance))
    (d / "README.md").write_text("---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                 "    path: data/train-*\n---\n# Curated demo\n<script>window.__pwned=4</script>\n")  # fmt: skip
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("space") / "export")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, export):
    """The Hub stand-in with test-user/curated: main = train only, its first commit = train + test."""
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        server.create_repo("test-user/curated")
        files = {p.relative_to(export).as_posix(): p.read_bytes() for p in export.rglob("*") if p.is_file()}
        first = server.commit("test-user/curated", files)
        server.commit("test-user/curated", {k: None for k in files if k.startswith("data/test-")})
        server.first_commit = first
        yield server


@contextlib.contextmanager
def serve(cmd: list[str], env: dict, workdir: Path, port: int):
    """Run an app command as a subprocess, wait until Gradio answers on ``port``; yield ``(url, output)``, where
    ``output`` is a dict whose ``"log"`` holds everything the app printed once it has stopped."""
    output: dict[str, str] = {}
    log = open(workdir / "app.log", "w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"

    def text() -> str:
        log.seek(0)
        return log.read()

    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/gradio_api/info", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{' '.join(cmd[1:])} did not start:\n{text()[-3000:]}")
            time.sleep(0.5)
        yield url, output
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        output["log"] = text()
        log.close()


def app_env(hub, tmp: Path, port: int) -> dict:
    return client_env(hub, tmp / "hf_home", overrides={
        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "MPLBACKEND": "Agg",
        "PYTHONPATH": str(ROOT),
    })  # fmt: skip


@pytest.fixture(scope="module")
def app(tmp_path_factory, export, hub):
    """spaces/app.py as a subprocess on 127.0.0.1, opening ``export`` on page load; yields its URL."""
    tmp = tmp_path_factory.mktemp("app")
    port = _free_port()
    env = app_env(hub, tmp, port)
    # the Space's own entry point, configured the way a Space is (SFT_DATASET)
    env["SFT_DATASET"] = str(export)
    with serve([sys.executable, str(ROOT / "spaces" / "app.py")], env, tmp, port) as (url, output):
        yield url
    assert "Traceback" not in output["log"], output["log"][-3000:]
    hub.assert_hermetic()  # the app never tried to reach a host other than 127.0.0.1


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app, verbose=False, download_files=False)


def _query(client, export, **kw):
    args = dict(split="train", gcol="domain", groups=[], regions=[], flags=[], lo=None, hi=None, search="",
                sort_by="row (file order)", desc=False, page=1, size=50)  # fmt: skip
    args.update(kw)
    table, info, page = client.predict(str(export), "", *args.values(), api_name="/query")
    return table, info, page


def _total(info: str) -> int:
    if "No rows match" in info:
        return 0
    return int(info.split(" of ")[1].split(" ")[0].replace(",", ""))


# ------------------------------------------------------------------------------------------ API
def test_api_open_filters_sort_page_sample(client, export):
    out = client.predict(str(export), "", api_name="/open")
    status, table = out[0], out[11]
    assert "train (120 rows), test (30 rows)" in status and "sft-error" not in status
    assert table["headers"][:6] == ["row", "domain", "region", "prompt", "completion", "flags"] and len(table["data"]) == 50

    _, info, _ = _query(client, export)
    assert _total(info) == N_TRAIN
    assert _total(_query(client, export, groups=["math"])[1]) == 40
    assert _total(_query(client, export, regions=["hard-to-learn"])[1]) == 30
    assert _total(_query(client, export, regions=["(none)"])[1]) == 30
    assert _total(_query(client, export, flags=["flag_noisy"])[1]) == 12
    assert _total(_query(client, export, flags=["not flag_noisy", "conflict"])[1]) == 4  # 15, 45, 75, 105
    assert _total(_query(client, export, lo=1.0, hi=1.5)[1]) == 36
    assert _total(_query(client, export, search="ANSWER NUMBER 11")[1]) == 11  # 11, 110..119
    assert _total(_query(client, export, groups=["math"], regions=["hard-to-learn"], search="question")[1]) == 10
    assert "No rows match" in _query(client, export, search="no such text")[1]

    # paging: page 3 of 50-row pages holds rows 100..119; past the end clamps to the last page
    table, info, page = _query(client, export, page=3)
    assert [r[0] for r in table["data"]] == list(range(100, 120)) and page == 3 and "page 3 of 3" in info
    assert _query(client, export, page=99)[2] == 3
    # server-side sort over all rows (not the page), across both shards
    table, _, _ = _query(client, export, sort_by="loss_mean", desc=True, size=10)
    col = table["headers"].index("loss_mean")
    losses = [r[col] for r in table["data"]]
    everything = sorted((r["loss_mean"] for r in _rows(N_TRAIN)), reverse=True)
    assert losses == everything[:10]
    table, _, _ = _query(client, export, sort_by="loss_mean", desc=False, size=10, page=12)
    assert [r[col] for r in table["data"]] == sorted(everything)[110:]

    # the sample viewer: row 75 lives in the second shard
    messages, stats, raw = client.predict(str(export), "", "train", 75, api_name="/sample")
    assert "answer number 75" in messages and "question number 75" in messages and "turn 1" in messages
    assert json.loads(raw)["source_row"] == 75 and "loss_mean" in stats
    messages, _, raw = client.predict(str(export), "", "test", 3, api_name="/sample")
    assert json.loads(raw)["source_row"] == 1003
    # the malicious sample comes back escaped
    messages, _, _ = client.predict(str(export), "", "train", 0, api_name="/sample")
    assert "&lt;script&gt;" in messages and "<script" not in messages and "<img" not in messages
    assert "<iframe" not in messages and "${" not in messages
    # out-of-range row: a message, not a traceback
    assert "does not exist" in client.predict(str(export), "", "train", 10_000, api_name="/sample")[0]

    # plots: data map / weights / mixture are drawn; a data-map pick returns the nearest point's row
    data_map, note, weights, _, mixture, mix_note = client.predict(str(export), "", "train", "domain", "region",
                                                                   api_name="/plots")  # fmt: skip
    assert data_map and weights and mixture and "120 points" in note and "6 logged steps" in mix_note
    row = client.predict(str(export), "", "train", "region", 0.07, 0.13, api_name="/pick")
    assert row == 1  # row 1: variability 0.07, confidence 0.13


def test_api_hub_repo_with_revision_and_bad_inputs(client, hub, tmp_path):
    out = client.predict("test-user/curated", "", api_name="/open")
    assert "train (120 rows)" in out[0] and "test (" not in out[0]
    out = client.predict("test-user/curated", hub.first_commit, api_name="/open")
    assert "train (120 rows), test (30 rows)" in out[0]
    table, info, _ = client.predict("test-user/curated", hub.first_commit, "test", "domain", [], [], [], None, None,
                                    "", "row (file order)", False, 1, 50, api_name="/query")  # fmt: skip
    assert _total(info) == 30

    # each bad input: a readable message in the status line, never a traceback
    def status(source, revision=""):
        text = client.predict(str(source), revision, api_name="/open")[0]
        assert "sft-error" in text and "Traceback" not in text
        return html.unescape(text)

    assert "No dataset repo 'test-user/missing'" in status("test-user/missing")
    assert "no revision 'nope'" in status("test-user/curated", "nope")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    assert "is not a curated dataset" in status(plain)
    no_annotations = tmp_path / "no_annotations"
    (no_annotations / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a", "b"]}), no_annotations / "data/train-00000-of-00001.parquet")
    assert "is not a curated dataset" in status(no_annotations)
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    (broken / "data/train-00000-of-00001.parquet").write_bytes(b"not parquet")
    assert "cannot read the parquet files" in status(broken)
    assert "neither an existing folder nor a Hub" in status("not a/valid//id")
    assert "Enter a local export folder" in status("")

    # missing columns: no text, no weight / data map / region / provenance; opens, and says what is missing
    sparse = tmp_path / "sparse"
    (sparse / "data").mkdir(parents=True)
    pq.write_table(pa.table({"domain": ["a", "b", "a"], "loss_mean": [0.1, 0.2, 0.3]}),
                   sparse / "data/train-00000-of-00001.parquet")  # fmt: skip
    out = [html.unescape(x) if isinstance(x, str) else x for x in client.predict(str(sparse), "", api_name="/open")]
    assert "train (3 rows)" in out[0] and "No text column" in out[0] and "Not recorded in this dataset: times_seen, weight, confidence, variability, region." in out[0]
    assert "No provenance.json" in out[0]
    data_map, map_note, weights, w_note, _, mix_note = client.predict(str(sparse), "", "train", "domain", "region",
                                                                      api_name="/plots")  # fmt: skip
    assert data_map is None and "not recorded" in map_note and weights is None and "not recorded" in w_note
    assert "not recorded" in mix_note
    messages, stats, _ = client.predict(str(sparse), "", "train", 1, api_name="/sample")
    assert "No text column" in messages and "not recorded" in stats and "times_seen, weight, confidence" in stats
    # a query on a source that failed to open is a message too
    _, info, _ = client.predict(str(plain), "", "train", "", [], [], [], None, None, "", "", False, 1, 50, api_name="/query")
    assert "sft-error" in info


def test_hub_unreachable_and_offline_are_messages(monkeypatch):
    from huggingface_hub import constants

    from sft_callbacks.app import SourceError, open_source

    # conftest.py runs this process with HF_HUB_OFFLINE=1: the offline message
    with pytest.raises(SourceError, match="not reachable"):
        open_source("someone/curated", cache=False)
    # online, but the endpoint is a closed local port: connection refused becomes a message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    closed = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(SourceError) as info:
        open_source("someone/curated", endpoint=closed, cache=False)
    assert "someone/curated" in str(info.value) and "Traceback" not in str(info.value)
    with pytest.raises(SourceError, match="Local folders cannot be opened here"):
        open_source(str(ROOT), allow_local=False, cache=False)


def test_space_readme_header():
    """spaces/README.md carries the Spaces YAML that makes spaces/ deployable as it is."""
    import yaml

    text = (ROOT / "spaces" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (ROOT / "spaces" / meta["app_file"]).is_file()
    assert str(meta["python_version"]).startswith("3.") and meta["sdk_version"].count(".") == 2
    reqs = (ROOT / "spaces" / "requirements.txt").read_text().splitlines()
    assert not any(r.strip().startswith("gradio") for r in reqs)  # sdk_version decides gradio's version


# ------------------------------------------------------------------------------------------ browser
def _data_to_pixel(variability: float, confidence: float) -> tuple[float, float]:
    """Inverse of sft_callbacks.app.pixel_to_data for the test export's data map."""
    import numpy as np

    from sft_callbacks.app.plots import _MAP_AXES, _MAP_SIZE
    from sft_callbacks.app.split import _map_limits

    xs = np.array([r["variability"] for r in _rows(N_TRAIN)])
    (x0, x1), (y0, y1) = _map_limits({"x": xs})
    left, bottom, w, h = _MAP_AXES
    W, H = _MAP_SIZE
    px = (left + (variability - x0) / (x1 - x0) * w) * W
    py = H - (bottom + (confidence - y0) / (y1 - y0) * h) * H
    return px, py


def _chromium():
    # .ci/run installs the browser and sets SFT_REQUIRE_BROWSER, so CI fails rather than skips without it.
    required = os.environ.get("SFT_REQUIRE_BROWSER") == "1"
    if not Path(CHROMIUM).exists():
        if required:
            pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium")
        pytest.skip("no chromium binary (apt-get install chromium)")
    if required:
        import playwright.sync_api as sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    return sync_api


def test_browser_filter_pick_xss_and_no_outside_requests(app, tmp_path):
    sync_api = _chromium()
    requests, dialogs, errors = [], [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(60_000)
            page.goto(app)
            grid = page.locator("#sft-table [role=grid]").first
            # the page load opens the export: the first page (50 rows + header) arrives
            sync_api.expect(grid).to_have_attribute("aria-rowcount", "51", timeout=90_000)
            sync_api.expect(page.locator("#sft-status")).to_contain_text("train (120 rows)")

            # click the malicious row: its text shows as text, nothing runs or loads
            page.locator("#sft-table").get_by_text("answer number 0", exact=True).first.click()
            sample = page.locator("#sft-sample")
            sync_api.expect(sample).to_contain_text("EVIL-MARKER")
            sync_api.expect(sample).to_contain_text("<script>window.__pwned=1</script>")
            sync_api.expect(sample).to_contain_text('onerror="window.__pwned=2;alert(1)"')
            assert sample.locator("script, img, iframe, a").count() == 0
            assert page.locator("#sft-table img, #sft-table iframe, #sft-table script").count() == 0

            # a filter changes the table: hard-to-learn rows only (30 + header)
            page.locator("#sft-region input").first.click()
            page.get_by_role("option", name="hard-to-learn").click()
            page.keyboard.press("Escape")
            sync_api.expect(grid).to_have_attribute("aria-rowcount", "31")
            # picking a row shows its sample (row 2 is hard-to-learn)
            # (its first cell: the row id; clicking there keeps the grid scrolled to the left for the screenshot)
            row6 = page.locator("#sft-table [role=row]").filter(has_text="answer number 6").first
            row6.locator("[role=gridcell]").first.click()
            sync_api.expect(sample).to_contain_text("question number 6")
            sync_api.expect(page.locator("#sft-stats")).to_contain_text("hard-to-learn")
            page.wait_for_timeout(500)
            shot = tmp_path / "space.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("SFT_WRITE_SCREENSHOT") == "1":
                (ROOT / "docs").mkdir(exist_ok=True)
                shutil.copy(shot, ROOT / "docs" / "space_screenshot.png")

            # the data map: clicking where row 1 is drawn (variability 0.07, confidence 0.13) opens row 1
            page.get_by_role("tab", name="Data map").click()
            img = page.locator("#sft-data-map img").first
            sync_api.expect(img).to_be_visible()
            page.wait_for_function("() => { const i = document.querySelector('#sft-data-map img');"
                                   " return i && i.complete && i.naturalWidth > 0; }")  # fmt: skip
            box = img.bounding_box()
            nw, nh = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
            scale = min(box["width"] / nw, box["height"] / nh, 1)
            px, py = _data_to_pixel(0.07, 0.13)
            page.mouse.click(box["x"] + (box["width"] - nw * scale) / 2 + px * scale,
                             box["y"] + (box["height"] - nh * scale) / 2 + py * scale)  # fmt: skip
            sync_api.expect(sample).to_contain_text("question number 1")
            sync_api.expect(page.locator("#sft-row input")).to_have_value("1")

            # the card tab shows the README as text (its <script> is not run)
            page.get_by_role("tab", name="Provenance card").click()
            sync_api.expect(page.locator("body")).to_contain_text("demo/raw-sft")
            page.wait_for_timeout(300)
            assert page.evaluate("window.__pwned") is None
        finally:
            browser.close()
    assert not dialogs, dialogs
    hosts = {r.split("/")[2] for r in requests if r.startswith(("http://", "https://", "ws://", "wss://"))}
    others = [r for r in requests if not r.startswith(("http://127.0.0.1:", "data:", "blob:"))]
    assert hosts == {app.split("/")[2]} and not others, others
    assert not any("__pwned" in e for e in errors), errors


def test_cli_preview_serves_the_same_app(export, hub, tmp_path):
    """`sft-callbacks preview DIR --port P` launches the same app on 127.0.0.1 and opens DIR."""
    from gradio_client import Client

    port = _free_port()
    env = app_env(hub, tmp_path, port)
    del env["GRADIO_SERVER_PORT"]  # the command line gives the port
    cmd = [sys.executable, "-m", "sft_callbacks.cli", "preview", str(export), "--port", str(port)]
    with serve(cmd, env, tmp_path, port) as (url, _):
        status = Client(url, verbose=False).predict(str(export), "", api_name="/open")[0]
        assert "train (120 rows), test (30 rows)" in status


def test_space_deploys_as_documented_and_runs_from_the_uploaded_files(export, hub, tmp_path):
    """spaces/README.md's upload snippet against the Hub stand-in; the Space's files alone then serve the app."""
    from gradio_client import Client

    code = f"""
import json
from huggingface_hub import HfApi, snapshot_download
api, space = HfApi(), "test-user/curated-preview"
api.create_repo(space, repo_type="space", space_sdk="gradio", exist_ok=True)
api.upload_folder(repo_id=space, repo_type="space", folder_path={str(ROOT / "spaces")!r})
api.upload_folder(repo_id=space, repo_type="space", folder_path={str(ROOT / "sft_callbacks")!r},
                  path_in_repo="sft_callbacks", ignore_patterns=["__pycache__/*", "*.pyc"])
print(json.dumps(snapshot_download(space, repo_type="space", local_dir={str(tmp_path / "space")!r})))
"""
    from ..support.hub_server import last_json, run_client

    folder = Path(last_json(run_client(hub, code, tmp_path / "home")))
    assert {"app.py", "README.md", "requirements.txt", "sft_callbacks/app/ui.py"} <= {
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    header = (folder / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header
    # Start app.py from the downloaded Space, the way Spaces does: its own folder first on sys.path, so the
    # uploaded sft_callbacks/ is what it imports (the check below fails if it imported the checkout instead).
    port = _free_port()
    env = app_env(hub, tmp_path, port)
    env.pop("PYTHONPATH", None)
    env["SFT_DATASET"] = str(export)
    (folder / "sft_callbacks" / "space_marker.py").write_text("UPLOADED = True\n")
    cmd = [sys.executable, "-c", "import runpy, sys; sys.path.insert(0, '.'); import sft_callbacks.space_marker; "
           "runpy.run_path('app.py', run_name='__main__')"]  # fmt: skip
    with serve(cmd, env, folder, port) as (url, _):
        status = Client(url, verbose=False).predict(str(export), "", api_name="/open")[0]
        assert "train (120 rows), test (30 rows)" in status
