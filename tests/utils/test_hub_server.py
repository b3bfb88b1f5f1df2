"""Tests of `tests.utils.hub_server.LocalHub` driven by the real, unpatched ``huggingface_hub`` client.

They pin down that the local Hub answers what the installed client asks (so push/pull tests elsewhere in the suite
mean something), that history and pinned revisions behave like the Hub, that the token travels only in headers, and
that injected failures surface as exceptions naming what failed while the local folder stays untouched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, create_repo, hf_hub_download, snapshot_download, upload_file
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import get_session

from tests.utils.hub_server import (  # noqa: F401  (local_hub_fixture registers the `local_hub` fixture)
    LFS_SIZE_THRESHOLD,
    TEST_TOKEN,
    LocalHub,
    local_hub_fixture,
)


BIG_SIZE = LFS_SIZE_THRESHOLD + 512 * 1024  # just over the Hub's 10 MiB limit for regular files


def _make_folder(root: Path) -> Path:
    """A small model-like folder: text, JSON, and a >10 MiB binary that must travel through LFS."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("你好, hub\n", encoding="utf-8")
    (root / "config.json").write_text(json.dumps({"hidden_size": 32, "model_type": "bert"}), encoding="utf-8")
    (root / "weights.raw").write_bytes(random.Random(0).randbytes(BIG_SIZE))
    return root


def _folder_state(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file, to prove a failed push left the folder untouched."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_upload_folder_then_snapshot_download_is_byte_identical(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "model")
    api = HfApi()  # no endpoint argument: relies on the fixture's patching of huggingface_hub.constants

    url = api.create_repo("user/roundtrip")
    assert url.repo_id == "user/roundtrip" and str(url).startswith(local_hub.endpoint)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("user/roundtrip")
    assert exc.value.response.status_code == 409
    assert create_repo("user/roundtrip", exist_ok=True).repo_id == "user/roundtrip"  # module-level helper

    info = api.upload_folder(repo_id="user/roundtrip", folder_path=folder, commit_message="first upload")

    repo = local_hub.repo("user/roundtrip")
    head = repo.head()
    assert info.oid == head.oid and head.title == "first upload"
    assert head.files["weights.raw"].lfs and not head.files["notes.txt"].lfs and not head.files["config.json"].lfs
    assert [r.status for r in local_hub.requests_for("lfs_upload")] == [200]

    snapshot = Path(snapshot_download("user/roundtrip", cache_dir=tmp_path / "fresh_cache"))
    for name in ("notes.txt", "config.json", "weights.raw"):
        assert (snapshot / name).read_bytes() == (folder / name).read_bytes(), name
    assert (snapshot / ".gitattributes").is_file()  # the Hub's initial commit
    assert snapshot.name == head.oid

    called = {r.operation for r in local_hub.requests_log}
    assert {"preupload", "lfs_batch", "lfs_upload", "lfs_verify", "commit", "repo_info", "tree", "resolve"} <= called
    assert "lfs_download" in called  # the LFS file came through the 302 to the storage host
    assert local_hub.unknown_requests() == []


def test_token_travels_in_headers_only(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "model")
    create_repo("user/secret-check")
    HfApi().upload_folder(repo_id="user/secret-check", folder_path=folder)
    hf_hub_download("user/secret-check", "weights.raw", cache_dir=tmp_path / "cache")

    assert local_hub.tokens_seen() == {TEST_TOKEN}
    for record in local_hub.requests_log:
        if record.server == "hub":
            assert record.authorization == f"Bearer {TEST_TOKEN}", record
        else:  # storage host: the client must not leak the token to it
            assert record.authorization is None, record
        assert TEST_TOKEN not in record.path and TEST_TOKEN not in json.dumps(record.query)
    assert local_hub.find_stored(TEST_TOKEN) == []
    assert local_hub.find_stored(b"hidden_size") != []  # the search itself works


def test_pinned_revisions_keep_old_bytes(local_hub: LocalHub, tmp_path: Path) -> None:
    create_repo("user/history")
    first = upload_file(path_or_fileobj=b"version one\n", path_in_repo="data/notes.txt", repo_id="user/history")
    upload_file(path_or_fileobj=b"\0weights-v1", path_in_repo="model.safetensors", repo_id="user/history")
    second = upload_file(path_or_fileobj=b"version two\n", path_in_repo="data/notes.txt", repo_id="user/history")
    assert first.oid != second.oid

    cache = tmp_path / "cache"
    old = hf_hub_download("user/history", "data/notes.txt", revision=first.oid, cache_dir=cache)
    assert Path(old).read_bytes() == b"version one\n"
    assert Path(old).parent.parent.name == first.oid  # snapshots/<sha>/data/notes.txt
    short = hf_hub_download("user/history", "data/notes.txt", revision=first.oid[:7], cache_dir=tmp_path / "c2")
    assert Path(short).read_bytes() == b"version one\n"
    new = hf_hub_download("user/history", "data/notes.txt", cache_dir=cache)
    assert Path(new).read_bytes() == b"version two\n"

    # A file absent at the pinned revision is an EntryNotFound, not a stale copy.
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/history", "model.safetensors", revision=first.oid, cache_dir=cache)

    api = HfApi(endpoint=local_hub.endpoint)  # the explicit-endpoint route works too
    commits = api.list_repo_commits("user/history")
    assert [c.commit_id for c in commits][0] == second.oid and len(commits) == 4  # + the initial commit
    assert api.model_info("user/history", revision=first.oid).sha == first.oid
    files = api.list_repo_files("user/history")
    assert files == [".gitattributes", "data/notes.txt", "model.safetensors"]
    assert local_hub.repo("user/history").head().files["model.safetensors"].lfs  # by .gitattributes pattern


def test_unchanged_files_are_not_recommitted_and_deletions_apply(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "b.txt").write_text("b")
    api = HfApi()
    api.create_repo("user/sync")
    api.upload_folder(repo_id="user/sync", folder_path=folder)
    api.upload_folder(repo_id="user/sync", folder_path=folder)  # nothing changed: the client skips the commit
    assert len(local_hub.requests_for("commit")) == 1

    (folder / "b.txt").unlink()
    api.upload_folder(repo_id="user/sync", folder_path=folder, delete_patterns="*.txt")
    assert sorted(local_hub.repo("user/sync").files()) == [".gitattributes", "a.txt"]
    api.delete_file("a.txt", repo_id="user/sync")
    assert sorted(local_hub.repo("user/sync").files()) == [".gitattributes"]


def test_datasets_and_branches(local_hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo("user/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id="user/data", repo_type="dataset")
    api.create_branch("user/data", branch="dev", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"a,b\n3,4\n",
        path_in_repo="train.csv",
        repo_id="user/data",
        repo_type="dataset",
        revision="dev",
    )
    main = hf_hub_download("user/data", "train.csv", repo_type="dataset", cache_dir=tmp_path / "c")
    dev = hf_hub_download("user/data", "train.csv", repo_type="dataset", revision="dev", cache_dir=tmp_path / "c")
    assert Path(main).read_bytes() == b"a,b\n1,2\n" and Path(dev).read_bytes() == b"a,b\n3,4\n"
    assert {b.name for b in api.list_repo_refs("user/data", repo_type="dataset").branches} == {"main", "dev"}


@pytest.mark.parametrize(
    ("path", "size", "sample", "mode"),
    [
        ("notes.txt", 12, b"plain text\n", "regular"),
        ("blob.dat", 12, b"bin\0ary", "lfs"),  # NUL byte in the sample: binary
        ("huge.txt", LFS_SIZE_THRESHOLD, b"text", "lfs"),  # 10 MiB or more
        ("sub/w.safetensors", 12, b"text", "lfs"),  # default .gitattributes pattern
    ],
)
def test_preupload_decides_lfs_like_the_hub(
    local_hub: LocalHub, path: str, size: int, sample: bytes, mode: str
) -> None:
    create_repo("user/modes")
    response = get_session().post(
        f"{local_hub.endpoint}/api/models/user/modes/preupload/main",
        json={
            "files": [{"path": path, "size": size, "sample": base64.b64encode(sample).decode()}],
            "gitIgnore": "*.log",
        },
        headers={"authorization": f"Bearer {TEST_TOKEN}"},
    )
    assert response.status_code == 200
    assert response.json()["files"] == [{"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": None}]


def test_failed_commit_names_the_step_and_leaves_folder_intact(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "model")
    before = _folder_state(folder)
    create_repo("user/fail-commit")
    local_hub.fail_next("commit", status=500, message="storage backend unavailable")

    with pytest.raises(HfHubHTTPError) as exc:
        HfApi().upload_folder(repo_id="user/fail-commit", folder_path=folder)
    message = str(exc.value)
    assert exc.value.response.status_code == 500
    assert "/commit/main" in message and "storage backend unavailable" in message

    assert _folder_state(folder) == before
    assert [c.title for c in local_hub.repo("user/fail-commit").history()] == ["initial commit"]
    HfApi().upload_folder(repo_id="user/fail-commit", folder_path=folder)  # a retry goes through, LFS not re-sent
    assert len(local_hub.repo("user/fail-commit").history()) == 2
    assert len(local_hub.requests_for("lfs_upload")) == 1


def test_rejected_lfs_upload_names_the_file(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "model")
    before = _folder_state(folder)
    create_repo("user/fail-lfs")
    # 4xx on purpose: the client retries 5xx on LFS PUTs with 1-8 s waits (see LocalHub.fail_next).
    local_hub.fail_next("lfs_upload", status=403, message="SignatureDoesNotMatch")

    with pytest.raises(RuntimeError, match="weights.raw") as exc:
        HfApi().upload_folder(repo_id="user/fail-lfs", folder_path=folder)
    assert isinstance(exc.value.__cause__, HfHubHTTPError)
    assert "SignatureDoesNotMatch" in str(exc.value.__cause__)
    assert _folder_state(folder) == before
    assert local_hub.requests_for("commit") == []  # nothing half-committed
    assert len(local_hub.repo("user/fail-lfs").history()) == 1


def test_connection_dropped_mid_commit(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "model")
    before = _folder_state(folder)
    create_repo("user/drop")
    local_hub.fail_next("commit", drop=True)

    with pytest.raises(httpx2.TransportError):
        HfApi().upload_folder(repo_id="user/drop", folder_path=folder)
    assert _folder_state(folder) == before
    assert len(local_hub.repo("user/drop").history()) == 1
    assert local_hub.requests_for("commit")[0].status is None  # never answered


def test_dropped_lfs_upload_is_retried_by_the_client(local_hub: LocalHub, tmp_path: Path) -> None:
    create_repo("user/retry")
    data = random.Random(1).randbytes(2 * 1024 * 1024)
    local_hub.fail_next("lfs_upload", drop=True, match=hashlib.sha256(data).hexdigest())
    upload_file(path_or_fileobj=data, path_in_repo="shard.bin", repo_id="user/retry")  # ~1 s backoff, then OK
    assert [r.status for r in local_hub.requests_for("lfs_upload")] == [None, 200]
    assert local_hub.repo("user/retry").files()["shard.bin"] == data


def test_unknown_endpoint_is_a_loud_501(local_hub: LocalHub) -> None:
    response = get_session().get(f"{local_hub.endpoint}/api/spaces-hardware")
    assert response.status_code == 501
    assert "/api/spaces-hardware" in response.json()["error"]
    with pytest.raises(HfHubHTTPError, match="does not implement GET /api/models"):
        list(HfApi().list_models(limit=1))
    assert len(local_hub.unknown_requests()) == 2


def test_missing_repo_and_require_token_mode(local_hub: LocalHub) -> None:
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("user/does-not-exist")
    assert HfApi().whoami()["name"] == "user"

    with LocalHub(require_token=True) as strict:
        anonymous = HfApi(endpoint=strict.endpoint, token=False)
        with pytest.raises(HfHubHTTPError) as exc:
            anonymous.create_repo("user/x")
        assert exc.value.response.status_code == 401 and "user/x" not in strict.repos
        HfApi(endpoint=strict.endpoint, token=TEST_TOKEN).create_repo("user/x")
        assert "user/x" in strict.repos
        assert anonymous.model_info("user/x").sha == strict.repo("user/x").head().oid  # public reads stay open


def test_transformers_push_to_hub_then_from_pretrained_in_fresh_process(local_hub: LocalHub, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99
    )
    model = transformers.BertModel(config).eval()
    model.push_to_hub("user/tiny")
    stored = local_hub.repo("user/tiny").head().files
    assert stored["model.safetensors"].lfs and {"config.json", "README.md"} <= set(stored)
    assert local_hub.find_stored(TEST_TOKEN) == []

    input_ids = torch.tensor([[1, 5, 7, 42, 98, 2]])
    with torch.no_grad():
        expected = model(input_ids).last_hidden_state
    reloaded = transformers.BertModel.from_pretrained("user/tiny").eval()  # in-process download path
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).last_hidden_state, expected)

    # Fresh interpreter, only env vars: HF_ENDPOINT etc. are read at import there, so no patching is needed.
    out_file = tmp_path / "out.pt"
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import BertModel
        model = BertModel.from_pretrained("user/tiny").eval()
        with torch.no_grad():
            torch.save(model(torch.tensor({input_ids.tolist()})).last_hidden_state, {str(out_file)!r})
        """
    )
    env = {**os.environ, **local_hub.client_env(tmp_path / "subprocess_home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(out_file), expected)
    assert local_hub.unknown_requests() == []


def test_subprocess_upload_with_env_vars_only(local_hub: LocalHub, tmp_path: Path) -> None:
    # What a CLI run as a subprocess sees: the env vars from `client_env` (HF_HUB_DISABLE_XET=1 included) suffice.
    create_repo("user/cli")
    script = "from huggingface_hub import upload_file; upload_file(path_or_fileobj=b'x', path_in_repo='x.txt', repo_id='user/cli')"
    env = {**os.environ, **local_hub.client_env(tmp_path / "subprocess_home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert local_hub.repo("user/cli").files()["x.txt"] == b"x"
    assert local_hub.requests_for("commit")[-1].token == TEST_TOKEN
