"""Training engine: losses, the plain training loop, checkpoints/resume, DDP helpers.

Light on import: the submodules (which import torch) load on first attribute access, e.g.
``from pixelllm.engine import Trainer`` or ``pixelllm.engine.pixelllm_loss``.
"""
from __future__ import annotations

from pixelllm._lazy import lazy_module_getattr

_LAZY = {
    "pixelllm_loss": "pixelllm.engine.losses",
    "label_smoothed_cross_entropy": "pixelllm.engine.losses",
    "count_targets": "pixelllm.engine.losses",
    "Trainer": "pixelllm.engine.trainer",
    "NonFiniteLossError": "pixelllm.engine.trainer",
    "lr_factor": "pixelllm.engine.trainer",
    "forward_batch": "pixelllm.engine.trainer",
    "save_checkpoint": "pixelllm.engine.checkpoint",
    "load_checkpoint": "pixelllm.engine.checkpoint",
    "latest_checkpoint": "pixelllm.engine.checkpoint",
    "load_trainable_state_dict": "pixelllm.engine.checkpoint",
    "init_distributed": "pixelllm.engine.distributed",
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
