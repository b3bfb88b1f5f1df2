"""Worker of test_fsdp2.py: `hf-vlp ARGS` in one process of an `accelerate launch` of the shipped FSDP2 config on CPU.

accelerate 1.x turns an FSDP config into FSDP only for accelerator processes (`AcceleratorState` switches to
`DistributedType.FSDP` from MULTI_GPU, MULTI_XPU, MULTI_NPU ...; never from MULTI_CPU): on CPU, `--use_cpu` gives
DDP over gloo and drops the FSDP plugin. torch itself runs FSDP2 (`fully_shard`) on CPU over gloo, so this worker
lifts that one gate before the CLI runs: when accelerate set up MULTI_CPU and its launcher exported an FSDP config,
the state becomes FSDP with the plugin accelerate built from that config. Everything after it (the Trainer's
accelerator, `fsdp2_prepare_model`, sharding, gradient reduction, the full state dict for `save_pretrained`) is the
unchanged accelerate and transformers path. It prints what was set up (`SETUP ...`) for the test to check.
"""

from __future__ import annotations

import os
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu(self: AcceleratorState, *args, fsdp_plugin=None, **kwargs) -> None:
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate records its own switch


if __name__ == "__main__":
    assert os.environ.get("ACCELERATE_USE_FSDP") == "true", "launch with the FSDP config through accelerate"
    AcceleratorState.__init__ = _fsdp_on_cpu

    import torch.distributed as dist
    from transformers import Trainer

    from trainers.cli import main

    _create_accelerator = Trainer.create_accelerator_and_postprocess

    def _report_setup(trainer: Trainer) -> None:
        _create_accelerator(trainer)
        state = trainer.accelerator.state
        version = getattr(state.fsdp_plugin, "fsdp_version", None)
        print(f"SETUP {state.distributed_type} fsdp_version={version} world={dist.get_world_size()}", flush=True)

    Trainer.create_accelerator_and_postprocess = _report_setup
    sys.exit(main(sys.argv[1:]))
