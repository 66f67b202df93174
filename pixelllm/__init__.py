"""PixelLLM (Pixel Aligned Language Models, Xu et al., CVPR 2024) in PyTorch.

Importing this package does no I/O and touches no network: sub-modules are imported lazily
(``pixelllm.build_pixelllm`` imports ``pixelllm.modeling`` on first use).
"""
from __future__ import annotations

from pixelllm._lazy import lazy_module_getattr

__version__ = "0.1.0"

_LAZY = {
    "build_pixelllm": "pixelllm.modeling.build",
    "load_pretrained": "pixelllm.modeling.build",
    "PixelLLM": "pixelllm.modeling.pixelllm",
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)

__all__ = ["__version__", *_LAZY]
