"""Evaluators for every task of the paper (PAPER_NOTES.md §2.6, §3, §4).

* :mod:`pixelllm.eval.caption`  — BLEU / METEOR / ROUGE-L / CIDEr-D with pycocoevalcap's scorers, offline
  (``caption_metrics``, batched ``meteor_scores``, ``Meteor`` process wrapper, ``ptb_tokenize``).
* :mod:`pixelllm.eval.trace`    — per-word ``point_l1`` (+ per-class breakdown, centre / other-narrative baselines);
  ``pointing_accuracy`` (word point inside the pointed-at object's box; centre / random-object baselines) and
  its free-running variant on generated colour + shape phrases.
* :mod:`pixelllm.eval.boxes`    — ``box_iou``, ``precision_at`` (IoU > 0.5), ``boxes_to_original``, per split.
* :mod:`pixelllm.eval.masks`    — ``mask_iou``, ``ciou``, ``giou``, ``mask_to_box``, ``refseg_metrics``.
* :mod:`pixelllm.eval.densecap` — ``densecap_map`` (DenseCap mAP / mAP_detection, official port).

Importing this package is free: the functions below are loaded from their sub-module on first use.
"""
from __future__ import annotations

from pixelllm._lazy import lazy_module_getattr

_LAZY = {
    "caption_metrics": ".caption", "meteor_scores": ".caption", "Meteor": ".caption", "ptb_tokenize": ".caption",
    "point_l1": ".trace", "point_l1_per_token": ".trace", "point_l1_by_class": ".trace",
    "normalize_points": ".trace", "centre_points": ".trace", "random_other_narrative": ".trace",
    "mean_point": ".trace", "points_in_boxes": ".trace", "pointing_accuracy": ".trace",
    "random_object_points": ".trace", "words_of_tokens": ".trace", "word_centres": ".trace", "colour_shape_phrases": ".trace",
    "generated_pointing_hits": ".trace",
    "box_iou": ".boxes", "paired_box_iou": ".boxes", "precision_at": ".boxes", "boxes_to_original": ".boxes",
    "precision_by_split": ".boxes",
    "mask_iou": ".masks", "ciou": ".masks", "giou": ".masks", "mask_to_box": ".masks",
    "mask_box_precision_at": ".masks", "refseg_metrics": ".masks",
    "densecap_map": ".densecap", "merge_gt_boxes": ".densecap",
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
