"""Import the reference implementation, `cn_clip.clip` (Chinese-CLIP), for equality tests.

`cn_clip.clip/__init__` imports `cn_clip.clip.utils`, which imports `torchvision.transforms` at module level for
`image_transform` only. cn-clip is installed with `--no-deps`, so torchvision may be missing; then a throw-away
`torchvision.transforms` whose names raise when called is in `sys.modules` for the duration of the import only.
The parts the tests use (`tokenize`, `model.CLIP`, `FullTokenizer`) do not use torchvision, so the shim changes
nothing they compute; `image_transform` is never called. Tests skip when cn-clip itself is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


__all__ = ["import_cn_clip"]


def _unavailable(name: str):
    def fail(*args, **kwargs):
        raise RuntimeError(f"torchvision.transforms.{name} is not installed (shim for importing cn_clip.clip)")

    return fail


def import_cn_clip() -> types.ModuleType:
    """`cn_clip.clip` (with `.model` and `.utils` loaded), or skip the test when cn-clip is not installed."""
    if importlib.util.find_spec("cn_clip") is None:
        pytest.skip("cn-clip is not installed (pip install --no-deps cn-clip==1.6.0)")
    if "cn_clip.clip" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("cn_clip.clip")
    shim = types.ModuleType("torchvision")
    shim.transforms = types.ModuleType("torchvision.transforms")
    for name in ("Compose", "ToTensor", "Normalize", "Resize", "InterpolationMode"):
        setattr(shim.transforms, name, _unavailable(name))
    sys.modules.update({"torchvision": shim, "torchvision.transforms": shim.transforms})
    try:
        module = importlib.import_module("cn_clip.clip")
        importlib.import_module("cn_clip.clip.model")
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.transforms"]
    return module
