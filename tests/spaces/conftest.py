"""Fixtures of the Space tests: the app module (loaded by path, as the CLI and Spaces do) and models to serve.

`trained_model_dir` trains the "tiny" preset on the Space's built-in gallery (20 one-shape scenes, five colours x
four shapes) with a plain PyTorch loop, so tests can assert that the right image ranks first. It is self-contained
(never the demo job's model) and takes ~10 s on one core.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


APP_PATH = Path(__file__).resolve().parents[2] / "spaces" / "app.py"
TRAIN_STEPS = 300
TRAIN_LR = 2e-3


def load_app_module():
    """`spaces/app.py` as a module named `hf_vlp_space_app` (there is no `spaces` package to import it from)."""
    name = "hf_vlp_space_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, APP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def app():
    return load_app_module()


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory):
    """A randomly initialised tiny model and its processor, saved: enough for everything but semantics."""
    import hf_vlp

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "model"
    hf_vlp.create_model("tiny").save_pretrained(path)
    hf_vlp.processor_for_preset("tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_model_dir(app, tmp_path_factory):
    """The tiny preset trained until every built-in scene and its caption retrieve each other, then saved."""
    import hf_vlp

    scenes = app.demo_gallery.demo_gallery()
    processor = hf_vlp.processor_for_preset("tiny")
    batch = processor(text=[caption for _, caption in scenes], images=[image for image, _ in scenes])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core each for the browser and the server later; and faster on a busy machine
    try:
        torch.manual_seed(0)
        model = hf_vlp.create_model("tiny")
        optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / TRAIN_STEPS)
        model.train()
        for _ in range(TRAIN_STEPS):
            loss = model(**batch, return_loss=True).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            out = model(**batch)
    finally:
        torch.set_num_threads(threads)
    expected = torch.arange(len(scenes))
    assert torch.equal(out.logits_per_text.argmax(1), expected), "training did not separate the scenes"
    assert torch.equal(out.logits_per_image.argmax(1), expected), "training did not separate the captions"
    path = tmp_path_factory.mktemp("trained") / "model"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_space(app, trained_model_dir):
    """A `VLPSpace` over the trained model and the built-in gallery (shared: its cache is warm after first use)."""
    model, processor, name = app.load_model(str(trained_model_dir))
    return app.VLPSpace(model, processor, app.builtin_gallery(), model_name=name)
