"""Worker of test_distributed.py, run under `torchrun --nproc_per_node 2` on CPU (gloo).

Each rank trains one step on its half of an 8-pair batch; rank 0 checks that the DDP-averaged gradients equal the
gradients of one process on the whole batch (plain and with gradient caching), and that the sharded retrieval
evaluation equals a single-process one. Rank 0 writes the comparison to `<output_dir>/result.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from hf_vlp import VLPImageProcessor, VLPProcessor, build_chinese_tokenizer
from tests.trainers.helpers import small_model, training_args
from tests.utils.gradients import max_relative_error, parameter_grads
from trainers import EvalRuntime, VLPTrainer, evaluate_retrieval
from trainers.data import ImageTextCollator, ImageTextDataset, build_eval_gallery, demo_records


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


class GradCapture(TrainerCallback):
    """The gradients the optimizer is about to apply (after DDP's averaging)."""

    grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = parameter_grads(model)


def main(output_dir: Path) -> None:
    torch.set_num_threads(1)
    processor = VLPProcessor(VLPImageProcessor(size={"height": 32, "width": 32}), build_chinese_tokenizer(), 32)
    dataset = ImageTextDataset(demo_records(8, image_size=32), caption_strategy="first")
    result = {}
    for chunk in (0, 3):
        capture = GradCapture()
        args = training_args(
            output_dir / f"chunk{chunk}",
            per_device_train_batch_size=4,
            max_steps=1,
            train_sampling_strategy="sequential",
            grad_cache_chunk_size=chunk,
            ddp_backend="gloo",
        )
        model = small_model(seed=0, logit_scale_init_value=3.0)
        trainer = VLPTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=processor, callbacks=[capture]
        )
        trainer.train()
        result["world_size"] = dist.get_world_size()
        if dist.get_rank() == 0:
            reference = small_model(seed=0, logit_scale_init_value=3.0, gather_distributed=False)
            batch = ImageTextCollator(processor)([dataset[i] for i in range(len(dataset))])
            inputs = {key: batch[key] for key in MODEL_INPUTS}
            reference(**inputs, image_ids=batch["image_hash"], return_loss=True).loss.backward()
            expected = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
            result[f"max_relative_error_chunk{chunk}"] = max_relative_error(capture.grads, expected)

    gallery = build_eval_gallery(demo_records(11, seed=5, image_size=32))
    metrics = trainer.evaluate(gallery)
    if dist.get_rank() == 0:
        single = evaluate_retrieval(trainer.model, gallery, processor, EvalRuntime(device=torch.device("cpu")))
        result["eval_matches_single_process"] = all(metrics[f"eval_{key}"] == value for key, value in single.items())
        (output_dir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
