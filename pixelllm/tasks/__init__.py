"""Downstream tasks built on a trained PixelLLM (PAPER_NOTES.md §3).

* :mod:`pixelllm.tasks.referring` — referring localization (the decoder state that emits EOS regresses
  the box) and referring segmentation (predicted box → frozen SAM decoder + gated mask adapter):
  ``finetune_referring``, ``evaluate_referring``, ``train_mask_adapter``, ``evaluate_refseg``,
  ``predict_referring``, ``load_refseg``;
* :mod:`pixelllm.tasks.region_caption` — location-conditioned captioning; :mod:`pixelllm.tasks.densecap` —
  dense object captioning; :mod:`pixelllm.tasks.captioning` — stages 1 and 2;
* :mod:`pixelllm.tasks.ablations` — the ablation arms of notebook 08 (paper Tables 4/5 analogues), trained
  and evaluated through the stages and tasks above.

Importing this package is free (no torch): names load from their sub-module on first use.
"""
from __future__ import annotations

from pixelllm._lazy import lazy_module_getattr

_LAZY = {name: ".referring" for name in (
    "finetune_referring", "evaluate_referring", "train_mask_adapter", "evaluate_refseg", "predict_referring",
    "load_refseg", "build_refseg_model", "referring_forward", "predict_boxes", "ReferringSegmenter",
    "refexp_datasets", "check_refexp_records", "build_mask_head")}

__getattr__ = lazy_module_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
