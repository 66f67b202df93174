"""PixelLLM (Pixel Aligned Language Models, Xu et al., CVPR 2024) in PyTorch.

Importing this package does no I/O and touches no network: sub-modules are imported lazily
(``pixelllm.build_pixelllm`` imports ``pixelllm.modeling`` on first use).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "build_pixelllm": "pixelllm.modeling.build",
    "PixelLLM": "pixelllm.modeling.pixelllm",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixelllm' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
