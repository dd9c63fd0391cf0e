"""The test Hub (tests/support/hub_server.py) against the real, unpatched `huggingface_hub` and `datasets` clients.

Each test runs the client code in a fresh interpreter (`run_client`): both libraries read `HF_ENDPOINT`,
`HF_HUB_OFFLINE` and `HF_HOME` at import time, and conftest.py has already imported them offline here.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import huggingface_hub
import pytest
from packaging.version import Version

from ..support.hub_server import OTHER_TOKEN, TOKEN, USER, HubServer, last_json, parse_card_data, run_client

REPO = f"{USER}/curated"

PRELUDE = r"""
import json, os, tempfile
from datasets import Dataset, load_dataset
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi
api = HfApi()
REPO = "test-user/curated"
TRAIN = [{"text": f"row {i}", "n": i, "score": i / 7} for i in range(12)]
TEST = [{"text": "held out", "n": -1, "score": 0.5}]
NEW = [{"text": "new", "n": 100, "score": 1.25}]
out = {}

def catch(fn):
    try:
        fn()
    except Exception as e:
        response = getattr(e, "response", None)
        return {"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                "status": getattr(response, "status_code", None), "msg": str(e)[:400]}
    return None

def sha():
    return api.dataset_info(REPO).sha
"""
END = "\nprint(json.dumps(out))\n"

TRAIN = [{"text": f"row {i}", "n": i, "score": i / 7} for i in range(12)]
TEST = [{"text": "held out", "n": -1, "score": 0.5}]
NEW = [{"text": "new", "n": 100, "score": 1.25}]


@pytest.fixture
def seeded(hub):
    """A public repo seeded server side; `refs/convert/parquet` points at a different commit than main."""
    hub.create_repo("test-user/seeded")
    hub.commit("test-user/seeded", {"notes.txt": "converted"}, message="convert")
    hub.set_ref("test-user/seeded", "refs/convert/parquet", "main")
    hub.commit("test-user/seeded", {"notes.txt": "main", "data/train.csv": "a,b\n1,x\n2,y\n"})
    return "test-user/seeded"


def client(hub: HubServer, tmp_path, body: str, **kw) -> dict:
    return last_json(run_client(hub, PRELUDE + body + END, tmp_path / "home", **kw))


def _http(hub: HubServer, method: str, path: str, token: str | None = TOKEN, headers=None, data=None):
    """Raw request to the hub from this process (no proxy involved): (status, headers, body)."""
    req = urllib.request.Request(hub.url + path, method=method, data=data, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_create_push_two_private_splits_and_load(hub, tmp_path):
    out = client(hub, tmp_path, r"""
out["whoami"] = api.whoami()["name"]
out["model_url"] = str(api.create_repo("test-user/pub-model"))
out["exist_ok"] = str(api.create_repo("test-user/pub-model", exist_ok=True))
out["conflict"] = catch(lambda: api.create_repo("test-user/pub-model"))
Dataset.from_list(TRAIN).push_to_hub(REPO, split="train", private=True)
Dataset.from_list(TEST).push_to_hub(REPO, split="test", private=True)
d = load_dataset(REPO)
out["train"], out["test"] = d["train"].to_list(), d["test"].to_list()
info = api.dataset_info(REPO, files_metadata=True)
out["private"] = info.private
out["lfs"] = {s.rfilename: s.lfs is not None for s in info.siblings}
out["configs"] = info.card_data.to_dict()["configs"]
""")
    assert out["whoami"] == USER
    assert out["model_url"] == out["exist_ok"] == f"{hub.url}/test-user/pub-model"
    assert out["conflict"]["status"] == 409
    assert out["train"] == TRAIN and out["test"] == TEST
    assert out["private"] is True and hub.is_private(REPO) and not hub.is_private("test-user/pub-model", "model")
    assert out["lfs"] == {
        ".gitattributes": False,
        "README.md": False,
        "data/test-00000-of-00001.parquet": True,
        "data/train-00000-of-00001.parquet": True,
    }
    assert out["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]}]  # fmt: skip
    # immutable history: initial .gitattributes commit, then one commit per push
    commits = hub.commits(REPO)
    assert [c["summary"] for c in commits] == ["Upload dataset", "Upload dataset", "initial commit"]
    assert set(hub.files(REPO, commits[-1]["sha"])) == {".gitattributes"}
    assert set(hub.files(REPO, commits[1]["sha"])) == {".gitattributes", "README.md", "data/train-00000-of-00001.parquet"}
    assert not hub.requests("commit", method="GET") and len(hub.requests("commit")) == 2
    hub.assert_hermetic()


@pytest.mark.skipif(Version(huggingface_hub.__version__) < Version("2.2"),
                    reason="huggingface_hub < 2.2 validates a card's YAML at huggingface.co whatever HF_ENDPOINT says")
def test_card_load_edit_push_keeps_configs(hub, tmp_path):
    out = client(hub, tmp_path, r"""
Dataset.from_list(TRAIN).push_to_hub(REPO, split="train")
card = DatasetCard.load(REPO)
card.data["license"] = "mit"
card.text += "\n## Curation\n\nEdited by the test.\n"
card.push_to_hub(REPO, commit_message="Edit card")
out["license"] = api.dataset_info(REPO).card_data.to_dict().get("license")
out["train"] = load_dataset(REPO, split="train").to_list()
""")
    readme = hub.files(REPO)["README.md"]
    data = parse_card_data(readme)
    assert data["license"] == "mit" and out["license"] == "mit"
    assert data["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert data["dataset_info"]["splits"][0]["num_examples"] == len(TRAIN)
    assert b"Edited by the test." in readme
    assert hub.commits(REPO)[0]["summary"] == "Edit card"
    assert out["train"] == TRAIN
    hub.assert_hermetic()


def test_upload_folder_branch_tree_and_converted_refs(hub, tmp_path, seeded):
    out = client(hub, tmp_path, r"""
Dataset.from_list(TRAIN).push_to_hub(REPO, split="train")
Dataset.from_list(NEW).push_to_hub(REPO, split="train", revision="dev")
folder = tempfile.mkdtemp()
os.makedirs(f"{folder}/sub")
open(f"{folder}/notes.txt", "w").write("curation notes")
open(f"{folder}/sub/stats.json", "w").write(json.dumps({"kept": 12}))
open(f"{folder}/sub/blob.bin", "wb").write(bytes(range(256)) * 4)
info = api.upload_folder(folder_path=folder, path_in_repo="extra", repo_id=REPO, repo_type="dataset",
                         commit_message="Add extra files")
out["upload_oid"] = info.oid
out["main"] = load_dataset(REPO, split="train").to_list()
out["dev"] = load_dataset(REPO, split="train", revision="dev").to_list()
out["branches"] = sorted(b.name for b in api.list_repo_refs(REPO, repo_type="dataset").branches)
out["tree"] = sorted((f.path, type(f).__name__) for f in api.list_repo_tree(REPO, "extra", recursive=True, repo_type="dataset"))
out["last_commit"] = sorted((f.path, f.last_commit.title) for f in api.list_repo_tree(REPO, "extra", expand=True, repo_type="dataset"))
out["paths"] = sorted((p.path, type(p).__name__, p.lfs is not None if hasattr(p, "lfs") else None)
                      for p in api.get_paths_info(REPO, ["extra/notes.txt", "extra/sub", "extra/sub/blob.bin", "nope"], repo_type="dataset"))
from huggingface_hub import hf_hub_download
out["converted"] = open(hf_hub_download("test-user/seeded", "notes.txt", repo_type="dataset", revision="refs/convert/parquet")).read()
out["commits"] = [c.title for c in api.list_repo_commits(REPO, repo_type="dataset")]
""")
    assert out["main"] == TRAIN and out["dev"] == NEW
    assert out["branches"] == ["dev", "main"]
    assert out["tree"] == [
        ["extra/notes.txt", "RepoFile"], ["extra/sub", "RepoFolder"],
        ["extra/sub/blob.bin", "RepoFile"], ["extra/sub/stats.json", "RepoFile"],
    ]  # fmt: skip
    assert out["last_commit"] == [["extra/notes.txt", "Add extra files"], ["extra/sub", "Add extra files"]]
    assert out["paths"] == [
        ["extra/notes.txt", "RepoFile", False], ["extra/sub", "RepoFolder", None], ["extra/sub/blob.bin", "RepoFile", True],
    ]  # fmt: skip
    assert out["converted"] == "converted"
    assert out["commits"] == ["Add extra files", "Upload dataset", "initial commit"]
    assert out["upload_oid"] == hub.head(REPO)
    assert hub.files(REPO, "dev")["README.md"] != hub.files(REPO)["README.md"]
    assert "extra/notes.txt" not in hub.files(REPO, "dev")
    hub.assert_hermetic()


def test_pushing_same_content_again_is_a_no_op(hub, tmp_path):
    out = client(hub, tmp_path, r"""
ds = Dataset.from_list(TRAIN)
out["first"] = ds.push_to_hub(REPO, split="train").oid
out["second"] = ds.push_to_hub(REPO, split="train").oid
out["file1"] = api.upload_file(path_or_fileobj=b"hello", path_in_repo="notes.txt", repo_id=REPO, repo_type="dataset").oid
out["file2"] = api.upload_file(path_or_fileobj=b"hello", path_in_repo="notes.txt", repo_id=REPO, repo_type="dataset").oid
out["train"] = load_dataset(REPO, split="train").to_list()
""")
    # The client compares the preupload oids with its own and sends no commit at all for unchanged files
    assert out["first"] == out["second"] and out["file1"] == out["file2"] == hub.head(REPO)
    assert len(hub.requests("commit")) == 2 and len(hub.commits(REPO)) == 3
    assert len(hub.requests("lfs_upload")) == 1  # the second push found the parquet blob already stored
    assert out["train"] == TRAIN
    hub.assert_hermetic()


def test_http_500_on_commit_then_retry(hub, tmp_path):
    hub.fail_next("commit", 500, skip=1)  # the first push goes through, the second one fails
    out = client(hub, tmp_path, r"""
Dataset.from_list(TRAIN).push_to_hub(REPO, split="train")
before = sha()
out["error"] = catch(lambda: Dataset.from_list(NEW).push_to_hub(REPO, split="train"))
out["unchanged"] = sha() == before
Dataset.from_list(NEW).push_to_hub(REPO, split="train")
out["train"] = load_dataset(REPO, split="train").to_list()
""")
    assert out["error"]["type"] == "HfHubHTTPError" and out["error"]["status"] == 500
    assert out["unchanged"] and out["train"] == NEW
    assert [r.status for r in hub.requests("commit")] == [200, 500, 200]
    assert len(hub.commits(REPO)) == 3 and hub.pending_faults() == 0
    hub.assert_hermetic()


def test_http_412_stale_parent_then_retry(hub, tmp_path):
    hub.fail_next("commit", 412, skip=1)
    out = client(hub, tmp_path, r"""
Dataset.from_list(TRAIN).push_to_hub(REPO, split="train")
out["injected"] = catch(lambda: Dataset.from_list(NEW).push_to_hub(REPO, split="train"))
Dataset.from_list(NEW).push_to_hub(REPO, split="train")
# a real race: someone commits between reading the head and committing on top of it
old = sha()
api.upload_file(path_or_fileobj=b"v1", path_in_repo="notes.txt", repo_id=REPO, repo_type="dataset")
ops = lambda: [CommitOperationAdd("notes.txt", b"v2")]
out["stale"] = catch(lambda: api.create_commit(REPO, ops(), commit_message="stale", parent_commit=old, repo_type="dataset"))
api.create_commit(REPO, ops(), commit_message="fresh", parent_commit=sha(), repo_type="dataset")
out["train"] = load_dataset(REPO, split="train").to_list()
""")
    for key in ("injected", "stale"):
        assert out[key]["type"] == "HfHubHTTPError" and out[key]["status"] == 412, out[key]
        assert "A commit has happened since" in out[key]["msg"]
    assert out["train"] == NEW and hub.files(REPO)["notes.txt"] == b"v2"
    assert [c["summary"] for c in hub.commits(REPO)][:3] == ["fresh", "Upload notes.txt with huggingface_hub", "Upload dataset"]
    hub.assert_hermetic()


def test_dropped_connection_then_retry(hub, tmp_path):
    hub.drop_next("commit", skip=1)  # 2nd commit: connection closed, nothing applied
    hub.drop_next("commit", skip=1, after_apply=True)  # 4th commit: applied, then the response is lost
    out = client(hub, tmp_path, r"""
Dataset.from_list(TRAIN).push_to_hub(REPO, split="train")
out["dropped"] = catch(lambda: Dataset.from_list(NEW).push_to_hub(REPO, split="train"))
Dataset.from_list(NEW).push_to_hub(REPO, split="train")
upload = lambda: api.upload_file(path_or_fileobj=b"notes", path_in_repo="notes.txt", repo_id=REPO, repo_type="dataset")
out["lost"] = catch(upload)
out["retry_oid"] = upload().oid  # the commit had landed: the retry sees nothing to change
out["train"] = load_dataset(REPO, split="train").to_list()
""")
    for key in ("dropped", "lost"):
        assert out[key]["type"] == "RemoteProtocolError", out[key]
        assert "ConnectionError" not in out[key]["mro"]  # an httpx2 transport error, not a builtin one
        assert "TransportError" in out[key]["mro"]
    assert out["train"] == NEW and hub.files(REPO)["notes.txt"] == b"notes"
    assert [r.status for r in hub.requests("commit")] == [200, "dropped", 200, "dropped"]
    assert out["retry_oid"] == hub.head(REPO) and len(hub.commits(REPO)) == 4
    hub.assert_hermetic()


def test_private_repo_needs_the_owner_token(hub, tmp_path):
    hub.create_repo(REPO, private=True)
    hub.commit(REPO, {"data/train.csv": "a,b\n1,x\n2,y\n"})
    hub.create_repo("test-user/open-model", "model")
    out = client(hub, tmp_path, r"""
from huggingface_hub import hf_hub_download
OTHER = "hf_test_other_token"
# Non-owners first: once the owner has downloaded the files, both clients fall back to the local cache
# when the Hub refuses access (same HF_HOME), which would hide the server's answer.
for who, token in (("other", OTHER), ("anonymous", False)):
    out[who] = {
        "whoami": api.whoami(token=token)["name"] if token else None,
        "info": catch(lambda: api.dataset_info(REPO, token=token)),
        "download": catch(lambda: hf_hub_download(REPO, "data/train.csv", repo_type="dataset", token=token)),
        "load": catch(lambda: load_dataset(REPO, token=token)),
        "push": catch(lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, repo_type="dataset", token=token)),
        "public_model": api.model_info("test-user/open-model", token=token).id,
    }
out["bad_token"] = catch(lambda: api.dataset_info(REPO, token="hf_not_a_token"))
out["owner"] = load_dataset(REPO, split="train").to_list()
""")
    assert out["owner"] == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert out["other"]["whoami"] == "other-user"
    for who, status in (("other", 404), ("anonymous", 401)):
        res = out[who]
        assert res["info"]["type"] == "RepositoryNotFoundError" and res["info"]["status"] == status, res
        assert res["download"]["type"] == "RepositoryNotFoundError" and res["download"]["status"] == status, res
        assert res["load"]["type"] == "DatasetNotFoundError", res
        assert res["push"]["type"] == "RepositoryNotFoundError", res
        assert res["public_model"] == "test-user/open-model"
    assert out["bad_token"]["type"] == "HfHubHTTPError" and out["bad_token"]["status"] == 401
    assert set(hub.files(REPO)) == {".gitattributes", "data/train.csv"}  # nothing was written
    denied = {r.user for r in hub.requests("repo_info") if r.repo == f"dataset:{REPO}" and r.status in (401, 404)}
    assert denied == {None, "other-user"}
    hub.assert_hermetic()


def test_requests_for_other_hosts_are_trapped_and_fail_the_check(hub, tmp_path, seeded):
    # Without HF_UPDATE_DOWNLOAD_COUNTS=0, load_dataset pings https://s3.amazonaws.com (download counter)
    out = client(hub, tmp_path, r"""
out["rows"] = load_dataset("test-user/seeded", split="train").to_list()
from huggingface_hub.utils import get_session
out["status"] = get_session().get("http://example.com/x").status_code
""", env={"HF_UPDATE_DOWNLOAD_COUNTS": None})
    assert out["rows"] == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}] and out["status"] == 502
    foreign = {(r.method, r.host) for r in hub.requests("foreign")}
    assert foreign == {("CONNECT", "s3.amazonaws.com:443"), ("GET", "example.com")}
    with pytest.raises(AssertionError, match="unexpected requests"):
        hub.assert_hermetic()
    assert {r.op for r in hub.requests() if r.host != hub.netloc} == {"foreign", "dataset_viewer"}


def test_raw_protocol_details(hub, seeded):
    repo = seeded
    head = hub.head(repo)
    status, headers, body = _http(hub, "HEAD", f"/datasets/{repo}/resolve/main/notes.txt")
    assert status == 200 and headers["X-Repo-Commit"] == head and headers["Content-Length"] == "4"
    assert headers["ETag"].strip('"') == json.loads(_http(hub, "POST", f"/api/datasets/{repo}/paths-info/main",
        data=b"paths=notes.txt", headers={"Content-Type": "application/x-www-form-urlencoded"})[2])[0]["oid"]  # fmt: skip
    status, headers, body = _http(hub, "GET", f"/datasets/{repo}/resolve/main/data/train.csv", headers={"Range": "bytes=4-6"})
    assert status == 206 and body == b"1,x" and headers["Content-Range"] == "bytes 4-6/12"
    assert _http(hub, "GET", f"/datasets/{repo}/resolve/main/data/train.csv", headers={"Range": "bytes=-3"})[2] == b",y\n"
    assert _http(hub, "GET", f"/datasets/{repo}/resolve/main/notes.txt", headers={"Range": "bytes=9-"})[0] == 416
    status, headers, body = _http(hub, "GET", f"/datasets/{repo}/resolve/refs%2Fconvert%2Fparquet/notes.txt")
    assert status == 200 and body == b"converted" and headers["X-Repo-Commit"] != head
    status, headers, _ = _http(hub, "HEAD", f"/datasets/{repo}/resolve/main/missing.txt")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound" and headers["X-Repo-Commit"] == head
    assert _http(hub, "GET", f"/api/datasets/{repo}/revision/nope")[1]["X-Error-Code"] == "RevisionNotFound"
    assert _http(hub, "GET", f"/api/datasets/{repo}/revision/{head[:7]}")[0] == 200
    assert _http(hub, "GET", "/api/datasets/test-user/missing")[1]["X-Error-Code"] == "RepoNotFound"
    status, _, body = _http(hub, "POST", "/api/repos/create", data=json.dumps({"name": "seeded", "type": "dataset"}).encode())
    assert status == 409 and json.loads(body)["url"] == f"{hub.url}/datasets/{repo}"
    assert _http(hub, "POST", "/api/repos/create", token=OTHER_TOKEN,
                 data=json.dumps({"name": "x", "organization": "test-user", "type": "dataset"}).encode())[0] == 403  # fmt: skip
    status, _, body = _http(hub, "POST", "/api/validate-yaml", data=json.dumps({"content": "---\na: [\n---\n"}).encode())
    assert status == 400 and json.loads(body)["errors"]
    tree = json.loads(_http(hub, "GET", f"/api/datasets/{repo}/tree/main?recursive=true")[2])
    assert [(e["type"], e["path"]) for e in tree] == [
        ("directory", "data"), ("file", ".gitattributes"), ("file", "notes.txt"), ("file", "data/train.csv")]  # fmt: skip
    info = json.loads(_http(hub, "GET", f"/api/datasets/{repo}")[2])
    assert info["sha"] == head and info["id"] == repo and "cardData" not in info
    assert _http(hub, "GET", "/api/not-a-route")[0] == 404 and hub.requests("unknown")
    # faults can be scoped to a repo, and a drop is seen by any HTTP client as a closed connection
    hub.fail_next("repo_info", 503, repo_id="test-user/elsewhere")
    assert _http(hub, "GET", f"/api/datasets/{repo}")[0] == 200 and hub.pending_faults() == 1
    hub.clear_faults()
    hub.drop_next("resolve")
    with pytest.raises(http.client.RemoteDisconnected):
        _http(hub, "GET", f"/datasets/{repo}/resolve/main/notes.txt")
    assert hub.requests("resolve")[-1].status == "dropped"
    # repos and history survive a restart on the same root
    hub.stop()
    with HubServer(hub.root) as again:
        assert again.head(repo) == head and again.files(repo, "refs/convert/parquet")["notes.txt"] == b"converted"
