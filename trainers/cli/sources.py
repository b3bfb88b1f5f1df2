"""Data-source resolution for the jobs: which flags name the training / evaluation data, and the built-in demo set.

Sources, in order: `--train-shards` (streaming), `--train-dir` (image folder), `--train-file` (caption file,
Parquet, Chinese-CLIP TSV), `--dataset` (a `datasets` name or saved folder); the same for evaluation. `--demo`
fills the missing ones with the rendered demo set.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


__all__ = ["build_eval_sets", "build_train_dataset", "demo_data_dir", "preset_image_size", "resolve_demo"]

from .checks import data_error
from .errors import RUNTIME, UserError
from .parsing import flag_values


logger = logging.getLogger(__name__)


def demo_data_dir(data_args: Any, image_size: int = 64, seed: int = 0, domain: str = "plain") -> Path:
    """The built-in demo set in `domain`'s look, rendered on first use into a cache folder.

    Rendering is atomic (a staging folder renamed into place), so concurrent runs agree. The scene split depends
    on `seed` only, so every domain holds the same train / eval scenes: fine-tuning on the "night" look changes
    the look, never leaks evaluation scenes.
    """
    from trainers.data import generate_demo_dataset

    if data_args.demo_dir:
        root = Path(data_args.demo_dir)
    else:
        cache = Path(os.environ.get("HF_VLP_CACHE", Path.home() / ".cache" / "hf_vlp"))
        suffix = "" if domain == "plain" else f"-{domain}"
        root = cache / f"demo-{data_args.demo_num_train}-{data_args.demo_num_eval}-{image_size}px-seed{seed}{suffix}"
    if (root / "eval" / "metadata.jsonl").is_file() and (root / "train" / "metadata.jsonl").is_file():
        return root
    logger.info("Rendering the %s demo set into %s", domain, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    generate_demo_dataset(
        staging,
        num_train=data_args.demo_num_train,
        num_eval=data_args.demo_num_eval,
        image_size=image_size,
        seed=seed,
        domain=domain,
    )
    try:
        staging.rename(root)
    except OSError:  # another process finished first (or the folder exists partially): keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        if not (root / "eval" / "metadata.jsonl").is_file():
            raise
    return root


def resolve_demo(data_args: Any, image_size: int, seed: int, domain: str = "plain") -> bool:
    """With `--demo`, point missing train / eval sources at the demo set of `domain`; True when eval is the demo's."""
    if not data_args.demo:
        return False
    has_train = data_args.train_dir or data_args.train_file or data_args.dataset or data_args.train_shards
    has_eval = data_args.eval_dir or data_args.eval_file or (data_args.dataset and data_args.eval_split)
    if has_train and has_eval:
        return False
    root = demo_data_dir(data_args, image_size=image_size, seed=seed, domain=domain)
    if not has_train:
        data_args.train_dir = str(root / "train")
    if not has_eval:
        data_args.eval_dir = str(root / "eval")
    return not has_eval


def preset_image_size(model_args: Any) -> int:
    """The image size the demo set is rendered at: the processor resizes anyway, so this only saves work."""
    if model_args.preset:
        from hf_vlp import preset_info

        return preset_info(model_args.preset)["processor"]["image_size"]
    return 64


def _chinese_clip_texts(images_tsv: str) -> str:
    texts = images_tsv[: -len("_imgs.tsv")] + "_texts.jsonl" if images_tsv.endswith("_imgs.tsv") else None
    if texts is None or not os.path.isfile(texts):
        raise UserError(f"a Chinese-CLIP image TSV needs its <split>_texts.jsonl next to it: {images_tsv}", RUNTIME)
    return texts


_COLUMNS = ("image_column", "text_column", "id_column")


def _read_file_records(path: str, data_args: Any, extra_columns: Sequence[str] = ()) -> list[dict]:
    from trainers.data import read_caption_file, read_chinese_clip, read_parquet

    if path.endswith(".tsv"):
        return read_chinese_clip(path, _chinese_clip_texts(path))
    if path.endswith(".parquet"):
        return list(read_parquet(path, **flag_values(data_args, *_COLUMNS)))
    columns = flag_values(data_args, *_COLUMNS, "captions_column")
    return list(read_caption_file(path, extra_columns=extra_columns, **columns))


def _read_folder_records(folder: str, data_args: Any, extra_columns: Sequence[str] = ()) -> list[dict]:
    from trainers.data import read_image_folder

    columns = flag_values(data_args, "text_column", "captions_column", "id_column")
    return list(read_image_folder(folder, extra_columns=extra_columns, **columns))


def _with_labels(read: Callable[..., list[dict]], source: str, data_args: Any) -> list[dict]:
    """Read eval records with the label column when the source has one (for zero-shot), without it otherwise."""
    from trainers.data import DataFormatError, MissingColumnError

    from ..arguments import DEFAULT_LABEL_COLUMN

    if data_args.label_column:
        try:
            return read(source, data_args, extra_columns=[data_args.label_column])
        except MissingColumnError as error:
            if error.column != data_args.label_column:
                raise
            if data_args.label_column != DEFAULT_LABEL_COLUMN:  # only the default may be absent (no labels at all)
                raise MissingColumnError(error.column, "label_column", error.source, error.available) from None
        except DataFormatError as error:
            if repr(data_args.label_column) not in str(error):
                raise
    return read(source, data_args)


def _load_hf_dataset(data_args: Any, split: str) -> Any:
    import datasets

    source = data_args.dataset
    if os.path.isdir(source) and any(
        os.path.isfile(os.path.join(source, m)) for m in ("state.json", "dataset_dict.json")
    ):
        loaded = datasets.load_from_disk(source)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(source, data_args.dataset_config, split=split)


def _hf_records(dataset: Any, data_args: Any) -> Any:
    from trainers.data import read_hf_dataset

    return read_hf_dataset(dataset, **flag_values(data_args, *_COLUMNS))


def _reading(read: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`read(*args, **kwargs)`, with a missing column turned into a `UserError` naming the flag to pass."""
    from trainers.data import MissingColumnError

    try:
        return read(*args, **kwargs)
    except MissingColumnError as error:
        raise data_error(error) from error


def _usable(record: dict) -> bool:
    """A record that has a caption and, for a local image path, an existing file (what the dataset would keep)."""
    from trainers.data.dataset import clean_captions

    image = record.get("image")
    local_missing = isinstance(image, str) and "://" not in image and not os.path.isfile(image)
    return bool(clean_captions(record.get("text"))) and not local_missing


def _require_records(records: Sequence[dict], source: str, what: str) -> None:
    """Refuse a data source of which nothing would be trained on / evaluated (stops at the first usable record)."""
    if len(records) == 0:
        raise UserError(f"no {what} pairs in {source} (no rows, or --max-*-samples 0)", RUNTIME)
    if not isinstance(records, list) or any(_usable(record) for record in records):
        return
    raise UserError(
        f"no usable {what} pairs in {source}: all {len(records)} rows lack an image file or a caption "
        "(file_name paths are relative to the metadata file)",
        RUNTIME,
    )


def build_train_dataset(data_args: Any, seed: int = 0) -> Any:
    """The training dataset: map-style over records, or streaming over shards (None when no source is given)."""
    from trainers.data import ImageTextDataset, StreamingImageTextDataset

    if data_args.train_shards:
        shards = []
        for pattern in data_args.train_shards:
            matches = sorted(glob.glob(pattern)) if "://" not in pattern else []
            if "://" not in pattern and not matches:  # a local pattern: refuse it before the first step, not in it
                raise UserError(f"--train-shards {pattern}: no file matches (a path or glob of local shards)", RUNTIME)
            shards += matches or [pattern]
        return StreamingImageTextDataset(
            shards,
            caption_strategy=data_args.caption_strategy,
            shuffle_buffer=data_args.shuffle_buffer,
            seed=seed,
            **flag_values(data_args, *_COLUMNS, "captions_column"),
        )
    if data_args.train_dir:
        records = _reading(_read_folder_records, data_args.train_dir, data_args)
    elif data_args.train_file:
        records = _reading(_read_file_records, data_args.train_file, data_args)
    elif data_args.dataset:
        records = _reading(_hf_records, _load_hf_dataset(data_args, data_args.train_split), data_args)
    else:
        return None
    if data_args.max_train_samples is not None:
        records = [records[index] for index in range(min(data_args.max_train_samples, len(records)))]
    _require_records(records, data_args.train_dir or data_args.train_file or data_args.dataset, "training")
    return ImageTextDataset(records, caption_strategy=data_args.caption_strategy, seed=seed)


def build_eval_sets(data_args: Any) -> tuple[Any, Any]:
    """`(EvalGallery | None, ZeroShotSet | None)` from the evaluation source; zero-shot where labels exist."""
    from trainers.data import build_eval_gallery

    from ..evaluation import build_zero_shot_set

    label = data_args.label_column
    if data_args.eval_dir:
        records = _reading(_with_labels, _read_folder_records, data_args.eval_dir, data_args)
    elif data_args.eval_file:
        records = _reading(_with_labels, _read_file_records, data_args.eval_file, data_args)
    elif data_args.dataset and data_args.eval_split:
        dataset = _load_hf_dataset(data_args, data_args.eval_split)
        records = list(_hf_records(dataset, data_args))
        if label and label in dataset.column_names:
            names = getattr(dataset.features[label], "names", None)  # a ClassLabel stores indices
            values = [names[value] if names else value for value in dataset[label]]
            records = [{**record, label: value} for record, value in zip(records, values)]
    else:
        return None, None
    if data_args.max_eval_samples is not None:
        records = records[: data_args.max_eval_samples]
    _require_records(records, data_args.eval_dir or data_args.eval_file or data_args.dataset, "evaluation")
    zero_shot = None
    if label:
        from hf_vlp.zero_shot import resolve_zero_shot_protocol

        class_names, templates = resolve_zero_shot_protocol(
            data_args.zero_shot_classes, data_args.zero_shot_templates, data_args.zero_shot_preset
        )
        zero_shot = build_zero_shot_set(records, label, class_names, templates)
    return build_eval_gallery(records), zero_shot
