"""Multi-target mask evaluation as on PixelLM's MUSE benchmark (PAPER_NOTES.md §7.1): the predicted masks of
a question are matched one-to-one to its ground-truth masks, the unmatched ones on either side are paired
with an empty mask, and gIoU / cIoU are computed over those pairs.

For one question with P predicted and G ground-truth masks (H×W each) the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) picks the min(P, G) pairs of largest total IoU; the other
max(P, G) − min(P, G) masks are each paired with an empty mask. With pairs k = 1..max(P, G):

    IoU_k = |P_k ∩ G_k| / |P_k ∪ G_k|          (1 when both are empty, as the official evaluation does)
    question IoU  = mean_k IoU_k               (PixelLM's per-image ``acc_iou / max_num``)
    gIoU          = mean over questions of the question IoU
    gIoU_pairs    = Σ_questions Σ_k IoU_k / Σ_questions max(P, G)   (the official aggregate: its
                    ``AverageMeter`` weighs each image by its number of pairs)
    cIoU          = Σ_questions Σ_k |P_k ∩ G_k| / Σ_questions Σ_k |P_k ∪ G_k|

A missing target thus adds its area to the union and 0 to the question IoU; an extra prediction adds its
area to the union and a 0 too. A question without ground truth and without prediction has no pair: its
IoU is 1 and it adds nothing to cIoU.

Differences from the official ``ar_validate`` (``train_ds.py``) kept on purpose: matching maximises IoU of
the binarised masks (the official cost is sigmoid cross-entropy + Dice of the logits on 12 544 random
points, the cost of its training matcher ``utils/matcher.py``), and IoU has no 1e-5 in the denominator.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: buckets of :func:`evaluate_multi_target` by number of ground-truth targets
TARGET_BUCKETS = ("1", "2", "3+")


def _as_masks(m: Any, name: str, threshold: float) -> np.ndarray:
    """[N, H, W] bool from a bool / 0-1 int array or probabilities in [0, 1] (> ``threshold`` → True)."""
    if hasattr(m, "detach"):
        m = m.detach().cpu().numpy()
    a = np.asarray(m)
    if a.ndim != 3:
        raise ValueError(f"{name}: expected masks [N, H, W], got shape {a.shape}")
    if a.dtype == bool:
        return a
    if a.size and (np.isnan(a).any() or a.min() < 0 or a.max() > 1):
        raise ValueError(f"{name}: mask values must be booleans, 0/1 or probabilities in [0, 1] (apply a sigmoid "
                         f"to logits first), got values in [{a.min()}, {a.max()}]")
    return a > threshold


def _pairwise_iu(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intersection [P, G], union [P, G]) in pixels of bool masks [P, H, W] and [G, H, W]."""
    p = pred.reshape(len(pred), -1).astype(np.int64)
    g = gt.reshape(len(gt), -1).astype(np.int64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return inter, union


def match_masks(pred: Any, gt: Any, threshold: float = 0.5) -> list[tuple[int, int]]:
    """Hungarian one-to-one matching of predicted masks ``pred`` [P, H, W] (bool, 0/1 or probabilities,
    binarised at > ``threshold``) to ground-truth masks ``gt`` [G, H, W] maximising the total IoU
    (``scipy.optimize.linear_sum_assignment``). Returns min(P, G) pairs ``(pred_idx, gt_idx)`` sorted by
    ``pred_idx``; masks left out are unmatched."""
    from scipy.optimize import linear_sum_assignment

    p, g = _as_masks(pred, "match_masks pred", threshold), _as_masks(gt, "match_masks gt", 0.5)
    if p.shape[1:] != g.shape[1:]:
        raise ValueError(f"match_masks: pred masks are {p.shape[1:]} but gt masks {g.shape[1:]} (H, W)")
    if len(p) == 0 or len(g) == 0:
        return []
    inter, union = _pairwise_iu(p, g)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols))


def score_question(pred: Any, gt: Any, threshold: float = 0.5, where: str = "score_question") -> dict[str, Any]:
    """Pairs of one question (module docstring): ``{"matches": [(pred_idx, gt_idx)], "intersections": [k],
    "unions": [k], "ious": [k], "iou": question IoU, "n_pred": P, "n_gt": G}``; pairs are the matches
    first, then unmatched ground truths (vs empty), then unmatched predictions (vs empty)."""
    p, g = _as_masks(pred, f"{where} pred_masks", threshold), _as_masks(gt, f"{where} gt_masks", 0.5)
    if len(p) and len(g) and p.shape[1:] != g.shape[1:]:
        raise ValueError(f"{where}: pred masks are {p.shape[1:]} but gt masks {g.shape[1:]} (H, W)")
    matches = match_masks(p, g) if len(p) and len(g) else []
    inter, union = _pairwise_iu(p, g) if len(p) and len(g) else (np.zeros((0, 0)), np.zeros((0, 0)))
    I = [int(inter[i, j]) for i, j in matches]
    U = [int(union[i, j]) for i, j in matches]
    mp, mg = {i for i, _ in matches}, {j for _, j in matches}
    for j in range(len(g)):
        if j not in mg:
            I.append(0)
            U.append(int(g[j].sum()))
    for i in range(len(p)):
        if i not in mp:
            I.append(0)
            U.append(int(p[i].sum()))
    ious = [i / u if u > 0 else 1.0 for i, u in zip(I, U)]
    return {"matches": matches, "intersections": I, "unions": U, "ious": ious,
            "iou": float(np.mean(ious)) if ious else 1.0, "n_pred": len(p), "n_gt": len(g)}


def _summary(scores: list[dict]) -> dict[str, Any]:
    if not scores:
        return {"giou": float("nan"), "giou_pairs": float("nan"), "ciou": float("nan"), "n": 0, "n_pairs": 0,
                "count_accuracy": float("nan")}
    I = sum(sum(s["intersections"]) for s in scores)
    U = sum(sum(s["unions"]) for s in scores)
    pairs = [v for s in scores for v in s["ious"]]
    return {"giou": float(np.mean([s["iou"] for s in scores])),
            "giou_pairs": float(np.mean(pairs)) if pairs else float("nan"),
            "ciou": float(I / U) if U > 0 else float("nan"),
            "n": len(scores), "n_pairs": len(pairs),
            "count_accuracy": float(np.mean([s["n_pred"] == s["n_gt"] for s in scores]))}


def evaluate_multi_target(results: Sequence[dict], threshold: float = 0.5) -> dict[str, Any]:
    """gIoU / cIoU of multi-target segmentation over a split (module docstring).

    ``results``: one dict per question with ``pred_masks`` [P, H, W] and ``gt_masks`` [G, H, W] (numpy or
    torch; bool, 0/1 or probabilities binarised at > ``threshold``; the same frame for both).
    Returns ``{"giou", "giou_pairs", "ciou", "n", "n_pairs", "count_accuracy", "by_targets": {"1": {...},
    "2": {...}, "3+": {...}}}`` — ``count_accuracy`` is the fraction of questions with P == G; each bucket
    (by G) has the same keys, NaN values when it is empty; questions with G = 0 get a bucket "0".
    """
    if len(results) == 0:
        raise ValueError("evaluate_multi_target: no results to evaluate")
    scores = []
    for k, r in enumerate(results):
        if not isinstance(r, dict) or "pred_masks" not in r or "gt_masks" not in r:
            raise ValueError(f"evaluate_multi_target: results[{k}] needs 'pred_masks' and 'gt_masks'")
        scores.append(score_question(r["pred_masks"], r["gt_masks"], threshold, f"results[{k}]"))
    out = _summary(scores)
    buckets = {b: [s for s in scores if s["n_gt"] > 0 and min(s["n_gt"], 3) == int(b[0])] for b in TARGET_BUCKETS}
    if any(s["n_gt"] == 0 for s in scores):
        buckets = {"0": [s for s in scores if s["n_gt"] == 0], **buckets}
    out["by_targets"] = {b: _summary(v) for b, v in buckets.items()}
    return out
