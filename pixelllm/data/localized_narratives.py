"""Localized Narratives (LN): JSON-lines reader and the official trace → token alignment.

The format (PAPER_NOTES.md §6), one JSON object per line::

    {"dataset_id": "mscoco_val2017", "image_id": "137576", "annotator_id": 93,
     "caption": "In this image we can see a dog ...",
     "timed_caption": [{"utterance": "In this", "start_time": 0.0, "end_time": 0.4}, ...],
     "traces": [[{"x": 0.2, "y": 0.5, "t": 0.02}, ...], ...],   # segments of mouse points
     "voice_recording": "coco_val/coco_val_137576_93.ogg"}

``x, y`` are normalised to the image (origin top-left, may lie a little outside [0, 1]); ``t`` and the
utterance times are seconds on the same clock. The COCO image file is ``f"{int(image_id):012d}.jpg"``.

The alignment follows the official PixelLLM preprocessing exactly (scenic ``tools/build_ln_tfrecord.py``
``trace2coord`` + ``io/ops.py`` ``DecodeLocalizedNarrativesAnnotations``); see
:func:`utterance_traces`, :func:`num_aligned_tokens`, :func:`token_to_utterance` and
:func:`align_tokens_to_trace`.

Two alignments are offered (PAPER_NOTES.md §2.4, §2.7), chosen by the ``alignment`` argument:

- ``"official"`` (default): M counts the caption tokens kept after truncation to the maximum target
  length, so all utterances are spread over the kept tokens; a narrative with no valid utterance is kept
  and every token takes utterance 0 (the release's arg-min over equal distances).
- ``"full_caption"``: M counts the whole caption, so truncation cuts the targets of the later utterances
  together with their tokens; a narrative with no valid utterance is dropped and counted.
- ``"span"`` (not in the paper): each token takes the utterance its characters come from (the tokenizer's
  offset mapping against the utterances found in order in the caption); a token between utterances or in
  an invalid one takes the nearest valid utterance. Truncation cuts targets as ``"full_caption"`` does, and
  a narrative with no valid utterance is dropped. The relative-position rule gives 59 % of the synthetic
  narratives' tokens another utterance than their own (PAPER_NOTES.md §2.4).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pixelllm.data.errors import DataFormatError, SkipCounter, check_type, read_json_lines, require

NUM_SAMPLES = 16          # samples per utterance trace (official ``num_samples_per_trace``)
CENTER_EPS = 1e-5         # an utterance whose time-averaged centre has a coordinate <= this is invalid
SPAN_EPS = 1e-5           # utterance spans shorter than this use a plain mean instead of the trapezoid rule
ALIGNMENTS = ("official", "full_caption", "span")   # token ↔ utterance alignment variants (module docstring)


def check_alignment(alignment: str) -> str:
    """Return ``alignment`` if it is one of :data:`ALIGNMENTS`, else raise ``ValueError`` naming the choices."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    return alignment


@dataclass
class TimedUtterance:
    """One spoken utterance (may be several words) with its start/end time in seconds."""
    utterance: str
    start_time: float
    end_time: float


@dataclass
class Narrative:
    """One LN record, validated.

    ``traces`` is a list of segments, each a K×3 float64 array of (x, y, t) — x, y normalised to the
    image (may lie outside [0, 1]), t in seconds, in file order (not yet sorted).
    """
    image_id: str
    caption: str
    timed_caption: list[TimedUtterance]
    traces: list[np.ndarray]
    dataset_id: str = ""
    annotator_id: int | None = None
    voice_recording: str | None = None
    source: str | None = None          # "file:line" the record came from (for messages)

    @property
    def coco_file_name(self) -> str:
        """The image file name: ``f"{int(image_id):012d}.jpg"`` for numeric ids (COCO, our synthetic
        layout), ``f"{image_id}.jpg"`` otherwise (Open Images ids are hex strings). Datasets accept an
        ``image_path_fn`` for other layouts (e.g. Flickr30k's unpadded ``<id>.jpg``)."""
        if self.image_id.isdigit():
            return f"{int(self.image_id):012d}.jpg"
        return f"{self.image_id}.jpg"

    def trace_points(self) -> np.ndarray:
        """All segments concatenated: P×3 (x, y, t), file order."""
        if not self.traces:
            return np.zeros((0, 3))
        return np.concatenate(self.traces, axis=0)


# --------------------------------------------------------------------------------------------- reading
def parse_narrative(obj: Any, path: str | os.PathLike | None = None, line: int | None = None,
                    notes: SkipCounter | None = None) -> Narrative:
    """Validate one decoded JSON object and return a :class:`Narrative`.

    Raises :class:`DataFormatError` (naming ``path:line`` and the field) for a missing or ill-typed
    field. Oddities that the official code tolerates are kept and counted in ``notes``: trace points
    out of time order (sorted later), utterances with ``start_time > end_time`` (they get a plain mean),
    trace points outside the image (kept; targets are clipped to [0, 1]).
    """
    if not isinstance(obj, dict):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    image_id = require(obj, "image_id", (str, int), path, line)
    if isinstance(image_id, int):
        image_id = str(image_id)
    if not image_id or any(c in image_id for c in "/\\\0") or image_id.startswith("."):
        # the image file name is made from it (Narrative.coco_file_name): it must not name another folder
        raise DataFormatError(path, line, "image_id", f"expected an image id (no '/', '\\' or leading '.'), "
                                                     f"got {image_id!r:.60}")
    caption = require(obj, "caption", str, path, line)
    timed = require(obj, "timed_caption", list, path, line)
    utts = []
    for i, u in enumerate(timed):
        pre = f"timed_caption[{i}]."
        if not isinstance(u, dict):
            raise DataFormatError(path, line, f"timed_caption[{i}]", f"expected an object, got {u!r:.40}")
        text = require(u, "utterance", str, path, line, pre)
        t0 = float(require(u, "start_time", (int, float), path, line, pre))
        t1 = float(require(u, "end_time", (int, float), path, line, pre))
        if notes is not None and t0 > t1:
            notes.add("utterance start_time > end_time (kept: plain mean, as official)", detail=f"{path}:{line}")
        utts.append(TimedUtterance(text, t0, t1))
    segs_raw = require(obj, "traces", list, path, line)
    segs = []
    for s, seg in enumerate(segs_raw):
        check_type(seg, list, path, line, f"traces[{s}]")
        arr = np.empty((len(seg), 3))
        for k, p in enumerate(seg):
            pre = f"traces[{s}][{k}]."
            if not isinstance(p, dict):
                raise DataFormatError(path, line, f"traces[{s}][{k}]", f"expected an object, got {p!r:.40}")
            arr[k] = [require(p, c, (int, float), path, line, pre) for c in ("x", "y", "t")]
        segs.append(arr)
    narr = Narrative(
        image_id=image_id, caption=caption, timed_caption=utts, traces=segs,
        dataset_id=require(obj, "dataset_id", str, path, line, optional=True, default=""),
        annotator_id=require(obj, "annotator_id", int, path, line, optional=True),
        voice_recording=require(obj, "voice_recording", str, path, line, optional=True),
        source=None if path is None else f"{path}:{line}",
    )
    if notes is not None:
        pts = narr.trace_points()
        if len(pts) > 1 and np.any(np.diff(pts[:, 2]) < 0):
            notes.add("trace points out of time order (sorted, as official)", detail=narr.source)
        if len(pts) and (np.any(pts[:, :2] < 0) or np.any(pts[:, :2] > 1)):
            notes.add("traces leaving the image (kept; targets clipped to [0,1])")
    return narr


def localized_narratives_files(folder: str | os.PathLike, pattern: str = "*.jsonl") -> list[Path]:
    """The LN files of ``folder`` matching ``pattern``, sorted, without the pointing sidecars
    (``*.pointing.jsonl``, :mod:`pixelllm.data.pointing`) that lie beside them."""
    from pixelllm.data.pointing import POINTING_SUFFIX

    return [p for p in sorted(Path(folder).glob(pattern)) if not p.name.endswith(POINTING_SUFFIX)]


def iter_localized_narratives(path: str | os.PathLike, notes: SkipCounter | None = None) -> Iterator[Narrative]:
    """Stream the records of an LN ``.jsonl`` file (blank lines ignored).

    A malformed JSON line raises :class:`DataFormatError` naming ``file:line``; so does a missing or
    ill-typed field (naming the field, e.g. ``timed_caption[2].start_time``).
    """
    for lineno, obj in read_json_lines(path):
        yield parse_narrative(obj, path, lineno, notes)


def load_localized_narratives(path: str | os.PathLike, require_trace: bool = True,
                              skips: SkipCounter | None = None, progress: bool = False,
                              alignment: str = "official") -> list[Narrative]:
    """Read a whole LN file. ``require_trace=True`` drops (and counts) the narratives that cannot give
    targets under ``alignment`` (:func:`unusable_reason`): ≤ 1 trace point or no utterance — the ones the
    official preprocessing skips — and, for ``"full_caption"`` only, no valid utterance. The counts are
    reported (one logging warning) at the end unless a caller-owned ``skips`` is given."""
    check_alignment(alignment)
    own = skips is None
    skips = skips if skips is not None else SkipCounter(f"localized narratives {Path(path).name}")
    it = iter_localized_narratives(path, notes=skips)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=Path(path).name, unit=" narr")
    out = []
    for n in it:
        if require_trace:
            reason = unusable_reason(n, alignment)
            if reason:
                skips.add(reason, detail=n.source)
                continue
        out.append(n)
    if own:
        skips.report()
    return out


def unusable_reason(narr: Narrative, alignment: str = "official") -> str | None:
    """Why ``narr`` gives no targets under ``alignment`` (``None`` when it does).

    Both alignments skip narratives with ≤ 1 trace point (the official ``build_ln_tfrecord.py`` drops them:
    there is no interpolant) and narratives without any timed utterance (nothing to gather a target from).
    ``"official"`` keeps a narrative whose utterances are all invalid — the release decodes it, every token
    taking utterance 0 (:func:`token_to_utterance`); ``"full_caption"`` skips it.
    """
    check_alignment(alignment)
    if len(narr.trace_points()) <= 1:
        return "skipped: no trace (<= 1 point)"
    if not narr.timed_caption:
        return "skipped: no utterance"
    if alignment != "official" and not utterance_traces(narr).valid.any():
        return "skipped: no valid utterance"
    return None


# ------------------------------------------------------------------------------------------- alignment
@dataclass
class UtteranceTraces:
    """Per-utterance trace summaries of one narrative (N utterances, S samples), normalised coords.

    samples  N×S×2  (x, y) of the trace linearly interpolated (with extrapolation) at S evenly spaced
                    times in [start_time, end_time]; not clipped
    centers  N×2    time-average of the samples (trapezoid rule; plain mean when the span < 1e-5)
    boxes    N×4    (x0, y0, x1, y1) = min / max of the samples; not clipped
    valid    N bool text non-empty after strip and both centre coordinates > 1e-5
    """
    samples: np.ndarray
    centers: np.ndarray
    boxes: np.ndarray
    valid: np.ndarray


def utterance_traces(narr: Narrative, num_samples: int = NUM_SAMPLES) -> UtteranceTraces:
    r"""Steps 1–3 of the official preprocessing (``trace2coord``).

    1. Concatenate all trace segments and sort the points by time t (stable sort).
    2. Per utterance u = (text, t_s, t_e): :math:`t_i = t_s + \frac{i}{S-1}(t_e - t_s)`, i = 0..S-1
       (``np.linspace``), and :math:`x_i = \hat x(t_i)`, :math:`y_i = \hat y(t_i)` with
       :math:`\hat x, \hat y` the piecewise-linear interpolants of the trace, extrapolated linearly
       outside its time range (``scipy.interpolate.interp1d(fill_value="extrapolate")``, as official).
       Centre :math:`\bar x = \frac{1}{t_e - t_s}\int_{t_s}^{t_e} \hat x\,dt` by the trapezoid rule over
       the samples; if :math:`t_e - t_s < 10^{-5}` (including start > end) the plain mean of the samples.
       Box = (min x_i, min y_i, max x_i, max y_i).
    3. Valid iff ``text.strip()`` is non-empty and :math:`\bar x > 10^{-5}` and :math:`\bar y > 10^{-5}`
       (the official ``reduce_all(center > 1e-5)``; a non-finite centre — all trace times equal — fails it).

    Narratives with ≤ 1 trace point have no interpolant: every utterance is returned invalid (zeros).
    """
    from scipy.interpolate import interp1d

    n = len(narr.timed_caption)
    samples = np.zeros((n, num_samples, 2))
    centers = np.zeros((n, 2))
    boxes = np.zeros((n, 4))
    valid = np.zeros(n, dtype=bool)
    pts = narr.trace_points()
    if len(pts) <= 1:
        return UtteranceTraces(samples, centers, boxes, valid)
    order = np.argsort(pts[:, 2], kind="stable")                       # step 1: sort by t
    t_arr, x_arr, y_arr = pts[order, 2], pts[order, 0], pts[order, 1]
    with np.errstate(divide="ignore", invalid="ignore"):               # all-equal t → nan, made invalid below
        fx = interp1d(t_arr, x_arr, fill_value="extrapolate")
        fy = interp1d(t_arr, y_arr, fill_value="extrapolate")
        for k, u in enumerate(narr.timed_caption):
            t = np.linspace(u.start_time, u.end_time, num=num_samples)    # S evenly spaced times
            xs, ys = fx(t), fy(t)
            span = t[-1] - t[0]
            if span < SPAN_EPS:                                        # start == end (or reversed)
                cx, cy = xs.mean(), ys.mean()
            else:                                                      # (1/T) ∫ x dt, trapezoid rule
                cx, cy = np.trapezoid(xs, t) / span, np.trapezoid(ys, t) / span
            samples[k] = np.stack([xs, ys], axis=-1)
            centers[k] = cx, cy
            boxes[k] = xs.min(), ys.min(), xs.max(), ys.max()
            valid[k] = bool(u.utterance.strip()) and cx > CENTER_EPS and cy > CENTER_EPS
    return UtteranceTraces(samples, centers, boxes, valid)


def num_aligned_tokens(num_caption_tokens: int, max_target_len: int | None, alignment: str = "official") -> int:
    """M, the number of caption tokens the utterances are spread over (step 4, PAPER_NOTES.md §2.4).

    ``num_caption_tokens`` counts the caption's tokens without BOS/EOS/padding; ``max_target_len`` is the
    target length with EOS included (one slot is EOS), ``None`` = no truncation.

    - ``"official"``: M = min(n, max_target_len − 1), the non-special tokens left after truncation (the
      release counts them on the already truncated ``[BOS] caption [EOS]`` sequence of
      ``max_text_tokens``, which also leaves at most ``max_text_tokens − 1`` caption tokens).
    - ``"full_caption"`` and ``"span"``: M = n; the targets of the tokens cut by truncation are simply dropped.
    """
    check_alignment(alignment)
    n = int(num_caption_tokens)
    if n < 0:
        raise ValueError(f"num_caption_tokens must be >= 0, got {n}")
    if alignment != "official" or max_target_len is None:
        return n
    if max_target_len < 1:
        raise ValueError(f"max_target_len must be >= 1 (EOS included), got {max_target_len}")
    return min(n, int(max_target_len) - 1)


def token_to_utterance(num_tokens: int, utt_valid: Sequence[bool], alignment: str = "official") -> np.ndarray:
    r"""Step 4: match tokens to utterances by relative position (official ``DecodeLocalizedNarratives``).

    Valid utterance k (1-based among the :math:`N_v` valid ones) sits at :math:`p_k = k / N_v`; invalid
    ones at −1 (never the nearest). Token j = 1..M sits at :math:`q_j = j / M`, rescaled onto the span of
    the valid utterances: :math:`q_j' = p_{min} + q_j (p_{max} - p_{min})` with :math:`p_{min} = 1/N_v`,
    :math:`p_{max} = 1`. Each token takes :math:`\arg\min_k (q_j' - p_k)^2` (ties → earlier utterance).
    No string matching: works for any tokenizer. M is :func:`num_aligned_tokens`.

    When no utterance is valid, ``"official"`` returns 0 for every token — in the release every
    utterance then sits at −1, so all distances are equal and the arg-min is the first utterance —
    and ``"full_caption"`` returns −1 (no target).

    Returns an M int array of utterance indices into the full list (N ≥ 1 utterances for ``"official"``).
    """
    check_alignment(alignment)
    valid = np.asarray(utt_valid, dtype=bool)
    m = int(num_tokens)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    n_valid = int(valid.sum())
    if n_valid == 0:
        if alignment == "official" and len(valid):
            return np.zeros(m, dtype=np.int64)                         # arg-min of N equal distances
        return np.full(m, -1, dtype=np.int64)
    utt_pos = np.where(valid, np.cumsum(valid) / n_valid, -1.0)        # N: k/N_v or −1
    p_min, p_max = 1.0 / n_valid, 1.0
    tok_pos = np.arange(1, m + 1) / m                                  # M: j/M, j = 1..M
    tok_pos = p_min + tok_pos * (p_max - p_min)                        # rescaled onto [1/N_v, 1]
    dist = (tok_pos[:, None] - utt_pos[None, :]) ** 2                  # M×N
    return dist.argmin(axis=1).astype(np.int64)                        # first index on ties


def utterance_char_spans(caption: str, utterances: Sequence[str]) -> list[tuple[int, int]] | None:
    """(start, end) character span of each utterance in ``caption``, found in order (case-insensitive,
    each search starting where the previous utterance ended); ``None`` when one is not found — the
    caption is not the utterances' concatenation, so :func:`token_to_utterance_by_span` cannot be used."""
    low, pos, spans = caption.lower(), 0, []
    for u in utterances:
        text = u.strip().lower()
        k = low.find(text, pos) if text else pos
        if k < 0:
            return None
        spans.append((k, k + len(text)))
        pos = k + len(text)
    return spans


def token_to_utterance_by_span(token_offsets: Sequence[tuple[int, int]], utt_spans: Sequence[tuple[int, int]],
                               utt_valid: Sequence[bool]) -> np.ndarray:
    """The ``"span"`` alignment: each token (character span ``token_offsets[j]`` in the caption, from the
    tokenizer's offset mapping) takes the valid utterance whose span holds the token's middle character;
    a token outside every valid utterance takes the nearest one (character distance, ties → earlier).
    Returns an M int array of utterance indices (−1 for every token when no utterance is valid)."""
    valid = np.asarray(utt_valid, dtype=bool)
    m = len(token_offsets)
    if m == 0 or not valid.any():
        return np.full(m, -1, dtype=np.int64)
    spans = np.asarray(utt_spans, dtype=np.float64).reshape(-1, 2)
    mid = np.array([(a + b - 1) / 2 if b > a else a for a, b in token_offsets], dtype=np.float64)   # M
    gap = np.maximum(spans[None, :, 0] - mid[:, None], mid[:, None] - (spans[None, :, 1] - 1))      # M×N, ≤ 0 inside
    gap = np.where(valid[None, :], np.maximum(gap, 0.0), np.inf)
    return gap.argmin(axis=1).astype(np.int64)


def span_token_utterances(narr: Narrative, token_offsets: Sequence[tuple[int, int]],
                          utt_valid: Sequence[bool]) -> np.ndarray | None:
    """The ``"span"`` utterance of each caption token of ``narr`` (character spans ``token_offsets``, e.g. from
    :func:`caption_token_offsets`; ``utt_valid`` from :func:`utterance_traces`) — the utterance each token's
    words were spoken in — or None when the utterances are not found in order in the caption."""
    spans = utterance_char_spans(narr.caption, [u.utterance for u in narr.timed_caption])
    return None if spans is None else token_to_utterance_by_span(token_offsets, spans, utt_valid)


def caption_token_offsets(tokenizer: Any, caption: str) -> list[tuple[int, int]]:
    """(start, end) character span of each token of ``caption`` (no special tokens), from a fast
    tokenizer's offset mapping."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the 'span' token alignment needs a fast tokenizer (character offsets)")
    enc = tokenizer(caption, return_offsets_mapping=True, add_special_tokens=False)
    return [tuple(o) for o in enc["offset_mapping"]]


@dataclass
class AlignedTrace:
    """Per-token targets of one narrative (M tokens = the caption's tokens, EOS excluded).

    points           M×4 (x0, y0, x1, y1) normalised to the image and clipped to [0, 1]: the top-left
                     and bottom-right corners of the token's utterance box (``point_target="box"``), or
                     the centre twice (``point_target="center"``)
    valid            M bool: the token has a target. ``"official"``: True unless the narrative has no
                     trace or utterance, or the gathered box is not finite (an all-invalid narrative
                     whose trace times are all equal); ``"full_caption"``: False when the narrative has
                     no valid utterance
    samples          M×S×2 the utterance's S trace samples (x, y), normalised, clipped to [0, 1]
                     (ground truth of the ``point_l1`` trace metric)
    utterance_index  M int, index into ``narrative.timed_caption`` (−1 when no utterance is gathered)
    utterances       the per-utterance summaries the targets were taken from
    """
    points: np.ndarray
    valid: np.ndarray
    samples: np.ndarray
    utterance_index: np.ndarray
    utterances: UtteranceTraces = field(repr=False)


def align_tokens_to_trace(record: Narrative | dict, tokens: Sequence[str] | int, num_samples: int = NUM_SAMPLES,
                          point_target: str = "box", alignment: str = "official",
                          token_offsets: Sequence[tuple[int, int]] | None = None) -> AlignedTrace:
    """The official LN trace → token alignment (PAPER_NOTES.md §2, steps 1–5).

    Args:
        record: a :class:`Narrative` or the raw JSON dict of one LN line.
        tokens: the caption's tokens after tokenisation and truncation **without** EOS/BOS/pad (any
            tokenizer; only their number M is used), or M itself — see :func:`num_aligned_tokens`.
        num_samples: trace samples per utterance (16 official).
        point_target: ``"box"`` — corners of the utterance's trace box (paper/official default);
            ``"center"`` — its time-averaged centre, repeated as (cx, cy, cx, cy).
        alignment: ``"official"`` or ``"full_caption"`` — what happens when no utterance is valid
            (:func:`token_to_utterance`) — or ``"span"`` (:func:`token_to_utterance_by_span`).
        token_offsets: for ``"span"``, the (start, end) character span in the caption of each of the M
            tokens; when the utterances are not found in order in the caption
            (:func:`utterance_char_spans` → None) the official relative-position rule is used instead.

    Returns:
        :class:`AlignedTrace`, all coordinates normalised to the image ([0, 1], (x, y), origin top-left).
        Scale by the (resized) image width/height to get pixels.
    """
    if point_target not in ("box", "center"):
        raise ValueError(f"point_target must be 'box' or 'center', got {point_target!r}")
    narr = record if isinstance(record, Narrative) else parse_narrative(record)
    m = tokens if isinstance(tokens, int) else len(tokens)
    utt = utterance_traces(narr, num_samples)
    idx = None
    if alignment == "span":
        if token_offsets is None or len(token_offsets) != m:
            raise ValueError(f"alignment 'span' needs the character span of each of the {m} tokens (token_offsets)")
        idx = span_token_utterances(narr, token_offsets, utt.valid)
    if idx is None:
        idx = token_to_utterance(m, utt.valid, "full_caption" if alignment == "span" else alignment)   # step 4
    valid = idx >= 0
    if len(narr.trace_points()) <= 1:                                  # no interpolant: no target at all
        valid[:] = False
    safe = np.where(idx >= 0, idx, 0)
    if len(utt.valid) == 0:                                            # no utterance at all
        boxes, centers, samples = np.zeros((m, 4)), np.zeros((m, 2)), np.zeros((m, num_samples, 2))
    else:
        boxes, centers, samples = utt.boxes[safe], utt.centers[safe], utt.samples[safe]
    if point_target == "box":
        points = boxes                                                 # (x0, y0, x1, y1) corners
    else:
        points = np.concatenate([centers, centers], axis=-1)           # (cx, cy, cx, cy)
    valid &= np.isfinite(points).all(-1) & np.isfinite(samples).all((-2, -1))
    points = np.nan_to_num(np.clip(points, 0.0, 1.0)) * valid[:, None]  # step 5: clip to [0, 1]
    samples = np.nan_to_num(np.clip(samples, 0.0, 1.0)) * valid[:, None, None]
    return AlignedTrace(points=points, valid=valid, samples=samples, utterance_index=idx, utterances=utt)
