"""Per-word trace metric ``point_l1`` (PAPER_NOTES.md §2.6) and its baselines.

``point_l1``: for every valid token, the L1 distance — in coordinates normalised by the image size —
from each predicted point to the **closest** of the utterance's ground-truth trace samples, averaged
over valid tokens. The details follow the official ``PointEvaluator``
(scenic/projects/pixel_llm/evaluators.py):

* per (predicted point p, ground-truth sample g): ``d = (|p_x - g_x| + |p_y - g_y|) / 2`` — the *mean*
  over the two coordinates (``np.mean(np.abs(...), axis=-1)`` there), so a point off by 0.1 in x only
  scores 0.05;
* each predicted point takes its own closest sample (min over the S samples);
* the two predicted points of a token (the trace head's (x0, y0, x1, y1), i.e. the two corners of the
  utterance's trace box) are averaged: ``token error = mean_p min_g d(p, g)``;
* tokens are averaged over the valid ones. ``reduction="token"`` (default, PAPER_NOTES.md §2.6) pools all
  valid tokens of all samples; ``reduction="sample"`` averages per sample first, then over samples —
  what the official evaluator does per added example.

All inputs are in normalised [0, 1] image coordinates, (x, y) order, origin top-left. Model outputs are
pixels of the resized input: convert them with :func:`normalize_points` (divide by the resized (w, h),
before padding). numpy only (torch tensors are accepted and converted), so this module stays light.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np


def _np(x, dtype=None) -> np.ndarray:
    """numpy view of an array-like or a (CPU/GPU, maybe grad-carrying) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def normalize_points(points_px, image_sizes) -> np.ndarray:
    """Pixels of the resized input → [0, 1] image coordinates.

    Args:
      points_px: B×T×2k (x, y, x, y, ...) in pixels of the resized input (before padding).
      image_sizes: B×2 (h, w) after resize, before padding (the batch's ``image_sizes``).
    Returns:
      B×T×2k float64, each x divided by w and each y by h.
    """
    p = _np(points_px, np.float64)
    hw = _np(image_sizes, np.float64)
    if p.shape[-1] % 2:
        raise ValueError(f"normalize_points: last dim must hold (x, y) pairs, got shape {p.shape}")
    if hw.shape != (p.shape[0], 2):
        raise ValueError(f"normalize_points: image_sizes must be B×2 (h, w) with B={p.shape[0]}, got {hw.shape}")
    wh = hw[:, ::-1]  # B×2 (w, h)
    scale = np.tile(wh, p.shape[-1] // 2)  # B×2k (w, h, w, h, ...)
    return p / scale.reshape((p.shape[0],) + (1,) * (p.ndim - 2) + (p.shape[-1],))


def _as_point_sets(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Bring predictions to (..., P, 2) to match gt (..., S, 2)."""
    if gt.ndim < 3 or gt.shape[-1] != 2:
        raise ValueError(f"point_l1: gt_samples must be (..., S, 2) normalised (x, y), got shape {gt.shape}")
    if pred.ndim == gt.ndim - 1:  # (..., 2k) flat (x0, y0, x1, y1, ...)
        if pred.shape[-1] % 2:
            raise ValueError(f"point_l1: pred_points last dim must be 2k (x, y pairs), got {pred.shape}")
        pred = pred.reshape(pred.shape[:-1] + (pred.shape[-1] // 2, 2))
    if pred.ndim != gt.ndim or pred.shape[-1] != 2 or pred.shape[:-2] != gt.shape[:-2]:
        raise ValueError(f"point_l1: pred_points {pred.shape} do not match gt_samples {gt.shape} "
                         "(expected (..., 2k) or (..., P, 2) with the same leading token dims)")
    return pred, gt


def point_l1_per_token(pred_points, gt_samples) -> np.ndarray:
    """Per-token error ``mean_p min_s mean_xy |pred_p - gt_s|`` (official PointEvaluator).

    Args:
      pred_points: (..., 4) two points per token (x0, y0, x1, y1), or (..., 2) one point, or (..., P, 2);
        normalised [0, 1].
      gt_samples: (..., S, 2) the utterance's trace samples per token (e.g. S = 16), normalised (x, y).
    Returns:
      (...) float64 error per token (computed for every token; mask with ``valid`` yourself).
    """
    pred, gt = _as_point_sets(_np(pred_points, np.float64), _np(gt_samples, np.float64))
    d = np.abs(pred[..., :, None, :] - gt[..., None, :, :]).mean(-1)  # (..., P, S)
    return d.min(-1).mean(-1)  # (...)


def point_l1(pred_points, gt_samples, valid, reduction: str = "token") -> float:
    """Trace metric (PAPER_NOTES.md §2.6): normalised L1 to the closest GT sample, averaged over valid tokens.

    Args:
      pred_points: B×T×4 (two points per token), B×T×2 or B×T×P×2, normalised [0, 1] (x, y).
      gt_samples: B×T×S×2 normalised trace samples of each token's utterance.
      valid: B×T bool — tokens with a trace target (word tokens of a narrative; not EOS / pad).
      reduction: "token" (pool all valid tokens) or "sample" (mean per row of B, then mean over rows
        that have ≥ 1 valid token; the official evaluator's averaging).
    Returns:
      the mean error (float); NaN when no token is valid.
    """
    err = point_l1_per_token(pred_points, gt_samples)
    v = _np(valid).astype(bool)
    if v.shape != err.shape:
        raise ValueError(f"point_l1: valid {v.shape} must match the token dims {err.shape}")
    if reduction == "token":
        return float(err[v].mean()) if v.any() else float("nan")
    if reduction == "sample":
        e2, v2 = err.reshape(err.shape[0], -1), v.reshape(v.shape[0], -1)
        n = v2.sum(1)
        keep = n > 0
        return float(((e2 * v2).sum(1)[keep] / n[keep]).mean()) if keep.any() else float("nan")
    raise ValueError(f"point_l1: reduction must be 'token' or 'sample', got {reduction!r}")


def point_l1_by_class(pred_points, gt_samples, valid, classes) -> dict[Hashable, dict[str, float]]:
    """``point_l1`` broken down by a per-token class label (e.g. position / attribute / shape / function).

    Args:
      pred_points, gt_samples, valid: as :func:`point_l1`.
      classes: B×T labels (any hashable: str or int), aligned with the tokens.
    Returns:
      ``{class: {"l1": mean error over its valid tokens, "n": token count}}`` plus ``"all"``;
      classes with no valid token are absent.
    """
    err = point_l1_per_token(pred_points, gt_samples)
    v = _np(valid).astype(bool)
    c = np.asarray(classes, dtype=object)
    if v.shape != err.shape or c.shape != err.shape:
        raise ValueError(f"point_l1_by_class: valid {v.shape} and classes {c.shape} must match tokens {err.shape}")
    out: dict = {}
    ev, cv = err[v], c[v]
    for k in dict.fromkeys(cv.tolist()):  # first-seen order
        sel = np.array([x == k for x in cv], dtype=bool)
        out[k] = {"l1": float(ev[sel].mean()), "n": int(sel.sum())}
    out["all"] = {"l1": float(ev.mean()) if ev.size else float("nan"), "n": int(ev.size)}
    return out


# ----------------------------------------------------------------------------------------- baselines
def centre_points(valid_shape: Sequence[int]) -> np.ndarray:
    """Image-centre baseline: the point (0.5, 0.5) for every token; shape ``(*valid_shape, 2)``."""
    return np.full(tuple(valid_shape) + (2,), 0.5)


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation with no fixed point (rejection sampling; ~e tries on average)."""
    if n < 2:
        raise ValueError(f"a derangement needs ≥ 2 items, got {n}")
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def random_other_narrative(targets: Sequence, valid: Sequence | None = None,
                           rng: np.random.Generator | int | None = 0) -> list[np.ndarray]:
    """"Trace of a random other narrative" baseline: each narrative borrows another one's per-token points.

    Narrative i is paired with σ(i), σ a random derangement (no narrative keeps its own trace). Its token
    j of T_i (relative position j/T_i) takes the donor's valid token whose relative position m/T_d is
    nearest — the same relative-position rule the LN alignment uses (PAPER_NOTES.md §2.4). The result keeps
    "where people tend to point while talking", but loses the image.

    Args:
      targets: list of per-narrative arrays, T_i×D (e.g. T_i×4 box corners or T_i×2 points, normalised
        [0, 1]) — anything indexed by token on axis 0.
      valid: optional list of T_i bool masks; only valid donor tokens are borrowed. Narratives with no
        valid token cannot donate: they are left out of the derangement and, as recipients, get a
        random eligible donor other than themselves.
      rng: a numpy Generator or a seed.
    Returns:
      list of arrays with the shapes of ``targets`` (the predictions for each narrative).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ts = [_np(t) for t in targets]
    vs = [np.ones(len(t), bool) if valid is None else _np(valid[i]).astype(bool) for i, t in enumerate(ts)]
    for i, (t, v) in enumerate(zip(ts, vs)):
        if v.shape != (len(t),):
            raise ValueError(f"random_other_narrative: valid[{i}] has shape {v.shape}, expected ({len(t)},)")
    eligible = np.array([i for i, v in enumerate(vs) if v.any()])
    if len(eligible) < 2:
        raise ValueError(f"random_other_narrative: need ≥ 2 narratives with a valid token, got {len(eligible)}")
    donor = {}
    for a, b in zip(eligible, eligible[_derangement(len(eligible), rng)]):
        donor[int(a)] = int(b)
    for i in range(len(ts)):
        if i not in donor:
            others = eligible[eligible != i]
            donor[i] = int(rng.choice(others))
    out = []
    for i, t in enumerate(ts):
        d = donor[i]
        t_d, idx_d = ts[d], np.flatnonzero(vs[d])
        pos_d = idx_d / len(t_d)  # relative positions of the donor's valid tokens
        pos_i = np.arange(len(t)) / max(len(t), 1)
        nearest = idx_d[np.abs(pos_i[:, None] - pos_d[None, :]).argmin(1)]  # T_i
        out.append(t_d[nearest].astype(np.float64) if len(t) else np.zeros_like(t, dtype=np.float64))
    return out
