"""Downstream tasks built on a trained PixelLLM (REFERENCE §3).

* :mod:`pixelllm.tasks.referring` — referring localization (the decoder state that emits EOS regresses
  the box) and referring segmentation (predicted box → frozen SAM decoder + gated mask adapter):
  ``finetune_referring``, ``evaluate_referring``, ``train_mask_adapter``, ``evaluate_refseg``,
  ``predict_referring``.

Importing this package is free (no torch): names load from their sub-module on first use.
"""
from __future__ import annotations

import importlib

_LAZY = {name: "referring" for name in (
    "finetune_referring", "evaluate_referring", "train_mask_adapter", "evaluate_refseg", "predict_referring",
    "load_referring", "load_refseg", "referring_forward", "predict_boxes", "ReferringSegmenter",
    "refexp_datasets", "check_refexp_records", "build_mask_head", "figure_referring")}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"pixelllm.tasks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pixelllm.tasks' has no attribute {name!r}")


__all__ = list(_LAZY)
