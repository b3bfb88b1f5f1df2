"""The `hf-vlp` command line: `hf-vlp pretrain`, `hf-vlp evaluate`, and a registry for more subcommands.

Every subcommand is a function `main(argv) -> exit code` registered under a name, so adding one is a line:

```python
register_subcommand("convert", "trainers.commands:convert_main", "Convert a Chinese-CLIP checkpoint to hf-vlp.")
```

(a `"module:function"` target is imported only when that subcommand runs, so `hf-vlp --help` stays fast and a
subcommand's heavy imports are paid only by its users).

`pretrain` and `evaluate` parse `ModelArguments`, `DataArguments`, `VLPTrainingArguments` and `JobArguments` with
`HfArgumentParser`: every `TrainingArguments` flag works, and `--recipe NAME_OR_PATH` loads defaults from
`trainers/recipes/NAME.yaml` (or any YAML / JSON file) that command-line flags override. `parse_job_args`,
`build_model_and_processor`, `build_train_dataset` and `build_eval_sets` are public so that other subcommands
(`finetune` ...) reuse them.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


__all__ = [
    "RECIPES_DIR",
    "SUBCOMMANDS",
    "Subcommand",
    "build_eval_sets",
    "build_model_and_processor",
    "build_train_dataset",
    "build_trainer",
    "demo_data_dir",
    "eval_name",
    "resume_value",
    "setup_logging",
    "evaluate_main",
    "load_recipe",
    "main",
    "parse_job_args",
    "pretrain_main",
    "register_subcommand",
]

logger = logging.getLogger("trainers.cli")

RECIPES_DIR = Path(__file__).parent / "recipes"
FINAL_MODEL_SUBDIR = "model"


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Subcommand:
    """A named entry point: `target(argv) -> exit code`, or `"module:function"` imported when it runs."""

    name: str
    target: Callable[[list[str]], int | None] | str
    help: str

    def run(self, argv: list[str]) -> int:
        target = self.target
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = getattr(importlib.import_module(module), attribute)
        return int(target(argv) or 0)


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, target: Callable[[list[str]], int | None] | str, help: str) -> None:  # noqa: A002
    """Make `hf-vlp NAME ...` call `target(argv)` (argv after the name); a later registration replaces one."""
    SUBCOMMANDS[name] = Subcommand(name, target, help)


def _usage() -> str:
    width = max((len(name) for name in SUBCOMMANDS), default=0)
    lines = ["usage: hf-vlp <command> [options]  (hf-vlp <command> --help for the options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in sorted(SUBCOMMANDS.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `hf-vlp`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from hf_vlp import __version__

        print(f"hf-vlp {__version__}")
        return 0
    command = SUBCOMMANDS.get(argv[0])
    if command is None:
        print(f"hf-vlp: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return command.run(argv[1:])


# ---------------------------------------------------------------------------------------------- arguments
def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Argument values from a recipe: a file path, or a name in `trainers/recipes/` (`demo` -> `demo.yaml`)."""
    path = Path(name_or_path)
    if not path.is_file():
        candidates = [RECIPES_DIR / f"{name_or_path}{suffix}" for suffix in (".yaml", ".yml", ".json")]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            available = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("accelerate_"))
            raise SystemExit(f"hf-vlp: no recipe {name_or_path!r}; built-in recipes: {', '.join(available)}")
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle) if path.suffix == ".json" else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise SystemExit(f"hf-vlp: recipe {path} must hold a mapping of argument names to values")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse_job_args(argv: Sequence[str], prog: str, description: str, extra: Sequence[type] = ()) -> tuple:
    """Parse `ModelArguments, DataArguments, VLPTrainingArguments, JobArguments` (+ `extra` dataclasses).

    A recipe's values become the parser's defaults, so any flag on the command line wins over them; unknown
    recipe keys are an error (a misspelt key must not be ignored silently).
    """
    from transformers import HfArgumentParser

    from .arguments import DataArguments, JobArguments, ModelArguments, VLPTrainingArguments

    classes = (ModelArguments, DataArguments, VLPTrainingArguments, JobArguments, *extra)
    parser = HfArgumentParser(classes, prog=prog, description=description)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    known, _ = pre.parse_known_args(argv)
    if known.recipe:
        recipe = load_recipe(known.recipe)
        fields = {field.name for cls in classes for field in dataclasses.fields(cls) if field.init}
        unknown = sorted(set(recipe) - fields)
        if unknown:
            raise SystemExit(f"hf-vlp: unknown keys in recipe {known.recipe!r}: {', '.join(unknown)}")
        parser.set_defaults(
            **{
                key: json.dumps(value) if key == "config_overrides" and isinstance(value, dict) else value
                for key, value in recipe.items()
            }
        )
    return parser.parse_args_into_dataclasses(args=list(argv), look_for_args_file=False)


def setup_logging(training_args: Any) -> None:
    import transformers

    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logging.getLogger("trainers").setLevel(min(level, logging.INFO) if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))


# ---------------------------------------------------------------------------------------------- model
def _config_overrides(model_args: Any) -> dict[str, Any]:
    if not model_args.config_overrides:
        return {}
    overrides = json.loads(model_args.config_overrides)
    if not isinstance(overrides, dict):
        raise SystemExit("hf-vlp: --config-overrides must be a JSON object")
    return overrides


def _processor_for_config(
    config: Any, tokenizer: Any, max_length: int | None, vision_source: str | None = None
) -> Any:
    """A `VLPProcessor` matching a model config: the vision tower's image size (and mean/std when the tower's own
    image processor can be read), the given tokenizer."""
    from hf_vlp import VLPImageProcessor, VLPProcessor

    size = getattr(config.vision_config, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    kwargs: dict[str, Any] = {"size": {"height": size, "width": size}}
    if vision_source is not None:
        from transformers import AutoImageProcessor

        try:
            tower_processor = AutoImageProcessor.from_pretrained(vision_source)
        except (OSError, ValueError):  # a tower without a preprocessor config keeps CLIP's mean/std
            tower_processor = None
        for key in ("image_mean", "image_std"):
            if getattr(tower_processor, key, None) is not None:
                kwargs[key] = list(getattr(tower_processor, key))
    return VLPProcessor(VLPImageProcessor(**kwargs), tokenizer, max_length=max_length or 52)


def _model_class(config: Any, pretraining: bool) -> Any:
    """`AutoModelForPreTraining` for training a family that has a separate pre-training class (fusion encoders:
    MLM head, momentum copy, queue), `AutoModel` otherwise (dual encoders, and evaluation)."""
    from transformers import AutoModel, AutoModelForPreTraining

    if pretraining:
        try:
            AutoModelForPreTraining._model_mapping[type(config)]
            return AutoModelForPreTraining
        except KeyError:
            pass
    return AutoModel


def build_model_and_processor(model_args: Any, pretraining: bool = False) -> tuple[Any, Any]:
    """The model and processor the arguments ask for (see `ModelArguments` for the sources and precedence).

    With `pretraining`, families with a pre-training class (fusion encoders) are built with it, so that their
    forward computes every objective; evaluation loads the inference class.
    """
    from transformers import AutoConfig, AutoProcessor

    from hf_vlp import DualEncoderModel, config_for_preset, load_tokenizer, processor_for_preset

    overrides = _config_overrides(model_args)
    hub = {"revision": model_args.revision} if model_args.revision else {}
    if model_args.model:
        logger.info("Loading model %s", model_args.model)
        remote = {"trust_remote_code": model_args.trust_remote_code, **hub}
        config = AutoConfig.from_pretrained(model_args.model, **remote, **overrides)
        model = _model_class(config, pretraining).from_pretrained(model_args.model, config=config, **remote)
        if model_args.tokenizer:
            processor = _processor_for_config(model.config, load_tokenizer(model_args.tokenizer, **hub), None)
        else:
            processor = AutoProcessor.from_pretrained(
                model_args.model, trust_remote_code=model_args.trust_remote_code, **hub
            )
    elif model_args.model_config:
        path = Path(model_args.model_config)
        path = path / "config.json" if path.is_dir() else path
        values = {**json.loads(path.read_text(encoding="utf-8")), **overrides}
        values.pop("auto_map", None)
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        model = _model_class(config, pretraining).from_config(config)
        tokenizer = load_tokenizer(model_args.tokenizer or "builtin-chinese", **hub)
        processor = _processor_for_config(config, tokenizer, None)
    elif model_args.text_model or model_args.vision_model:
        if not (model_args.text_model and model_args.vision_model):
            raise SystemExit("hf-vlp: --text-model and --vision-model go together")
        model = DualEncoderModel.from_vision_text_pretrained(
            model_args.vision_model, model_args.text_model, hub_kwargs=hub, **overrides
        )
        tokenizer = load_tokenizer(model_args.tokenizer or model_args.text_model, **hub)
        processor = _processor_for_config(model.config, tokenizer, None, vision_source=model_args.vision_model)
    elif model_args.preset:
        config = config_for_preset(model_args.preset, **overrides)
        model = _model_class(config, pretraining).from_config(config)
        processor = processor_for_preset(model_args.preset, tokenizer=model_args.tokenizer)
    else:
        raise SystemExit(
            "hf-vlp: choose a model with --preset, --model-config, --model, or --text-model/--vision-model"
        )
    if model_args.max_length:
        processor.max_length = model_args.max_length
    return model, processor


# ---------------------------------------------------------------------------------------------- data
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


def _chinese_clip_texts(images_tsv: str) -> str:
    texts = images_tsv[: -len("_imgs.tsv")] + "_texts.jsonl" if images_tsv.endswith("_imgs.tsv") else None
    if texts is None or not os.path.isfile(texts):
        raise SystemExit(f"hf-vlp: a Chinese-CLIP image TSV needs its <split>_texts.jsonl next to it: {images_tsv}")
    return texts


def _read_file_records(path: str, data_args: Any, extra_columns: Sequence[str] = ()) -> list[dict]:
    from trainers.data import read_caption_file, read_chinese_clip, read_parquet

    if path.endswith(".tsv"):
        return read_chinese_clip(path, _chinese_clip_texts(path))
    if path.endswith(".parquet"):
        return list(
            read_parquet(
                path,
                image_column=data_args.image_column,
                text_column=data_args.text_column,
                id_column=data_args.id_column,
            )
        )
    return list(
        read_caption_file(
            path,
            image_column=data_args.image_column,
            text_column=data_args.text_column,
            captions_column=data_args.captions_column,
            id_column=data_args.id_column,
            extra_columns=extra_columns,
        )
    )


def _read_folder_records(folder: str, data_args: Any, extra_columns: Sequence[str] = ()) -> list[dict]:
    from trainers.data import read_image_folder

    return list(
        read_image_folder(
            folder,
            text_column=data_args.text_column,
            captions_column=data_args.captions_column,
            id_column=data_args.id_column,
            extra_columns=extra_columns,
        )
    )


def _with_labels(read: Callable[..., list[dict]], source: str, data_args: Any) -> list[dict]:
    """Read eval records with the label column when the source has one (for zero-shot), without it otherwise."""
    from trainers.data import DataFormatError

    if data_args.label_column:
        try:
            return read(source, data_args, extra_columns=[data_args.label_column])
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

    return read_hf_dataset(
        dataset, image_column=data_args.image_column, text_column=data_args.text_column, id_column=data_args.id_column
    )


def _resolve_demo(data_args: Any, image_size: int, seed: int) -> bool:
    """With `--demo`, point missing train/eval sources at the demo set; True when the eval set is the demo's."""
    if not data_args.demo:
        return False
    has_train = data_args.train_dir or data_args.train_file or data_args.dataset or data_args.train_shards
    has_eval = data_args.eval_dir or data_args.eval_file or (data_args.dataset and data_args.eval_split)
    if has_train and has_eval:
        return False
    root = demo_data_dir(data_args, image_size=image_size, seed=seed)
    if not has_train:
        data_args.train_dir = str(root / "train")
    if not has_eval:
        data_args.eval_dir = str(root / "eval")
    return not has_eval


def build_train_dataset(data_args: Any, seed: int = 0) -> Any:
    """The training dataset: map-style over records, or streaming over shards (None when no source is given)."""
    from trainers.data import ImageTextDataset, StreamingImageTextDataset

    if data_args.train_shards:
        shards = []
        for pattern in data_args.train_shards:
            matches = sorted(glob.glob(pattern)) if "://" not in pattern else []
            shards += matches or [pattern]
        return StreamingImageTextDataset(
            shards,
            caption_strategy=data_args.caption_strategy,
            shuffle_buffer=data_args.shuffle_buffer,
            seed=seed,
            image_column=data_args.image_column,
            text_column=data_args.text_column,
            captions_column=data_args.captions_column,
            id_column=data_args.id_column,
        )
    if data_args.train_dir:
        records = _read_folder_records(data_args.train_dir, data_args)
    elif data_args.train_file:
        records = _read_file_records(data_args.train_file, data_args)
    elif data_args.dataset:
        records = _hf_records(_load_hf_dataset(data_args, data_args.train_split), data_args)
    else:
        return None
    if data_args.max_train_samples is not None:
        records = [records[index] for index in range(min(data_args.max_train_samples, len(records)))]
    return ImageTextDataset(records, caption_strategy=data_args.caption_strategy, seed=seed)


def build_eval_sets(data_args: Any) -> tuple[Any, Any]:
    """`(EvalGallery | None, ZeroShotSet | None)` from the evaluation source; zero-shot where labels exist."""
    from trainers.data import build_eval_gallery

    from .evaluation import build_zero_shot_set

    label = data_args.label_column
    if data_args.eval_dir:
        records = _with_labels(_read_folder_records, data_args.eval_dir, data_args)
    elif data_args.eval_file:
        records = _with_labels(_read_file_records, data_args.eval_file, data_args)
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
    zero_shot = build_zero_shot_set(records, label) if label else None
    return build_eval_gallery(records), zero_shot


def _preset_image_size(model_args: Any) -> int:
    """The image size the demo set is rendered at: the processor resizes anyway, so this only saves work."""
    if model_args.preset:
        from hf_vlp import preset_info

        return preset_info(model_args.preset)["processor"]["image_size"]
    return 64


# ---------------------------------------------------------------------------------------------- jobs
def resume_value(value: str | None) -> str | bool | None:
    if value is None:
        return None
    return True if value.lower() in ("true", "latest", "last") else value


def _prepare(argv: Sequence[str], prog: str, description: str) -> tuple:
    model_args, data_args, training_args, job_args = parse_job_args(argv, prog, description)
    setup_logging(training_args)
    if job_args.torch_threads:
        import torch

        torch.set_num_threads(job_args.torch_threads)
    demo_eval = _resolve_demo(data_args, _preset_image_size(model_args), training_args.seed)
    return model_args, data_args, training_args, demo_eval


def build_trainer(
    prog: str, model: Any, processor: Any, data_args: Any, training_args: Any, **trainer_kwargs: Any
) -> tuple[Any, Any, Any]:
    """The `VLPTrainer` of a job (train set, retrieval gallery and zero-shot set from the data flags), with
    the gallery and zero-shot set for the job's summary. `trainer_kwargs` (e.g. `peft_config`) go to the trainer."""
    from trainers.data import ImageTextCollator

    from .trainer import VLPTrainer

    train_dataset = build_train_dataset(data_args, seed=training_args.seed)
    if train_dataset is None:
        raise SystemExit(f"{prog}: no training data (--train-dir, --train-file, --dataset, --train-shards or --demo)")
    gallery, zero_shot = build_eval_sets(data_args)
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        data_collator=ImageTextCollator(processor, max_length=processor.max_length),
        train_dataset=train_dataset,
        eval_dataset=gallery if gallery is not None else zero_shot,
        zero_shot_dataset=zero_shot if gallery is not None else None,
        processing_class=processor,
        **trainer_kwargs,
    )
    return trainer, gallery, zero_shot


def pretrain_main(argv: Sequence[str]) -> int:
    """`hf-vlp pretrain`: train, save a Hub-ready model to `<output_dir>/model`, evaluate, write the metrics."""
    model_args, data_args, training_args, demo_eval = _prepare(
        argv, "hf-vlp pretrain", "Contrastive (and fusion) image-text pre-training with the hf-vlp trainer."
    )
    from transformers import set_seed

    from hf_vlp.model_card import write_model_card

    set_seed(training_args.seed)
    model, processor = build_model_and_processor(model_args, pretraining=True)
    trainer, gallery, zero_shot = build_trainer("hf-vlp pretrain", model, processor, data_args, training_args)
    result = trainer.train(resume_from_checkpoint=resume_value(training_args.resume_from_checkpoint))
    model_dir = os.path.join(training_args.output_dir, FINAL_MODEL_SUBDIR)
    trainer.save_model(model_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics = None
    if gallery is not None or zero_shot is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        _summary(metrics, gallery, zero_shot)
        try:
            write_model_card(
                model_dir,
                results=metrics,
                training_args=training_args,
                datasets=[data_args.dataset] if data_args.dataset else None,
                eval_dataset=eval_name(data_args, demo_eval),
            )
        except Exception as error:  # the model is saved; a card failure must not fail a finished run
            logger.warning("Could not write the model card: %s", error)
        if demo_eval:
            # The Space (`hf-vlp demo`) shows the demo's eval images as its default gallery, from next to the model.
            shutil.copytree(data_args.eval_dir, os.path.join(training_args.output_dir, "eval"), dirs_exist_ok=True)
        logger.info("Model saved to %s (load it with AutoModel.from_pretrained)", model_dir)
    return 0


def evaluate_main(argv: Sequence[str]) -> int:
    """`hf-vlp evaluate`: retrieval (and zero-shot) metrics of a model, written to `<output_dir>/eval_results.json`."""
    model_args, data_args, training_args, _ = _prepare(
        argv, "hf-vlp evaluate", "Image-text retrieval and zero-shot evaluation of an hf-vlp model."
    )
    from .trainer import VLPTrainer

    model, processor = build_model_and_processor(model_args)
    gallery, zero_shot = build_eval_sets(data_args)
    if gallery is None and zero_shot is None:
        raise SystemExit(
            "hf-vlp evaluate: no evaluation data (--eval-dir, --eval-file, --dataset with --eval-split, or --demo)"
        )
    trainer = VLPTrainer(
        model=model,
        args=training_args,
        eval_dataset=gallery if gallery is not None else zero_shot,
        zero_shot_dataset=zero_shot if gallery is not None else None,
        processing_class=processor,
    )
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        _summary(metrics, gallery, zero_shot)
    return 0


def eval_name(data_args: Any, demo_eval: bool) -> str | None:
    """How the model card names the evaluation set."""
    if demo_eval:
        return "hf-vlp demo (rendered Chinese shapes)"
    if data_args.dataset:
        return f"{data_args.dataset} ({data_args.eval_split})" if data_args.eval_split else data_args.dataset
    source = data_args.eval_dir or data_args.eval_file
    return Path(source).name if source else None


def _summary(metrics: dict | None, gallery: Any, zero_shot: Any) -> None:
    """One line that puts the headline numbers next to what random ranking / guessing would score."""
    from .evaluation import chance_recall

    if not metrics:
        return
    parts = []
    if gallery is not None:
        chance = chance_recall(gallery)["mean_recall"]
        parts.append(f"retrieval mean recall {metrics['eval_mean_recall']:.1f} (random ranking: {chance:.1f})")
    if zero_shot is not None and "eval_zero_shot_top1" in metrics:
        guess = 100.0 / len(zero_shot.class_names)
        parts.append(f"zero-shot top-1 {metrics['eval_zero_shot_top1']:.1f}% (guessing: {guess:.1f}%)")
    logger.info("Result: %s", "; ".join(parts))


register_subcommand("pretrain", pretrain_main, "Pre-train (or continue training) an image-text model.")
register_subcommand("evaluate", evaluate_main, "Retrieval Recall@K and zero-shot accuracy of a model.")
register_subcommand("convert", "trainers.commands:convert_main", "Convert a Chinese-CLIP checkpoint to hf-vlp.")
register_subcommand("demo", "trainers.commands:demo_main", "Launch the Gradio demo: 以文搜图, 以图搜文, 零样本分类.")
register_subcommand("finetune", "trainers.finetune:finetune_main", "Adapt a pre-trained model to a domain with LoRA.")
register_subcommand("push", "trainers.commands:push_main", "Publish a saved model or adapter folder to the Hub.")


if __name__ == "__main__":
    sys.exit(main())
