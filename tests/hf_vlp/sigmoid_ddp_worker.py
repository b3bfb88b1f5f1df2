"""Worker of test_sigmoid_loss.py, run under `torchrun --nproc_per_node 2` on CPU (gloo).

Each rank computes the sigmoid loss of its half of an 8-pair batch (with two images captioned twice, on different
ranks) against the texts and images gathered from both ranks; the gradients are averaged as DDP does. Rank 0
compares the mean rank loss and the averaged gradients with one process's loss and gradients on the whole batch,
and writes the comparison to `<output_dir>/result.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.trainers.helpers import small_model
from tests.utils.gradients import max_relative_error, parameter_grads


IMAGE_IDS = torch.tensor([0, 1, 2, 3, 0, 4, 1, 5])  # pairs 0/4 and 1/6 share a picture across the two ranks


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(6, 3, 32, 32, generator=generator)[IMAGE_IDS]
    return {
        "input_ids": torch.randint(1000, 2000, (8, 6), generator=generator),
        "attention_mask": torch.ones(8, 6, dtype=torch.long),
        "pixel_values": pixels,
        "image_ids": IMAGE_IDS,
    }


def loss_and_grads(model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**inputs, return_loss=True).loss
    loss.backward()
    return loss.detach(), parameter_grads(model)


def main(output_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    full = batch()
    local = {key: value.chunk(world)[rank] for key, value in full.items()}
    result = {"world_size": world}
    for similarity in ("global", "token_wise"):
        model = small_model(seed=0, contrastive_loss="sigmoid", similarity=similarity)
        loss, grads = loss_and_grads(model, local)
        dist.all_reduce(loss)
        for grad in grads.values():
            dist.all_reduce(grad)
            grad.div_(world)
        reference = small_model(seed=0, contrastive_loss="sigmoid", similarity=similarity, gather_distributed=False)
        expected_loss, expected_grads = loss_and_grads(reference, full)
        result[f"{similarity}_loss_error"] = abs(float(loss / world - expected_loss))
        result[f"{similarity}_grad_error"] = max_relative_error(grads, expected_grads)
        result[f"{similarity}_bias_grad"] = float(expected_grads["logit_bias"])
    if rank == 0:
        (output_dir / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
