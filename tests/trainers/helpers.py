"""Models, data and arguments shared by the trainer tests (tiny, deterministic, offline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import TrainerCallback

from hf_vlp import DualEncoderConfig, DualEncoderModel
from trainers import VLPTrainer, VLPTrainingArguments
from trainers.data import ImageTextDataset, demo_records


TEXT = {
    "model_type": "bert",
    "vocab_size": 7581,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "image_size": 32,
    "patch_size": 8,
}


def small_config(**overrides) -> DualEncoderConfig:
    """A 2-layer, 32-wide dual encoder on 32px images; no dropout, so forward passes are deterministic."""
    return DualEncoderConfig(text_config=dict(TEXT), vision_config=dict(VISION), projection_dim=16, **overrides)


def small_model(seed: int = 0, **overrides) -> DualEncoderModel:
    torch.manual_seed(seed)
    return DualEncoderModel(small_config(**overrides))


def training_args(output_dir, **overrides) -> VLPTrainingArguments:
    """Arguments for short, exactly reproducible CPU runs: plain SGD, no clipping, constant LR without warm-up,
    no saving."""
    values = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "max_steps": 2,
        "learning_rate": 0.5,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "use_cpu": True,
        "seed": 0,
    }
    values.update(overrides)
    return VLPTrainingArguments(**values)


def train_on_demo(model: nn.Module, processor, output_dir, num_records: int = 8, **args) -> VLPTrainer:
    """A `VLPTrainer` of `model` over `num_records` 32px demo pairs with `training_args(output_dir, **args)`, after
    `train()`."""
    trainer = VLPTrainer(
        model=model,
        args=training_args(output_dir, **args),
        train_dataset=ImageTextDataset(demo_records(num_records, image_size=32)),
        processing_class=processor,
    )
    trainer.train()
    return trainer


class StopAtStep(TrainerCallback):
    """Simulates a killed job: training stops after `step` optimizer steps, after any checkpoint is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


class MomentumDualEncoder(DualEncoderModel):
    """A dual encoder with what fusion models add: an EMA copy of a head, a queue buffer fed by it, dropout in a
    loss term, and `momentum_update()`. Resuming it exactly needs the buffers, the RNG state and the EMA."""

    _auto_class = None  # a test class: do not copy this file next to the weights

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config)
        dim = config.projection_dim
        self.text_head = nn.Linear(dim, dim)
        self.text_head_m = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.3)
        self.register_buffer("queue", torch.zeros(8, dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.post_init()
        self.text_head_m.load_state_dict(self.text_head.state_dict())
        self.text_head_m.requires_grad_(False)
        self.momentum_updates = 0

    @torch.no_grad()
    def momentum_update(self, momentum: float = 0.9) -> None:
        for online, ema in zip(self.text_head.parameters(), self.text_head_m.parameters()):
            ema.mul_(momentum).add_(online, alpha=1 - momentum)
        self.momentum_updates += 1

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if out.loss is None:
            return out
        text = F.normalize(self.text_head(out.text_embeds), dim=-1)
        out["queue_loss"] = (text @ self.queue.clone().t()).mean()  # the queue is updated in place below
        out["dropout_loss"] = self.dropout(out.image_embeds).pow(2).mean()
        out["loss"] = out.loss + out["queue_loss"] + out["dropout_loss"]
        if self.training:
            with torch.no_grad():
                keys = F.normalize(self.text_head_m(out.text_embeds.detach()), dim=-1)
                for key in keys:
                    self.queue[self.queue_ptr % self.queue.shape[0]] = key
                    self.queue_ptr += 1
        return out


class Regression(nn.Module):
    """A model whose loss has no coupling between samples (a per-sample mean) plus a batch-independent term,
    so a batch of 8 and two accumulated batches of 4 must give the same update."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)
        self.forward_calls = 0
        self.momentum_updates = 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self.forward_calls += 1
        mse = (self.linear(x).squeeze(-1) - y).pow(2).mean()
        penalty = 0.1 * self.linear.weight.pow(2).sum()
        return {"loss": mse + penalty, "mse_loss": mse, "penalty_loss": penalty}

    def momentum_update(self) -> None:
        self.momentum_updates += 1


class RegressionData(Dataset):
    def __init__(self, n: int = 8) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = torch.randn(n, generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}
