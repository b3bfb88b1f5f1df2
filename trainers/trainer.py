"""`VLPTrainer`: `transformers.Trainer` with the few overrides vision-language pre-training needs.

What changes, and why:

* `compute_loss`: side-channel keys of the collator (`num_skipped_samples`, `image_hash`, ...) are popped before
  `forward` (the running count of skipped samples is logged), the collator's per-image hash becomes the model's
  `image_ids` (pairs of one picture are positives), and every output field ending in `_loss` is logged.
* Gradient accumulation: hf-vlp losses are per-batch means (`accepts_loss_kwargs = False` on the models) and
  `loss_is_scaled_for_ga = False` here, so the Trainer divides each micro-batch loss by the accumulation steps.
* `training_step`: gradient caching (`grad_cache_chunk_size`) for contrastive batches larger than memory.
* Momentum encoders move once per optimizer step (`MomentumUpdateCallback`).
* `distill_teacher`: DiDE distillation of a frozen fusion teacher into the dual-encoder student, added to the
  student's loss in `compute_loss` (each term logged as `*_distill_loss`, their weighted sum as `distill_loss`).
* `train_augmentation`: the training loader's collator runs in training mode (random resized crops).
* `_get_train_sampler`: GRIT-VLP grouped mini-batches (`grit_sampling`), refreshed by `GritRefreshCallback`; the
  groups travel with checkpoints so resumed runs see the same batches.
* `evaluate`: retrieval (Recall@1/5/10 both ways, mean recall, optional cross-encoder re-ranking) and zero-shot
  classification, sharded over processes, instead of a loss over the eval set.
* `peft_config`: the model is wrapped with `hf_vlp.adapters.prepare_peft_model` (LoRA or any linear-layer PEFT
  method); the stock Trainer then saves only the adapter, in checkpoints and in `save_model`, and resumes it.
* `create_model_card`: hf-vlp's card (`hf_vlp.model_card`) with the measured retrieval / zero-shot results, which
  `push_to_hub` uploads, instead of the generic Trainer card.

The machinery behind the overrides lives in its own modules (`batches`, `distillation`, `grad_cache`, `grit`,
`evaluation`, `callbacks`); this one holds only the overrides, one or two methods per item above.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint, has_length, speed_metrics

from hf_vlp.models.processing_vlp import DEFAULT_MAX_LENGTH
from trainers.data import EvalGallery, ImageTextCollator

from .arguments import OptionConflictError, VLPTrainingArguments, parse_rerank_combine
from .batches import distill_alpha, empty_batch_loss, model_inputs
from .callbacks import DatasetEpochCallback, GritRefreshCallback, MomentumUpdateCallback, unwrap_model
from .distillation import add_distillation, load_distill_teacher
from .evaluation import EvalRuntime, ZeroShotSet, evaluate_retrieval, evaluate_zero_shot
from .grad_cache import average_gradients, check_grad_cache_support, grad_cache_backward
from .grit import GRIT_STATE_NAME, load_grit_state, refresh_grit_order, save_grit_state, train_set_embeddings
from .sampler import GritSampler


if TYPE_CHECKING:
    from peft import PeftConfig

__all__ = ["GRIT_STATE_NAME", "VLPTrainer"]

logger = logging.getLogger(__name__)


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
        self._num_usable_batches = 0
        self._grit_sampler: GritSampler | None = None
        self._grad_cache_checked = False
        if args.grit_sampling:
            self.add_callback(GritRefreshCallback(self))
        self._distill_teacher = load_distill_teacher(self.model, args) if args.distill_teacher else None

    # ------------------------------------------------------------------------------------------ loss
    def _model_inputs(self, model: nn.Module, inputs: dict[str, Any], training: bool) -> dict[str, Any] | None:
        """The model's `forward` arguments of a collated batch (`trainers.batches`), None for an all-bad batch."""
        inputs, skipped = model_inputs(model, inputs, self.args.use_image_ids)
        if training:
            self._num_skipped_samples += skipped
            self._num_usable_batches += inputs is not None
        alpha = distill_alpha(model, self.args.distill_warmup_steps, self.state.global_step)
        if inputs is not None and alpha is not None:
            inputs["alpha"] = alpha
        return inputs

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
            loss = empty_batch_loss(model, self.args.device)
            return (loss, None) if return_outputs else loss
        outputs = model(**inputs)
        if self._distill_teacher is not None and model.training:
            outputs = add_distillation(model, self._distill_teacher, inputs, outputs, self.args)
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
            loss = empty_batch_loss(inner, self.args.device)
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
            average_gradients(inner)
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

    def skipped_with_nothing_trained(self) -> int:
        """The bad samples training skipped, summed over processes, when it never had a usable one (e.g. every image
        corrupt); 0 otherwise. The model is then its initialisation, which a job must not save as trained. A
        collective: every process calls it."""
        usable = self._reduce(torch.tensor(float(self._num_usable_batches)), "sum")
        skipped = self._reduce(torch.tensor(float(self._num_skipped_samples)), "sum")
        return int(skipped) if usable == 0 else 0

    def _reduce(self, value: torch.Tensor, reduction: str) -> float:
        if self.args.world_size > 1:
            value = self.accelerator.reduce(value.to(self.args.device), reduction=reduction)
        return float(value.item())

    # ------------------------------------------------------------------------------------------ data
    def _training_collator(self) -> Any:
        """The collator of the training loader: with `train_augmentation`, the collator in training mode."""
        if not self.args.train_augmentation:
            return self.data_collator
        if not isinstance(self.data_collator, ImageTextCollator):
            raise ValueError(
                f"train_augmentation needs the trainer's ImageTextCollator, got {type(self.data_collator).__name__}: "
                "pass ImageTextCollator(processor, train=True) yourself, or drop train_augmentation"
            )
        minimum = self.args.train_crop_min_scale
        return self.data_collator.for_training(crop_scale=None if minimum is None else (minimum, 1.0))

    def get_train_dataloader(self) -> DataLoader:
        """A streaming dataset that splits its shards across ranks itself bypasses `accelerator.prepare`, which
        would otherwise read everything on rank 0 and dispatch it, or make every rank read all shards.

        With `train_augmentation`, only this loader uses the collator's training mode."""
        collator = self.data_collator
        self.data_collator = self._training_collator()
        try:
            return self._train_dataloader()
        finally:
            self.data_collator = collator

    def _train_dataloader(self) -> DataLoader:
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

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Weight decay on weight matrices only (CLIP / open_clip), unless `stock_weight_decay_groups`.

        The stock rule exempts biases and LayerNorm weights by name but decays `logit_scale`, which pulls the
        learned temperature towards exp(0) = 1, i.e. towards flat logits and the ln(batch) plateau; and it decays
        1-D parameters such as a ViT's class embedding or SigLIP's logit bias. Decaying only parameters with two or
        more dimensions covers every tower without name patterns.
        """
        if self.args.stock_weight_decay_groups:
            return super().get_decay_parameter_names(model)
        return [name for name, param in model.named_parameters() if param.ndim >= 2]

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> torch.utils.data.Sampler | None:
        if not self.args.grit_sampling:
            return super()._get_train_sampler(train_dataset)
        return self._grit(train_dataset)

    def _grit(self, train_dataset: Dataset | None = None) -> GritSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is None or not has_length(dataset):
            raise OptionConflictError(
                "grit_sampling needs a map-style training dataset (with a length): not --train-shards / streaming"
            )
        if self._grit_sampler is None or self._grit_sampler.num_samples != len(dataset):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            self._grit_sampler = GritSampler(len(dataset), self.args.per_device_train_batch_size, seed=seed)
        return self._grit_sampler

    def refresh_grit_groups(self, epoch: int) -> None:
        """Group the training set with the current model's embeddings for `epoch` (called by `GritRefreshCallback`;
        kept when the groups of `epoch` were restored from a checkpoint)."""
        runtime = self._eval_runtime()
        model = self.accelerator.unwrap_model(self.model)
        refresh_grit_order(
            self._grit(),
            epoch,
            lambda: train_set_embeddings(model, self.train_dataset, self.data_collator, runtime, self._prepare_inputs),
            self.args.grit_search_space,
            runtime,
        )

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
            state = load_grit_state(resume_from_checkpoint)
            if state is not None:
                self._grit().load_state_dict(state)
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            save_grit_state(self._grit_sampler, folder)

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
