"""Fixtures of the Space tests (`hf_vlp.space`): models to serve.

`trained_model_dir` trains the "tiny" preset on the Space's built-in gallery (20 one-shape scenes, five colours x
four shapes) with a plain PyTorch loop, so tests can assert that the right image ranks first. It is self-contained
(never the demo job's model) and takes ~10 s on one core.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hf_vlp.space import VLPSpace, builtin_gallery, load_model, scenes


TRAIN_STEPS = 300
TRAIN_LR = 2e-3


class EncodeCounter:
    """A model proxy that counts encoder calls; every other attribute passes through to the model."""

    def __init__(self, model):
        self._model = model
        self.image_calls = 0
        self.images_encoded = 0
        self.text_calls = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode_image(self, pixel_values, **kwargs):
        self.image_calls += 1
        self.images_encoded += pixel_values.shape[0]
        return self._model.encode_image(pixel_values=pixel_values, **kwargs)

    def encode_text(self, **kwargs):
        self.text_calls += 1
        return self._model.encode_text(**kwargs)


class WithReranker(EncodeCounter):
    """A dual encoder with a stand-in cross encoder that prefers images whose first embedding value is lowest."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = []

    def rerank_scores(self, image, text):
        self.calls.append((image.embeds.shape[0], text.embeds.shape[0]))
        return -100.0 * image.embeds[:, 0]


@pytest.fixture(scope="session")
def untrained(untrained_model_dir):
    model, processor, _ = load_model(str(untrained_model_dir))
    return model, processor


@pytest.fixture
def make_space(untrained):
    """A fresh `VLPSpace` (empty cache) over the untrained model, wrapped by `wrapper` to observe it."""

    def make(gallery=None, wrapper=EncodeCounter, **kwargs):
        model, processor = untrained
        return VLPSpace(wrapper(model), processor, gallery or builtin_gallery(), model_name="tiny", **kwargs)

    return make


def png(path, colour=(200, 30, 30), size=(32, 32)) -> str:
    """A one-colour PNG file at `path`."""
    Image.new("RGB", size, colour).save(path)
    return str(path)


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
def trained_model_dir(tmp_path_factory):
    """The tiny preset trained until every built-in scene and its caption retrieve each other, then saved."""
    import hf_vlp

    shapes = scenes.demo_gallery()
    processor = hf_vlp.processor_for_preset("tiny")
    batch = processor(text=[caption for _, caption in shapes], images=[image for image, _ in shapes])
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
    expected = torch.arange(len(shapes))
    assert torch.equal(out.logits_per_text.argmax(1), expected), "training did not separate the scenes"
    assert torch.equal(out.logits_per_image.argmax(1), expected), "training did not separate the captions"
    path = tmp_path_factory.mktemp("trained") / "model"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_space(trained_model_dir):
    """A `VLPSpace` over the trained model and the built-in gallery (shared: its cache is warm after first use)."""
    model, processor, name = load_model(str(trained_model_dir))
    return VLPSpace(model, processor, builtin_gallery(), model_name=name)


@pytest.fixture(scope="session")
def scene_folder(tmp_path_factory):
    """The built-in scenes as an imagefolder on disk (PNGs + metadata.jsonl), the input of an index build."""
    import json

    folder = tmp_path_factory.mktemp("scenes")
    rows = []
    for position, (image, caption) in enumerate(scenes.demo_gallery()):
        name = f"scene-{position:02d}.png"
        image.save(folder / name)
        rows.append(json.dumps({"file_name": name, "text": caption}, ensure_ascii=False))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def build_scene_index(model_dir, scene_folder, output) -> str:
    """`hf-vlp index build` (its Python API) of the scene folder with `model_dir`: an exact faiss index."""
    from trainers.indexing import build_index

    result = build_index(str(model_dir), str(output), [str(scene_folder)], batch_size=8, progress=False)
    assert result.finished and result.indexed == len(scenes.demo_gallery())
    return str(output)
