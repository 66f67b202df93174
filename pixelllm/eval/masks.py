"""Mask metrics for referring segmentation: per-mask IoU, cIoU, gIoU, and box P@0.5 from a mask.

PAPER_NOTES.md §3: cIoU = ΣI / ΣU over the split (large objects weigh more); gIoU = mean of the per-expression
IoUs. Masks are binary H×W arrays (numpy or torch, bool / 0-1 ints) **in original-image pixels**, or COCO
RLE dicts; intersections/areas go through pycocotools' RLE ops (``mask.merge(..., intersect=1)``,
``mask.area``), so a split's worth of full-resolution masks never needs to sit in memory decoded.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
from pycocotools import mask as mask_utils


def _to_rle(m, where: str) -> dict:
    """Binary H×W mask or COCO RLE (compressed, or uncompressed with list counts) → compressed RLE."""
    if isinstance(m, dict):
        if "size" not in m or "counts" not in m:
            raise ValueError(f"{where}: RLE dict needs 'size' and 'counts', got keys {sorted(m)}")
        if isinstance(m["counts"], list):  # uncompressed RLE
            h, w = m["size"]
            return mask_utils.frPyObjects(m, h, w)
        return m
    if hasattr(m, "detach"):
        m = m.detach().cpu().numpy()
    a = np.asarray(m)
    if a.ndim != 2:
        raise ValueError(f"{where}: a mask must be H×W, got shape {a.shape}")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{where}: mask values must be 0/1 (threshold probabilities/logits first), "
                             f"got dtype {a.dtype} with values like {np.unique(a)[:5]}")
    return mask_utils.encode(np.asfortranarray(a.astype(np.uint8)))


def mask_intersection_union(pred, gt, where: str = "mask_intersection_union") -> tuple[int, int]:
    """(|pred ∩ gt|, |pred ∪ gt|) in pixels of two same-size masks."""
    p, g = _to_rle(pred, where + " (pred)"), _to_rle(gt, where + " (gt)")
    if list(p["size"]) != list(g["size"]):
        raise ValueError(f"{where}: pred size {p['size']} != gt size {g['size']} (h, w); "
                         "resize predictions to the original image first")
    inter = int(mask_utils.area(mask_utils.merge([p, g], intersect=True)))
    union = int(mask_utils.area(p)) + int(mask_utils.area(g)) - inter
    return inter, union


def mask_iou(pred, gt) -> float:
    """IoU of two masks. Both empty (union 0) → 1.0 (nothing to find, nothing predicted; gRefCOCO's rule)."""
    i, u = mask_intersection_union(pred, gt, "mask_iou")
    return i / u if u > 0 else 1.0


def _iu_lists(preds: Sequence, gts: Sequence, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(preds) != len(gts):
        raise ValueError(f"{name}: {len(preds)} predicted masks for {len(gts)} ground-truth masks")
    iu = [mask_intersection_union(p, g, f"{name}[{k}]") for k, (p, g) in enumerate(zip(preds, gts))]
    arr = np.asarray(iu, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def ciou(preds: Sequence, gts: Sequence) -> float:
    """Cumulative IoU over a split: Σ_k |P_k ∩ G_k| / Σ_k |P_k ∪ G_k|."""
    i, u = _iu_lists(preds, gts, "ciou")
    return float(i.sum() / u.sum()) if u.sum() > 0 else float("nan")


def giou(preds: Sequence, gts: Sequence) -> float:
    """Generalised (mean) IoU over a split: mean_k IoU(P_k, G_k) (empty ∪ empty counts as 1)."""
    i, u = _iu_lists(preds, gts, "giou")
    if len(i) == 0:
        return float("nan")
    return float(np.where(u > 0, i / np.maximum(u, 1), 1.0).mean())


def mask_to_box(mask) -> np.ndarray:
    """Tight box of a binary mask: (x0, y0, x1, y1) pixels with exclusive x1/y1 (last pixel + 1), as the
    official ``mask_to_box``; an empty mask gives (0, 0, 0, 0)."""
    if isinstance(mask, dict):
        x, y, w, h = mask_utils.toBbox(_to_rle(mask, "mask_to_box"))  # xywh, pixel-edge convention
        return np.array([x, y, x + w, y + h], dtype=np.float64)
    a = _np_mask(mask)
    xs, ys = np.flatnonzero(a.any(0)), np.flatnonzero(a.any(1))
    if len(xs) == 0:
        return np.zeros(4)
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def _np_mask(m) -> np.ndarray:
    if hasattr(m, "detach"):
        m = m.detach().cpu().numpy()
    a = np.asarray(m)
    if a.ndim != 2:
        raise ValueError(f"mask_to_box: a mask must be H×W, got shape {a.shape}")
    return a.astype(bool)


def mask_box_precision_at(pred_masks: Sequence, gt_boxes, thr: float = 0.5) -> float:
    """Box P@thr (IoU strictly > thr) of the predicted masks' tight boxes vs. ground-truth boxes N×4
    (x0, y0, x1, y1), original-image pixels."""
    from pixelllm.eval.boxes import precision_at

    boxes = np.stack([mask_to_box(m) for m in pred_masks]) if len(pred_masks) else np.zeros((0, 4))
    return precision_at(boxes, gt_boxes, thr)


def refseg_metrics(preds: Sequence, gts: Sequence, splits: Sequence[Hashable] | None = None) -> dict:
    """cIoU and gIoU per split (plus ``"all"``): ``{split: {"cIoU", "gIoU", "n"}}``."""
    i, u = _iu_lists(preds, gts, "refseg_metrics")
    splits = list(splits) if splits is not None else ["all"] * len(i)
    if len(splits) != len(i):
        raise ValueError(f"refseg_metrics: {len(splits)} split labels for {len(i)} masks")
    ious = np.where(u > 0, i / np.maximum(u, 1), 1.0)
    out = {}
    names = list(dict.fromkeys(splits)) + (["all"] if "all" not in splits else [])
    for s in names:
        sel = np.ones(len(i), bool) if s == "all" else np.array([x == s for x in splits], bool)
        out[s] = {"cIoU": float(i[sel].sum() / u[sel].sum()) if u[sel].sum() > 0 else float("nan"),
                  "gIoU": float(ious[sel].mean()) if sel.any() else float("nan"),
                  "n": int(sel.sum())}
    return out
