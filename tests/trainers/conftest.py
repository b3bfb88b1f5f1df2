"""Trainer tests run single-threaded: tiny models gain nothing from intra-op threads, and on a shared CPU
multi-threaded kernels mostly wait for each other (10-50x slower steps)."""

from __future__ import annotations

import torch


torch.set_num_threads(1)
