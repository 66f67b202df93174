"""Box metrics for referring localization: IoU, P@0.5 (IoU strictly > 0.5) in original-image pixels.

Boxes are (x0, y0, x1, y1) float. The model predicts in pixels of the *resized* input (longest side S,
padded bottom/right, ARCHITECTURE "Coordinates"); the metric is computed in pixels of the *original*
image (PAPER_NOTES.md §3), so map predictions back with :func:`boxes_to_original` first — the same per-axis
rescale-and-clip as the official ``rescale_and_convert_boxes_to_xywh`` (scenic pixel_llm evaluators.py).
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torchvision.ops import box_iou as _tv_box_iou


def _t(x) -> torch.Tensor:
    return x.detach().to(torch.float64) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


def _check_boxes(b: torch.Tensor, name: str) -> torch.Tensor:
    b = b.reshape(-1, 4) if b.numel() == 0 else b
    if b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError(f"{name}: boxes must be N×4 (x0, y0, x1, y1), got shape {tuple(b.shape)}")
    return b


def box_iou(boxes1, boxes2) -> torch.Tensor:
    """All-pairs IoU, N×M float64 (torchvision.ops.box_iou).

    Boxes N×4 / M×4 (x0, y0, x1, y1), any common frame. Touching boxes (shared edge) → 0; a pair whose
    union is 0 (two zero-area boxes) → 0 instead of torchvision's NaN.
    """
    b1, b2 = _check_boxes(_t(boxes1), "box_iou"), _check_boxes(_t(boxes2), "box_iou")
    return torch.nan_to_num(_tv_box_iou(b1, b2), nan=0.0)


def paired_box_iou(boxes1, boxes2) -> torch.Tensor:
    """IoU of row i of ``boxes1`` with row i of ``boxes2``: N float64.

    Hand-written because torchvision only offers the N×M matrix, whose diagonal would cost O(N²) memory
    on a whole split (10k expressions → 100M entries); tested equal to ``box_iou(...).diagonal()``.
    Union 0 → IoU 0.
    """
    a, b = _check_boxes(_t(boxes1), "paired_box_iou"), _check_boxes(_t(boxes2), "paired_box_iou")
    if a.shape != b.shape:
        raise ValueError(f"paired_box_iou: {tuple(a.shape)} vs {tuple(b.shape)}: need the same number of boxes")
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def precision_at(pred, gt, thr: float = 0.5) -> float:
    """P@thr for paired boxes: fraction with IoU **strictly greater** than ``thr`` (PAPER_NOTES.md §3).

    Args:
      pred, gt: N×4 (x0, y0, x1, y1), same frame — original-image pixels for reported numbers.
    Returns:
      float in [0, 1]; NaN for N = 0.
    """
    iou = paired_box_iou(pred, gt)
    return float((iou > thr).double().mean()) if iou.numel() else float("nan")


def boxes_to_original(boxes, orig_size, resized_size=None, scale=None, clip: bool = True) -> torch.Tensor:
    """Map boxes from the resized/padded model frame back to original-image pixels.

    Padding is bottom/right, so only a scale is undone. Give either ``resized_size`` (h, w) after resize
    and before padding — the batch's ``image_sizes`` — (per-axis scale orig/resized, as the official
    code), or ``scale`` = resized / original (the longest-side factor S / max(h, w)).

    Args:
      boxes: N×4 (x0, y0, x1, y1) pixels of the resized input.
      orig_size: (h, w) or N×2 original image size(s), pixels.
      resized_size: (h, w) or N×2 after resize, before padding.
      scale: float or N floats (resized = original × scale).
      clip: clip to [0, w] × [0, h] of the original image.
    Returns:
      N×4 float64 boxes in original pixels.
    """
    b = _check_boxes(_t(boxes), "boxes_to_original")
    hw = _t(orig_size).reshape(-1, 2)
    if (resized_size is None) == (scale is None):
        raise ValueError("boxes_to_original: give exactly one of resized_size or scale")
    if resized_size is not None:
        f = hw / _t(resized_size).reshape(-1, 2)  # (N|1)×2 (h, w) orig / resized
        fx, fy = f[:, 1:2], f[:, 0:1]
    else:
        s = _t(scale).reshape(-1, 1)
        fx = fy = 1.0 / s
    out = b * torch.cat([fx, fy, fx, fy], dim=1)
    if clip:
        w, h = hw[:, 1:2], hw[:, 0:1]
        lim = torch.cat([w, h, w, h], dim=1)
        out = torch.minimum(out.clamp(min=0), lim)
    return out


def precision_by_split(pred, gt, splits: Sequence[Hashable], thr: float = 0.5) -> dict[Hashable, dict]:
    """P@thr per split (e.g. RefCOCO val / testA / testB), plus ``"all"``.

    Args:
      pred, gt: N×4 paired boxes in original-image pixels.
      splits: N split names, aligned with the boxes.
    Returns:
      ``{split: {"P@0.5": float, "n": count}}`` (key named after ``thr``), in first-seen split order.
    """
    iou = paired_box_iou(pred, gt)
    if len(splits) != len(iou):
        raise ValueError(f"precision_by_split: {len(splits)} split labels for {len(iou)} boxes")
    key = f"P@{thr:g}"
    out = {}
    for s in dict.fromkeys(splits):
        sel = torch.tensor([x == s for x in splits], dtype=torch.bool)
        out[s] = {key: float((iou[sel] > thr).double().mean()), "n": int(sel.sum())}
    out["all"] = {key: float((iou > thr).double().mean()) if len(iou) else float("nan"), "n": len(iou)}
    return out
