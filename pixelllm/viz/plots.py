"""Static plots: scenes (image + boxes + masks), Localized-Narratives traces, per-word predicted points,
the paper's word<->trace figure (Fig. 1 / Fig. 5 analogue), image grids, training curves, metric tables.

Conventions (same as ``docs/ARCHITECTURE.md``):

* images: H×W×3 uint8, or float in [0, 1]; H×W grey and H×W×4 RGBA are accepted, as are torch
  tensors (3×H×W tensors are transposed). Axes show the image in its pixel frame: x to the right,
  y down, origin at the top-left corner of the top-left pixel (``extent = (0, W, H, 0)``).
* boxes: N×4 (x0, y0, x1, y1) in pixels of the shown image.
* per-word points: W×2 (x, y) or W×4 (two points = box corners x0, y0, x1, y1), pixels of the shown
  image, or [0, 1] (normalised by the image width / height) when ``normalized=True``.
  NaN rows (and rows with ``valid[i] = False``) are not drawn.
* colours: one per word from a qualitative colormap (``tab10``), cycling: :func:`word_colors`.
  Word ``i`` has the same colour in the caption, in the points and in the trace.

Nothing here calls ``plt.show()``: figures are ``matplotlib.figure.Figure`` objects created without
pyplot (so they work under Agg, in tests and in papermill, and never pile up in pyplot's registry).
Artists carry ``gid`` tags (``"word_points"``, ``"word_box:3"``, ``"caption_word:3"``, ``"box:0"``,
``"trace_span:2"`` ...) so tests and callers can find them.
"""
from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------

#: Width of one character of DejaVu Sans Mono in em (1233 / 2048 font units). The caption is set in a
#: monospace font so that word positions and line wrapping are computed exactly without a renderer
#: (matplotlib's text layout needs a drawn canvas, which would make the layout depend on the backend).
_MONO_EM = 1233 / 2048


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of ``x`` (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_rgb(image: Any) -> np.ndarray:
    """Return ``image`` as H×W×3 uint8 (kept) or float32 in [0, 1] (kept), ready for ``imshow``.

    Accepts H×W×3, H×W×4 (alpha dropped), H×W (grey, repeated) and 3×H×W (torch layout, transposed).
    Raises ``ValueError`` for other shapes and for float images outside [0, 1] (e.g. 0..255 floats,
    or ImageNet-normalised tensors: un-normalise first).
    """
    a = _to_numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # 3×H×W -> H×W×3
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"image: expected H×W×3 (or H×W, H×W×4, 3×H×W), got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"image: integer values must lie in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    a = a.astype(np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"image: float values must lie in [0, 1], got {lo:.3g}..{hi:.3g} "
            "(0..255 floats: pass uint8; normalised tensors: un-normalise first)"
        )
    return np.clip(a, 0.0, 1.0)


def _image_hw(image: Any) -> tuple[int, int]:
    a = as_rgb(image)
    return int(a.shape[0]), int(a.shape[1])


def _as_points(points: Any, n: int | None, name: str = "points") -> np.ndarray:
    """``points`` as float64 W×2 or W×4; ``n`` = expected number of rows (None: any)."""
    p = _to_numpy(points).astype(np.float64)
    if p.ndim == 1 and p.size in (2, 4) and n in (None, 1):
        p = p[None]
    if p.ndim != 2 or p.shape[1] not in (2, 4):
        raise ValueError(f"{name}: expected W×2 (x, y) or W×4 (x0, y0, x1, y1), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name}: {p.shape[0]} rows for {n} words; one row per word is required")
    return p


def _scale_points(p: np.ndarray, normalized: bool, hw: tuple[int, int] | None, name: str) -> np.ndarray:
    """Normalised [0, 1] -> pixels of an H×W image (x by W, y by H); pixels are returned unchanged."""
    if not normalized:
        return p
    if hw is None:
        raise ValueError(f"{name}: normalized=True needs the image (or its size) to scale to pixels")
    h, w = hw
    scale = np.array([w, h] * (p.shape[-1] // 2), dtype=np.float64)
    return p * scale


def _as_valid(valid: Any, n: int, p: np.ndarray | None = None) -> np.ndarray:
    """Bool W: ``valid`` (default all True) and, if ``p`` is given, rows without NaN."""
    v = np.ones(n, bool) if valid is None else _to_numpy(valid).astype(bool).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"valid: {v.shape[0]} flags for {n} words")
    if p is not None:
        v = v & np.isfinite(p).all(axis=1)
    return v


def word_colors(n: int, cmap: str = "tab10") -> np.ndarray:
    """``n``×4 RGBA colours, one per word, cycling through a qualitative colormap.

    Word ``i`` gets colour ``i % K`` of the colormap's K colours (``tab10``: K = 10), so the same
    index always has the same colour in the caption, the points and the trace.
    """
    cm = colormaps[cmap]
    base = np.asarray(getattr(cm, "colors", cm(np.linspace(0, 1, 10))), dtype=np.float64)
    base = np.asarray([mcolors.to_rgba(c) for c in base])
    return base[np.arange(n) % len(base)] if n > 0 else np.zeros((0, 4))


def _colors(colors: Any, n: int) -> np.ndarray:
    if colors is None:
        return word_colors(n)
    if isinstance(colors, str):
        return np.asarray([mcolors.to_rgba(colors)] * n)
    out = np.asarray([mcolors.to_rgba(c) for c in colors])
    if len(out) < n:
        raise ValueError(f"colors: {len(out)} colours for {n} items")
    return out[:n]


def clean_tokens(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Display form of a token list: ``[(text, space_before)]``, one entry per token (indices kept).

    SentencePiece tokens (T5: ``"▁a"``, ``"▁tri"``, ``"angle"``) start a new word with ``"▁"``; pieces
    without it are glued to the previous one. Lists without any ``"▁"`` are taken as plain words,
    separated by spaces.
    """
    sp = any(t.startswith("▁") for t in tokens)
    out = []
    for i, t in enumerate(tokens):
        if sp:
            space = t.startswith("▁") and i > 0
            out.append((t.lstrip("▁"), space))
        else:
            out.append((t, i > 0))
    return out


# ----------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------


def _imshow(ax: Axes, image: Any):
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    im = ax.imshow(rgb, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def draw_boxes(
    ax: Axes,
    boxes: Any,
    labels: Sequence[str] | None = None,
    colors: Any = None,
    linewidth: float = 2.0,
    linestyle: str = "-",
    fontsize: float = 8,
) -> list[Rectangle]:
    """Draw N boxes (x0, y0, x1, y1) in pixels as unfilled rectangles (gid ``"box:i"``).

    ``labels`` (N strings) are written at each box's top-left corner on the box's colour.
    Raises ``ValueError`` for a box with x1 < x0 or y1 < y0 (usually an (x, y, w, h) box passed by
    mistake: convert with ``torchvision.ops.box_convert(b, "xywh", "xyxy")``).
    """
    b = _to_numpy(boxes).astype(np.float64).reshape(-1, 4) if np.size(_to_numpy(boxes)) else np.zeros((0, 4))
    if labels is not None and len(labels) != len(b):
        raise ValueError(f"labels: {len(labels)} labels for {len(b)} boxes")
    cols = _colors(colors, len(b))
    patches = []
    for i, (x0, y0, x1, y1) in enumerate(b):
        if not (x1 >= x0 and y1 >= y0):
            raise ValueError(
                f"boxes[{i}] = {[x0, y0, x1, y1]}: x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1) pixels, "
                "not (x, y, w, h)"
            )
        r = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=cols[i], linewidth=linewidth,
                      linestyle=linestyle, gid=f"box:{i}")
        ax.add_patch(r)
        patches.append(r)
        if labels is not None and labels[i]:
            ax.text(x0, y0, str(labels[i]), fontsize=fontsize, color="white", va="bottom", ha="left",
                    bbox=dict(facecolor=cols[i], edgecolor="none", pad=1.0, alpha=0.85), clip_on=True,
                    gid=f"box_label:{i}")
    return patches


def overlay_masks(ax: Axes, masks: Any, colors: Any = None, alpha: float = 0.45):
    """Overlay N bool masks (N×H×W, or H×W) as one RGBA image in the pixel frame; returns its AxesImage.

    Mask ``i`` is painted in ``colors[i]`` with opacity ``alpha`` (later masks on top of earlier ones);
    pixels outside every mask are fully transparent.
    """
    m = _to_numpy(masks).astype(bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks: expected N×H×W bool, got shape {m.shape}")
    n, h, w = m.shape
    cols = _colors(colors, n)
    rgba = np.zeros((h, w, 4), dtype=np.float32)
    for i in range(n):
        rgba[m[i], :3] = cols[i, :3]
        rgba[m[i], 3] = alpha
    return ax.imshow(rgba, extent=(0, w, h, 0), interpolation="nearest", gid="masks")


def show_scene(
    ax: Axes,
    image: Any,
    boxes: Any = None,
    masks: Any = None,
    labels: Sequence[str] | None = None,
    colors: Any = None,
    title: str | None = None,
    mask_alpha: float = 0.45,
) -> Axes:
    """Image + optional boxes (N×4 x0, y0, x1, y1 pixels), masks (N×H×W bool) and labels (N strings).

    Object ``i`` has the same colour in its box, mask and label. Returns ``ax``.
    """
    _imshow(ax, image)
    n = 0
    if boxes is not None:
        n = len(_to_numpy(boxes).reshape(-1, 4))
    if masks is not None:
        nm = _to_numpy(masks)
        n = max(n, 1 if nm.ndim == 2 else nm.shape[0])
    cols = _colors(colors, n)
    if masks is not None:
        nm = _to_numpy(masks)
        overlay_masks(ax, masks, colors=cols[: (1 if nm.ndim == 2 else nm.shape[0])], alpha=mask_alpha)
    if boxes is not None:
        draw_boxes(ax, boxes, labels=labels, colors=cols[: len(_to_numpy(boxes).reshape(-1, 4))])
    if title:
        ax.set_title(title, fontsize=10)
    return ax


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
        _imshow(ax, image)
        hw = _image_hw(image)
    tr = _to_numpy(trace_xy).astype(np.float64).reshape(-1, 2)
    tr = _scale_points(tr, normalized, hw, "trace_xy")
    if len(tr) == 0:
        return ax
    if word_spans is None:
        col = _colors(colors, 1)[0] if colors is not None else word_colors(1)[0]
        ax.plot(tr[:, 0], tr[:, 1], color=col, linewidth=linewidth, gid="trace")
        ax.plot(tr[:1, 0], tr[:1, 1], "o", color=col, markersize=4, gid="trace_start")
        return ax
    ax.plot(tr[:, 0], tr[:, 1], color=base_color, linewidth=max(0.5, linewidth / 2), gid="trace")
    cols = _colors(colors, len(word_spans))
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
        _imshow(ax, image)
        hw = _image_hw(image)
    n = len(words)
    p = _scale_points(_as_points(points, n), normalized, hw, "points")
    ok = _as_valid(valid, n, p)
    if upto is not None:
        ok &= np.arange(n) <= upto
    cols = _colors(colors, n)
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
    cols = _colors(colors, n)
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
# composed figures
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
        hw = _image_hw(image) if image is not None else None
        g = _scale_points(_as_points(gt_points, n, "gt_points"), normalized, hw, "gt_points")[step]
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


def grid_figure(
    items: Sequence[Any],
    ncols: int = 4,
    draw: Callable[[Axes, Any], Any] | None = None,
    panel_size: float = 3.0,
    titles: Sequence[str] | None = None,
    dpi: int = 100,
) -> Figure:
    """A grid of panels, one per item, ``ncols`` per row; unused cells are turned off.

    ``draw(ax, item)`` draws one item; by default an item is an image, or a dict with keys
    ``image`` (+ optional ``boxes``, ``masks``, ``labels``, ``title``) drawn with :func:`show_scene`.
    """
    n = len(items)
    if n == 0:
        raise ValueError("grid_figure: no items")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(ncols * panel_size, nrows * panel_size + 0.3), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()

    def _default(ax: Axes, item: Any) -> None:
        if isinstance(item, Mapping):
            show_scene(ax, item["image"], boxes=item.get("boxes"), masks=item.get("masks"),
                       labels=item.get("labels"), title=item.get("title"))
        else:
            show_scene(ax, item)

    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        (draw or _default)(ax, items[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# training curves and tables
# ----------------------------------------------------------------------------------------------


def read_jsonl_records(path: str | Path) -> tuple[list[dict], list[int]]:
    """Read a JSON-lines log: ``(records, skipped_line_numbers)``.

    Blank lines are ignored; a line that is not a JSON object (e.g. the half-written last line of a
    log still being written) is skipped and its 1-based number returned, never raised mid-file.
    """
    records, skipped = [], []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                skipped.append(ln)
                continue
            if isinstance(r, dict):
                records.append(r)
            else:
                skipped.append(ln)
    return records, skipped


def _ema(y: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = w·s_{t-1} + (1-w)·y_t,
    divided by (1 - w^t) so the first values are not pulled towards 0. NaNs are passed through."""
    out = np.full_like(y, np.nan, dtype=np.float64)
    s, k = 0.0, 0
    for i, v in enumerate(y):
        if not np.isfinite(v):
            continue
        k += 1
        s = weight * s + (1 - weight) * v
        out[i] = s / (1 - weight**k)
    return out


def _runs(sources: Any) -> list[tuple[str, list[dict]]]:
    """Normalise ``sources`` to ``[(label, records)]`` and warn about skipped log lines."""
    def _one(label: str | None, src: Any) -> tuple[str, list[dict]]:
        if isinstance(src, (str, Path)):
            recs, skipped = read_jsonl_records(src)
            if skipped:
                warnings.warn(f"{src}: skipped {len(skipped)} malformed line(s): {skipped[:10]}", stacklevel=3)
            return (label or Path(src).stem, recs)
        recs = list(src)
        bad = [i for i, r in enumerate(recs) if not isinstance(r, Mapping)]
        if bad:
            raise ValueError(f"records[{bad[0]}]: expected a dict of metrics, got {type(recs[bad[0]]).__name__}")
        return (label or "run", recs)

    if isinstance(sources, Mapping):
        return [_one(str(k), v) for k, v in sources.items()]
    if isinstance(sources, (str, Path)):
        return [_one(None, sources)]
    sources = list(sources)
    if sources and all(isinstance(s, Mapping) for s in sources):
        return [_one(None, sources)]  # one run given as a list of records
    return [_one(None, s) for s in sources]


def plot_curves(
    sources: Any,
    keys: Sequence[str] = ("loss",),
    x: str = "step",
    smooth: float = 0.0,
    logy: bool = False,
    panel_size: tuple[float, float] = (4.0, 3.0),
    dpi: int = 100,
) -> Figure:
    """Training curves, one panel per metric key, one line per run.

    Args:
        sources: a JSONL path, a list of paths, a list of records (dicts, one run), or a dict
            ``{label: path or records}``. Records lacking a key (e.g. eval records in a train log) are
            ignored for that key; values that are not numbers are ignored.
        keys: metric names; a key found in no run raises ``ValueError`` (typo guard).
        x: the x-axis key (records without it use their index in the run).
        smooth: EMA weight in [0, 1) (TensorBoard style, debiased); > 0 draws the raw curve faintly and
            the smoothed one on top.
    """
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    runs = _runs(sources)
    keys = [keys] if isinstance(keys, str) else list(keys)
    present = {k for _, recs in runs for r in recs for k in r}
    missing = [k for k in keys if k not in present]
    if missing:
        raise ValueError(f"plot_curves: key(s) {missing} not in any record; available: {sorted(present)}")
    fig = Figure(figsize=(panel_size[0] * len(keys), panel_size[1]), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    cols = word_colors(len(runs))
    for ax, key in zip(axes, keys):
        for (label, recs), col in zip(runs, cols):
            xs, ys = [], []
            for i, r in enumerate(recs):
                v = r.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                xv = r.get(x, i)
                xs.append(float(xv) if isinstance(xv, (int, float)) else float(i))
                ys.append(float(v))
            if not xs:
                continue
            xs_a, ys_a = np.asarray(xs), np.asarray(ys)
            if smooth > 0:
                ax.plot(xs_a, ys_a, color=col, alpha=0.25, linewidth=1, gid=f"raw:{label}")
                ax.plot(xs_a, _ema(ys_a, smooth), color=col, linewidth=1.8, label=label, gid=f"curve:{label}")
            else:
                ax.plot(xs_a, ys_a, color=col, linewidth=1.5, label=label, gid=f"curve:{label}")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    return fig


def plot_metric_table(
    ax: Axes,
    rows: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    fmt: str = "{:.3f}",
    title: str | None = None,
    name_key: str = "name",
) -> Axes:
    """A metrics table drawn on ``ax`` (axes turned off).

    ``rows``: ``{row_name: {metric: value}}`` or a list of dicts with a ``name_key`` entry. Numbers are
    formatted with ``fmt``; missing cells show "–". ``columns`` default: metrics in first-seen order.
    """
    if isinstance(rows, Mapping):
        items = [(str(k), dict(v)) for k, v in rows.items()]
    else:
        items = [(str(r.get(name_key, i)), {k: v for k, v in r.items() if k != name_key}) for i, r in enumerate(rows)]
    if columns is None:
        columns = list(dict.fromkeys(k for _, r in items for k in r))

    def _fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            return fmt.format(v)
        return str(v)

    cells = [[_fmt(r.get(c)) for c in columns] for _, r in items]
    ax.set_axis_off()
    tab = ax.table(cellText=cells, rowLabels=[n for n, _ in items], colLabels=list(columns), loc="center",
                   cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.scale(1.0, 1.3)
    tab.set_gid("metric_table")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------


def figure_to_png(fig: Figure, dpi: float | None = None) -> bytes:
    """PNG bytes of ``fig`` (Agg), at the figure's dpi unless given. Fixed size (no tight bbox)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: float = 110, **kwargs: Any) -> Path:
    """Save ``fig`` atomically (temp file + rename, so a killed notebook never leaves half a PNG).
    The format follows the suffix; ``kwargs`` go to ``Figure.savefig``. Returns the path."""
    from pixelllm.utils import atomic_write_bytes

    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=p.suffix.lstrip(".") or "png", dpi=dpi, **kwargs)
    atomic_write_bytes(p, buf.getvalue())
    return p


__all__ = [
    "as_rgb", "word_colors", "clean_tokens", "show_scene", "draw_boxes", "overlay_masks",
    "narrative_to_trace", "plot_narrative_trace", "plot_word_points", "caption_colored",
    "figure_word_trace", "figure_word_step", "grid_figure", "read_jsonl_records", "plot_curves",
    "plot_metric_table", "figure_to_png", "save_figure",
]
