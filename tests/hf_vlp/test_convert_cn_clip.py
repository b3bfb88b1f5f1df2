"""Chinese-CLIP training checkpoints -> DualEncoderModel, checked against the reference `cn_clip` package.

The reference models are randomly initialised `cn_clip.clip.model.CLIP`s saved the way Chinese-CLIP's training
script saves them (`{"epoch", "step", "name", "state_dict", "optimizer"}`, DDP `module.` prefixes).
"""

from __future__ import annotations

import random

import pytest
import torch

from hf_vlp import DualEncoderModel
from hf_vlp.cn_clip_assets import cn_clip_model_config, cn_clip_model_names
from hf_vlp.convert import (
    ConversionError,
    chinese_clip_checkpoint_config,
    chinese_clip_processor,
    convert_chinese_clip_checkpoint,
    load_chinese_clip_state_dict,
    map_chinese_clip_state_dict,
    save_chinese_clip_checkpoint,
)
from tests.hf_vlp.cn_clip_reference import import_cn_clip


# Every test here compares with (or reads files of) the reference package; the parametrisations list its configs.
pytest.importorskip("cn_clip", reason="cn-clip is not installed (pip install --no-deps cn-clip==1.6.0)")

BASE_TEXT = "RoBERTa-wwm-ext-base-chinese"


def _reference(vision: str, text: str, device: str = "cpu", **overrides):
    """A randomly initialised cn-clip `CLIP` of `vision@text` (architecture JSONs of the installed package)."""
    import_cn_clip()
    from cn_clip.clip.model import CLIP

    info = {**cn_clip_model_config(vision), **cn_clip_model_config(text), **overrides}
    torch.manual_seed(0)
    with torch.device(device):
        return CLIP(**info).eval()


def _save_like_trainer(model: torch.nn.Module, path) -> None:
    state = {"module." + key: value for key, value in model.state_dict().items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 5e-5, "params": list(range(3))}]}
    torch.save({"epoch": 3, "step": 1200, "name": "muge_finetune", "state_dict": state, "optimizer": optimizer}, path)


def _reduced(vision: str, text: str, layers: int = 1):
    """Reference and our config at `layers` vision and text layers, every width real."""
    reference = _reference(vision, text, vision_layers=layers, text_num_hidden_layers=layers)
    config = chinese_clip_checkpoint_config(vision, text)
    config.vision_config.num_hidden_layers = layers
    config.text_config.num_hidden_layers = layers
    return reference, config


def _assert_same_outputs(reference, model, size: int, texts: list[str], atol: float = 1e-5) -> None:
    cn_clip = import_cn_clip()
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, size, size)
    tokens = cn_clip.tokenize(texts)
    batch = chinese_clip_processor(size)(text=texts, padding="max_length")
    assert torch.equal(batch["input_ids"], tokens)
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixels).pooler_output, reference.encode_image(pixels).float(), rtol=0, atol=atol
        )
        torch.testing.assert_close(
            model.get_text_features(**batch).pooler_output, reference.encode_text(tokens).float(), rtol=0, atol=atol
        )
        logits_per_image, logits_per_text = reference.get_similarity(pixels, tokens)
        output = model(**batch, pixel_values=pixels)
        torch.testing.assert_close(output.logits_per_image, logits_per_image.float(), rtol=0, atol=1e-4)
        torch.testing.assert_close(output.logits_per_text, logits_per_text.float(), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------ tokenizer
_HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你下小猫狗车树山水天空照片红色蓝绿黄白黑海边城市街道"
_PIECES = [
    "Hello",
    "WORLD",
    "iPhone15",
    "CLIP",
    "café",
    "naïve",
    "ＡＢＣ",
    "１２３",
    "2024年",
    "3.14",
    "100%",
    "😀",
    "🐱",
    "👍🏻",
    "한국어",
    "ひらがな",
    "カタカナ",
    "Ελλάδα",
    "，",
    "。",
    "！",
    "？",
    "“",
    "”",
    "《",
    "》",
    "(",
    ")",
    "-",
    "#",
    "@",
    "~",
    " ",
    "\t",
    "unbelievablyextraordinarilylongwordthatwordpiecesplits",
]


def _sentences(count: int = 240) -> list[str]:
    """Deterministic Chinese sentences mixing scripts, digits, emoji and punctuation; every 8th one is long
    enough (> 52 tokens) to be truncated."""
    rng = random.Random(13)
    sentences = []
    for index in range(count):
        length = rng.randint(60, 90) if index % 8 == 0 else rng.randint(3, 30)
        parts = [rng.choice(_HANZI) if rng.random() < 0.6 else rng.choice(_PIECES) for _ in range(length)]
        sentences.append("".join(parts))
    return sentences


def test_processor_tokenises_like_cn_clip():
    cn_clip = import_cn_clip()
    sentences = _sentences()
    reference = cn_clip.tokenize(sentences)
    ours = chinese_clip_processor(224)(text=sentences, padding="max_length")["input_ids"]
    assert sum(len(cn_clip._tokenizer.tokenize(s)) > 50 for s in sentences) >= 20  # truncation is exercised
    assert (reference == 100).any()  # [UNK] (emoji) is exercised
    for index, sentence in enumerate(sentences):
        assert ours[index].tolist() == reference[index].tolist(), sentence


def test_bert_base_chinese_tokenizer_has_cn_clips_vocabulary():
    from hf_vlp import build_chinese_tokenizer

    cn_clip = import_cn_clip()
    tokenizer = build_chinese_tokenizer("bert-base-chinese")
    assert len(tokenizer) == 21128 and tokenizer.get_vocab() == dict(cn_clip._tokenizer.vocab)
    assert len(build_chinese_tokenizer()) < 21128  # the GB2312 builtin stays the default
    with pytest.raises(ValueError, match="bert-base-chinese"):
        build_chinese_tokenizer("bert-base-uncased")


def test_missing_cn_clip_is_one_message_naming_the_install(monkeypatch):
    from hf_vlp import build_chinese_tokenizer, cn_clip_assets

    monkeypatch.setattr(cn_clip_assets, "_installed_root", lambda: None)
    for call in (
        lambda: build_chinese_tokenizer("bert-base-chinese"),
        lambda: chinese_clip_checkpoint_config("a", "b"),
    ):
        with pytest.raises(cn_clip_assets.CnClipNotInstalledError, match="pip install --no-deps cn-clip"):
            call()


# ------------------------------------------------------------------------------------------------ architectures
@pytest.mark.parametrize("vision", [name for name in cn_clip_model_names()[0] if name.startswith("ViT")])
@pytest.mark.parametrize("text", cn_clip_model_names()[1])
def test_every_architecture_maps_one_to_one_at_full_size(vision, text):
    """Full-size names and shapes, on the meta device (no memory, no compute)."""
    reference = _reference(vision, text, device="meta")
    config = chinese_clip_checkpoint_config(vision, text)
    mapped = map_chinese_clip_state_dict(reference.state_dict(), config)
    assert all(value.is_meta for value in mapped.values())
    assert config.vision_config.image_size == cn_clip_model_config(vision)["image_resolution"]


@pytest.mark.parametrize(
    ("vision", "text"),
    [
        ("ViT-B-32", "RBT3-chinese"),
        ("ViT-L-14", BASE_TEXT),
        ("ViT-L-14-336", "RoBERTa-wwm-ext-large-chinese"),
        ("ViT-H-14", "RoBERTa-wwm-ext-large-chinese"),
    ],
)
def test_reduced_depth_conversion_matches_reference(vision, text, tmp_path):
    reference, config = _reduced(vision, text)
    _save_like_trainer(reference, tmp_path / "epoch_latest.pt")
    state = map_chinese_clip_state_dict(load_chinese_clip_state_dict(tmp_path / "epoch_latest.pt"), config)
    model = DualEncoderModel.from_pretrained(None, config=config, state_dict=state).eval()
    _assert_same_outputs(reference, model, config.vision_config.image_size, ["一只猫", "海边的城市，2024年"])


def test_converted_model_saves_back_to_the_same_chinese_clip_checkpoint(tmp_path):
    reference, config = _reduced("ViT-B-16", "RBT3-chinese", layers=2)
    state = map_chinese_clip_state_dict(reference.state_dict(), config)
    model = DualEncoderModel.from_pretrained(None, config=config, state_dict=state)
    save_chinese_clip_checkpoint(model, tmp_path / "epoch_latest.pt")
    saved = torch.load(tmp_path / "epoch_latest.pt", weights_only=True)
    assert set(saved) == {"epoch", "step", "name", "state_dict"}
    original = {"module." + key: value for key, value in reference.state_dict().items() if "bert.pooler" not in key}
    assert saved["state_dict"].keys() == original.keys()
    assert all(torch.equal(saved["state_dict"][key], value) for key, value in original.items())


def test_fp16_checkpoint_converts_to_float32(tmp_path):
    import_cn_clip()
    from cn_clip.clip.model import convert_weights

    reference, config = _reduced("ViT-B-16", "RBT3-chinese")
    convert_weights(reference)  # what `--precision fp16` training saves: fp16 linears/BERT, fp32 layer norms
    _save_like_trainer(reference, tmp_path / "epoch1.pt")
    state = map_chinese_clip_state_dict(load_chinese_clip_state_dict(tmp_path / "epoch1.pt"), config)
    model = DualEncoderModel.from_pretrained(None, config=config, state_dict={k: v.float() for k, v in state.items()})
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    _assert_same_outputs(reference.float(), model.eval(), 224, ["红色的汽车"])


@pytest.mark.slow
def test_real_size_vit_b16_conversion_matches_reference(tmp_path):
    """ViT-B-16 + RoBERTa-wwm-ext-base at full size and resolution: embeddings within 1e-5, logits equal."""
    from transformers import AutoModel, AutoProcessor

    from trainers.cli import main

    reference = _reference("ViT-B-16", BASE_TEXT)
    _save_like_trainer(reference, tmp_path / "epoch_latest.pt")
    argv = ["convert", str(tmp_path / "epoch_latest.pt"), str(tmp_path / "out"), "--vision-model", "ViT-B-16"]
    assert main([*argv, "--text-model", BASE_TEXT]) == 0
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert len(processor.tokenizer) == 21128 and processor.max_length == 52
    assert processor.image_processor.size["height"] == 224
    texts = ["一只橘猫趴在窗台上晒太阳", "Two dogs 在海边奔跑🐶，" + "浪花" * 30]
    _assert_same_outputs(reference, model, 224, texts)


# ------------------------------------------------------------------------------------------------ refusals
def test_resnet_is_refused_in_one_line():
    with pytest.raises(ConversionError, match="RN50 is a ResNet") as error:
        chinese_clip_checkpoint_config("RN50", "RBT3-chinese")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("vision", "text", "flag"), [("ViT-B-99", BASE_TEXT, "--vision-model"), ("ViT-B-16", "GPT", "--text-model")]
)
def test_unknown_model_names_are_refused(vision, text, flag):
    with pytest.raises(ConversionError, match=flag):
        chinese_clip_checkpoint_config(vision, text)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    reference, _ = _reduced("ViT-B-32", "RBT3-chinese")
    _save_like_trainer(reference, tmp_path / "epoch1.pt")
    with pytest.raises(ConversionError, match=r"--text-model\): missing"):
        convert_chinese_clip_checkpoint(tmp_path / "epoch1.pt", tmp_path / "out", "ViT-B-32", "RBT3-chinese")
    assert not (tmp_path / "out").exists()


def test_non_checkpoint_file_is_refused(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="not a loadable PyTorch checkpoint"):
        load_chinese_clip_state_dict(tmp_path / "notes.pt")
    with pytest.raises(ConversionError, match="does not exist"):
        load_chinese_clip_state_dict(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs --vision-model and --text-model"),
        (["--vision-model", "RN50", "--text-model", "RBT3-chinese"], "RN50 is a ResNet"),
        (["--vision-model", "ViT-B-32", "--text-model", "RBT3-chinese"], "does not match the named"),
    ],
)
def test_convert_command_refuses_in_one_line(extra, message, tmp_path, capsys):
    from trainers.cli import main

    reference, _ = _reduced("ViT-B-32", "RBT3-chinese")
    _save_like_trainer(reference, tmp_path / "epoch1.pt")
    assert main(["convert", str(tmp_path / "epoch1.pt"), str(tmp_path / "out"), *extra]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
