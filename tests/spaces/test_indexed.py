"""The Space on a built index (`hf-vlp demo --index DIR`): 以文搜图 and 以图搜图 through `hf_vlp.index.VLPIndex`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hf_vlp
from hf_vlp.space import galleries, launch
from hf_vlp.space.indexed import IndexGallery, IndexOpenError
from tests.spaces.conftest import build_scene_index


@pytest.fixture(scope="module")
def scene_index(untrained_model_dir, scene_folder, tmp_path_factory):
    return build_scene_index(untrained_model_dir, scene_folder, tmp_path_factory.mktemp("index") / "scenes")


@pytest.fixture
def indexed_space(make_space, scene_index, tmp_path):
    space = make_space(thumbnails=galleries.ThumbnailStore(tmp_path / "thumbs"))
    space.index = IndexGallery.open(scene_index, space)
    return space


def test_text_search_on_the_index_matches_the_gallery_search(indexed_space, scene_folder):
    space = indexed_space
    result = space.search("一个蓝色的三角形", k=5)
    assert result.source is space.index and result.searched == 20 and len(space.index) == 20
    in_memory = space.search("一个蓝色的三角形", space.gallery, k=5)  # same scenes, same model, exact search
    assert [p for p, _ in result.ranked] == [p for p, _ in in_memory.ranked]
    torch.testing.assert_close(
        torch.tensor([s for _, s in result.ranked]), torch.tensor([s for _, s in in_memory.ranked]), atol=1e-4, rtol=0
    )
    items = space.result_items(result.source, result.ranked)
    position = result.ranked[0][0]
    assert items[0][1].endswith(space.gallery.captions[position])  # the caption stored in the index
    assert Path(items[0][0]).parent == space.thumbnails.directory  # a thumbnail made from the stored path


def test_image_search_on_the_index_finds_the_image_itself(indexed_space, scene_folder):
    space = indexed_space
    result = space.search_image(space.gallery.load(13), k=3)
    assert result.source is space.index and result.ranked[0][0] == 13
    assert result.ranked[0][1] == pytest.approx(1.0, abs=1e-4)
    on_gallery = space.search_image(space.gallery.load(13), space.gallery, k=3)  # an upload still searches itself
    assert on_gallery.source is space.gallery and on_gallery.ranked[0][0] == 13


def test_a_missing_index_file_shows_a_grey_tile(indexed_space, scene_folder, tmp_path, monkeypatch):
    space = indexed_space
    result = space.search("一个红色的圆形", k=1)
    monkeypatch.setattr(space.index, "_paths", [str(tmp_path / "gone.png")] * len(space.index))
    space.thumbnails = galleries.ThumbnailStore(tmp_path / "other-thumbs")
    [(path, label)] = space.result_items(result.source, result.ranked)
    assert Path(path).is_file() and label.startswith("1 · ")


def test_index_of_another_model_is_refused(make_space, scene_index, tmp_path):
    torch.manual_seed(123)
    other = tmp_path / "other"
    hf_vlp.create_model("tiny").save_pretrained(other)
    hf_vlp.processor_for_preset("tiny").save_pretrained(other)
    with pytest.raises(launch.SpaceStartError, match="--model"):
        launch.create_space(str(other), gallery="builtin", index=scene_index)
    with pytest.raises(IndexOpenError, match="not found"):
        IndexGallery.open(tmp_path / "nowhere", make_space())
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexOpenError, match="not a finished hf-vlp index"):
        IndexGallery.open(tmp_path / "empty", make_space())


def test_demo_command_refuses_a_bad_index_in_one_line(untrained_model_dir, tmp_path, capsys):
    code = launch.main(["--model", str(untrained_model_dir), "--index", str(tmp_path / "nowhere")], prog="hf-vlp demo")
    assert code == 1
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"hf-vlp demo: index folder not found: {tmp_path / 'nowhere'} (build one with `hf-vlp index build`)"
    )
