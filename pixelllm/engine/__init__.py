"""Training engine: the one training loop, checkpoints/resume, DDP helpers, the one model builder/loader
(``builder``), run paths (``paths``), a config's datasets (``datasets``) and evaluation (``evaluate``).
The losses live with the model (``pixelllm.modeling.losses``).

Light on import: the submodules (which import torch) load on first attribute access, e.g.
``from pixelllm.engine import Trainer``.
"""
from __future__ import annotations

from pixelllm._lazy import lazy_module_getattr

_LAZY = {
    "build_model": "pixelllm.engine.builder",
    "load_stage_model": "pixelllm.engine.builder",
    "resolve_paths": "pixelllm.engine.paths",
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
