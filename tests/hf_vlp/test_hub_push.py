"""Publishing to the Hub (a local fake Hub): code + auto_map, cards, fresh-process loads, failures, token hygiene."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from hf_vlp import DualEncoderModel, VLPImageProcessor, VLPProcessor
from hf_vlp.hub import HubPushError, push_model_folder
from tests.utils.hub_server import (  # noqa: F401  (local_hub_fixture registers the `local_hub` fixture)
    TEST_TOKEN,
    LocalHub,
    local_hub_fixture,
)
from tests.utils.isolation import run_isolated


CAPTIONS = ["一个红色的圆形", "两个蓝色的三角形"]
RESULTS = {"eval_i2t_R@1": 50.0, "eval_t2i_R@1": 25.0, "eval_mean_recall": 61.25, "eval_loss": 0.7, "epoch": 1.0}


@pytest.fixture
def processor(tiny_processor) -> VLPProcessor:
    return VLPProcessor(VLPImageProcessor(size={"height": 32, "width": 32}), tiny_processor.tokenizer)


@pytest.fixture
def model(tiny_dual_config) -> DualEncoderModel:
    torch.manual_seed(0)
    return DualEncoderModel(tiny_dual_config).eval()


def _save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "all_results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    return folder


def _folder_state(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file: a failed push must leave the folder exactly as it was."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _probe(processor, folder: Path):
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    image.save(folder / "probe.png")
    return processor(text=CAPTIONS, images=[image, image])


def test_transformers_push_to_hub_writes_code_and_auto_map(local_hub: LocalHub, model):
    model.push_to_hub("user/via-transformers")
    files = local_hub.repo("user/via-transformers").files()
    config = json.loads(files["config.json"])
    assert config["auto_map"]["AutoModel"] == "modeling_dual_encoder.DualEncoderModel"
    for name in {ref.split(".")[0] for ref in config["auto_map"].values()} | {"contrastive", "towers"}:
        assert f"{name}.py" in files
    assert local_hub.repo("user/via-transformers").head().files["model.safetensors"].lfs


def test_push_model_folder_publishes_a_loadable_model_with_its_card(local_hub: LocalHub, model, processor, tmp_path):
    folder = _save(model, processor, tmp_path / "model")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "model.safetensors").write_bytes(b"old")
    (folder / "training_args.bin").write_bytes(b"\x80pickle")
    before = _folder_state(folder)

    info = push_model_folder(folder, "user/tiny-dual", commit_message="first release")
    assert _folder_state(folder) == before  # the card went up from memory
    repo = local_hub.repo("user/tiny-dual")
    assert [c.title for c in repo.history()] == ["first release", "initial commit"]
    assert info.oid == repo.head().oid
    files = repo.files()
    assert {"config.json", "model.safetensors", "modeling_dual_encoder.py", "processor_config.json"} <= set(files)
    assert "training_args.bin" not in files and not any(path.startswith("checkpoint-") for path in files)
    assert repo.head().files["model.safetensors"].lfs

    card = ModelCard(files["README.md"].decode("utf-8"))
    assert card.data.library_name == "transformers" and "custom_code" in card.data.tags
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "i2t_R@1": 50.0,
        "t2i_R@1": 25.0,
        "mean_recall": 61.25,
    }
    assert 'repo = "user/tiny-dual"' in card.text


@pytest.mark.slow
def test_pushed_model_loads_without_hf_vlp_in_a_fresh_process(local_hub: LocalHub, model, processor, tmp_path):
    folder = _save(model, processor, tmp_path / "model")
    push_model_folder(folder, "user/tiny-dual")
    batch = _probe(processor, tmp_path)
    with torch.no_grad():
        expected = model(**batch)
    result = run_isolated(
        f"""
        import json, os, torch
        from PIL import Image
        from huggingface_hub import snapshot_download
        from transformers import AutoModel, AutoProcessor
        local = snapshot_download("user/tiny-dual")
        model = AutoModel.from_pretrained("user/tiny-dual", trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained("user/tiny-dual", trust_remote_code=True)
        image = Image.open({str(tmp_path / "probe.png")!r})
        with torch.no_grad():
            out = model(**processor(text={CAPTIONS!r}, images=[image, image]))
        print(json.dumps({{
            "files": sorted(os.listdir(local)),
            "module": type(model).__module__,
            "text": out.text_embeds.tolist(),
            "image": out.image_embeds.tolist(),
            "logits": out.logits_per_image.tolist(),
        }}))
        """,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "0"},
    )
    assert "README.md" in result["files"] and "model.safetensors" in result["files"]
    assert result["module"].startswith("transformers_modules.")
    for key, tensor in (("text", expected.text_embeds), ("image", expected.image_embeds)):
        assert torch.allclose(torch.tensor(result[key]), tensor, atol=1e-5)
    assert torch.allclose(torch.tensor(result["logits"]), expected.logits_per_image, atol=1e-4)
    assert local_hub.unknown_requests() == []


@pytest.mark.slow
def test_pushed_adapter_loads_on_the_remote_code_base_in_a_fresh_process(
    local_hub: LocalHub, model, processor, tmp_path
):
    pytest.importorskip("peft")
    from hf_vlp.adapters import default_lora_config, prepare_peft_model

    push_model_folder(_save(model, processor, tmp_path / "base"), "user/tiny-base")
    peft_model = prepare_peft_model(model, default_lora_config(model, dropout=0.0))
    with torch.no_grad():  # a trained adapter, without the cost of training: perturb every adapter weight
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    peft_model.save_pretrained(tmp_path / "adapter")  # records a local base path; the push points it at the Hub
    push_model_folder(tmp_path / "adapter", "user/tiny-lora", base_model="user/tiny-base")

    files = local_hub.repo("user/tiny-lora").files()
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "user/tiny-base"
    card = ModelCard(files["README.md"].decode("utf-8"))
    assert card.data.library_name == "peft" and card.data.base_model == "user/tiny-base"

    batch = _probe(processor, tmp_path)
    with torch.no_grad():
        expected = peft_model(**batch).logits_per_image
    result = run_isolated(
        f"""
        import json, torch
        from PIL import Image
        from peft import PeftModel
        from transformers import AutoModel, AutoProcessor
        base = AutoModel.from_pretrained("user/tiny-base", trust_remote_code=True)
        model = PeftModel.from_pretrained(base, "user/tiny-lora").eval()
        processor = AutoProcessor.from_pretrained("user/tiny-base", trust_remote_code=True)
        image = Image.open({str(tmp_path / "probe.png")!r})
        with torch.no_grad():
            out = model(**processor(text={CAPTIONS!r}, images=[image, image]))
        print(json.dumps({{"logits": out.logits_per_image.tolist()}}))
        """,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "0"},
    )
    assert torch.allclose(torch.tensor(result["logits"]), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("operation", "fault", "step"),
    [
        ("commit", {"status": 500, "message": "storage backend unavailable"}, "commit"),
        ("commit", {"drop": True}, "commit"),  # connection reset mid-commit: an interrupted push
        # 4xx on purpose: the client retries 5xx on LFS PUTs with 1-8 s waits (see LocalHub.fail_next).
        ("lfs_upload", {"status": 403, "message": "SignatureDoesNotMatch"}, "upload"),
        ("create_repo", {"status": 403, "message": "You don't have the rights"}, "create_repo"),
    ],
)
def test_failed_push_names_repo_and_step_and_leaves_the_folder_intact(
    local_hub: LocalHub, model, processor, tmp_path, operation, fault, step
):
    folder = _save(model, processor, tmp_path / "model")
    before = _folder_state(folder)
    local_hub.fail_next(operation, **fault)
    with pytest.raises(HubPushError) as exc:
        push_model_folder(folder, "user/broken")
    assert exc.value.step == step and exc.value.repo_id == "user/broken"
    assert f"'{step}'" in str(exc.value) and "user/broken" in str(exc.value)
    if "message" in fault:
        assert fault["message"] in str(exc.value)
    assert _folder_state(folder) == before
    if "user/broken" in local_hub.repos:
        assert [c.title for c in local_hub.repo("user/broken").history()] == ["initial commit"]


def test_invalid_folders_fail_before_any_request(local_hub: LocalHub, model, processor, tmp_path):
    folder = _save(model, processor, tmp_path / "model")
    (folder / "towers.py").unlink()
    with pytest.raises(HubPushError, match="towers.py") as exc:
        push_model_folder(folder, "user/x")
    assert exc.value.step == "validate"

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}", encoding="utf-8")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(HubPushError, match="safetensors"):
        push_model_folder(pickled, "user/x")
    assert local_hub.requests_log == []


def test_token_is_never_stored_or_logged(local_hub: LocalHub, model, processor, tmp_path, caplog, capfd):
    folder = _save(model, processor, tmp_path / "model")
    # A careless caller: the training arguments carry the token too (transformers' `hub_token`).
    card_kwargs = {"training_args": {"learning_rate": 1e-4, "hub_token": TEST_TOKEN}}
    with caplog.at_level(logging.DEBUG):
        push_model_folder(folder, "user/secret", card_kwargs=card_kwargs)
        push_model_folder(folder, "user/secret-explicit", token=TEST_TOKEN, revision="dev", model_card=True)
    assert local_hub.tokens_seen() == {TEST_TOKEN}  # it was used, in the Authorization header
    assert local_hub.find_stored(TEST_TOKEN) == []
    assert TEST_TOKEN not in caplog.text
    printed = capfd.readouterr()  # transformers' own handler writes to stderr without propagating to caplog
    assert TEST_TOKEN not in printed.out + printed.err
    assert "learning_rate" in local_hub.repo("user/secret").files()["README.md"].decode()
    assert "README.md" in local_hub.repo("user/secret-explicit").files("dev")
