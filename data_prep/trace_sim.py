"""A mouse-trace simulator: a plausible Localized-Narratives-style trace for a caption and the boxes of the
objects it names (PAPER_NOTES.md §6, §11).

The speaking model (shared with :func:`word_spans`, which ``data_prep.convert`` uses to time a trace that
comes without word timings): the caption is spoken at a constant rate in *characters*, word k taking
``len(word_k) + 1`` character slots (the +1 is the pause after it), so the words tile the trace's time span
[t_first, t_last] in proportion to their length. While the words of a named object are spoken the pointer
dwells inside that object's box (a damped random walk over the central part of the box); before a named
phrase it glides to the next box, so it arrives when the phrase starts; on words that name nothing it
drifts slowly. Points are sampled at ``rate_hz`` with small Gaussian jitter, like a hand on a mouse.

    from data_prep.trace_sim import simulate_trace
    trace = simulate_trace("a red moon on the left", {"red moon": (10, 40, 40, 70)}, 128, 128, seed=0)
    trace.points        # P×3 (x, y, t): pixels of the image and seconds
    trace.word_times    # W×2 (start, end) seconds of each whitespace word
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

CHARS_PER_SECOND = 14.0     # ~2.6 words/s for the captions here (LN annotators speak at ~2–3 words/s)
RATE_HZ = 20.0              # trace samples per second
JITTER_PX = 0.6             # std of the per-sample hand jitter, pixels
DWELL_FRACTION = 0.6        # the dwelling walk stays inside this central fraction of the box (per axis)
LEAD_S = 0.35               # the glide to a named object's box ends this long before its phrase starts


def word_spans(words: Sequence[str], t_start: float, t_end: float) -> np.ndarray:
    r"""W×2 (start, end) times of ``words`` spoken over [t_start, t_end] at a constant character rate.

    Word k gets the slot :math:`[t_s + T\,c_k / C,\; t_s + T\,(c_k + \ell_k) / C]` with
    :math:`\ell_k = \mathrm{len}(w_k) + 1`, :math:`c_k = \sum_{j<k} \ell_j`, :math:`C = \sum_j \ell_j` and
    :math:`T = t_e - t_s` (the last character slot of each word is its pause, so the end of word k is a
    pause's length before the start of word k + 1)."""
    if not words:
        return np.zeros((0, 2))
    if not t_end >= t_start:
        raise ValueError(f"word_spans: t_end ({t_end}) must be >= t_start ({t_start})")
    lens = np.array([len(w) + 1 for w in words], dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(lens)])
    scale = (t_end - t_start) / c[-1]
    return np.stack([t_start + c[:-1] * scale, t_start + (c[1:] - 1.0) * scale], axis=1)


def phrase_word_indices(words: Sequence[str], phrase: str, used: set[int] | None = None) -> list[int]:
    """Indices of the first occurrence of ``phrase``'s words as a contiguous run in ``words`` (case and
    surrounding punctuation ignored; runs in ``used`` are skipped), or [] when it does not occur."""
    norm = [w.strip(".,;:!?\"'").lower() for w in words]
    target = [w.strip(".,;:!?\"'").lower() for w in phrase.split()]
    used = used or set()
    for s in range(len(norm) - len(target) + 1):
        span = list(range(s, s + len(target)))
        if target and norm[s:s + len(target)] == target and not used.intersection(span):
            return span
    return []


@dataclass
class SimulatedTrace:
    """One simulated narrative.

    points      P×3 (x, y, t): pixels of the image (may leave it by the jitter) and seconds, in time order
    word_times  W×2 (start, end) seconds of each whitespace word of the caption (:func:`word_spans`)
    word_box    W ints: index into the named boxes of the object each word names, −1 for none
    """
    points: np.ndarray
    word_times: np.ndarray
    word_box: np.ndarray

    def to_list(self, decimals: int = 2) -> list[list[float]]:
        """``points`` as a JSON-ready ``[[x, y, t], ...]`` (rounded)."""
        return np.round(self.points, decimals).tolist()


def simulate_trace(caption: str, named: Mapping[str, Sequence[float]] | Sequence[tuple[str, Sequence[float]]],
                   width: int, height: int, seed: int | np.random.Generator = 0,
                   chars_per_second: float = CHARS_PER_SECOND, rate_hz: float = RATE_HZ,
                   jitter_px: float = JITTER_PX) -> SimulatedTrace:
    """Simulate the mouse trace of an annotator saying ``caption`` about a ``width``×``height`` image.

    Args:
        caption: the narrative; words are its whitespace tokens.
        named: phrase → box ``(x0, y0, x1, y1)`` in pixels, for each object the caption names (a mapping,
            or a list of pairs when a phrase repeats). Each phrase is matched to its first unused
            contiguous run of caption words (:func:`phrase_word_indices`); a phrase that does not occur
            raises ``ValueError``.
        seed: an int or a ``numpy`` Generator.
    Returns a :class:`SimulatedTrace` whose times start at 0 and whose words tile the trace's time span
    by the speaking model of the module docstring (so :func:`word_spans` recovers ``word_times`` from the
    trace alone).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    words = caption.split()
    if not words:
        raise ValueError("simulate_trace: empty caption")
    pairs = list(named.items()) if isinstance(named, Mapping) else [tuple(p) for p in named]
    boxes = np.zeros((len(pairs), 4))
    word_box = np.full(len(words), -1, dtype=np.int64)
    used: set[int] = set()
    for k, (phrase, box) in enumerate(pairs):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"simulate_trace: box of {phrase!r} must have x1 > x0 and y1 > y0, got {box}")
        idx = phrase_word_indices(words, phrase, used)
        if not idx:
            raise ValueError(f"simulate_trace: phrase {phrase!r} does not occur in the caption {caption!r}")
        used.update(idx)
        boxes[k] = x0, y0, x1, y1
        word_box[idx] = k
    total = sum(len(w) + 1 for w in words) / chars_per_second
    times = word_spans(words, 0.0, total)
    t = np.arange(0.0, total + 1e-9, 1.0 / rate_hz)
    if t[-1] < total:
        t = np.append(t, total)
    # Key frames: (time, x, y) the pointer passes through; linear between them, dwelling walks inside boxes.
    pos = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
    xy = np.zeros((len(t), 2))
    k = 0
    while k < len(words):
        b = word_box[k]
        j = k
        while j + 1 < len(words) and word_box[j + 1] == b:
            j += 1
        w0, w1 = times[k, 0], (times[j + 1, 0] if j + 1 < len(words) else total + 1e-9)
        sel = np.nonzero((t >= w0) & (t < w1))[0] if k else np.nonzero(t < w1)[0]
        if b >= 0:       # dwell: a damped random walk around the box centre, inside its central part
            x0, y0, x1, y1 = boxes[b]
            c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
            half = np.array([(x1 - x0), (y1 - y0)]) * DWELL_FRACTION / 2
            p = c + rng.uniform(-0.5, 0.5, 2) * half
            for i in sel:
                p = p + 0.25 * (c - p) + rng.normal(0, 0.35, 2) * half
                p = np.clip(p, c - half, c + half)
                xy[i] = p
            pos = xy[sel[-1]].copy() if len(sel) else c
        else:            # glide towards the next named box (arriving LEAD_S before it), else drift
            nxt = next((word_box[m] for m in range(j + 1, len(words)) if word_box[m] >= 0), -1)
            if nxt >= 0:
                x0, y0, x1, y1 = boxes[nxt]
                goal = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
            else:
                goal = pos + rng.normal(0, 0.05, 2) * [width, height]
            t_arrive = max(w0, w1 - LEAD_S)
            for i in sel:
                a = 1.0 if t_arrive <= w0 else float(np.clip((t[i] - w0) / (t_arrive - w0), 0, 1))
                a = a * a * (3 - 2 * a)                         # ease in / out, like a hand
                xy[i] = pos + a * (goal - pos)
            pos = xy[sel[-1]].copy() if len(sel) else pos
        k = j + 1
    xy = xy + rng.normal(0, jitter_px, xy.shape)
    return SimulatedTrace(points=np.concatenate([xy, t[:, None]], axis=1), word_times=times, word_box=word_box)


__all__ = ["CHARS_PER_SECOND", "SimulatedTrace", "phrase_word_indices", "simulate_trace", "word_spans"]
