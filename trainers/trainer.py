"""`VLPTrainer`: `transformers.Trainer` with the few overrides vision-language pre-training needs.

What changes, and why:

* `compute_loss`: side-channel keys of the collator (`num_skipped_samples`, `image_hash`, ...) are popped before
  `forward` (the running count of skipped samples is logged), the collator's per-image hash becomes the model's
  `image_ids` (pairs of one picture are positives), and every output field ending in `_loss` is logged.
* Gradient accumulation: hf-vlp losses are per-batch means (`accepts_loss_kwargs = False` on the models) and
  `loss_is_scaled_for_ga = False` here, so the Trainer divides each micro-batch loss by the accumulation steps.
* `training_step`: gradient caching (`grad_cache_chunk_size`) for contrastive batches larger than memory.
* Momentum encoders move once per optimizer step (`MomentumUpdateCallback`).
* `_get_train_sampler`: GRIT-VLP grouped mini-batches (`grit_sampling`), refreshed by `GritRefreshCallback`; the
  groups travel with checkpoints so resumed runs see the same batches.
* `evaluate`: retrieval (Recall@1/5/10 both ways, mean recall, optional cross-encoder re-ranking) and zero-shot
  classification, sharded over processes, instead of a loss over the eval set.
* `peft_config`: the model is wrapped with `hf_vlp.adapters.prepare_peft_model` (LoRA or any linear-layer PEFT
  method); the stock Trainer then saves only the adapter, in checkpoints and in `save_model`, and resumes it.
* `create_model_card`: hf-vlp's card (`hf_vlp.model_card`) with the measured retrieval / zero-shot results, which
  `push_to_hub` uploads, instead of the generic Trainer card.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint, has_length, speed_metrics

from hf_vlp.models.processing_vlp import DEFAULT_MAX_LENGTH
from hf_vlp.retrieval import gather_for_eval
from trainers.data import SIDE_CHANNEL_KEYS, EvalGallery, ImageTextCollator

from .arguments import VLPTrainingArguments, parse_rerank_combine
from .callbacks import DatasetEpochCallback, GritRefreshCallback, MomentumUpdateCallback, unwrap_model
from .evaluation import EvalRuntime, ZeroShotSet, evaluate_retrieval, evaluate_zero_shot
from .grad_cache import check_grad_cache_support, grad_cache_backward, text_inputs_of
from .sampler import GritSampler, grit_grouping


if TYPE_CHECKING:
    from peft import PeftConfig

__all__ = ["GRIT_STATE_NAME", "VLPTrainer"]

logger = logging.getLogger(__name__)

GRIT_STATE_NAME = "grit_sampler.pt"


class VLPTrainer(Trainer):
    """Trainer for hf-vlp models (dual and fusion encoders), or any model that returns `loss` and `*_loss` terms.

    Args:
        model, args, data_collator, train_dataset, processing_class, callbacks, **kwargs: as for `Trainer`;
            `args` must be [`VLPTrainingArguments`]. Without a `data_collator`, an `ImageTextCollator` over
            `processing_class` is used.
        eval_dataset: an `EvalGallery` (retrieval evaluation), a `ZeroShotSet`, a dict of those, or any dataset
            the stock Trainer evaluates (loss only).
        zero_shot_dataset: a `ZeroShotSet` evaluated together with the default eval dataset.
        peft_config: a PEFT config (`hf_vlp.adapters.default_lora_config(model, ...)`, or any `PeftConfig` of a
            method that adapts linear layers) to train adapters instead of the full model. Only the adapter and
            `modules_to_save` parameters train; checkpoints and `save_model` hold only those; the momentum model of
            a fusion encoder is switched off for the run (see `hf_vlp.adapters.prepare_peft_model`).

    Example:

    ```python
    >>> from hf_vlp import create_model, processor_for_preset
    >>> from trainers import VLPTrainer, VLPTrainingArguments
    >>> from trainers.data import ImageTextDataset, build_eval_gallery, demo_records
    >>> trainer = VLPTrainer(
    ...     model=create_model("tiny"),
    ...     args=VLPTrainingArguments(output_dir="out", max_steps=10, per_device_train_batch_size=8),
    ...     train_dataset=ImageTextDataset(demo_records(64)),
    ...     eval_dataset=build_eval_gallery(demo_records(32, seed=1)),
    ...     processing_class=processor_for_preset("tiny"),
    ... )
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.evaluate()["eval_mean_recall"]  # doctest: +SKIP
    ```
    """

    # Losses are per-batch means: the Trainer must divide them by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: VLPTrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: EvalGallery | ZeroShotSet | dict | Dataset | None = None,
        processing_class: Any = None,
        zero_shot_dataset: ZeroShotSet | None = None,
        callbacks: Iterable[TrainerCallback] | None = None,
        peft_config: PeftConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = VLPTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, VLPTrainingArguments):
            raise TypeError(f"VLPTrainer needs VLPTrainingArguments, got {type(args).__name__}")
        if data_collator is None and processing_class is not None:
            max_length = getattr(processing_class, "max_length", DEFAULT_MAX_LENGTH)
            data_collator = ImageTextCollator(processing_class, max_length=max_length)
        if peft_config is not None:
            if model is None:
                raise ValueError("peft_config needs the base model (model=...) to wrap")
            from hf_vlp.adapters import prepare_peft_model

            model = prepare_peft_model(model, peft_config)
        callbacks = list(callbacks or [])
        if not _is_peft_model(model):
            # Under PEFT the momentum model is off (prepare_peft_model): an EMA step would only move frozen weights.
            callbacks.insert(0, MomentumUpdateCallback())
        if train_dataset is not None:
            callbacks.insert(0, DatasetEpochCallback(train_dataset))
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        self.args: VLPTrainingArguments
        self.zero_shot_dataset = zero_shot_dataset
        self._loss_terms: dict[str, list[torch.Tensor]] = {}
        self._num_skipped_samples = 0
        self._grit_sampler: GritSampler | None = None
        self._grad_cache_checked = False
        if args.grit_sampling:
            self.add_callback(GritRefreshCallback(self))

    # ------------------------------------------------------------------------------------------ loss
    def _forward_accepts(self, model: nn.Module, name: str) -> bool:
        """Whether the model's `forward` takes `name` (through PEFT and DDP wrappers)."""
        inner = unwrap_model(model)
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        parameters = inspect.signature(inner.forward).parameters
        return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def _model_inputs(self, model: nn.Module, inputs: dict[str, Any], training: bool) -> dict[str, Any] | None:
        """The batch without the collator's side-channel keys, plus `image_ids` / `return_loss` where accepted;
        None when nothing is left (the collator dropped every sample of the batch as bad)."""
        inputs = dict(inputs)
        skipped = inputs.pop("num_skipped_samples", 0)
        if training:
            self._num_skipped_samples += int(skipped)
        image_hash = inputs.pop("image_hash", None)
        for key in SIDE_CHANNEL_KEYS:
            # a tensor `image_ids` is the user's own model input; the collator's is a list of strings
            if key != "image_ids" or not isinstance(inputs.get(key), torch.Tensor):
                inputs.pop(key, None)
        if not any(isinstance(value, torch.Tensor) and value.numel() for value in inputs.values()):
            return None
        use_hash = self.args.use_image_ids and image_hash is not None and "image_ids" not in inputs
        if use_hash and self._forward_accepts(model, "image_ids"):
            inputs["image_ids"] = image_hash
        if self._forward_accepts(model, "return_loss"):
            inputs["return_loss"] = True
        alpha = self._distill_alpha(model)
        if alpha is not None:
            inputs["alpha"] = alpha
        return inputs

    def _distill_alpha(self, model: nn.Module) -> float | None:
        """ALBEF's warm-up of the momentum-distillation weight: `distill_alpha * min(1, step / warmup_steps)`."""
        warmup = self.args.distill_warmup_steps
        target = getattr(getattr(unwrap_model(model), "config", None), "distill_alpha", None)
        if not warmup or target is None or not model.training or not self._forward_accepts(model, "alpha"):
            return None
        return float(target) * min(1.0, self.state.global_step / warmup)

    def _empty_batch_loss(self, model: nn.Module) -> torch.Tensor:
        """Zero loss connected to every trainable parameter, for a batch whose samples were all bad."""
        logger.warning("Every sample of a batch was bad; the batch contributes nothing to this step")
        params = [p for p in model.parameters() if p.requires_grad]
        return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=self.args.device))

    def _record_loss_terms(self, outputs: Any) -> None:
        if not isinstance(outputs, dict):
            return
        for key, value in outputs.items():
            if key.endswith("_loss") and isinstance(value, torch.Tensor):
                self._loss_terms.setdefault(key, []).append(value.detach().float().mean())

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The model's own `loss` (the sum of its objectives); `*_loss` fields are kept for logging."""
        inputs = self._model_inputs(model, inputs, training=model.training)
        if inputs is None:
            loss = self._empty_batch_loss(model)
            return (loss, None) if return_outputs else loss
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if loss is None:
            raise ValueError(f"{type(unwrap_model(model)).__name__} returned no loss; is `return_loss` supported?")
        if model.training:
            self._record_loss_terms(outputs)
        return (loss, outputs) if return_outputs else loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if not self.args.grad_cache_chunk_size:
            return super().training_step(model, inputs, num_items_in_batch)
        return self._grad_cache_training_step(model, inputs)

    def _grad_cache_training_step(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """One micro-batch with gradient caching; mirrors `Trainer.training_step`'s scaling and return value."""
        inner = self.accelerator.unwrap_model(model)
        if not self._grad_cache_checked:
            check_grad_cache_support(inner)
            if self.is_deepspeed_enabled or self.is_fsdp_enabled or self.args.n_gpu > 1:
                raise ValueError("grad_cache_chunk_size supports single-process and DDP training only")
            self._grad_cache_checked = True
        model.train()
        inputs = self._model_inputs(inner, self._prepare_inputs(inputs), training=True)
        scale = 1.0 / self.current_gradient_accumulation_steps
        if inputs is None:
            loss = self._empty_batch_loss(inner)
            self.accelerator.backward(loss)
        else:
            loss = grad_cache_backward(
                inner,
                inputs,
                self.args.grad_cache_chunk_size,
                backward=self.accelerator.backward,
                loss_scale=scale,
                image_ids=inputs.get("image_ids"),
                autocast=self.accelerator.autocast,
            )
            self._record_loss_terms({"itc_loss": loss})
        if self.accelerator.sync_gradients and isinstance(model, nn.parallel.DistributedDataParallel):
            _average_gradients(inner)
        return loss.detach() * scale

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry the mean of each `*_loss` term since the last log and the skipped-sample count."""
        if "loss" in logs:
            for key, values in sorted(self._loss_terms.items()):
                logs[key] = self._reduce(torch.stack(values).mean(), "mean")
            self._loss_terms.clear()
            logs["num_skipped_samples"] = int(
                self._reduce(torch.tensor(float(self._num_skipped_samples), device=self.args.device), "sum")
            )
        super().log(logs, start_time)

    def _reduce(self, value: torch.Tensor, reduction: str) -> float:
        if self.args.world_size > 1:
            value = self.accelerator.reduce(value.to(self.args.device), reduction=reduction)
        return float(value.item())

    # ------------------------------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        """A streaming dataset that splits its shards across ranks itself bypasses `accelerator.prepare`, which
        would otherwise read everything on rank 0 and dispatch it, or make every rank read all shards."""
        dataset = self.train_dataset
        if (
            isinstance(dataset, IterableDataset)
            and getattr(dataset, "split_by_node", False)
            and self.args.world_size > 1
        ):
            return DataLoader(
                dataset,
                batch_size=self._train_batch_size,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
                persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
                prefetch_factor=self.args.dataloader_prefetch_factor,
            )
        return super().get_train_dataloader()

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> torch.utils.data.Sampler | None:
        if not self.args.grit_sampling:
            return super()._get_train_sampler(train_dataset)
        return self._grit(train_dataset)

    def _grit(self, train_dataset: Dataset | None = None) -> GritSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is None or not has_length(dataset):
            raise ValueError("grit_sampling needs a map-style training dataset (with a length)")
        if self._grit_sampler is None or self._grit_sampler.num_samples != len(dataset):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            self._grit_sampler = GritSampler(len(dataset), self.args.per_device_train_batch_size, seed=seed)
        return self._grit_sampler

    def refresh_grit_groups(self, epoch: int) -> None:
        """Group the training set with the current model's embeddings for `epoch` (called by `GritRefreshCallback`).

        Skipped when the groups for `epoch` were restored from a checkpoint: recomputing them with a model that
        is partway through the epoch would change the batches of a resumed run.
        """
        sampler = self._grit()
        sampler.set_epoch(epoch)
        if sampler.order_epoch == epoch:
            return
        started = time.time()
        image_embeds, text_embeds = self._train_set_embeddings()
        order = torch.empty(len(image_embeds), dtype=torch.long)
        if self.args.process_index == 0:
            generator = torch.Generator().manual_seed(sampler.seed + epoch)
            order = grit_grouping(image_embeds, text_embeds, self.args.grit_search_space, generator)
        if self.args.world_size > 1:
            order = order.to(self.args.device)
            dist.broadcast(order, src=0)
        sampler.set_order(order.cpu(), epoch)
        logger.info("GRIT groups for epoch %d computed in %.1fs", epoch, time.time() - started)

    def _train_set_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image and text embeddings of every training item (rows of bad items stay zero)."""
        dataset = self.train_dataset
        runtime = self._eval_runtime()
        start, stop = runtime.shard(len(dataset))
        loader = DataLoader(
            _Indexed(dataset, range(start, stop)),
            batch_size=self.args.per_device_eval_batch_size,
            num_workers=self.args.dataloader_num_workers,
            collate_fn=_IndexedCollator(self.data_collator),
        )
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        indices, images, texts = [], [], []
        try:
            with torch.no_grad():
                for batch_indices, batch in loader:
                    if batch is None:
                        continue
                    batch = self._prepare_inputs(batch)
                    with self.accelerator.autocast():
                        images.append(model.encode_image(pixel_values=batch["pixel_values"]).embeds.float())
                        texts.append(model.encode_text(**text_inputs_of(batch)).embeds.float())
                    indices.append(batch_indices.to(self.args.device))
        finally:
            model.train(was_training)
        dim = images[0].shape[1] if images else 0
        if self.args.world_size > 1:
            dim_tensor = torch.tensor([dim], device=self.args.device)
            dist.all_reduce(dim_tensor, op=dist.ReduceOp.MAX)
            dim = int(dim_tensor.item())
        local_indices = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long, device=self.args.device)
        local_images = torch.cat(images) if images else torch.empty(0, dim, device=self.args.device)
        local_texts = torch.cat(texts) if texts else torch.empty(0, dim, device=self.args.device)
        all_indices = gather_for_eval(local_indices).cpu()
        image_embeds = torch.zeros(len(dataset), dim)
        text_embeds = torch.zeros(len(dataset), dim)
        image_embeds[all_indices] = gather_for_eval(local_images).cpu()
        text_embeds[all_indices] = gather_for_eval(local_texts).cpu()
        return image_embeds, text_embeds

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ):
        """`Trainer.train`, also restoring the GRIT groups saved with the checkpoint."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if isinstance(resume_from_checkpoint, str) and self.args.grit_sampling:
            path = os.path.join(resume_from_checkpoint, GRIT_STATE_NAME)
            if os.path.isfile(path):
                self._grit().load_state_dict(torch.load(path, weights_only=True))
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self._grit_sampler is not None and self._grit_sampler.order is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            torch.save(self._grit_sampler.state_dict(), os.path.join(folder, GRIT_STATE_NAME))

    # ------------------------------------------------------------------------------------------ evaluation
    def _eval_runtime(self) -> EvalRuntime:
        return EvalRuntime(
            device=self.args.device,
            batch_size=self.args.per_device_eval_batch_size,
            num_workers=self.args.dataloader_num_workers,
            rank=self.args.process_index,
            world_size=self.args.world_size,
            autocast=self.accelerator.autocast,
            show_progress=not self.args.disable_tqdm and self.is_local_process_zero(),
        )

    def evaluate(
        self,
        eval_dataset: EvalGallery | ZeroShotSet | dict | Dataset | str | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Retrieval metrics (`eval_i2t_R@1` ... `eval_mean_recall`) on an `EvalGallery`, zero-shot accuracy
        (`eval_zero_shot_top1`) on a `ZeroShotSet` and on `zero_shot_dataset`; the stock loss evaluation otherwise.

        All processes must call it; the encoding and ranking are sharded and every process returns the same
        numbers. They are logged (TensorBoard etc.) and passed to `on_evaluate` callbacks like the stock metrics.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(eval_dataset, str) and isinstance(self.eval_dataset, dict):
            dataset = self.eval_dataset[eval_dataset]
        if isinstance(dataset, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        zero_shot = dataset if isinstance(dataset, ZeroShotSet) else None
        if eval_dataset is None and zero_shot is None:
            zero_shot = self.zero_shot_dataset
        gallery = dataset if isinstance(dataset, EvalGallery) else None
        if gallery is None and zero_shot is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.processing_class is None:
            raise ValueError("retrieval and zero-shot evaluation need the trainer's processing_class (a processor)")

        self._memory_tracker.start()
        started = time.time()
        model = self.accelerator.unwrap_model(self.model)
        runtime = self._eval_runtime()
        results: dict[str, float] = {}
        num_samples = 0
        if gallery is not None:
            results.update(
                evaluate_retrieval(
                    model,
                    gallery,
                    self.processing_class,
                    runtime,
                    topk=self.args.retrieval_topk,
                    chunk_size=self.args.retrieval_chunk_size,
                    rerank=self.args.rerank,
                    rerank_combine=parse_rerank_combine(self.args.rerank_combine),
                )
            )
            num_samples += len(gallery.images) + len(gallery.texts)
        if zero_shot is not None:
            accuracy = evaluate_zero_shot(model, zero_shot, self.processing_class, runtime, self.args.zero_shot_prompt)
            results.update({f"zero_shot_{key}": value for key, value in accuracy.items()})
            num_samples += len(zero_shot.images)
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in results.items()}
        metrics.update(speed_metrics(metric_key_prefix, started, num_samples=num_samples))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    # ------------------------------------------------------------------------------------------ hub
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,  # noqa: A002 (the Trainer's argument name)
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write hf-vlp's card for the model saved in `output_dir` (`push_to_hub` saves it first, then calls this).

        The generic Trainer card knows neither the model family, nor the retrieval metrics, nor how to load custom
        code; ours (`hf_vlp.model_card`) states the measured results (every `eval_*` metric this trainer logged, the
        latest value of each) as the card's `model-index`. `language` and `tasks` are fixed by the templates
        (Chinese; retrieval and zero-shot classification); `dataset_tags` and `dataset_args` have no place in them.
        A model that is not an hf-vlp model or adapter gets the Trainer's generic card.
        """
        if not self.is_world_process_zero():
            return
        from hf_vlp.model_card import describe, write_model_card

        try:
            describe(self.args.output_dir)
        except (OSError, ValueError):  # not an hf-vlp model or adapter (VLPTrainer trains any model with a loss)
            return super().create_model_card(
                language, license, tags, model_name, finetuned_from, tasks, dataset_tags, dataset, dataset_args
            )
        measured: dict[str, float] = {}
        for entry in self.state.log_history:
            measured.update({key: value for key, value in entry.items() if key.startswith("eval_")})
        datasets = [dataset] if isinstance(dataset, str) else dataset
        write_model_card(
            self.args.output_dir,
            results=measured or None,  # None: the folder's all_results.json / eval_results.json, if any
            training_args=self.args,
            datasets=datasets,
            base_model=finetuned_from,
            repo_id=self.hub_model_id,
            model_name=model_name,
            license=license or "apache-2.0",
            tags=[tags] if isinstance(tags, str) else tags or (),
        )


def _is_peft_model(model: nn.Module | None) -> bool:
    """A `PeftModel` (duck-typed, so `peft` stays an optional import)."""
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


class _Indexed(Dataset):
    """`(index, item)` for a range of a dataset, so that embeddings stay attached to their items."""

    def __init__(self, dataset: Dataset, indices: range) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Any]:
        index = self.indices[position]
        return index, self.dataset[index]


class _IndexedCollator:
    """Collate the good items (a bad one is None) and keep their dataset indices alongside."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[torch.Tensor, dict | None]:
        kept = [(index, item) for index, item in items if item is not None]
        batch = self.collator([item for _, item in kept]) if kept else None
        return torch.tensor([index for index, _ in kept], dtype=torch.long), batch


def _average_gradients(model: nn.Module) -> None:
    """DDP's gradient averaging, for the gradient-cache path that does not run through the DDP forward."""
    world = dist.get_world_size()
    handles, grads = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grads.append(param.grad)
        handles.append(dist.all_reduce(param.grad, async_op=True))
    for handle in handles:
        handle.wait()
    for grad in grads:
        grad.div_(world)
