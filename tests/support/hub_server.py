"""A small Hugging Face Hub-compatible HTTP server for tests (stdlib only, besides PyYAML).

The real ``huggingface_hub`` / ``datasets`` client code talks to it over HTTP, unpatched: point
``HF_ENDPOINT`` at :attr:`HubServer.url` (see :func:`client_env`) and run the client code in a subprocess
(:func:`run_client`), because both libraries read ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` / ``HF_HOME`` once,
at import time, and ``tests/conftest.py`` imports ``datasets`` with ``HF_HUB_OFFLINE=1``.

Model
-----
* Repos live on disk under ``root/repos/{type}s/{namespace}/{name}/repo.json`` (refs + an immutable commit
  history: every commit is a snapshot ``path -> {sha256, size, lfs, oid}``); file contents live once in
  ``root/blobs/{sha256}``. A server started on an existing ``root`` serves the repos already there.
* Branches (``refs/heads``), tags, ``refs/convert/*`` and ``refs/pr/*`` map to commits. Revisions resolve from a
  branch / tag / full ref name, a full commit sha or a unique sha prefix (>= 7 hex chars).
* ``create_repo`` makes an initial commit holding a ``.gitattributes`` (like the Hub); its ``filter=lfs``
  patterns, a NUL byte in the 512-byte sample or a size > 10 MB make ``preupload`` answer ``lfs``.
* Users and tokens: ``tokens={token: user}`` (default :data:`TOKEN` -> :data:`USER`, :data:`OTHER_TOKEN` ->
  :data:`OTHER_USER`) and ``orgs={user: [org, ...]}``. A user writes to their own namespace and their orgs.

Auth decisions (documented; modelled on the Hub's answers)
-------------------------------------------------------------
* Private repo, no token: ``401`` + ``X-Error-Code: RepoNotFound``; wrong user's token: ``404`` +
  ``RepoNotFound`` (both become ``RepositoryNotFoundError`` client side). Unknown token: ``401`` with
  ``X-Error-Message: Invalid credentials in Authorization header``. Writing to a readable repo you don't own:
  ``403``. Creating a repo in another namespace: ``403``.

Failure injection
-----------------
``fail_next(op, status=500)`` answers the next request of that operation with ``status`` (``412`` gets the
Hub's stale-parent message); ``drop_next(op)`` reads the request and closes the socket without any response.
Both take ``times=``, ``repo_id=`` and ``after_apply=`` (apply the request first, then fail / drop: a commit
whose response is lost). Operation names: see ``_ROUTES`` / :attr:`OPS`, e.g. ``"commit"``, ``"preupload"``,
``"lfs_batch"``, ``"lfs_upload"``, ``"resolve"``, ``"repo_info"``, ``"tree"``.

Request log
-----------
:attr:`HubServer.log` holds one :class:`LoggedRequest` per request (method, path, op, status, host, user,
repo). Requests for unknown routes get ``404`` and op ``"unknown"``; internal errors get ``500``, op as routed,
and are kept in :attr:`HubServer.errors`. When the client environment routes every other host through this
server as an HTTP proxy (:func:`client_env` does), a request meant for any other host is answered ``502``
(``403`` for ``CONNECT``) and logged with op ``"foreign"``; the dataset viewer that ``datasets`` derives from
the endpoint (``datasets-server.<endpoint host>``) is answered ``404`` with op ``"dataset_viewer"``.
:meth:`HubServer.assert_hermetic` checks the log for foreign/unknown requests and internal errors.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

TOKEN = "hf_test_user_token"
USER = "test-user"
OTHER_TOKEN = "hf_test_other_token"
OTHER_USER = "other-user"

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_TREE_PAGE = 1000
_TREE_PAGE_EXPAND = 50
_LFS_SIZE_THRESHOLD = 10 * 1000 * 1000
_STALE_PARENT_MESSAGE = "A commit has happened since. Please refresh and try again."

DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
        "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
        "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
        "*tfevents*", "*.mp3", "*.ogg", "*.wav", "*.flac", "*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif",
        "*.mp4", "*.webm",
    )
)  # fmt: skip


def _now() -> str:
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in {"1", "true", "yes", "on"}


def parse_card_data(readme: bytes) -> dict | None:
    """YAML front matter of a README (``None`` when there is none or it is not a mapping)."""
    text = readme.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    if end < 0:
        return None
    data = yaml.safe_load(text[4:end])
    return data if isinstance(data, dict) else None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None  # streamed instead of `body`
    offset: int = 0
    length: int = 0


def _json(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode())


@dataclass
class LoggedRequest:
    method: str
    path: str
    op: str
    status: int | str | None  # an int, or "dropped"
    host: str
    user: str | None = None
    repo: str | None = None
    fault: str | None = None
    time: float = field(default_factory=time.monotonic)


@dataclass
class _Fault:
    op: str
    status: int | None  # None = drop the connection
    times: int
    repo_id: str | None
    after_apply: bool
    message: str | None
    skip: int = 0


class _Repo:
    """One repo: refs + immutable commits, persisted as JSON."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    @property
    def repo_type(self) -> str:
        return self.data["type"]

    @property
    def repo_id(self) -> str:
        return self.data["id"]

    @property
    def private(self) -> bool:
        return self.data["private"]

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / "repo.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path / "repo.json")

    def refs(self) -> dict[str, str]:
        """Full ref name -> commit sha."""
        return dict(self.data["refs"])

    def resolve(self, revision: str) -> str:
        refs = self.data["refs"]
        for name in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if name in refs:
                return refs[name]
        commits = self.data["commits"]
        if revision in commits:
            return revision
        rev = revision.lower()
        if len(rev) >= 7 and all(c in "0123456789abcdef" for c in rev):
            matches = [sha for sha in commits if sha.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def branch_ref(self, revision: str) -> str:
        """Full name of a ref that commits can be pushed onto (a branch, a convert or a PR ref)."""
        refs = self.data["refs"]
        for name in (f"refs/heads/{revision}", revision):
            if name in refs and not name.startswith("refs/tags/"):
                return name
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def commit(self, sha: str) -> dict:
        return self.data["commits"][sha]

    def files(self, sha: str) -> dict[str, dict]:
        return self.data["commits"][sha]["files"]

    def history(self, sha: str) -> list[str]:
        out = []
        while sha is not None:
            out.append(sha)
            sha = self.data["commits"][sha]["parent"]
        return out


class HubServer:
    """In-process Hub stand-in: ``with HubServer(tmp_path / "hub") as hub: ... hub.url``."""

    OPS = (
        "whoami", "agent_harnesses", "create_repo", "delete_repo", "validate_yaml", "repo_info", "preupload", "commit", "tree",
        "paths_info", "refs", "commits", "create_branch", "delete_branch", "create_tag", "delete_tag",
        "settings", "lfs_batch", "lfs_upload", "lfs_verify", "resolve",
    )  # fmt: skip

    def __init__(
        self,
        root: str | os.PathLike,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
    ):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens) if tokens is not None else {TOKEN: USER, OTHER_TOKEN: OTHER_USER}
        self.orgs = {user: list(o) for user, o in (orgs or {}).items()}
        self.log: list[LoggedRequest] = []
        self.errors: list[str] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(16)
        self._repos: dict[tuple[str, str], _Repo] = {}
        for repo_json in sorted(self.root.glob("repos/*/*/*/repo.json")):
            data = json.loads(repo_json.read_text())
            self._repos[(data["type"], data["id"])] = _Repo(repo_json.parent, data)
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        handler = type("_BoundHubHandler", (_HubHandler,), {"hub": self})
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    # ------------------------------------------------------------------ test helpers
    def fail_next(
        self,
        op: str,
        status: int = 500,
        *,
        times: int = 1,
        skip: int = 0,
        repo_id: str | None = None,
        after_apply: bool = False,
        message: str | None = None,
    ) -> None:
        """Answer ``times`` requests of ``op`` (after letting ``skip`` through) with HTTP ``status``.

        ``after_apply``: process the request first (e.g. the commit lands), then answer with the failure.
        """
        assert op in self.OPS, f"unknown op {op!r}; one of {self.OPS}"
        with self._lock:
            self._faults.append(_Fault(op, status, times, repo_id, after_apply, message, skip))

    def drop_next(
        self, op: str, *, times: int = 1, skip: int = 0, repo_id: str | None = None, after_apply: bool = False
    ) -> None:
        """Close the connection of ``times`` requests of ``op`` (after ``skip``) without sending a response."""
        assert op in self.OPS, f"unknown op {op!r}; one of {self.OPS}"
        with self._lock:
            self._faults.append(_Fault(op, None, times, repo_id, after_apply, None, skip))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults)

    def requests(self, op: str | None = None, method: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if (op is None or r.op == op) and (method is None or r.method == method)]

    def assert_hermetic(self) -> None:
        """No request for another host, no unknown route, no internal server error."""
        with self._lock:
            bad = [r for r in self.log if r.op in {"foreign", "unknown"}]
            assert not bad, f"unexpected requests: {bad}"
            assert not self.errors, "internal server errors:\n" + "\n".join(self.errors)
            hosts = {r.host for r in self.log if r.op != "dataset_viewer"}
            assert hosts <= {self.netloc}, f"requests for other hosts: {hosts}"

    def _repo(self, repo_id: str, repo_type: str = "dataset") -> _Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise KeyError(f"no {repo_type} repo {repo_id!r}")
            return repo

    def has_repo(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        return self._repo(repo_id, repo_type).private

    def refs(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        with self._lock:
            return self._repo(repo_id, repo_type).refs()

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> str:
        with self._lock:
            return self._repo(repo_id, repo_type).resolve(revision)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> list[dict]:
        """Commits reachable from ``revision``, newest first (``{"sha", "parent", "summary", ...}``)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return [{"sha": sha, **{k: v for k, v in repo.commit(sha).items() if k != "files"}}
                    for sha in repo.history(repo.resolve(revision))]  # fmt: skip

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Snapshot of ``revision``: path -> content."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            entries = dict(repo.files(repo.resolve(revision)))
        return {path: self._blob_path(e["sha256"]).read_bytes() for path, e in sorted(entries.items())}

    def create_repo(self, repo_id: str, repo_type: str = "dataset", private: bool = False) -> None:
        """Seed a repo directly (owner: its namespace), with the initial ``.gitattributes`` commit."""
        with self._lock:
            assert (repo_type, repo_id) not in self._repos, f"{repo_type} repo {repo_id} exists"
            self._create_repo(repo_type, repo_id, private, repo_id.split("/")[0])

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str | None],
        *,
        revision: str = "main",
        message: str = "seed commit",
        repo_type: str = "dataset",
    ) -> str:
        """Seed a commit directly: ``files`` maps paths to new contents (``None`` deletes). Returns its sha."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            ref = repo.branch_ref(revision)
            head = repo.data["refs"][ref]
            snapshot = dict(repo.files(head))
            patterns = _lfs_patterns(self, snapshot)
            for path, content in files.items():
                if content is None:
                    snapshot.pop(path)
                    continue
                data = content.encode() if isinstance(content, str) else content
                lfs = _is_lfs_path(path, patterns) or len(data) > _LFS_SIZE_THRESHOLD or b"\0" in data[:512]
                snapshot[path] = self._entry(self._store_blob(data), len(data), lfs)
            sha = self._new_commit(repo, head, snapshot, message, author=repo_id.split("/")[0])
            repo.data["refs"][ref] = sha
            repo.save()
            return sha

    def set_ref(self, repo_id: str, ref: str, revision: str, repo_type: str = "dataset") -> None:
        """Point a full ref name (e.g. ``refs/convert/parquet``) at ``revision``."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            repo.data["refs"][ref] = repo.resolve(revision)
            repo.save()

    # ------------------------------------------------------------------ storage
    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _store_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha)
        if not path.exists():
            tmp = path.with_name(f"{sha}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def _entry(self, sha256: str, size: int, lfs: bool) -> dict:
        if lfs:
            oid = _git_blob_oid(_lfs_pointer(sha256, size))
        else:
            oid = _git_blob_oid(self._blob_path(sha256).read_bytes())
        return {"sha256": sha256, "size": size, "lfs": lfs, "oid": oid}

    def _new_commit(self, repo: _Repo, parent: str | None, files: dict, summary: str, description: str = "",
                    author: str | None = None) -> str:  # fmt: skip
        date = _now()
        payload = json.dumps([parent, files, summary, description, date, secrets.token_hex(4)], sort_keys=True)
        sha = hashlib.sha1(payload.encode()).hexdigest()
        repo.data["commits"][sha] = {
            "parent": parent, "summary": summary, "description": description, "date": date,
            "author": author, "files": files,
        }  # fmt: skip
        return sha

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, user: str) -> _Repo:
        path = self.root / "repos" / f"{repo_type}s" / repo_id
        repo = _Repo(path, {"type": repo_type, "id": repo_id, "private": private, "createdAt": _now(),
                            "refs": {}, "commits": {}})  # fmt: skip
        sha256 = self._store_blob(DEFAULT_GITATTRIBUTES.encode())
        files = {".gitattributes": self._entry(sha256, len(DEFAULT_GITATTRIBUTES.encode()), lfs=False)}
        repo.data["refs"]["refs/heads/main"] = self._new_commit(repo, None, files, "initial commit", author=user)
        repo.save()
        self._repos[(repo_type, repo_id)] = repo
        return repo

    # ------------------------------------------------------------------ faults
    def _take_fault(self, op: str, repo_id: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.op == op and (fault.repo_id is None or fault.repo_id == repo_id):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None


# ====================================================================== HTTP layer


class _Request:
    def __init__(self, handler: _HubHandler, method: str, path: str, query: dict[str, list[str]], body: bytes):
        self.handler, self.method, self.path, self.query, self.body = handler, method, path, query, body
        self.headers = handler.headers
        self.base = f"http://{handler.headers.get('Host') or handler.hub.netloc}"
        self.user: str | None = None
        self.repo_label: str | None = None

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e


class _HubHandler(http.server.BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"
    timeout = 60

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK cost ~40 ms a request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr logging
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def do_CONNECT(self) -> None:  # an HTTPS request sent through the "proxy": never tunnel anything
        self._record(LoggedRequest("CONNECT", self.path, "foreign", 403, self.path))
        self._write(Response(403, {"Content-Type": "text/plain"}, b"test hub: no outside access\n"), head=False)
        self.close_connection = True

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self, entry: LoggedRequest) -> None:
        with self.hub._lock:
            self.hub.log.append(entry)

    def _write(self, resp: Response, head: bool) -> None:
        length = resp.length if resp.file is not None else len(resp.body)
        self.send_response(resp.status)
        for key, value in resp.headers.items():  # header values must be latin-1: escape anything else
            self.send_header(key, str(value).encode("ascii", "backslashreplace").decode("ascii"))
        if "Content-Length" not in resp.headers:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if head or resp.status in (204, 304):
            return
        if resp.file is not None:
            with open(resp.file, "rb") as f:
                f.seek(resp.offset)
                remaining = resp.length
                while remaining > 0:
                    chunk = f.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        else:
            self.wfile.write(resp.body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        hub, method = self.hub, self.command
        raw = self.path
        host = self.headers.get("Host") or ""
        if raw.startswith(("http://", "https://")):  # absolute form: we are being used as a proxy
            parts = urlsplit(raw)
            host, raw = parts.netloc, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        path, _, query_string = raw.partition("?")
        body = self._read_body()
        if host != hub.netloc:
            if host == f"datasets-server.{hub.netloc}":  # `datasets` probes the dataset viewer of HF_ENDPOINT
                op, resp = "dataset_viewer", _json({"error": "no dataset viewer on the test hub"}, 404)
            else:
                op = "foreign"
                resp = Response(502, {"Content-Type": "text/plain"}, b"test hub: no outside access\n")
            self._record(LoggedRequest(method, raw, op, resp.status, host))
            self.close_connection = True
            self._write(resp, head=method == "HEAD")
            return
        req = _Request(self, method, path, parse_qs(query_string, keep_blank_values=True), body)
        op, func, args = _route(method, path)
        entry = LoggedRequest(method, raw, op, None, host)
        fault = hub._take_fault(op, args[1] if len(args) >= 2 else None) if op != "unknown" else None
        resp: Response | None = None
        try:
            req.user = _authenticate(hub, req)
            if fault is None or fault.after_apply:
                resp = func(hub, req, *args) if func is not None else None
                if resp is None:
                    resp = _json({"error": f"test hub: no route for {method} {path}"}, 404)
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            resp = _json({"error": e.message}, e.status, headers)
        except Exception:  # noqa: BLE001 - report as 500 and keep for the test
            tb = traceback.format_exc()
            with hub._lock:
                hub.errors.append(f"{method} {raw}\n{tb}")
            resp = _json({"error": f"test hub internal error: {tb.splitlines()[-1]}"}, 500)
        entry.user, entry.repo = req.user, req.repo_label
        if fault is not None:
            entry.fault = "drop" if fault.status is None else f"status {fault.status}"
            if fault.status is None:
                entry.status = "dropped"
                self._record(entry)
                self._drop()
                return
            message = fault.message or (
                _STALE_PARENT_MESSAGE if fault.status == 412 else f"injected failure ({fault.status})"
            )
            resp = _json({"error": message}, fault.status, {"X-Error-Message": message})
        assert resp is not None
        entry.status = resp.status
        self._record(entry)
        self._write(resp, head=method == "HEAD")


def _authenticate(hub: HubServer, req: _Request) -> str | None:
    auth = req.headers.get("Authorization") or ""
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or token not in hub.tokens:
        raise HubError(401, "Invalid credentials in Authorization header")
    return hub.tokens[token]


# ====================================================================== routes


def _route(method: str, path: str):
    """(op, function, args) for a raw (still percent-encoded) request path."""
    seg = path.split("/")[1:]
    n = len(seg)
    if seg[:1] == ["api"] and n >= 2:
        if method == "GET" and seg[1:] == ["whoami-v2"]:
            return "whoami", _whoami, ()
        if method == "GET" and seg[1:] == ["agent-harnesses"]:  # huggingface_hub's agent detection (user agent)
            return "agent_harnesses", lambda hub, req: _json({"standardEnvVars": [], "harnesses": {}}), ()
        if method == "POST" and seg[1:] == ["repos", "create"]:
            return "create_repo", _create_repo, ()
        if method == "DELETE" and seg[1:] == ["repos", "delete"]:
            return "delete_repo", _delete_repo, ()
        if method == "POST" and seg[1:] == ["validate-yaml"]:
            return "validate_yaml", _validate_yaml, ()
        if seg[1] in REPO_TYPES and n >= 4:
            repo = (REPO_TYPES[seg[1]], unquote(seg[2]) + "/" + unquote(seg[3]))
            action, rest = (seg[4] if n > 4 else None), [unquote(s) for s in seg[5:]]
            if action is None and method == "GET":
                return "repo_info", _repo_info, (*repo, "main")
            if action == "revision" and method == "GET" and rest:
                return "repo_info", _repo_info, (*repo, "/".join(rest))
            if action == "preupload" and method == "POST" and rest:
                return "preupload", _preupload, (*repo, "/".join(rest))
            if action == "commit" and method == "POST" and rest:
                return "commit", _commit, (*repo, "/".join(rest))
            if action == "tree" and method == "GET" and rest:
                return "tree", _tree, (*repo, rest[0], "/".join(rest[1:]))
            if action == "paths-info" and method == "POST" and rest:
                return "paths_info", _paths_info, (*repo, "/".join(rest))
            if action == "refs" and method == "GET" and not rest:
                return "refs", _refs, repo
            if action == "commits" and method == "GET" and rest:
                return "commits", _commits, (*repo, "/".join(rest))
            if action == "branch" and rest and method in ("POST", "DELETE"):
                op = "create_branch" if method == "POST" else "delete_branch"
                return op, _branch, (*repo, "/".join(rest))
            if action == "tag" and rest and method in ("POST", "DELETE"):
                op = "create_tag" if method == "POST" else "delete_tag"
                return op, _tag, (*repo, "/".join(rest))
            if action == "settings" and method == "PUT" and not rest:
                return "settings", _settings, repo
        return "unknown", None, ()
    if seg[:1] == ["_lfs"] and method == "PUT" and n == 2:
        return "lfs_upload", _lfs_upload, (seg[1],)
    repo_type = "model"
    if seg and seg[0] in REPO_TYPES and seg[0] != "models":
        repo_type, seg = REPO_TYPES[seg[0]], seg[1:]
    if len(seg) >= 2 and seg[1].endswith(".git") and seg[2:5] == ["info", "lfs", "objects"] and method == "POST":
        repo_id = unquote(seg[0]) + "/" + unquote(seg[1][: -len(".git")])
        if seg[5:] == ["batch"]:
            return "lfs_batch", _lfs_batch, (repo_type, repo_id)
        if seg[5:] == ["verify"]:
            return "lfs_verify", _lfs_verify, (repo_type, repo_id)
    if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
        repo_id = unquote(seg[0]) + "/" + unquote(seg[1])
        return "resolve", _resolve, (repo_type, repo_id, unquote(seg[3]), unquote("/".join(seg[4:])))
    return "unknown", None, ()


def _repo_url(req: _Request, repo: _Repo) -> str:
    return f"{req.base}/{_PREFIX[repo.repo_type]}{repo.repo_id}"


def _can_write(hub: HubServer, user: str | None, repo_id: str) -> bool:
    namespace = repo_id.split("/")[0]
    return user is not None and (namespace == user or namespace in hub.orgs.get(user, []))


def _get_repo(hub: HubServer, req: _Request, repo_type: str, repo_id: str, write: bool = False) -> _Repo:
    req.repo_label = f"{repo_type}:{repo_id}"
    repo = hub._repos.get((repo_type, repo_id))
    readable = repo is not None and (not repo.private or _can_write(hub, req.user, repo_id))
    if not readable:
        status = 401 if req.user is None else 404
        raise HubError(status, "Repository not found", "RepoNotFound")
    if write and not _can_write(hub, req.user, repo_id):
        raise HubError(403, f"You don't have the rights to write to {repo_id}")
    return repo  # type: ignore[return-value]


def _whoami(hub: HubServer, req: _Request) -> Response:
    if req.user is None:
        raise HubError(401, "Invalid credentials in Authorization header")
    orgs = [{"type": "org", "name": org} for org in hub.orgs.get(req.user, [])]
    return _json({
        "type": "user", "id": hashlib.sha1(req.user.encode()).hexdigest()[:24], "name": req.user,
        "fullname": req.user, "email": f"{req.user}@example.invalid", "emailVerified": True, "isPro": False,
        "orgs": orgs, "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
    })  # fmt: skip


def _create_repo(hub: HubServer, req: _Request) -> Response:
    if req.user is None:
        raise HubError(401, "You must be authenticated to create a repo")
    payload = req.json()
    name, organization = payload.get("name"), payload.get("organization")
    repo_type = payload.get("type") or "model"
    if not name or repo_type not in _PREFIX:
        raise HubError(400, "Invalid repo name or type")
    repo_id = f"{organization or req.user}/{name}"
    req.repo_label = f"{repo_type}:{repo_id}"
    if not _can_write(hub, req.user, repo_id):
        raise HubError(403, f"You don't have the rights to create a repo under {repo_id.split('/')[0]}")
    private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
    with hub._lock:
        existing = hub._repos.get((repo_type, repo_id))
        if existing is not None:
            url = _repo_url(req, existing)
            return _json({"error": "You already created this repo", "url": url}, 409,
                         {"X-Error-Message": "You already created this repo"})  # fmt: skip
        repo = hub._create_repo(repo_type, repo_id, private, req.user)
    return _json({"url": _repo_url(req, repo), "name": repo_id, "id": repo_id})


def _delete_repo(hub: HubServer, req: _Request) -> Response:
    payload = req.json()
    repo_id = f"{payload.get('organization') or req.user}/{payload.get('name')}"
    repo_type = payload.get("type") or "model"
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id, write=True)
        del hub._repos[(repo_type, repo_id)]
        (repo.path / "repo.json").unlink()
    return Response(200)


def _validate_yaml(hub: HubServer, req: _Request) -> Response:
    content = (req.json().get("content") or "").encode()
    try:
        parse_card_data(content)
    except yaml.YAMLError as e:
        message = f"Invalid YAML in README.md: {e}"
        return _json({"errors": [{"message": message}], "warnings": []}, 400, {"X-Error-Message": message})
    return _json({"errors": [], "warnings": []})


def _repo_info(hub: HubServer, req: _Request, repo_type: str, repo_id: str, revision: str) -> Response:
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id)
        sha = repo.resolve(revision)
        commit, files = repo.commit(sha), repo.files(sha)
        blobs = _truthy(req.param("blobs"))
        siblings = []
        for path, e in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    sibling["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": 134}
            siblings.append(sibling)
        readme = files.get("README.md")
    card_data = None
    if readme is not None:
        try:
            card_data = parse_card_data(hub._blob_path(readme["sha256"]).read_bytes())
        except yaml.YAMLError:
            card_data = None
    info: dict[str, Any] = {
        "_id": hashlib.sha1(f"{repo_type}:{repo_id}".encode()).hexdigest()[:24], "id": repo_id,
        "author": repo_id.split("/")[0], "sha": sha, "private": repo.private, "gated": False, "disabled": False,
        "lastModified": commit["date"], "createdAt": repo.data["createdAt"], "downloads": 0, "likes": 0,
        "tags": [], "siblings": siblings,
    }  # fmt: skip
    if card_data is not None:
        info["cardData"] = card_data
    return _json(info)


def _lfs_patterns(hub: HubServer, files: dict) -> list[str]:
    entry = files.get(".gitattributes")
    text = hub._blob_path(entry["sha256"]).read_text(errors="replace") if entry else DEFAULT_GITATTRIBUTES
    patterns = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _is_lfs_path(path: str, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p) for p in patterns)


def _preupload(hub: HubServer, req: _Request, repo_type: str, repo_id: str, revision: str) -> Response:
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id, write=True)
        files = repo.files(repo.resolve(revision))
        patterns = _lfs_patterns(hub, files)
    out = []
    for f in req.json().get("files", []):
        path, size = f["path"], int(f.get("size") or 0)
        sample = base64.b64decode(f.get("sample") or "")
        lfs = _is_lfs_path(path, patterns) or size > _LFS_SIZE_THRESHOLD or b"\0" in sample
        existing = files.get(path)
        oid = None
        if existing is not None:
            oid = existing["sha256"] if existing["lfs"] else existing["oid"]
        out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    return _json({"files": out})


def _ticket(hub: HubServer, oid: str, size: int) -> str:
    return hmac.new(hub._secret, f"{oid}:{size}".encode(), "sha256").hexdigest()


def _lfs_batch(hub: HubServer, req: _Request, repo_type: str, repo_id: str) -> Response:
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id, write=True)
    payload = req.json()
    if payload.get("operation") != "upload":
        raise HubError(400, "test hub: only LFS uploads are supported")
    objects = []
    for obj in payload.get("objects", []):
        oid, size = str(obj["oid"]), int(obj["size"])
        item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        blob = hub._blob_path(oid)
        if not (blob.exists() and blob.stat().st_size == size):
            query = f"size={size}&ticket={_ticket(hub, oid, size)}"
            item["actions"] = {
                "upload": {"href": f"{req.base}/_lfs/{oid}?{query}", "header": {}},
                "verify": {"href": f"{_repo_url(req, repo)}.git/info/lfs/objects/verify", "header": {}},
            }
        objects.append(item)
    return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                 headers={"Content-Type": "application/vnd.git-lfs+json"})  # fmt: skip


def _lfs_upload(hub: HubServer, req: _Request, oid: str) -> Response:
    size = int(req.param("size", "-1"))
    if not hmac.compare_digest(req.param("ticket", ""), _ticket(hub, oid, size)):
        raise HubError(403, "Invalid or missing upload ticket")
    if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != oid:
        raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
    hub._store_blob(req.body)
    return Response(200, {"ETag": f'"{oid}"'})


def _lfs_verify(hub: HubServer, req: _Request, repo_type: str, repo_id: str) -> Response:
    with hub._lock:
        _get_repo(hub, req, repo_type, repo_id, write=True)
    payload = req.json()
    blob = hub._blob_path(str(payload.get("oid")))
    if not blob.exists() or blob.stat().st_size != int(payload.get("size", -1)):
        raise HubError(404, f"LFS object {payload.get('oid')} not found")
    return _json({"success": True})


def _commit(hub: HubServer, req: _Request, repo_type: str, repo_id: str, revision: str) -> Response:
    try:
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
    except ValueError as e:
        raise HubError(400, f"Invalid ndjson commit payload: {e}") from e
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "Commit payload must start with a header line")
    header = lines[0]["value"]
    create_pr = _truthy(req.param("create_pr"))
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id, write=True)
        ref = repo.branch_ref(revision)
        head = repo.data["refs"][ref]
        parent_commit = header.get("parentCommit")
        if parent_commit:
            if create_pr:
                head = repo.resolve(parent_commit)
            elif not head.startswith(parent_commit.lower()):
                raise HubError(412, _STALE_PARENT_MESSAGE)
        files = dict(repo.files(head))
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if key == "file":
                data = base64.b64decode(value.get("content", "")) if value.get("encoding") == "base64" else (
                    value.get("content", "").encode())  # fmt: skip
                files[path] = hub._entry(hub._store_blob(data), len(data), lfs=False)
            elif key == "lfsFile":
                oid = value.get("oid", "")
                blob = hub._blob_path(oid)
                if not blob.exists():
                    raise HubError(422, f"LFS file {path} (oid {oid}) was not uploaded")
                files[path] = hub._entry(oid, blob.stat().st_size, lfs=True)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        sha = hub._new_commit(repo, head, files, header.get("summary") or "", header.get("description") or "",
                              author=req.user)  # fmt: skip
        pr_url = None
        if create_pr:
            numbers = [int(r.rsplit("/", 1)[1]) for r in repo.data["refs"] if r.startswith("refs/pr/")]
            num = max(numbers, default=0) + 1
            repo.data["refs"][f"refs/pr/{num}"] = sha
            pr_url = f"{_repo_url(req, repo)}/discussions/{num}"
        else:
            repo.data["refs"][ref] = sha
        repo.save()
    return _json({"success": True, "commitOid": sha, "commitUrl": f"{_repo_url(req, repo)}/commit/{sha}",
                  "hookOutput": "", "pullRequestUrl": pr_url})  # fmt: skip


def _last_commits(repo: _Repo, head: str, paths: list[tuple[str, bool]]) -> dict[str, dict]:
    """Most recent commit that touched each (path, is_dir), walking first parents from ``head``."""
    out: dict[str, dict] = {}
    history = repo.history(head)
    for i, sha in enumerate(history):
        files = repo.files(sha)
        parent_files = repo.files(history[i + 1]) if i + 1 < len(history) else {}
        for path, is_dir in paths:
            if path in out:
                continue
            if is_dir:
                prefix = path + "/"
                mine = {p: e["sha256"] for p, e in files.items() if p.startswith(prefix)}
                theirs = {p: e["sha256"] for p, e in parent_files.items() if p.startswith(prefix)}
                changed = mine != theirs
            else:
                changed = (files.get(path) or {}).get("oid") != (parent_files.get(path) or {}).get("oid")
            if changed:
                c = repo.commit(sha)
                out[path] = {"id": sha, "title": c["summary"], "date": c["date"]}
        if len(out) == len(paths):
            break
    return out


def _path_items(repo: _Repo, sha: str, files: dict, paths: list[str], expand: bool) -> list[dict]:
    """Tree entries for ``paths`` (files, or directories implied by files) of snapshot ``files``."""
    items = []
    for path in paths:
        if path in files:
            e = files[path]
            item: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
            if e["lfs"]:
                item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": len(_lfs_pointer(e["sha256"], e["size"]))}
            items.append(item)
        else:
            children = sorted((p, files[p]["oid"]) for p in files if p.startswith(path + "/"))
            tree_oid = hashlib.sha1(json.dumps(children).encode()).hexdigest()
            items.append({"type": "directory", "oid": tree_oid, "size": 0, "path": path})
    if expand:
        last = _last_commits(repo, sha, [(i["path"], i["type"] == "directory") for i in items])
        for item in items:
            if item["path"] in last:
                item["lastCommit"] = last[item["path"]]
    return items


def _tree(hub: HubServer, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
    recursive, expand = _truthy(req.param("recursive")), _truthy(req.param("expand"))
    path = path.strip("/")
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id)
        sha = repo.resolve(revision)
        files = repo.files(sha)
        prefix = path + "/" if path else ""
        if path and path in files:
            entries = [path]  # the Hub lists a file as itself
        else:
            below = [p for p in files if p.startswith(prefix)]
            if path and not below:
                raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
            entries_set: set[str] = set()
            for p in below:
                parts = p[len(prefix):].split("/")
                depth = len(parts) if recursive else 1
                for d in range(1, depth + 1):
                    entries_set.add(prefix + "/".join(parts[:d]))
            # "tree first": directories before files at each level, like the Hub
            entries = sorted(entries_set, key=lambda p: (p.count("/"), p in files, p))
        page_size = _TREE_PAGE_EXPAND if expand else _TREE_PAGE
        cursor = int(req.param("cursor", "0") or 0)
        page = entries[cursor : cursor + page_size]
        items = _path_items(repo, sha, files, page, expand)
    headers = {}
    if cursor + page_size < len(entries):
        query = "&".join(f"{k}={quote(v[0])}" for k, v in req.query.items() if k != "cursor")
        next_url = f"{req.base}{req.path}?{query}&cursor={cursor + page_size}"
        headers["Link"] = f'<{next_url}>; rel="next"'
    return _json(items, headers=headers)


def _paths_info(hub: HubServer, req: _Request, repo_type: str, repo_id: str, revision: str) -> Response:
    if (req.headers.get("Content-Type") or "").startswith("application/json"):
        payload = req.json()
        paths, expand = payload.get("paths", []), bool(payload.get("expand"))
    else:
        form = parse_qs(req.body.decode(), keep_blank_values=True)
        paths, expand = form.get("paths", []), _truthy((form.get("expand") or ["false"])[0])
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id)
        sha = repo.resolve(revision)
        files = repo.files(sha)
        found = []
        for p in dict.fromkeys(p.strip("/") for p in paths):
            if p in files or any(f.startswith(p + "/") for f in files):
                found.append(p)
        items = _path_items(repo, sha, files, found, expand)
    return _json(items)


def _refs(hub: HubServer, req: _Request, repo_type: str, repo_id: str) -> Response:
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id)
        refs = repo.refs()
    out: dict[str, list] = {"branches": [], "converts": [], "tags": [], "pullRequests": []}
    kinds = {"refs/heads/": "branches", "refs/convert/": "converts", "refs/tags/": "tags", "refs/pr/": "pullRequests"}
    for ref, sha in sorted(refs.items()):
        for prefix, kind in kinds.items():
            if ref.startswith(prefix):
                out[kind].append({"name": ref[len(prefix):], "ref": ref, "targetCommit": sha})
    if not _truthy(req.param("include_prs")):
        del out["pullRequests"]
    return _json(out)


def _commits(hub: HubServer, req: _Request, repo_type: str, repo_id: str, revision: str) -> Response:
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id)
        out = []
        for sha in repo.history(repo.resolve(revision)):
            c = repo.commit(sha)
            message = c["summary"] + (f"\n\n{c['description']}" if c["description"] else "")
            out.append({"id": sha, "title": c["summary"], "message": message, "date": c["date"],
                        "authors": [{"user": c.get("author") or "unknown"}]})  # fmt: skip
    return _json(out)


def _branch(hub: HubServer, req: _Request, repo_type: str, repo_id: str, branch: str) -> Response:
    if branch.startswith("refs/") or not branch or ".." in branch:
        raise HubError(400, f"Invalid reference for a branch: {branch}")
    ref = f"refs/heads/{branch}"
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id, write=True)
        refs = repo.data["refs"]
        if req.method == "DELETE":
            if ref not in refs:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the main branch")
            del refs[ref]
        else:
            if ref in refs:
                raise HubError(409, f"Reference already exists: {ref}")
            starting_point = req.json().get("startingPoint")
            refs[ref] = repo.resolve(starting_point) if starting_point else refs["refs/heads/main"]
        repo.save()
    return _json({})


def _tag(hub: HubServer, req: _Request, repo_type: str, repo_id: str, name: str) -> Response:
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id, write=True)
        refs = repo.data["refs"]
        if req.method == "DELETE":
            if f"refs/tags/{name}" not in refs:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del refs[f"refs/tags/{name}"]
        else:  # POST /tag/{revision} with {"tag": ...}
            tag = req.json().get("tag")
            if not tag:
                raise HubError(400, "Missing tag name")
            if f"refs/tags/{tag}" in refs:
                raise HubError(409, f"Tag already exists: {tag}")
            refs[f"refs/tags/{tag}"] = repo.resolve(name)
        repo.save()
    return _json({})


def _settings(hub: HubServer, req: _Request, repo_type: str, repo_id: str) -> Response:
    payload = req.json()
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id, write=True)
        if "private" in payload:
            repo.data["private"] = bool(payload["private"])
        if "visibility" in payload:
            repo.data["private"] = payload["visibility"] == "private"
        repo.save()
    return _json({})


def _resolve(hub: HubServer, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
    with hub._lock:
        repo = _get_repo(hub, req, repo_type, repo_id)
        sha = repo.resolve(revision)
        entry = repo.files(sha).get(path)
    if entry is None:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
    size = entry["size"]
    etag = entry["sha256"] if entry["lfs"] else entry["oid"]
    headers = {
        "X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream", "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
    }  # fmt: skip
    if entry["lfs"]:
        headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
    blob = hub._blob_path(entry["sha256"])
    start, end, status = 0, size - 1, 200
    range_header = req.headers.get("Range")
    if range_header:
        spec = range_header.strip().lower()
        if not spec.startswith("bytes=") or "," in spec:
            raise HubError(416, f"Unsupported range {range_header}", headers={"Content-Range": f"bytes */{size}"})
        first, _, last = spec[len("bytes="):].partition("-")
        if first:
            start, end = int(first), (min(int(last), size - 1) if last else size - 1)
        else:
            start, end = max(size - int(last or 0), 0), size - 1
        if start >= size or start > end:
            raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}", **headers})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(status, headers, file=blob, offset=start, length=max(end - start + 1, 0))


# ====================================================================== client side helpers


def client_env(
    hub: HubServer,
    home: str | os.PathLike,
    token: str | None = TOKEN,
    trap: bool = True,
    overrides: dict[str, str | None] | None = None,
) -> dict[str, str]:
    """Environment for a subprocess running the real clients against ``hub``.

    Every ``HF_*`` / ``HUGGINGFACE_*`` / proxy variable of the current environment is dropped (in particular
    ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, which ``tests/conftest.py`` sets and which would block
    localhost too). With ``trap`` (default), every host but ``127.0.0.1`` is sent through the hub as an HTTP
    proxy, so an attempt to reach anything else is answered and logged by the hub instead of leaving the
    machine (``datasets`` derives ``http://datasets-server.127.0.0.1:PORT`` from the endpoint: without the
    trap that costs a DNS query). ``HF_UPDATE_DOWNLOAD_COUNTS=0`` turns off the download counter that
    ``load_dataset`` sends to ``https://s3.amazonaws.com`` whatever ``HF_ENDPOINT`` is. ``overrides`` sets
    (or, with ``None``, removes) variables last.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HF_", "HUGGINGFACE", "TRANSFORMERS_OFFLINE"))
        and k.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
    }
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_UPDATE_DOWNLOAD_COUNTS="0",
        TOKENIZERS_PARALLELISM="false",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    if trap:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = hub.url
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_client(
    hub: HubServer,
    code: str,
    home: str | os.PathLike,
    *,
    token: str | None = TOKEN,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str | None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with :func:`client_env` (``env``: its ``overrides``).

    ``check`` raises with the client's output on a non-zero exit status.
    """
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=client_env(hub, home, token=token, overrides=env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"client failed (rc={proc.returncode})\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def last_json(proc: subprocess.CompletedProcess) -> Any:
    """The JSON document printed on the last non-empty stdout line of a client run."""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output\n--- stderr\n{proc.stderr}"
    return json.loads(lines[-1])


if __name__ == "__main__":  # manual use: python tests/support/hub_server.py /tmp/hub
    with HubServer(sys.argv[1] if len(sys.argv) > 1 else "/tmp/test-hub") as _hub:
        print(f"HF_ENDPOINT={_hub.url} HF_TOKEN={TOKEN} HF_HUB_DISABLE_XET=1", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
