"""ONNX export: the graphs equal PyTorch's encode_image / encode_text at several batch sizes and text lengths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_vlp import DualEncoderConfig, DualEncoderModel, FusionEncoderConfig, FusionEncoderForRetrieval
from hf_vlp.export import export_onnx
from tests.trainers.helpers import TEXT, VISION, small_config


ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4


def _dual(similarity: str) -> DualEncoderModel:
    torch.manual_seed(0)
    if similarity == "global":
        return DualEncoderModel(small_config()).eval()
    return DualEncoderModel(
        small_config(similarity="token_wise", token_reduction="learned", image_tokens_kept=4, text_tokens_kept=4)
    ).eval()


def _fusion() -> FusionEncoderForRetrieval:
    torch.manual_seed(0)
    vision = {**FusionEncoderConfig.from_preset("tiny-fusion").vision_config.to_dict(), "image_size": 32}
    return FusionEncoderForRetrieval(FusionEncoderConfig.from_preset("tiny-fusion", vision_config=vision)).eval()


def _sessions(export):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return (
        ort.InferenceSession(str(export.image_encoder), options, providers=["CPUExecutionProvider"]),
        ort.InferenceSession(str(export.text_encoder), options, providers=["CPUExecutionProvider"]),
    )


@pytest.mark.parametrize("kind", ["global", "token_wise", "fusion"])
def test_onnx_encoders_equal_pytorch_at_every_batch_size_and_text_length(kind, tmp_path, small_processor):
    model = _fusion() if kind == "fusion" else _dual(kind)
    export = export_onnx(model, tmp_path / "onnx", small_processor)
    image_session, text_session = _sessions(export)
    token_wise = kind == "token_wise"
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 7, 64):
        pixels = torch.randn(batch, 3, 32, 32, generator=generator)
        with torch.no_grad():
            expected = model.encode_image(pixels)
        got = image_session.run(None, {"pixel_values": pixels.numpy()})
        assert np.abs(got[0] - expected.embeds.numpy()).max() < TOLERANCE
        if token_wise:
            assert np.abs(got[1] - expected.token_embeds.numpy()).max() < TOLERANCE
            assert (got[2] == expected.token_mask.numpy()).all()
        for length in (5, 23):
            ids = torch.randint(5, 7000, (batch, length), generator=generator)
            mask = torch.ones_like(ids)
            mask[: batch // 2, length - 3 :] = 0  # padded rows next to full ones
            with torch.no_grad():
                expected = model.encode_text(input_ids=ids, attention_mask=mask)
            got = text_session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
            assert got[0].shape == (batch, expected.embeds.shape[1])
            assert np.abs(got[0] - expected.embeds.numpy()).max() < TOLERANCE
            assert np.allclose(np.linalg.norm(got[0], axis=1), 1.0, atol=1e-5)
            if token_wise:
                assert np.abs(got[1] - expected.token_embeds.numpy()).max() < TOLERANCE
                assert (got[2] == expected.token_mask.numpy()).all()


def test_export_leaves_the_model_in_its_mode_and_matches_with_dropout(tmp_path, small_processor):
    torch.manual_seed(0)
    text = {**TEXT, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    model = DualEncoderModel(DualEncoderConfig(text_config=text, vision_config=dict(VISION), projection_dim=16)).eval()
    export = export_onnx(model, tmp_path / "onnx", small_processor)
    assert not any(module.training for module in model.modules())  # dropout stays off after the export
    ids = torch.randint(5, 7000, (3, 9))
    with torch.no_grad():
        expected = model.encode_text(input_ids=ids, attention_mask=torch.ones_like(ids)).embeds.numpy()
    got = _sessions(export)[1].run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones((3, 9), np.int64)})[0]
    assert np.abs(got - expected).max() < TOLERANCE


def test_onnx_config_names_what_a_client_feeds_and_gets(tmp_path, small_processor):
    export = export_onnx(_dual("token_wise"), tmp_path / "onnx", small_processor)
    config = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert config == export.config
    image_session, text_session = _sessions(export)
    assert [i.name for i in image_session.get_inputs()] == list(config["image_encoder"]["inputs"])
    assert [i.name for i in text_session.get_inputs()] == list(config["text_encoder"]["inputs"])
    assert [o.name for o in text_session.get_outputs()] == config["text_encoder"]["outputs"]
    assert config["text_encoder"]["outputs"] == ["embeds", "token_embeds", "token_mask"]
    assert config["image_size"] == [32, 32]
    assert config["max_length"] == small_processor.max_length
    assert config["embedding_dim"] == 16
    assert config["image_mean"] == pytest.approx(list(small_processor.image_processor.image_mean))
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()


def test_int8_quantisation_writes_smaller_graphs_that_stay_close(tmp_path, small_processor, tiny_batch):
    model = _dual("global")
    export = export_onnx(model, tmp_path / "onnx", small_processor, quantize="int8")
    quantized = export.config["quantized"]
    folder = tmp_path / "onnx"
    assert (folder / quantized["text_encoder"]).stat().st_size < export.text_encoder.stat().st_size
    session = ort.InferenceSession(str(folder / quantized["image_encoder"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": tiny_batch["pixel_values"].numpy()})[0]
    with torch.no_grad():
        expected = model.encode_image(tiny_batch["pixel_values"]).embeds.numpy()
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() > 0.9  # int8 weights: close to, not equal to, float32


def test_export_cli_names_a_missing_model_in_one_line(tmp_path, capsys):
    from trainers.cli.export import export_main

    assert export_main(["onnx", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hf-vlp export onnx:" in err
