"""Traces and per-word locations: Localized-Narratives mouse traces, each generated word's predicted
point(s), the caption written in the words' colours, and the paper's word<->trace figure (Fig. 1 / Fig. 5
analogue) with its one-step variant (the viewer's and the GIF's frames).

Word ``i`` has the same colour (:func:`pixelllm.viz.inputs.word_colors`) in the caption, the points and the
trace. Artists carry ``gid`` tags (``"word_points"``, ``"word_box:3"``, ``"caption_word:3"``,
``"trace_span:2"`` ...) so tests and callers can find them.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pixelllm.viz.inputs import (as_points, as_valid, clean_tokens, image_hw, resolve_colors, scale_points,
                                 to_numpy, word_colors)
from pixelllm.viz.scene import show_image

#: Width of one character of DejaVu Sans Mono in em (1233 / 2048 font units). The caption is set in a
#: monospace font so that word positions and line wrapping are computed exactly without a renderer
#: (matplotlib's text layout needs a drawn canvas, which would make the layout depend on the backend).
_MONO_EM = 1233 / 2048


# ----------------------------------------------------------------------------------------------
# Localized Narratives traces
# ----------------------------------------------------------------------------------------------


def narrative_to_trace(record: Mapping[str, Any]) -> dict[str, Any]:
    """Split one Localized Narratives record into its trace and per-utterance spans (for plotting).

    Args:
        record: an LN JSONL record (``traces``: list of segments of ``{x, y, t}``, x, y in [0, 1] of
            the image, may lie outside; ``timed_caption``: ``[{utterance, start_time, end_time}]``).
    Returns:
        ``{"trace": N×2 float (x, y) normalised, sorted by t, "times": N, "utterances": [str],
        "spans": [(i0, i1)]}`` where utterance k was spoken while trace points ``i0 <= i < i1`` were
        recorded (t in [start_time, end_time]); an utterance with no point in its window gets an empty
        span. This is for display only: the training targets use the official interpolation
        (``pixelllm.data.localized_narratives``, PAPER_NOTES.md §2).
    """
    pts = [(float(p["x"]), float(p["y"]), float(p["t"])) for seg in record.get("traces") or [] for p in seg]
    pts.sort(key=lambda p: p[2])
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    t = arr[:, 2]
    utts, spans = [], []
    for u in record.get("timed_caption") or []:
        i0 = int(np.searchsorted(t, float(u["start_time"]), side="left"))
        i1 = int(np.searchsorted(t, float(u["end_time"]), side="right"))
        utts.append(str(u["utterance"]))
        spans.append((i0, max(i0, i1)))
    return {"trace": arr[:, :2], "times": t, "utterances": utts, "spans": spans}


def plot_narrative_trace(
    ax: Axes,
    image: Any,
    trace_xy: Any,
    word_spans: Sequence[tuple[int, int]] | None = None,
    colors: Any = None,
    normalized: bool = False,
    upto: int | None = None,
    highlight: int | None = None,
    linewidth: float = 2.0,
    base_color: Any = "0.85",
) -> Axes:
    """A ground-truth mouse trace on the image, each utterance / word span in its own colour.

    Args:
        image: H×W×3 (or None: draw on ``ax`` as is; then ``normalized`` is not allowed).
        trace_xy: N×2 (x, y) points in time order; pixels, or [0, 1] when ``normalized=True``.
        word_spans: K index ranges ``(i0, i1)`` into the trace (utterance / word k was spoken while
            points ``i0 <= i < i1`` were drawn, see :func:`narrative_to_trace`); None = one colour.
        colors: K colours (default :func:`word_colors`; span k has word k's colour).
        upto: only spans ``k <= upto`` are coloured (the whole trace stays in ``base_color``).
        highlight: span drawn thicker (the current word in the viewer).
    Lines: gid ``"trace"`` (the whole trace, thin) and ``"trace_span:k"`` (pixels). Returns ``ax``.
    """
    hw = None
    if image is not None:
        show_image(ax, image)
        hw = image_hw(image)
    tr = to_numpy(trace_xy).astype(np.float64).reshape(-1, 2)
    tr = scale_points(tr, normalized, hw, "trace_xy")
    if len(tr) == 0:
        return ax
    if word_spans is None:
        col = resolve_colors(colors, 1)[0] if colors is not None else word_colors(1)[0]
        ax.plot(tr[:, 0], tr[:, 1], color=col, linewidth=linewidth, gid="trace")
        ax.plot(tr[:1, 0], tr[:1, 1], "o", color=col, markersize=4, gid="trace_start")
        return ax
    ax.plot(tr[:, 0], tr[:, 1], color=base_color, linewidth=max(0.5, linewidth / 2), gid="trace")
    cols = resolve_colors(colors, len(word_spans))
    for k, (i0, i1) in enumerate(word_spans):
        if upto is not None and k > upto:
            break
        if not 0 <= i0 <= i1 <= len(tr):
            raise ValueError(f"word_spans[{k}] = {(i0, i1)}: outside the trace of {len(tr)} points")
        if i1 <= i0:
            continue
        # include the next point so consecutive spans join up without gaps
        seg = tr[i0:min(i1 + 1, len(tr))]
        lw = linewidth * (2.0 if highlight == k else 1.0)
        ax.plot(seg[:, 0], seg[:, 1], color=cols[k], linewidth=lw, solid_capstyle="round",
                gid=f"trace_span:{k}")
    return ax


# ----------------------------------------------------------------------------------------------
# per-word points and the coloured caption
# ----------------------------------------------------------------------------------------------


def plot_word_points(
    ax: Axes,
    image: Any,
    words: Sequence[str],
    points: Any,
    colors: Any = None,
    normalized: bool = False,
    valid: Any = None,
    highlight: int | None = None,
    upto: int | None = None,
    fade: float = 1.0,
    markersize: float = 60.0,
    annotate: bool = False,
) -> Axes:
    """Each word's predicted point (W×2) or pair of points / box (W×4) in the word's colour.

    Args:
        image: H×W×3 or None (draw on ``ax`` as is).
        words: W display strings (only used for ``annotate`` and the count).
        points: W×2 (x, y) or W×4 (x0, y0, x1, y1) pixels of the image (or [0, 1] if ``normalized``).
            The two points of a W×4 row need not be ordered: the box drawn spans their min / max.
        valid: W bool; False rows (and NaN rows) are skipped, e.g. tokens without a point target.
        highlight: index of the current word: drawn larger with a black edge, in a separate scatter
            (gid ``"word_points:current"``), excluded from ``"word_points"``.
        upto: draw only words ``i <= upto`` (the words generated so far).
        fade: alpha of the non-highlighted words.
    Artists: one scatter ``"word_points"`` whose offsets are the drawn points in word order (W×4 rows
    contribute their two corners, (x0, y0) then (x1, y1)) and facecolours the word colours; W×4 rows
    also get a rectangle ``"word_box:i"``. Returns ``ax``.
    """
    hw = None
    if image is not None:
        show_image(ax, image)
        hw = image_hw(image)
    n = len(words)
    p = scale_points(as_points(points, n), normalized, hw, "points")
    ok = as_valid(valid, n, p)
    if upto is not None:
        ok &= np.arange(n) <= upto
    cols = resolve_colors(colors, n)
    k = p.shape[1] // 2  # points per word

    def _draw(idx: np.ndarray, gid: str, alpha: float, size: float, edge: Any, lw: float, box_lw: float):
        if len(idx) == 0:
            return
        offs = p[idx].reshape(-1, 2)  # (len(idx)*k)×2: corners of each word in order
        fc = np.repeat(cols[idx], k, axis=0).copy()
        fc[:, 3] = alpha
        ax.scatter(offs[:, 0], offs[:, 1], s=size, c=fc, edgecolors=edge, linewidths=lw, zorder=3, gid=gid)
        if k == 2:
            for i in idx:
                x0, x1 = sorted(p[i, [0, 2]])
                y0, y1 = sorted(p[i, [1, 3]])
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=cols[i],
                                       alpha=alpha, linewidth=box_lw, gid=f"word_box:{i}", zorder=2))

    rest = np.flatnonzero(ok & (np.arange(n) != (-1 if highlight is None else highlight)))
    _draw(rest, "word_points", fade, markersize, "white", 0.8, 1.5)
    if highlight is not None and 0 <= highlight < n and ok[highlight]:
        _draw(np.array([highlight]), "word_points:current", 1.0, markersize * 2.5, "black", 2.0, 3.0)
    if annotate:
        for i in np.flatnonzero(ok):
            ax.annotate(words[i], (p[i, 0], p[i, 1]), xytext=(4, 4), textcoords="offset points",
                        fontsize=7, color=cols[i], gid=f"word_label:{i}")
    return ax


def _caption_layout(words: Sequence[str], chars_per_line: int) -> list[tuple[int, int, str]]:
    """(line, column, text) per token for a monospace layout wrapping at ``chars_per_line``."""
    out, line, col = [], 0, 0
    for text, space in clean_tokens(list(words)):
        start = col + (1 if space and col > 0 else 0)
        if start + len(text) > chars_per_line and col > 0 and space:
            line, start = line + 1, 0
        out.append((line, start, text))
        col = start + len(text)
    return out


def _caption_lines(words: Sequence[str], width_in: float, fontsize: float) -> int:
    cpl = max(8, int(width_in * 72 / (fontsize * _MONO_EM)) - 1)
    lay = _caption_layout(words, cpl)
    return (lay[-1][0] + 1) if lay else 1


def caption_colored(
    ax: Axes,
    words: Sequence[str],
    colors: Any = None,
    highlight: int | None = None,
    upto: int | None = None,
    fontsize: float = 11.0,
    future_color: Any = "0.8",
    min_fontsize: float = 6.0,
) -> Axes:
    """The caption written word by word, each word (token) in its colour, wrapping onto new lines.

    Tokens are SentencePiece pieces or plain words (see :func:`clean_tokens`); each token ``i`` is one
    ``Text`` artist with gid ``"caption_word:i"`` and colour ``colors[i]``. ``highlight`` = index written
    bold on a light box; words after ``upto`` are drawn in ``future_color`` (not generated yet).
    The font shrinks (down to ``min_fontsize``) until the wrapped caption fits the axes height.
    Uses a monospace font so the layout is exact without a renderer. Turns the axes off; returns ``ax``.
    """
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    n = len(words)
    if n == 0:
        return ax
    cols = resolve_colors(colors, n)
    fig = ax.get_figure()
    pos = ax.get_position()
    w_pt = pos.width * fig.get_figwidth() * 72
    h_pt = pos.height * fig.get_figheight() * 72
    fs = fontsize
    while True:
        char_pt = fs * _MONO_EM
        cpl = max(8, int(w_pt / char_pt) - 1)
        lay = _caption_layout(words, cpl)
        n_lines = lay[-1][0] + 1
        line_pt = 1.35 * fs
        if n_lines * line_pt <= h_pt or fs <= min_fontsize:
            break
        fs = max(min_fontsize, fs - 0.5)
    for i, (line, col, text) in enumerate(lay):
        x = (col + 0.5) * char_pt / w_pt
        y = 1.0 - (line + 0.5) * line_pt / h_pt
        future = upto is not None and i > upto
        kw: dict[str, Any] = {}
        if highlight == i:
            kw = dict(fontweight="bold", bbox=dict(facecolor="0.92", edgecolor=cols[i], pad=1.0, linewidth=1.5))
        ax.text(x, y, text, color=future_color if future else cols[i], fontsize=fs, family="monospace",
                ha="left", va="center", transform=ax.transAxes, gid=f"caption_word:{i}", **kw)
    return ax


# ----------------------------------------------------------------------------------------------
# the word<->trace figures (one per caption, or one per generated word)
# ----------------------------------------------------------------------------------------------


def _panel_figure(
    n_panels: int, panel_size: float, caption_lines: int, fontsize: float, dpi: int, title: str | None
) -> tuple[Figure, list[Axes], list[Axes]]:
    """A figure with ``n_panels`` square image axes side by side, each with a caption axes below.

    Fixed, explicit layout (no constrained layout) so caption wrapping computed at creation holds and
    every frame of an animation has the same pixel size.
    """
    margin, gap = 0.15, 0.25
    cap_h = caption_lines * 1.35 * fontsize / 72 + 0.15
    title_h = 0.45 if title else 0.1
    fig_w = n_panels * panel_size + (n_panels - 1) * gap + 2 * margin
    fig_h = title_h + panel_size + 0.1 + cap_h + margin
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    imgs, caps = [], []
    for j in range(n_panels):
        x = (margin + j * (panel_size + gap)) / fig_w
        y_img = (margin + cap_h + 0.1) / fig_h
        imgs.append(fig.add_axes((x, y_img, panel_size / fig_w, panel_size / fig_h)))
        caps.append(fig.add_axes((x, margin / fig_h, panel_size / fig_w, cap_h / fig_h)))
    if title:
        fig.suptitle(title, y=1 - 0.08 / fig_h, va="top", fontsize=12)
    return fig, imgs, caps


def figure_word_trace(
    image: Any,
    words: Sequence[str],
    pred_points: Any,
    gt_trace: Any = None,
    title: str | None = None,
    *,
    normalized: bool = False,
    valid: Any = None,
    gt_normalized: bool = False,
    gt_spans: Sequence[tuple[int, int]] | None = None,
    gt_words: Sequence[str] | None = None,
    panel_size: float = 4.0,
    fontsize: float = 11.0,
    dpi: int = 100,
) -> Figure:
    """The paper's Fig. 1 / Fig. 5 analogue: generated caption with a location per word vs. the human trace.

    Left: the image with each generated word's predicted point(s) (``pred_points`` W×2 or W×4,
    pixels or [0, 1] with ``normalized``) in the word's colour, and the caption below with each word in
    the same colour. Right (when ``gt_trace`` is given): the ground-truth Localized Narratives trace
    (N×2 (x, y) in time order, pixels or [0, 1] with ``gt_normalized``), each utterance span
    ``gt_spans[k]`` coloured like utterance ``gt_words[k]`` in the caption below it (see
    :func:`narrative_to_trace`); without spans, the trace is one line.
    Returns a Figure (not registered with pyplot).
    """
    n_panels = 2 if gt_trace is not None else 1
    width_in = panel_size
    lines = _caption_lines(words, width_in, fontsize)
    if gt_words:
        lines = max(lines, _caption_lines(gt_words, width_in, fontsize))
    fig, imgs, caps = _panel_figure(n_panels, panel_size, lines, fontsize, dpi, title)
    plot_word_points(imgs[0], image, words, pred_points, normalized=normalized, valid=valid)
    imgs[0].set_title("generated: word → point", fontsize=10)
    caption_colored(caps[0], words, fontsize=fontsize)
    if gt_trace is not None:
        plot_narrative_trace(imgs[1], image, gt_trace, word_spans=gt_spans, normalized=gt_normalized)
        imgs[1].set_title("ground truth: narrative trace", fontsize=10)
        if gt_words:
            caption_colored(caps[1], gt_words, fontsize=fontsize)
        else:
            caps[1].set_axis_off()
    return fig


def figure_word_step(
    image: Any,
    words: Sequence[str],
    points: Any,
    step: int,
    *,
    normalized: bool = False,
    valid: Any = None,
    gt_points: Any = None,
    gt_trace: Any = None,
    gt_spans: Sequence[tuple[int, int]] | None = None,
    gt_normalized: bool = False,
    title: str | None = None,
    fade: float = 0.3,
    panel_size: float = 4.0,
    fontsize: float = 11.0,
    dpi: int = 100,
) -> Figure:
    """One step of "tracing" a caption: words ``0..step`` generated, word ``step`` highlighted.

    The image shows the predicted points of the earlier words faded (alpha ``fade``) and the current
    word's point(s) large with a black edge (gid ``"word_points:current"``); when ``gt_points`` (W×2 or
    W×4, same frame as ``points``; NaN = unknown) is given, the current word's ground truth is drawn as
    black crosses (gid ``"gt_point:current"``) plus a dashed box for W×4. With ``gt_trace`` a second panel
    shows the human trace with the spans up to ``step`` coloured (``gt_spans`` index the trace per word).
    The caption shows the current word bold, later words grey. The figure size depends only on the
    caption, so all steps of one caption render to the same pixel size (GIF frames).
    """
    n = len(words)
    if not 0 <= step < n:
        raise ValueError(f"step {step} out of range for {n} words")
    lines = _caption_lines(words, panel_size, fontsize)
    head = f"word {step + 1}/{n}: “{clean_tokens(list(words))[step][0]}”"
    fig, imgs, caps = _panel_figure(2 if gt_trace is not None else 1, panel_size, lines, fontsize, dpi,
                                    f"{title} — {head}" if title else head)
    ax = imgs[0]
    plot_word_points(ax, image, words, points, normalized=normalized, valid=valid, highlight=step,
                     upto=step, fade=fade)
    if gt_points is not None:
        hw = image_hw(image) if image is not None else None
        g = scale_points(as_points(gt_points, n, "gt_points"), normalized, hw, "gt_points")[step]
        if np.isfinite(g).all():
            col = word_colors(n)[step]
            xy = g.reshape(-1, 2)
            ax.scatter(xy[:, 0], xy[:, 1], marker="x", s=120, c="black", linewidths=2.5, zorder=4,
                       gid="gt_point:current")
            if len(g) == 4:
                x0, x1 = sorted(g[[0, 2]])
                y0, y1 = sorted(g[[1, 3]])
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=col,
                                       linestyle="--", linewidth=2, gid="gt_box:current", zorder=2))
    caption_colored(caps[0], words, highlight=step, upto=step, fontsize=fontsize)
    if gt_trace is not None:
        upto = step if gt_spans is not None else None
        plot_narrative_trace(imgs[1], image, gt_trace, word_spans=gt_spans, normalized=gt_normalized,
                             upto=upto, highlight=step)
        imgs[1].set_title("ground truth trace", fontsize=10)
        caps[1].set_axis_off()
    return fig


__all__ = [
    "narrative_to_trace", "plot_narrative_trace", "plot_word_points", "caption_colored", "figure_word_trace",
    "figure_word_step",
]
