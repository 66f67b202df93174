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


# ------------------------------------------------------------------------------------------ pointing
# ``pointing_accuracy`` (PAPER_NOTES.md §2.8): does a word's predicted location land on the object the
# annotator's pointer was on while saying it? It needs the per-utterance pointing ground truth of the
# synthetic world (``pixelllm.data.pointing``); real LN data has none.
def mean_point(pred_points) -> np.ndarray:
    """A token's single point: the mean of its predicted points.

    Args:
      pred_points: (..., 2k) flat (x0, y0, x1, y1, ...), k ≥ 1 points per token.
    Returns:
      (..., 2) float64 — for the trace head's two corners, the centre of the predicted box.
    """
    p = _np(pred_points, np.float64)
    if p.ndim == 0 or p.shape[-1] % 2 or p.shape[-1] == 0:
        raise ValueError(f"mean_point: last dim must hold (x, y) pairs, got shape {p.shape}")
    return p.reshape(p.shape[:-1] + (p.shape[-1] // 2, 2)).mean(-2)


def points_in_boxes(points, boxes) -> np.ndarray:
    """Whether each point lies in its box, edges included.

    Args:
      points: (..., 2) (x, y).
      boxes: (..., 4) (x0, y0, x1, y1) in the same frame (e.g. both normalised by the image size).
    Returns:
      (...) bool.
    """
    p, b = _np(points, np.float64), _np(boxes, np.float64)
    if p.shape[-1] != 2 or b.shape[-1] != 4 or p.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"points_in_boxes: points (..., 2) and boxes (..., 4) must share leading dims, got "
                         f"{p.shape} and {b.shape}")
    return (p[..., 0] >= b[..., 0]) & (p[..., 0] <= b[..., 2]) & (p[..., 1] >= b[..., 1]) & (p[..., 1] <= b[..., 3])


def pointing_accuracy(pred_points, boxes, on_object) -> float:
    """Fraction of on-object tokens whose predicted point falls inside the object's box (PAPER_NOTES.md §2.8).

    A token counts when its utterance is on one object (``on_object``); it is a hit when the mean of its
    predicted points (:func:`mean_point`) lies in that object's box, edges included.

    Args:
      pred_points: N×4 two points per token (x0, y0, x1, y1), or N×2 one point.
      boxes: N×4 (x0, y0, x1, y1) box of the object each token's utterance is on, in the frame of
        ``pred_points`` (normalised [0, 1] by the image size in this repo); ignored where not ``on_object``.
      on_object: N bool.
    Returns:
      hits / on-object tokens (float); NaN when no token is on an object.
    """
    v = _np(on_object).astype(bool)
    hit = points_in_boxes(mean_point(pred_points), boxes)
    if v.shape != hit.shape:
        raise ValueError(f"pointing_accuracy: on_object {v.shape} must match the tokens {hit.shape}")
    return float(hit[v].mean()) if v.any() else float("nan")


def random_object_points(object_boxes: Sequence, rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """"A random object of the same image" baseline: each token points at the box centre of an object drawn
    uniformly from its image's objects (the talked-about one included) — knows where the objects are, not
    which one the words are about.

    Args:
      object_boxes: per token, a K_i×4 array (x0, y0, x1, y1) of the boxes of all objects of the token's
        image (K_i ≥ 1; the same array may be shared by the tokens of one image).
      rng: a numpy Generator or a seed (one draw per token, in order).
    Returns:
      N×2 float64 points.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = np.zeros((len(object_boxes), 2))
    for i, b in enumerate(object_boxes):
        b = _np(b, np.float64).reshape(-1, 4)
        if len(b) == 0:
            raise ValueError(f"random_object_points: token {i} has no object to point at")
        x0, y0, x1, y1 = b[rng.integers(len(b))]
        out[i] = (x0 + x1) / 2, (y0 + y1) / 2
    return out


def words_of_tokens(tokens: Sequence[str], marker: str = "\u2581") -> list[tuple[str, list[int]]]:
    """Group sub-word tokens into words → ``[(word, token indices)]``.

    A token starting with ``marker`` (SentencePiece's "▁") starts a new word; any other token continues the
    current one, except punctuation-only tokens, which are words of their own. Words are lower-cased and
    stripped of the marker and surrounding punctuation (``"▁Circle"``, ``"."`` → ``"circle"``, ``""``).
    """
    words: list[tuple[str, list[int], bool]] = []                 # (text, token indices, has a letter/digit)
    for i, t in enumerate(tokens):
        starts = bool(marker) and t.startswith(marker)
        body = t[len(marker):] if starts else t
        alnum = any(c.isalnum() for c in body)
        if starts or not alnum or not words or not words[-1][2]:
            words.append((body, [i], alnum))
        else:
            words[-1] = (words[-1][0] + body, words[-1][1] + [i], True)
    return [(w.strip(".,;:!?\"'()").lower(), idx) for w, idx, _ in words]


def word_centres(tokens: Sequence[str], points, word: str, marker: str = "\u2581") -> np.ndarray:
    """The point of every occurrence of ``word`` in a token sequence → K×2 (x, y), in ``points``' frame.

    Words are grouped by :func:`words_of_tokens` (a word of several sub-word pieces is one occurrence;
    case and punctuation ignored); an occurrence's point is the mean over its tokens of their box centres,
    ``points`` being T×4 (x0, y0, x1, y1) per token (PAPER_NOTES.md §2.8, §11)."""
    p = _np(points, np.float64).reshape(-1, 4)
    if len(p) < len(tokens):
        raise ValueError(f"word_centres: {len(tokens)} tokens but {len(p)} points")
    out = [[p[idx][:, [0, 2]].mean(), p[idx][:, [1, 3]].mean()]
           for w, idx in words_of_tokens(tokens, marker) if w == word.lower()]
    return np.asarray(out, np.float64).reshape(-1, 2)


def colour_shape_phrases(tokens: Sequence[str], colours, shape_words, marker: str = "\u2581") -> list[dict]:
    """Phrases that name a colour and a shape: a colour word directly followed by a shape word ("a big red
    circle" → ("red", "circle"); a size before the colour does not matter).

    Args:
      tokens: a generated caption's tokens (e.g. ``tokenizer.convert_ids_to_tokens``), EOS excluded.
      colours: the colour words (e.g. ``pixelllm.data.vocab.COLORS``).
      shape_words: shape noun → shape name, plurals included if wanted (``{"circle": "circle",
        "circles": "circle", ...}``); a plain collection of shape names maps each to itself.
    Returns:
      ``[{"colour", "shape", "tokens": the shape noun's token indices}]`` in caption order.
    """
    shapes = dict(shape_words) if hasattr(shape_words, "items") else {s: s for s in shape_words}
    colours = set(colours)
    words = words_of_tokens(tokens, marker)
    return [{"colour": a, "shape": shapes[b], "tokens": idx}
            for (a, _), (b, idx) in zip(words, words[1:]) if a in colours and b in shapes]


def identified_tokens(tokens: Sequence[str], objects: Sequence, id_words, marker: str = "\u2581") -> np.ndarray:
    """Which tokens' decoder states have already *seen* a word that identifies their object.

    With teacher forcing the state that predicts token j has read tokens < j only (T5's decoder input is the
    target shifted right). In "a big red star in the top left corner" the tokens of "a", "big" and "red"
    are predicted before any word of the phrase says which object it is about: their point can only be
    right by guessing which object the narrative describes next. A token is **identified** when an
    earlier word of the same object run (consecutive tokens whose utterances are on the same object) is in
    ``id_words`` (colours, shapes, position words) and ends before it.

    Args:
      tokens: the target's T tokens (e.g. ``tokenizer.convert_ids_to_tokens``).
      objects: per token, the object (annotation id) its utterance is on, or None.
      id_words: the identifying words (lower case).
    Returns:
      T bool; always False where ``objects`` is None.
    """
    if len(objects) != len(tokens):
        raise ValueError(f"identified_tokens: {len(tokens)} tokens but {len(objects)} objects")
    ids = {w.lower() for w in id_words}
    run = np.zeros(len(tokens), np.int64)                          # run index of each token
    for j in range(1, len(tokens)):
        same = objects[j] is not None and objects[j] == objects[j - 1]
        run[j] = run[j - 1] + (0 if same else 1)
    first_seen: dict[int, int] = {}                                # run → first token after an identifying word
    for word, idx in words_of_tokens(tokens, marker):
        r = run[idx[-1]]
        if word in ids and objects[idx[-1]] is not None and all(run[k] == r for k in idx):
            first_seen.setdefault(int(r), idx[-1] + 1)
    out = np.array([objects[j] is not None and j >= first_seen.get(int(run[j]), len(tokens) + 1)
                    for j in range(len(tokens))], dtype=bool)
    return out


def generated_pointing_hits(phrases: Sequence[dict], pred_points, objects: Sequence,
                            match: str = "colour_shape") -> np.ndarray:
    """Free-running pointing (PAPER_NOTES.md §2.8): a phrase naming colour + shape is a hit when its point
    lies inside the box of an object of that colour and shape in the image (``match="colour"``: of that
    colour, whatever its shape — pointing with the shape word's naming error taken out).

    The phrase's point is taken on its shape noun: the mean over the noun's tokens of each token's
    :func:`mean_point` (the centre of its predicted box).

    Args:
      phrases: from :func:`colour_shape_phrases`.
      pred_points: T×4 (or T×2) the caption's per-token points, in the frame of the boxes.
      objects: the image's objects as ``(colour, shape, (x0, y0, x1, y1))``.
      match: ``"colour_shape"`` (the metric) or ``"colour"``.
    Returns:
      bool array, one entry per phrase (False when the image has no object that matches).
    """
    if match not in ("colour_shape", "colour"):
        raise ValueError(f"generated_pointing_hits: match must be 'colour_shape' or 'colour', got {match!r}")
    pts = mean_point(pred_points)
    hits = np.zeros(len(phrases), dtype=bool)
    for k, ph in enumerate(phrases):
        p = pts[list(ph["tokens"])].mean(0)
        boxes = [b for c, s, b in objects if c == ph["colour"] and (match == "colour" or s == ph["shape"])]
        hits[k] = bool(len(boxes)) and bool(points_in_boxes(np.broadcast_to(p, (len(boxes), 2)),
                                                            np.asarray(boxes, np.float64)).any())
    return hits
