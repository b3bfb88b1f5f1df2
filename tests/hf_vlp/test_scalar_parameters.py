"""Learned scalars (`logit_scale`, `logit_bias`): `[1]` parameters in memory (FSDP2's `fully_shard` refuses 0-d ones),
0-d on disk (as hf-vlp saved them before, and as CLIP / Chinese-CLIP store them), loadable from either shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ChineseCLIPConfig, ChineseCLIPModel

from hf_vlp import DualEncoderModel, FusionEncoderConfig, FusionEncoderForPreTraining, FusionEncoderForRetrieval
from hf_vlp.convert import chinese_clip_to_dual_encoder


ROOT = Path(__file__).resolve().parents[2]
# Each family with the values its scalars get in the tests: away from the init values, so a reinit shows.
SCALARS = {"logit_scale": 3.25, "logit_bias": -7.5}


def _fusion_config() -> FusionEncoderConfig:
    vision = {**FusionEncoderConfig.from_preset("tiny-fusion").vision_config.to_dict(), "image_size": 32}
    return FusionEncoderConfig.from_preset("tiny-fusion", vision_config=vision)


def _build(family: str) -> torch.nn.Module:
    from tests.trainers.helpers import small_config

    torch.manual_seed(0)
    if family == "dual":
        return DualEncoderModel(small_config())
    if family == "dual-sigmoid":
        return DualEncoderModel(small_config(contrastive_loss="sigmoid"))
    if family == "fusion-pretraining":
        return FusionEncoderForPreTraining(_fusion_config())
    return FusionEncoderForRetrieval(_fusion_config())


FAMILIES = ["dual", "dual-sigmoid", "fusion-pretraining", "fusion-retrieval"]


def _with_scalars(model: torch.nn.Module) -> dict[str, float]:
    """Set the model's learned scalars to `SCALARS`; return those it has."""
    present = {name: value for name, value in SCALARS.items() if getattr(model, name, None) is not None}
    with torch.no_grad():
        for name, value in present.items():
            getattr(model, name).fill_(value)
    return present


@pytest.mark.parametrize("family", FAMILIES)
def test_no_parameter_is_0d_so_fully_shard_accepts_every_family(family):
    model = _build(family)
    assert [name for name, param in model.named_parameters() if param.dim() == 0] == []
    assert model.logit_scale.shape == (1,)
    assert model.get_logit_scale().shape == ()  # what the losses, outputs and zero-shot see: 0-d, as CLIP's


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_scalars_are_0d_and_load_back(tmp_path, family):
    model = _build(family)
    values = _with_scalars(model)
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert {name: stored[name].shape for name in values} == {name: torch.Size([]) for name in values}
    assert {name: stored[name].item() for name in values} == values

    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["mismatched_keys"] and not info["missing_keys"]
    assert {name: getattr(reloaded, name).tolist() for name in values} == {name: [v] for name, v in values.items()}


@pytest.mark.parametrize("stored_shape", [(), (1,)], ids=["0d-as-before", "1d"])
@pytest.mark.parametrize("family", ["dual-sigmoid", "fusion-pretraining"])
def test_checkpoint_of_either_shape_loads_with_its_value(tmp_path, family, stored_shape):
    """A folder written by hf-vlp before the scalars became `[1]` (0-d in model.safetensors), or by hand with `[1]`."""
    model = _build(family)
    values = _with_scalars(model)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for name in values:
        state[name] = state[name].reshape(stored_shape)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})

    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["mismatched_keys"] and not info["missing_keys"], info
    for name, value in values.items():
        assert getattr(reloaded, name).shape == (1,) and getattr(reloaded, name).item() == value
    # torch's own loading takes the same state dict, as the Trainer's resume does (not strict: the file leaves out
    # tied weights)
    fresh = _build(family)
    assert not fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False).unexpected_keys
    assert {name: getattr(fresh, name).item() for name in values} == values


def test_converted_chinese_clip_keeps_the_value_and_maps_back(tmp_path):
    source = ChineseCLIPModel(
        ChineseCLIPConfig(
            text_config={
                "vocab_size": 99,
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "intermediate_size": 37,
            },
            vision_config={
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "intermediate_size": 37,
                "image_size": 32,
                "patch_size": 16,
            },
            projection_dim=16,
        )
    )
    with torch.no_grad():
        source.logit_scale.fill_(SCALARS["logit_scale"])
    converted = chinese_clip_to_dual_encoder(source)
    assert converted.logit_scale.tolist() == [SCALARS["logit_scale"]]
    converted.save_pretrained(tmp_path)
    # the saved weights still load into transformers' ChineseCLIPModel, whose shape check is strict
    back, info = ChineseCLIPModel.from_pretrained(tmp_path, config=source.config, output_loading_info=True)
    assert not info["mismatched_keys"]
    assert back.logit_scale.shape == () and back.logit_scale.item() == SCALARS["logit_scale"]


@pytest.mark.slow
def test_fully_shard_trains_and_saves_every_family(tmp_path):
    """FSDP2 on one CPU process (gloo): `fully_shard` accepts each family, a step updates the scalars, and the full
    state dict FSDP2 gathers is saved by `save_pretrained` with 0-d scalars that load back with the trained value."""
    script = textwrap.dedent(
        f"""
        import json, sys, torch, torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from safetensors.torch import load_file
        from tests.hf_vlp.test_scalar_parameters import FAMILIES, _build

        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,))
        result = {{}}
        for family in FAMILIES:
            model = _build(family).train()
            model_class = type(model)
            fully_shard(model, mesh=mesh)
            generator = torch.Generator().manual_seed(0)
            batch = dict(
                input_ids=torch.randint(10, 90, (4, 8), generator=generator),
                attention_mask=torch.ones(4, 8, dtype=torch.long),
                pixel_values=torch.randn(4, 3, 32, 32, generator=generator),
            )
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            before = model.logit_scale.full_tensor().item()
            model(**batch, return_loss=True).loss.backward()
            optimizer.step()
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
            folder = "{tmp_path}/" + family
            model.save_pretrained(folder, state_dict=state)
            stored = load_file(folder + "/model.safetensors")
            auto_map = json.load(open(folder + "/config.json"))["auto_map"]
            reloaded = model_class.from_pretrained(folder)
            result[family] = dict(
                moved=stored["logit_scale"].item() != before,
                stored_shape=list(stored["logit_scale"].shape),
                reloaded=reloaded.logit_scale.tolist() == [stored["logit_scale"].item()],
                auto_map=sorted(set(target.split(".")[0] for target in auto_map.values())),
            )
        print("RESULT " + json.dumps(result))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    for family in FAMILIES:
        assert result[family]["moved"] and result[family]["reloaded"], (family, result[family])
        assert result[family]["stored_shape"] == [], (family, result[family])
        module = "configuration_dual_encoder" if family.startswith("dual") else "configuration_fusion_encoder"
        assert result[family]["auto_map"] == sorted({module, module.replace("configuration", "modeling")}), family
