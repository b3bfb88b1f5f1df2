"""A local stand-in for the Hugging Face Hub, for tests that push and pull without a network.

`LocalHub` is a loopback HTTP server (stdlib ``ThreadingHTTPServer`` in background threads, port 0) that speaks the
part of the Hub API that the *real* ``huggingface_hub`` client calls for ``create_repo``, ``upload_folder`` /
``upload_file`` / ``create_commit`` (preupload, Git-LFS batch + basic transfer + verify, NDJSON commit),
``repo_info`` / ``list_repo_tree`` / ``list_repo_files`` / ``get_paths_info`` / ``list_repo_refs`` /
``list_repo_commits`` / ``create_branch``, ``snapshot_download`` and ``hf_hub_download`` (``HEAD``/``GET
/resolve``), and therefore ``transformers``' ``push_to_hub`` / ``from_pretrained``; for Spaces also ``create_repo``
with ``space_sdk`` (required, as on the Hub) and the Space variables (``add_space_variable``,
``get_space_variables``, ``delete_space_variable``). The request and response shapes
were read from the installed client (huggingface_hub 2.4: ``hf_api.py``, ``_commit_api.py``, ``lfs.py``,
``file_download.py``, ``_snapshot_download.py``, ``utils/_http.py``).

Why a real server rather than mocks: the client code runs unpatched, so a test exercises the same HTTP calls, the
same retries and the same error classes a user meets against huggingface.co. Any endpoint the server does not know
answers ``501`` with the method and path in the message, so a client upgrade that starts calling something new shows
up as a failing test instead of a silent pass.

Faithful details, on purpose:

* Every repo starts with the Hub's "initial commit" holding the default ``.gitattributes``; every commit gets a new
  40-hex sha; branches, ``refs/pr/N`` and commit shas are all valid ``revision`` values, so pinned downloads work.
* ``preupload`` answers ``lfs`` when a path matches an LFS pattern of the repo's ``.gitattributes``, when the file is
  10 MiB or more, or when its 512-byte sample holds a NUL byte (binary), else ``regular``; the commit endpoint
  refuses regular files that break those rules, as the Hub's pre-receive hook does.
* LFS bytes go to a second loopback port that plays the storage bucket / CDN: the batch answer's upload ``href``
  points there (the client PUTs without credentials, like S3), and ``/resolve`` of an LFS file is a ``302`` to it with
  ``X-Linked-Etag`` / ``X-Linked-Size``, so the client strips ``Authorization`` exactly as it does for the real CDN.
  Uploads are checked against the announced sha256 and size.
* Xet cannot be served locally: the client must run with ``HF_HUB_DISABLE_XET=1`` (the fixture sets it); the server
  never sends Xet headers.

Fault injection (``LocalHub.fail_next``) makes the next matching request answer an HTTP error or drop the
connection mid-body, to test that a failed or interrupted push leaves local files intact and reports what failed.

Usage:

* pytest: register the fixture once in ``tests/conftest.py`` with ``pytest_plugins = ["tests.utils.hub_server"]``,
  then take ``local_hub`` as an argument. In-process, ``HfApi()``, the module-level helpers (``create_repo``,
  ``upload_folder``, ``hf_hub_download``, ``snapshot_download``...) and transformers' ``push_to_hub`` /
  ``from_pretrained`` all reach the server with no ``endpoint=`` argument, because `configure_hub_client` patches the
  import-time constants (env vars alone are read too late once ``huggingface_hub`` is imported).
  ``HfApi(endpoint=hub.endpoint)`` works as well.
* subprocesses: the fixture exports the variables, so a child started with the inherited environment uses the
  server; for a custom environment merge ``hub.client_env(home)`` (a fresh ``HF_HOME`` forces real downloads).
* without pytest: ``with LocalHub() as hub:`` then ``configure_hub_client(pytest.MonkeyPatch(), hub, home)``, or
  pass ``endpoint=hub.endpoint`` / ``token=TEST_TOKEN`` explicitly with ``HF_HUB_DISABLE_XET=1`` set before
  ``huggingface_hub`` is imported (else uploads try Xet and hit a 501).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import itertools
import json
import os
import secrets
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest


__all__ = [
    "DEFAULT_GITATTRIBUTES",
    "LFS_SIZE_THRESHOLD",
    "OPERATIONS",
    "TEST_TOKEN",
    "Commit",
    "LocalHub",
    "RepoFileEntry",
    "RequestRecord",
    "StoredRepo",
    "configure_hub_client",
    "local_hub_fixture",
]

#: Token the fixture puts in ``HF_TOKEN``. Recognisable on purpose, so tests can grep for leaks.
TEST_TOKEN = "hf_test_token_localhub_do_not_store_0123456789"

#: The Hub refuses regular (non-LFS) files of this size or more.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# LFS patterns of the `.gitattributes` that huggingface.co writes into the "initial commit" of a new repo.
_DEFAULT_LFS_PATTERNS = (
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lfs.*",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "saved_model/**/*",
    "*.tar.*",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
)
#: Content of that default `.gitattributes`.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in _DEFAULT_LFS_PATTERNS
)

#: Names accepted by `LocalHub.fail_next`, one per kind of request the server answers.
OPERATIONS = frozenset(
    {
        "whoami",
        "create_repo",
        "delete_repo",
        "validate_yaml",
        "repo_info",
        "tree",
        "paths_info",
        "refs",
        "commits",
        "branch",
        "preupload",
        "commit",
        "lfs_batch",
        "lfs_verify",
        "lfs_upload",
        "lfs_download",
        "resolve",
        "space_variables",
    }
)

# Operations that change server state: refused without a token when `require_token=True`.
_WRITE_OPERATIONS = frozenset(
    {"create_repo", "delete_repo", "branch", "preupload", "commit", "lfs_batch", "lfs_verify", "space_variables"}
)
_REPO_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API_SUBPATHS = frozenset(
    {"revision", "tree", "preupload", "commit", "paths-info", "branch", "refs", "commits", "variables"}
)
_SPACE_SDKS = frozenset({"gradio", "docker", "static"})
_RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space"}
_COMMIT_SHA = frozenset("0123456789abcdef")


def _now_iso() -> str:
    """Timestamp in the Hub's format, which `huggingface_hub.utils.parse_datetime` accepts."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(data: bytes) -> str:
    """Git object id of a blob, which the Hub uses as ETag and ``blobId`` of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_binary(sample: bytes) -> bool:
    """Git's own heuristic: a NUL byte near the start means binary content."""
    return b"\0" in sample[:8000]


def _lfs_patterns(gitattributes: bytes | None) -> list[str]:
    """Patterns marked ``filter=lfs`` in a ``.gitattributes`` file."""
    if not gitattributes:
        return []
    patterns = []
    for line in gitattributes.decode("utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches_git_pattern(path: str, pattern: str) -> bool:
    """Simplified gitattributes/gitignore matching: a pattern without ``/`` matches the basename anywhere."""
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):
        return path.startswith(pattern) or f"/{pattern}" in f"/{path}"
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.replace("**/", "*"))


@dataclass(frozen=True)
class RepoFileEntry:
    """One file in one commit: its bytes, and whether the Hub stores it in Git LFS."""

    content: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.content)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @cached_property
    def pointer(self) -> bytes:
        """The Git-LFS pointer file that git stores instead of the content."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @cached_property
    def git_oid(self) -> str:
        """Blob id in git: of the content for regular files, of the pointer for LFS files."""
        return _git_blob_oid(self.pointer if self.lfs else self.content)

    @property
    def remote_oid(self) -> str:
        """What ``preupload`` reports and the client compares to skip unchanged files."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    """A commit: a full snapshot of the repo's files, so old revisions stay downloadable."""

    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, RepoFileEntry]


@dataclass
class StoredRepo:
    """Server-side state of one repo: commits by sha, refs, and the LFS objects uploaded for it."""

    repo_id: str
    repo_type: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", "dev", "refs/pr/1" -> commit sha
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes
    pr_count: int = 0
    space_sdk: str | None = None  # spaces only: "gradio", "docker" or "static"
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)  # spaces only: key -> {value, description...}

    @property
    def key(self) -> str:
        """``user/name`` for models, ``datasets/user/name`` for datasets: the path prefix of its web URLs."""
        return _REPO_TYPE_PREFIX[self.repo_type] + self.repo_id

    def resolve(self, revision: str = "main") -> Commit | None:
        """Commit for a branch name, a ``refs/...`` name, a full sha or an unambiguous sha prefix (7+ chars)."""
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.refs:
            return self.commits[self.refs[revision[len("refs/heads/") :]]]
        if revision in self.commits:
            return self.commits[revision]
        if len(revision) >= 7 and set(revision) <= _COMMIT_SHA:
            hits = [oid for oid in self.commits if oid.startswith(revision)]
            if len(hits) == 1:
                return self.commits[hits[0]]
        return None

    def head(self, branch: str = "main") -> Commit:
        return self.commits[self.refs[branch]]

    def files(self, revision: str = "main") -> dict[str, bytes]:
        """Path -> bytes at a revision; the convenient view for assertions."""
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(f"revision {revision!r} not found in {self.key}")
        return {path: entry.content for path, entry in commit.files.items()}

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from a revision, newest first."""
        commit = self.resolve(revision)
        out = []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


@dataclass
class RequestRecord:
    """What the server saw of one request; ``authorization`` lets tests assert how the token travelled."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    server: str  # "hub" or "cdn"
    operation: str  # one of OPERATIONS, or "unknown"
    body_size: int = 0
    status: int | None = None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def token(self) -> str | None:
        auth = self.authorization or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None


@dataclass
class _Fault:
    operation: str
    status: int
    message: str | None
    drop: bool
    match: str | None
    remaining: int


class HubError(Exception):
    """An error answer, shaped like the Hub's: JSON ``{"error": ...}`` plus ``X-Error-Code`` when the client cares."""

    def __init__(
        self, status: int, message: str, *, error_code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    content_length: int | None = None  # for HEAD: length of the body a GET would send


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status=status, body=json.dumps(payload).encode(), headers=headers or {})


class _Handler(BaseHTTPRequestHandler):
    """Routes every request to `LocalHub.dispatch`; keeps the HTTP/1.1 framing right for a keep-alive client."""

    protocol_version = "HTTP/1.1"
    hub: LocalHub
    role: str

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence stderr logging; `LocalHub.requests_log` is the record."""

    def finish(self) -> None:
        # After an injected connection drop the socket is already gone.
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def read_body(self, limit: int | None = None) -> bytes:
        """Read the whole request body (Content-Length or chunked), or at most `limit` bytes of it."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                if limit is not None and total + size > limit:
                    chunks.append(self.rfile.read(limit - total))
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                total += size
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None:
            length = min(length, limit)
        return self.rfile.read(length) if length else b""

    def abort_connection(self) -> None:
        """Reset the TCP connection without an answer (SO_LINGER 0 makes close() send RST)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass

    def send(self, response: _Response) -> None:
        body = response.body
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        length = response.content_length if response.content_length is not None else len(body)
        self.send_header("Content-Length", str(length))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _handle(self) -> None:
        try:
            self.hub.dispatch(self, self.role)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class LocalHub:
    """A loopback Hugging Face Hub: start it, point the client at `endpoint`, inspect `repos` and `requests_log`.

    Usage in-process (without pytest)::

        with LocalHub() as hub:
            HfApi(endpoint=hub.endpoint, token=TEST_TOKEN).create_repo("user/x")

    With pytest, use the ``local_hub`` fixture, which also points the already-imported client at the server.

    Args:
        username: namespace of repos created without one, and the ``name`` that ``whoami`` reports.
        require_token: refuse anonymous writes (create repo, preupload, LFS batch, commit, branch) with 401.
        host: loopback address to bind.
    """

    def __init__(self, *, username: str = "user", require_token: bool = False, host: str = "127.0.0.1") -> None:
        self.username = username
        self.require_token = require_token
        self.host = host
        self.repos: dict[str, StoredRepo] = {}
        self.requests_log: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._uploads: dict[str, tuple[str, str, int]] = {}  # upload id -> (repo key, oid, size)
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.endpoint = ""
        self.cdn_endpoint = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalHub:
        """Bind two loopback ports (Hub API, LFS storage/CDN) and serve each from a daemon thread."""
        if self._servers:
            return self
        for role in ("hub", "cdn"):
            handler = type(f"_{role.capitalize()}Handler", (_Handler,), {"hub": self, "role": role})
            server = ThreadingHTTPServer((self.host, 0), handler)
            server.daemon_threads = True
            # A short poll interval keeps stop() fast (the default 0.5 s is paid per server on shutdown).
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"LocalHub-{role}", daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.endpoint = f"http://{self.host}:{self._servers[0].server_address[1]}"
        self.cdn_endpoint = f"http://{self.host}:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        """Shut both servers down and release their ports."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def fail_next(
        self,
        operation: str,
        *,
        status: int = 500,
        message: str | None = None,
        drop: bool = False,
        match: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the next `times` requests of `operation` fail.

        Args:
            operation: one of `OPERATIONS`, e.g. ``"commit"``, ``"lfs_upload"``, ``"preupload"``, ``"resolve"``.
            status: HTTP status of the error answer. Mind the client's retries: ``http_backoff`` retries
                408/429/500/502/503/504 and network errors with 1, 2, 4, 8, 8 s waits on preupload, the LFS batch
                and LFS PUTs (not on the commit POST), so a single 500 there is absorbed. Use a 4xx (e.g. 403, as S3
                answers a bad signature) to make such a step fail at once.
            message: server error text; the client puts it into the exception message.
            drop: instead of answering, read half of the request body and reset the connection (an interrupted
                upload). The client sees a network error, not an HTTP status.
            match: only requests whose path contains this substring: a file name for ``resolve``, the sha256 for
                ``lfs_upload`` / ``lfs_download`` (their URLs carry no file name, like S3's), a branch for ``commit``.
            times: how many matching requests fail.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"Unknown operation {operation!r}; expected one of {sorted(OPERATIONS)}")
        with self._lock:
            self._faults.append(_Fault(operation, status, message, drop, match, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_for(self, operation: str) -> list[RequestRecord]:
        """Logged requests of one operation, in arrival order."""
        return [r for r in self.requests_log if r.operation == operation]

    def unknown_requests(self) -> list[RequestRecord]:
        """Requests that got a 501: the client called an endpoint this server does not implement."""
        return [r for r in self.requests_log if r.operation == "unknown"]

    def tokens_seen(self) -> set[str]:
        """Bearer tokens the server received, in any header of any request."""
        return {r.token for r in self.requests_log if r.token}

    def find_stored(self, needle: bytes | str) -> list[str]:
        """Where `needle` occurs in anything the server stores (file bytes, LFS objects, commit texts).

        Returns ``"repo@sha:path"`` strings; empty means the needle was never stored. Used to check that a token never
        ends up inside uploaded files.
        """
        if isinstance(needle, str):
            needle = needle.encode()
        hits = []
        with self._lock:
            for repo in self.repos.values():
                for commit in repo.commits.values():
                    if needle in f"{commit.title}\n{commit.message}".encode():
                        hits.append(f"{repo.key}@{commit.oid}:<commit message>")
                    hits.extend(
                        f"{repo.key}@{commit.oid}:{path}"
                        for path, entry in commit.files.items()
                        if needle in entry.content
                    )
                hits.extend(f"{repo.key}:lfs/{oid}" for oid, data in repo.lfs_objects.items() if needle in data)
        return hits

    def repo(self, repo_id: str, repo_type: str = "model") -> StoredRepo:
        """The stored repo, e.g. ``hub.repo("user/tiny").files()``."""
        return self.repos[_REPO_TYPE_PREFIX[repo_type] + repo_id]

    def client_env(self, home: str | os.PathLike[str], token: str | None = TEST_TOKEN) -> dict[str, str]:
        """Environment variables that point a fresh process's client (and transformers) at this server."""
        home = Path(home)
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    # ------------------------------------------------------------------ state changes (also usable from tests)

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> StoredRepo:
        """Create a repo with the Hub's initial commit (default ``.gitattributes``); KeyError if it exists."""
        key = _REPO_TYPE_PREFIX[repo_type] + repo_id
        with self._lock:
            if key in self.repos:
                raise KeyError(key)
            repo = StoredRepo(repo_id=repo_id, repo_type=repo_type, private=private, created_at=_now_iso())
            files = {".gitattributes": RepoFileEntry(DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
            commit = self._new_commit(repo, None, files, "initial commit", "", repo_id.split("/")[0])
            repo.refs["main"] = commit.oid
            self.repos[key] = repo
            return repo

    def _new_commit(
        self,
        repo: StoredRepo,
        parent: str | None,
        files: dict[str, RepoFileEntry],
        title: str,
        message: str,
        author: str,
    ) -> Commit:
        seed = json.dumps(
            [repo.key, parent, title, message, next(self._counter), secrets.token_hex(8)]
            + sorted((path, entry.git_oid) for path, entry in files.items())
        )
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent,
            title=title,
            message=message,
            author=author,
            date=_now_iso(),
            files=files,
        )
        repo.commits[commit.oid] = commit
        return commit

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, handler: _Handler, role: str) -> None:
        """Classify, log, apply faults, read the body, answer. Called from server threads."""
        split = urlsplit(handler.path)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        method = handler.command
        operation, route = self._route(method, segments, role)
        record = RequestRecord(
            method=method,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            server=role,
            operation=operation,
        )
        with self._lock:
            self.requests_log.append(record)
            fault = self._take_fault(operation, split.path)

        if fault is not None and fault.drop:
            declared = int(handler.headers.get("Content-Length") or 0)
            partial = handler.read_body(limit=declared // 2 if declared else 0)
            record.body_size = len(partial)
            handler.abort_connection()
            return

        body = handler.read_body()
        record.body_size = len(body)
        if fault is not None:
            detail = f": {fault.message}" if fault.message else ""
            response = self._error_response(
                HubError(fault.status, f"LocalHub injected failure in '{operation}' ({method} {split.path}){detail}")
            )
        elif route is None:
            response = self._error_response(
                HubError(
                    501,
                    f"LocalHub does not implement {method} {split.path} (server={role}). The huggingface_hub client"
                    " called an endpoint this test server does not know: extend tests/utils/hub_server.py.",
                )
            )
        else:
            try:
                token = record.token
                if self.require_token and token is None and operation in _WRITE_OPERATIONS:
                    raise HubError(401, f"Authorization header required for '{operation}' (LocalHub require_token)")
                response = route(handler=handler, body=body, query=record.query, token=token)
            except HubError as err:
                response = self._error_response(err)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                response = self._error_response(HubError(400, f"Malformed {operation} request: {err!r}"))
            except Exception as err:  # a server bug must reach the test as a clear 500, not a hang
                response = self._error_response(HubError(500, f"LocalHub internal error: {type(err).__name__}: {err}"))
        record.status = response.status
        handler.send(response)

    def _take_fault(self, operation: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.operation == operation and (fault.match is None or fault.match in path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _error_response(err: HubError) -> _Response:
        headers = dict(err.headers)
        if err.error_code:
            headers["X-Error-Code"] = err.error_code
        return _json({"error": err.message}, status=err.status, headers=headers)

    def _route(self, method: str, seg: list[str], role: str) -> tuple[str, Callable[..., _Response] | None]:
        """Map (method, path segments) to an operation name and a bound handler with its path arguments."""

        def bind(fn: Callable[..., _Response], **kwargs: Any) -> Callable[..., _Response]:
            return lambda **request: fn(**kwargs, **request)

        if role == "cdn":
            if len(seg) == 3 and seg[0] == "upload":  # /upload/{sha256}/{upload id}
                return "lfs_upload", bind(self._lfs_upload, upload_id=seg[2]) if method == "PUT" else None
            if len(seg) == 4 and seg[0] == "repos" and seg[2] == "lfs":
                ok = method in ("GET", "HEAD")
                return "lfs_download", bind(self._lfs_download, key=seg[1], oid=seg[3]) if ok else None
            return "unknown", None

        if seg[:2] == ["api", "whoami-v2"] and len(seg) == 2:
            return "whoami", self._whoami if method == "GET" else None
        if seg[:2] == ["api", "repos"] and len(seg) == 3:
            if seg[2] == "create":
                return "create_repo", self._create_repo_api if method == "POST" else None
            if seg[2] == "delete":
                return "delete_repo", self._delete_repo_api if method == "DELETE" else None
        if seg == ["api", "validate-yaml"]:
            return "validate_yaml", self._validate_yaml if method == "POST" else None
        if len(seg) >= 3 and seg[0] == "api" and seg[1] in _API_TYPES:
            return self._route_api(method, _API_TYPES[seg[1]], seg[2:])

        # Git-LFS: /{prefix}{repo_id}.git/info/lfs/objects/{batch,verify}
        if len(seg) >= 5 and seg[-4:-1] == ["info", "lfs", "objects"]:
            repo_type, repo_seg = self._split_type_prefix(seg[:-4])
            if repo_seg and repo_seg[-1].endswith(".git") and method == "POST":
                repo_id = "/".join(repo_seg)[: -len(".git")]
                if seg[-1] == "batch":
                    return "lfs_batch", bind(self._lfs_batch, repo_type=repo_type, repo_id=repo_id)
                if seg[-1] == "verify":
                    return "lfs_verify", bind(self._lfs_verify, repo_type=repo_type, repo_id=repo_id)
            return "unknown", None

        # Downloads: /{prefix}{repo_id}/resolve/{revision}/{path...}
        if "resolve" in seg:
            idx = seg.index("resolve")
            repo_type, repo_seg = self._split_type_prefix(seg[:idx])
            if 1 <= len(repo_seg) <= 2 and len(seg) >= idx + 3 and method in ("GET", "HEAD"):
                return "resolve", bind(
                    self._resolve,
                    repo_type=repo_type,
                    repo_id="/".join(repo_seg),
                    revision=seg[idx + 1],
                    path="/".join(seg[idx + 2 :]),
                )
        return "unknown", None

    @staticmethod
    def _split_type_prefix(seg: list[str]) -> tuple[str, list[str]]:
        if seg and seg[0] in _RESOLVE_PREFIXES:
            return _RESOLVE_PREFIXES[seg[0]], seg[1:]
        return "model", seg

    def _route_api(self, method: str, repo_type: str, rest: list[str]) -> tuple[str, Callable[..., _Response] | None]:
        # repo ids are "namespace/name" (or a legacy bare "name"); the segment after the id names the sub-API.
        if len(rest) == 2 or (len(rest) >= 3 and rest[2] in _API_SUBPATHS):
            repo_id, tail = "/".join(rest[:2]), rest[2:]
        else:
            repo_id, tail = rest[0], rest[1:]

        def bind(fn: Callable[..., _Response], op: str, **kwargs: Any) -> tuple[str, Callable[..., _Response]]:
            return op, lambda **request: fn(repo_type=repo_type, repo_id=repo_id, **kwargs, **request)

        if method == "GET" and not tail:
            return bind(self._repo_info, "repo_info", revision=None)
        if not tail:
            return "unknown", None
        sub, args = tail[0], tail[1:]
        if sub == "revision" and method == "GET" and args:
            return bind(self._repo_info, "repo_info", revision="/".join(args))
        if sub == "tree" and method == "GET" and args:
            return bind(self._tree, "tree", revision=args[0], path="/".join(args[1:]))
        if sub == "paths-info" and method == "POST" and len(args) == 1:
            return bind(self._paths_info, "paths_info", revision=args[0])
        if sub == "preupload" and method == "POST" and len(args) == 1:
            return bind(self._preupload, "preupload", revision=args[0])
        if sub == "commit" and method == "POST" and len(args) == 1:
            return bind(self._commit, "commit", revision=args[0])
        if sub == "refs" and method == "GET" and not args:
            return bind(self._refs, "refs")
        if sub == "commits" and method == "GET" and len(args) == 1:
            return bind(self._commits, "commits", revision=args[0])
        if sub == "branch" and method in ("POST", "DELETE") and args:
            return bind(self._branch, "branch", branch="/".join(args))
        if sub == "variables" and repo_type == "space" and method in ("GET", "POST", "DELETE") and not args:
            return bind(self._space_variables, "space_variables", method=method)
        return "unknown", None

    # ------------------------------------------------------------------ lookups shared by endpoints

    def _get_repo(self, repo_type: str, repo_id: str, token: str | None) -> StoredRepo:
        repo = self.repos.get(_REPO_TYPE_PREFIX[repo_type] + repo_id)
        if repo is None or (repo.private and token is None):
            # Like the Hub: 401 for anonymous callers, 404 otherwise; the client maps both to RepositoryNotFoundError.
            raise HubError(401 if token is None else 404, f"Repository {repo_id} not found", error_code="RepoNotFound")
        return repo

    @staticmethod
    def _get_commit(repo: StoredRepo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")
        return commit

    def _url(self, repo: StoredRepo) -> str:
        return f"{self.endpoint}/{repo.key}"

    @staticmethod
    def _is_lfs_path(commit: Commit, path: str) -> bool:
        attributes = commit.files.get(".gitattributes")
        return any(_matches_git_pattern(path, p) for p in _lfs_patterns(attributes.content if attributes else None))

    # ------------------------------------------------------------------ account and repo management

    def _whoami(self, *, token: str | None, **_: Any) -> _Response:
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.username,
                "fullname": self.username,
                "email": None,
                "emailVerified": False,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": "write"}},
            }
        )

    def _create_repo_api(self, *, body: bytes, token: str | None, **_: Any) -> _Response:
        payload = json.loads(body or b"{}")
        name = payload.get("name")
        if not name:
            raise HubError(400, "Missing 'name' in create repo payload")
        repo_type = payload.get("type") or "model"
        if repo_type not in _REPO_TYPE_PREFIX:
            raise HubError(400, f"Unsupported repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or self.username}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in _SPACE_SDKS:
            raise HubError(400, f"A Space needs an sdk, one of {sorted(_SPACE_SDKS)}; got {sdk!r}")
        with self._lock:
            key = _REPO_TYPE_PREFIX[repo_type] + repo_id
            if key in self.repos:
                # The client turns this 409 into success when exist_ok=True.
                return _json(
                    {"error": f"You already created this {repo_type} repo", "url": f"{self.endpoint}/{key}"},
                    status=409,
                )
            repo = self.create_repo(repo_id, repo_type=repo_type, private=private)
            if repo_type == "space":
                repo.space_sdk = sdk
                for variable in payload.get("variables") or []:
                    repo.variables[variable["key"]] = {"value": variable["value"], "updatedAt": _now_iso()}
        return _json({"url": self._url(repo), "name": repo_id, "id": hashlib.sha1(key.encode()).hexdigest()[:24]})

    def _delete_repo_api(self, *, body: bytes, token: str | None, **_: Any) -> _Response:
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.username}/{payload.get('name')}"
        with self._lock:
            self._get_repo(repo_type, repo_id, token)
            del self.repos[_REPO_TYPE_PREFIX[repo_type] + repo_id]
        return _Response(status=200, body=b"")

    def _space_variables(
        self, *, repo_type: str, repo_id: str, method: str, body: bytes, token: str | None, **_: Any
    ) -> _Response:
        """``/api/spaces/{repo}/variables``: GET lists, POST adds or updates ``{key, value[, description]}``, DELETE
        removes ``{key}``; each answers the Space's variables as ``{key: {value, description?, updatedAt}}``."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            if method != "GET" and token is None:
                raise HubError(401, "Space variables need a token")
            payload = json.loads(body or b"{}") if method != "GET" else {}
            if method == "POST":
                if not isinstance(payload.get("key"), str) or not isinstance(payload.get("value"), str):
                    raise HubError(400, "A Space variable needs a string 'key' and 'value'")
                entry = {"value": payload["value"], "updatedAt": _now_iso()}
                if payload.get("description") is not None:
                    entry["description"] = payload["description"]
                repo.variables[payload["key"]] = entry
            elif method == "DELETE":
                repo.variables.pop(payload.get("key"), None)
            return _json(dict(repo.variables))

    def _validate_yaml(self, **_: Any) -> _Response:
        # The Hub checks model-card metadata here; the client only needs "no errors".
        return _json({"errors": [], "warnings": []})

    # ------------------------------------------------------------------ read API

    def _sibling(self, path: str, entry: RepoFileEntry, blobs: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"rfilename": path}
        if blobs:
            out["size"] = entry.size
            out["blobId"] = entry.git_oid
            if entry.lfs:
                out["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": len(entry.pointer)}
        return out

    def _repo_info(
        self,
        *,
        repo_type: str,
        repo_id: str,
        revision: str | None,
        query: dict[str, list[str]],
        token: str | None,
        **_: Any,
    ) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            commit = self._get_commit(repo, revision or "main")
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            info = {
                "_id": hashlib.sha1(repo.key.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [self._sibling(p, e, blobs) for p, e in sorted(commit.files.items())],
            }
            if repo_type == "model":
                info["modelId"] = repo.repo_id
            if repo_type == "space":
                info["sdk"] = repo.space_sdk or "static"
        return _json(info)

    def _last_commit(self, repo: StoredRepo, commit: Commit, path: str) -> dict[str, str]:
        """The newest commit reachable from `commit` that changed `path` (for ``expand=True`` listings)."""
        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if self._path_oid(current, path) != self._path_oid(parent, path):
                break
            current = parent
        return {"id": current.oid, "title": current.title, "date": current.date}

    @staticmethod
    def _path_oid(commit: Commit, path: str) -> str | None:
        if path in commit.files:
            return commit.files[path].git_oid
        prefix = path.rstrip("/") + "/"
        inside = sorted((p, e.git_oid) for p, e in commit.files.items() if p.startswith(prefix))
        return hashlib.sha1(json.dumps(inside).encode()).hexdigest() if inside else None

    def _tree_entry(self, repo: StoredRepo, commit: Commit, path: str, expand: bool) -> dict[str, Any] | None:
        entry = commit.files.get(path)
        if entry is not None:
            out: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
            if entry.lfs:
                out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(entry.pointer)}
        else:
            oid = self._path_oid(commit, path)
            if oid is None:
                return None
            out = {"type": "directory", "oid": oid, "size": 0, "path": path}
        if expand:
            out["lastCommit"] = self._last_commit(repo, commit, path)
        return out

    def _tree(
        self,
        *,
        repo_type: str,
        repo_id: str,
        revision: str,
        path: str,
        query: dict[str, list[str]],
        token: str | None,
        **_: Any,
    ) -> _Response:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            commit = self._get_commit(repo, revision)
            base = path.strip("/")
            prefix = f"{base}/" if base else ""
            below = [p for p in commit.files if p.startswith(prefix)]
            if base and not below:
                raise HubError(404, f"Path {base} not found at {revision}", error_code="EntryNotFound")
            names: set[str] = set()
            for file_path in below:
                parts = file_path[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                for i in range(1, depth + 1):
                    names.add(prefix + "/".join(parts[:i]))
            entries = [self._tree_entry(repo, commit, name, expand) for name in sorted(names)]
        # Directories first, then files, like the Hub; one page (no Link header) is enough at test scale.
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        return _json(entries)

    def _paths_info(
        self, *, repo_type: str, repo_id: str, revision: str, body: bytes, token: str | None, **_: Any
    ) -> _Response:
        form = parse_qs(body.decode())
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            commit = self._get_commit(repo, revision)
            entries = [self._tree_entry(repo, commit, p.strip("/"), expand) for p in form.get("paths", [])]
        return _json([e for e in entries if e is not None])

    def _refs(self, *, repo_type: str, repo_id: str, token: str | None, **_: Any) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid}
                for n, oid in repo.refs.items()
                if not n.startswith("refs/")
            ]
            prs = [
                {"name": n, "ref": n, "targetCommit": oid} for n, oid in repo.refs.items() if n.startswith("refs/pr/")
            ]
        return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def _commits(self, *, repo_type: str, repo_id: str, revision: str, token: str | None, **_: Any) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            self._get_commit(repo, revision)
            items = [
                {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
                for c in repo.history(revision)
            ]
        return _json(items)

    # ------------------------------------------------------------------ write API

    def _branch(
        self, *, handler: _Handler, repo_type: str, repo_id: str, branch: str, body: bytes, token: str | None, **_: Any
    ) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            if handler.command == "DELETE":
                if branch not in repo.refs or branch == "main":
                    raise HubError(404 if branch not in repo.refs else 403, f"Cannot delete branch {branch}")
                del repo.refs[branch]
                return _Response(status=200, body=b"")
            if branch in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.refs[branch] = self._get_commit(repo, start).oid
        return _Response(status=200, body=b"")

    def _preupload(
        self, *, repo_type: str, repo_id: str, revision: str, body: bytes, token: str | None, **_: Any
    ) -> _Response:
        payload = json.loads(body)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            commit = self._get_commit(repo, revision)
            gitignore = payload.get("gitIgnore")
            if gitignore is None and ".gitignore" in commit.files:
                gitignore = commit.files[".gitignore"].content.decode("utf-8", errors="replace")
            ignore_patterns = [
                line.strip() for line in (gitignore or "").splitlines() if line.strip() and not line.startswith("#")
            ]
            answers = []
            for item in payload["files"]:
                path, size = item["path"], int(item["size"])
                sample = base64.b64decode(item.get("sample", ""))
                lfs = self._is_lfs_path(commit, path) or size >= LFS_SIZE_THRESHOLD or _is_binary(sample)
                existing = commit.files.get(path)
                answers.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": any(_matches_git_pattern(path, p) for p in ignore_patterns),
                        "oid": existing.remote_oid if existing is not None else None,
                    }
                )
        return _json({"files": answers, "commitOid": commit.oid})

    def _lfs_batch(self, *, repo_type: str, repo_id: str, body: bytes, token: str | None, **_: Any) -> _Response:
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, f"LocalHub LFS batch supports operation=upload only, got {payload.get('operation')!r}")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, f"LocalHub LFS batch supports the 'basic' transfer only, got {payload['transfers']}")
        objects = []
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            for obj in payload.get("objects", []):
                oid, size = str(obj.get("oid")), int(obj.get("size", -1))
                if len(oid) != 64 or not set(oid) <= _COMMIT_SHA or size < 0:
                    objects.append(
                        {"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid oid or size"}}
                    )
                    continue
                if oid in repo.lfs_objects:
                    objects.append({"oid": oid, "size": size})  # no actions: already uploaded
                    continue
                upload_id = secrets.token_hex(16)
                self._uploads[upload_id] = (repo.key, oid, size)
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{self.cdn_endpoint}/upload/{oid}/{upload_id}", "expires_in": 3600},
                            "verify": {"href": f"{self.endpoint}/{repo.key}.git/info/lfs/objects/verify"},
                        },
                    }
                )
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, *, upload_id: str, body: bytes, **_: Any) -> _Response:
        with self._lock:
            if upload_id not in self._uploads:
                raise HubError(403, "Unknown or expired upload URL")
            key, oid, size = self._uploads[upload_id]
            if len(body) != size:
                raise HubError(400, f"LFS upload size mismatch for {oid}: announced {size}, received {len(body)}")
            digest = hashlib.sha256(body).hexdigest()
            if digest != oid:
                raise HubError(400, f"LFS upload sha256 mismatch: announced {oid}, received {digest}")
            repo = self.repos.get(key)
            if repo is None:
                raise HubError(404, f"Repository {key} was deleted during the upload")
            repo.lfs_objects[oid] = body
        return _Response(status=200, body=b"", headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_verify(self, *, repo_type: str, repo_id: str, body: bytes, token: str | None, **_: Any) -> _Response:
        payload = json.loads(body)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            data = repo.lfs_objects.get(payload.get("oid", ""))
        if data is None:
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
        if len(data) != payload.get("size"):
            raise HubError(422, f"LFS object {payload.get('oid')} has size {len(data)}, not {payload.get('size')}")
        return _json({"success": True})

    def _commit(
        self,
        *,
        repo_type: str,
        repo_id: str,
        revision: str,
        body: bytes,
        query: dict[str, list[str]],
        token: str | None,
        **_: Any,
    ) -> _Response:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a 'header' line")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "Commit summary (title) is empty")
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            if revision not in repo.refs:
                # Commits go to branches (or refs/pr/N); a bare sha is not a valid target, like on the Hub.
                raise HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")
            base = repo.head(revision)
            parent_commit = header.get("parentCommit")
            if parent_commit and not base.oid.startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files)
            for line in lines[1:]:
                self._apply_operation(repo, files, line)
            author = self.username if token is not None else "anonymous"
            commit = self._new_commit(repo, base.oid, files, title, header.get("description") or "", author)
            pr_url = None
            if create_pr:
                repo.pr_count += 1
                repo.refs[f"refs/pr/{repo.pr_count}"] = commit.oid
                pr_url = f"{self._url(repo)}/discussions/{repo.pr_count}"
            else:
                repo.refs[revision] = commit.oid
        return _json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._url(repo)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    def _apply_operation(self, repo: StoredRepo, files: dict[str, RepoFileEntry], line: dict[str, Any]) -> None:
        """Apply one NDJSON operation line to the working file map, validating it like the Hub does."""
        key, value = line.get("key"), line.get("value") or {}
        path = str(value.get("path", "")).strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise HubError(400, f"Invalid path in commit operation: {value.get('path')!r}")
        if key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
            content = base64.b64decode(value.get("content", ""))
            if len(content) >= LFS_SIZE_THRESHOLD:
                raise HubError(400, f"Your push was rejected: {path} is larger than 10 MiB. Please use git-lfs.")
            if _is_binary(content[:512]):
                raise HubError(400, f"Your push was rejected because it contains binary files ({path}). Use git-lfs.")
            files[path] = RepoFileEntry(content, lfs=False)
        elif key == "lfsFile":
            oid = value.get("oid", "")
            if value.get("algo", "sha256") != "sha256":
                raise HubError(400, f"Unsupported LFS hash algorithm {value.get('algo')!r} for {path}")
            data = repo.lfs_objects.get(oid)
            if data is None:
                raise HubError(422, f"LFS object {oid} for '{path}' was never uploaded to {repo.key}")
            if "size" in value and int(value["size"]) != len(data):
                raise HubError(422, f"LFS object {oid} for '{path}' has size {len(data)}, commit says {value['size']}")
            files[path] = RepoFileEntry(data, lfs=True)
        elif key == "deletedFile":
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", error_code="EntryNotFound")
            del files[path]
        elif key == "deletedFolder":
            inside = [p for p in files if p.startswith(path + "/")]
            if not inside:
                raise HubError(404, f"A file with this name doesn't exist: {path}/", error_code="EntryNotFound")
            for p in inside:
                del files[p]
        else:
            raise HubError(400, f"Unknown commit operation key {key!r} (LocalHub knows file, lfsFile, deleted*)")

    # ------------------------------------------------------------------ downloads

    def _resolve(
        self, *, handler: _Handler, repo_type: str, repo_id: str, revision: str, path: str, token: str | None, **_: Any
    ) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token)
            commit = self._get_commit(repo, revision)
            entry = commit.files.get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache the non-existence of the file for this commit.
            raise HubError(
                404,
                f"Entry not found: {path} at {revision}",
                error_code="EntryNotFound",
                headers={"X-Repo-Commit": commit.oid},
            )
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.git_oid}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            # Like the Hub: 302 to the storage host; the metadata travels on the redirect itself.
            headers["Location"] = f"{self.cdn_endpoint}/repos/{quote(repo.key, safe='')}/lfs/{entry.sha256}"
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
            return _Response(status=302, body=b"", headers=headers)
        headers["Content-Disposition"] = f'inline; filename="{path.rsplit("/", 1)[-1]}"'
        return self._ranged(handler, entry.content, headers, "application/octet-stream")

    def _lfs_download(self, *, handler: _Handler, key: str, oid: str, **_: Any) -> _Response:
        with self._lock:
            repo = self.repos.get(key)
            data = repo.lfs_objects.get(oid) if repo is not None else None
        if data is None:
            raise HubError(404, f"No LFS object {oid} in {key}")
        return self._ranged(handler, data, {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"}, "application/octet-stream")

    @staticmethod
    def _ranged(handler: _Handler, data: bytes, headers: dict[str, str], content_type: str) -> _Response:
        """Serve `data`, honouring a single ``Range: bytes=a-b`` (the client resumes interrupted downloads)."""
        range_header = handler.headers.get("Range")
        if range_header and range_header.startswith("bytes=") and "," not in range_header:
            start_s, _, end_s = range_header[len("bytes=") :].partition("-")
            if start_s:
                start, end = int(start_s), int(end_s) if end_s else len(data) - 1
            else:
                start, end = max(len(data) - int(end_s), 0), len(data) - 1
            if start >= len(data) and len(data) > 0:
                return _Response(status=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            chunk = data[start : end + 1]
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            return _Response(status=206, body=chunk, headers=headers, content_type=content_type)
        return _Response(status=200, body=data, headers=headers, content_type=content_type)


# ---------------------------------------------------------------------- client wiring


def configure_hub_client(
    monkeypatch: pytest.MonkeyPatch, hub: LocalHub, home: Path, token: str | None = TEST_TOKEN
) -> None:
    """Point this process's ``huggingface_hub`` (and transformers, if imported) at `hub`, undone by `monkeypatch`.

    Environment variables alone are not enough in-process: ``huggingface_hub.constants`` reads ``HF_ENDPOINT``,
    ``HF_HUB_DISABLE_XET``, ``HF_HUB_OFFLINE`` and the cache paths once at import, ``hf_hub_url`` formats
    ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (built from the import-time endpoint), the module-level helpers
    (``huggingface_hub.create_repo``, ``upload_folder``...) are bound to an ``HfApi`` built at import, and
    transformers caches its own ``HfApi`` in ``transformers.utils.hub._hf_api``. So this patches each of those, and
    sets the env vars for subprocesses, which read them fresh at import. ``HF_TOKEN`` is read at call time.
    """
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _http

    env = hub.client_env(home, token=token)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_CO_STAGING",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)

    patches: dict[str, Any] = {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HOME": env["HF_HOME"],
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HUGGINGFACE_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_ASSETS_CACHE": env["HF_ASSETS_CACHE"],
        "HUGGINGFACE_ASSETS_CACHE": env["HF_ASSETS_CACHE"],
        "HF_XET_CACHE": env["HF_XET_CACHE"],
        "HF_TOKEN_PATH": env["HF_TOKEN_PATH"],
        "HF_STORED_TOKENS_PATH": str(Path(home) / "stored_tokens"),
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {hub.host},
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(hub.endpoint)})
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        monkeypatch.setattr(transformers_hub, "_hf_api", None)


def _forget_cached_clients() -> None:
    """Drop HfApi objects and pooled connections that still point at a stopped server."""
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        transformers_hub._hf_api = None
    if "huggingface_hub.utils._http" in sys.modules:
        sys.modules["huggingface_hub.utils._http"].close_session()


@pytest.fixture(name="local_hub")
def local_hub_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """A running `LocalHub` with this process's client pointed at it (see `configure_hub_client`).

    Sets ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET=1``, ``HF_TOKEN=TEST_TOKEN``, ``HF_HUB_OFFLINE=0`` and a fresh
    ``HF_HOME`` / ``HF_HUB_CACHE``, so subprocesses started with the inherited environment use it too.
    """
    home = tmp_path_factory.mktemp("local_hub_home")
    hub = LocalHub().start()
    configure_hub_client(monkeypatch, hub, home)
    try:
        yield hub
    finally:
        hub.stop()
        _forget_cached_clients()
