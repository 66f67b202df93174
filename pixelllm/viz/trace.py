"""Traces and per-word locations: Localized-Narratives mouse traces, each generated word's predicted
point(s), the caption written in the words' colours, and the paper's word<->trace figure (Fig. 1 / Fig. 5
analogue) with its one-step variant (the viewer's and the GIF's frames).

Word ``i`` has the same colour (:func:`pixelllm.viz.inputs.word_colors`) in the caption, the points and the
trace. Artists carry ``gid`` tags (``"word_points"``, ``"word_box:3"``, ``"caption_word:3"``,
``"trace_span:2"`` ...) so tests and callers can find them.
"""
from __future__ import annotations

import textwrap
from typing import Any, Collection, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
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
    bold: Collection[int] = (),
) -> Axes:
    """The caption written word by word, each word (token) in its colour, wrapping onto new lines.

    Tokens are SentencePiece pieces or plain words (see :func:`clean_tokens`); each token ``i`` is one
    ``Text`` artist with gid ``"caption_word:i"`` and colour ``colors[i]``. ``highlight`` = index written
    bold on a light box; words after ``upto`` are drawn in ``future_color`` (not generated yet); tokens in
    ``bold`` are set in bold (e.g. the highlighted phrases).
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
        kw: dict[str, Any] = {"fontweight": "bold"} if i in bold else {}
        if highlight == i:
            kw = dict(fontweight="bold", bbox=dict(facecolor="0.92", edgecolor=cols[i], pad=1.0, linewidth=1.5))
        ax.text(x, y, text, color=future_color if future else cols[i], fontsize=fs, family="monospace",
                ha="left", va="center", transform=ax.transAxes, gid=f"caption_word:{i}", **kw)
    return ax



# ----------------------------------------------------------------------------------------------
# phrases: words grouped into short chunks, one colour each
# ----------------------------------------------------------------------------------------------

#: Words that open a new phrase when they follow content words (a determiner starts a noun phrase, a
#: preposition / conjunction a location or a new clause, a subject pronoun a new clause). A determiner right
#: after a phrase made only of links stays in it ("in the top left corner", "and a red star").
_DETERMINERS = frozenset("a an the this that these those some one two three four five several".split())
_LINKS = frozenset("in on at of to near next above below under behind beside between with from over and or "
                   "but while where".split())
_SUBJECTS = frozenset("we i there it they you".split())
_PUNCT = ".,;:!?"


def word_groups(tokens: Sequence[str]) -> list[list[int]]:
    """Token indices of each word: SentencePiece pieces without ``"▁"`` (and punctuation) are glued to the
    previous piece (:func:`clean_tokens`); plain word lists give one token per word."""
    groups: list[list[int]] = []
    for i, (_, space) in enumerate(clean_tokens(list(tokens))):
        if space or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def split_phrases(tokens: Sequence[str]) -> list[list[int]]:
    """Split a caption into short phrases (a colour each in the figures) → token indices per phrase.

    A rule of thumb, not a parser: a phrase ends at punctuation, and a new one starts at a determiner
    ("a big red star"), a preposition or conjunction ("in the top left corner", "and a ..."), or a subject
    pronoun ("we can see"); a determiner right after a phrase of only such links joins it. Every token
    belongs to exactly one phrase, in order.
    """
    text = [t for t, _ in clean_tokens(list(tokens))]
    phrases: list[list[int]] = []
    links_only = False
    for g in word_groups(tokens):
        word = "".join(text[i] for i in g)
        key = word.strip(_PUNCT).lower()
        ended = bool(phrases) and "".join(text[i] for i in phrases[-1][-1:]).rstrip().endswith(tuple(_PUNCT))
        opens = key in _LINKS or key in _SUBJECTS or (key in _DETERMINERS and not links_only)
        if not phrases or ended or opens:
            phrases.append(list(g))
            links_only = key in _LINKS
        else:
            phrases[-1].extend(g)
            links_only = links_only and key in _LINKS
    return phrases


def phrase_text(tokens: Sequence[str], idx: Sequence[int]) -> str:
    """Display text of the tokens ``idx`` (one phrase), SentencePiece markers removed, punctuation trimmed."""
    ct = clean_tokens(list(tokens))
    out = ""
    for k, i in enumerate(idx):
        t, space = ct[i]
        out += (" " if space and k > 0 else "") + t
    return out.strip().rstrip(_PUNCT)


def phrase_colors(n: int) -> np.ndarray:
    """``n``×4 RGBA colours, one per phrase: ``tab10`` without its grey (grey is kept for context and for
    words not generated yet), cycling after 9, so neighbouring phrases always differ."""
    base = np.asarray([mcolors.to_rgba(c) for k, c in enumerate(colormaps["tab10"].colors) if k != 7])
    return base[np.arange(n) % len(base)] if n > 0 else np.zeros((0, 4))


def token_colors(n_tokens: int, phrases: Sequence[Sequence[int]], colors: Any = None) -> np.ndarray:
    """``n_tokens``×4: each token in its phrase's colour (``colors`` one per phrase, default
    :func:`phrase_colors`); tokens in no phrase are grey."""
    cols = phrase_colors(len(phrases)) if colors is None else resolve_colors(colors, len(phrases))
    out = np.tile(mcolors.to_rgba("0.5"), (n_tokens, 1))
    for k, idx in enumerate(phrases):
        out[list(idx)] = cols[k]
    return out


def word_centres(points: np.ndarray, groups: Sequence[Sequence[int]], valid: np.ndarray) -> np.ndarray:
    """One point per group of tokens: the mean over its valid tokens of each token's point (W×2) or box
    centre (W×4) → G×2, NaN for a group without a valid token."""
    p = points.reshape(len(points), -1, 2).mean(1) if len(points) else np.zeros((0, 2))   # T×2 centres
    out = np.full((len(groups), 2), np.nan)
    for g, idx in enumerate(groups):
        ok = [i for i in idx if valid[i]]
        if ok:
            out[g] = p[ok].mean(0)
    return out


def phrase_box(points: np.ndarray, idx: Sequence[int], valid: np.ndarray) -> np.ndarray | None:
    """The box of a phrase: the mean of its valid tokens' boxes (corners sorted), (x0, y0, x1, y1); None
    for W×2 points or a phrase without a valid token."""
    ok = [i for i in idx if valid[i]]
    if points.shape[1] != 4 or not ok:
        return None
    b = points[ok]
    b = np.c_[np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])]
    return b.mean(0)


def default_highlights(tokens: Sequence[str], phrases: Sequence[Sequence[int]], n: int) -> list[int]:
    """Up to ``n`` phrases worth a panel: those that open with "a"/"an"/"the" and have 2+ words (object
    mentions: "a big red star"), first occurrence of each text; then the longest others."""
    seen, picks = set(), []
    for k, idx in enumerate(phrases):
        txt = phrase_text(tokens, idx).lower()
        words = txt.split()
        if len(words) >= 2 and words[0] in ("a", "an", "the") and txt not in seen:
            seen.add(txt)
            picks.append(k)
    rest = sorted((k for k in range(len(phrases)) if k not in picks), key=lambda k: -len(phrases[k]))
    return (picks + rest)[:n]


# ----------------------------------------------------------------------------------------------
# the word<->trace figures (one per caption, or one per generated word)
# ----------------------------------------------------------------------------------------------


def _wrap_title(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` (≈ 0.55 em per character)."""
    return textwrap.fill(text, max(8, int(width_in * 72 / (0.55 * fontsize))))


def _scatter_points(ax: Axes, xy: np.ndarray, cols: np.ndarray, gid: str, size: float, edge: Any = "white",
                    lw: float = 0.8, alpha: float | None = None, zorder: float = 3) -> None:
    ok = np.isfinite(xy).all(1)
    fc = cols[ok].copy()
    if alpha is not None:
        fc[:, 3] = alpha
    ax.scatter(xy[ok, 0], xy[ok, 1], s=size, c=fc, edgecolors=edge, linewidths=lw, zorder=zorder, gid=gid)


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
    phrases: Sequence[Sequence[int]] | None = None,
    highlight: Sequence[int] | None = None,
    n_highlight: int = 2,
    panel_size: float = 3.4,
    fontsize: float = 11.0,
    dpi: int = 100,
) -> Figure:
    """The paper's Fig. 1 / Fig. 5 analogue, legible on a slide: every generated word gets one point.

    Panels, left to right:

    1. **every word → a point**: one dot per word (the centre of its predicted box; W×4 ``pred_points``,
       or the point itself for W×2; a word of several tokens averages them), coloured by phrase
       (:func:`split_phrases`, or ``phrases`` = token indices per phrase).
    2. one panel per highlighted phrase (``highlight`` = phrase indices, default :func:`default_highlights`,
       ``n_highlight`` of them): that phrase's word points large, its box (mean of its tokens' boxes,
       dashed) and the other words as small grey dots, titled with the phrase in its colour.
    3. with ``gt_trace`` (N×2 (x, y) in time order; pixels, or [0, 1] with ``gt_normalized``): the
       annotator's mouse trace, utterance ``gt_spans[k]`` in the colour of ``gt_words[k]`` in the caption
       below it (see :func:`narrative_to_trace`).

    The generated caption is written below panels 1–2 in the phrases' colours (highlighted phrases bold);
    a key at the bottom says what dots, boxes and lines are. ``pred_points``: pixels of ``image``, or
    [0, 1] with ``normalized``; ``valid``: W bool (False / NaN rows are not drawn). Artists: gid
    ``"word_points"`` (one offset per word, in word order), ``"phrase_points:k"``, ``"phrase_box:k"``,
    ``"context_points"``, the trace's (:func:`plot_narrative_trace`) and ``"caption_word:i"``.
    Returns a Figure (not registered with pyplot); axes: the image panels, then the captions.
    """
    n = len(words)
    hw = image_hw(image) if image is not None else None
    p = scale_points(as_points(pred_points, n), normalized, hw, "pred_points")
    ok = as_valid(valid, n, p)
    groups = word_groups(words)
    phr = [list(g) for g in (phrases if phrases is not None else split_phrases(words))]
    pcols = phrase_colors(len(phr))
    tcols = token_colors(n, phr, pcols)
    hl = list(highlight) if highlight is not None else default_highlights(words, phr, n_highlight)
    for k in hl:
        if not 0 <= k < len(phr):
            raise ValueError(f"highlight: phrase {k} out of range for {len(phr)} phrases")
    centres = word_centres(p, groups, ok)
    wcols = tcols[[g[0] for g in groups]] if groups else np.zeros((0, 4))

    n_gen = 1 + len(hl)
    n_panels = n_gen + (gt_trace is not None)
    margin, gap, head = 0.15, 0.25, 0.55
    gen_w = n_gen * panel_size + (n_gen - 1) * gap
    cap_lines = _caption_lines(words, gen_w, fontsize)
    if gt_words:
        cap_lines = max(cap_lines, _caption_lines(gt_words, panel_size, fontsize))
    cap_h = cap_lines * 1.35 * fontsize / 72 + 0.15
    fig_w = n_panels * panel_size + (n_panels - 1) * gap + 2 * margin
    key_cols = 3 if fig_w >= 9 else 1
    key_h = (0.3 if key_cols == 3 else 0.8) + 0.1
    title_h = 0.35 if title else 0.05
    fig_h = title_h + head + panel_size + 0.1 + cap_h + key_h + margin
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    y_img = (margin + key_h + cap_h + 0.1) / fig_h

    def panel(j: int) -> Axes:
        x = (margin + j * (panel_size + gap)) / fig_w
        return fig.add_axes((x, y_img, panel_size / fig_w, panel_size / fig_h))

    ax0 = panel(0)
    if image is not None:
        show_image(ax0, image)
    _scatter_points(ax0, centres, wcols, "word_points", 70)
    ax0.set_title("every word → one point\n(colour = phrase)", fontsize=10)
    for j, k in enumerate(hl, start=1):
        ax = panel(j)
        if image is not None:
            show_image(ax, image)
        mine = np.array([bool(set(g) & set(phr[k])) for g in groups], bool)
        _scatter_points(ax, centres[~mine], np.tile(mcolors.to_rgba("0.6"), ((~mine).sum(), 1)),
                        "context_points", 18, edge="none", alpha=0.8, zorder=2)
        b = phrase_box(p, phr[k], ok)
        if b is not None:
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=pcols[k],
                                   linestyle="--", linewidth=2.5, gid=f"phrase_box:{k}", zorder=3))
        _scatter_points(ax, centres[mine], wcols[mine], f"phrase_points:{k}", 110, edge="black", lw=1.2,
                        zorder=4)
        ax.set_title(_wrap_title(f"“{phrase_text(words, phr[k])}”", panel_size, 11), fontsize=11,
                     color=pcols[k], fontweight="bold")
    cap = fig.add_axes((margin / fig_w, (margin + key_h) / fig_h, gen_w / fig_w, cap_h / fig_h))
    caption_colored(cap, words, colors=tcols, fontsize=fontsize, bold={i for k in hl for i in phr[k]})
    handles = [Line2D([], [], marker="o", ls="none", mfc="0.45", mec="white", ms=9,
                      label="a word's point (centre of its predicted box)"),
               Line2D([], [], color="0.3", ls="--", lw=2, label="highlighted phrase: its predicted box")]
    if gt_trace is not None:
        axg = panel(n_gen)
        ucols = phrase_colors(len(gt_spans)) if gt_spans is not None else None
        plot_narrative_trace(axg, image, gt_trace, word_spans=gt_spans, normalized=gt_normalized, colors=ucols)
        axg.set_title("human: mouse trace while speaking\n(colour = utterance)", fontsize=10)
        capg = fig.add_axes(((margin + n_gen * (panel_size + gap)) / fig_w, (margin + key_h) / fig_h,
                             panel_size / fig_w, cap_h / fig_h))
        if gt_words:
            caption_colored(capg, gt_words, colors=phrase_colors(len(gt_words)), fontsize=fontsize)
        else:
            capg.set_axis_off()
        handles.append(Line2D([], [], color="0.3", lw=2, label="annotator's trace (thin grey: between utterances)"))
    fig.legend(handles=handles, loc="lower center", ncol=key_cols, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, margin / fig_h))
    if title:
        fig.suptitle(title, y=1 - 0.08 / fig_h, va="top", fontsize=12)
    return fig


def _panel_figure(
    n_panels: int, panel_size: float, caption_lines: int, fontsize: float, dpi: int, title: str | None
) -> tuple[Figure, list[Axes], list[Axes]]:
    """A figure with ``n_panels`` square image axes side by side, each with a caption axes below.

    Fixed, explicit layout (no constrained layout) so caption wrapping computed at creation holds and
    every frame of an animation has the same pixel size.
    """
    margin, gap = 0.15, 0.25
    cap_h = caption_lines * 1.35 * fontsize / 72 + 0.15
    title_h = 0.65 if title else 0.35  # room for the panels' own one-line titles too
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
    phrases: Sequence[Sequence[int]] | None = None,
    title: str | None = None,
    fade: float = 0.55,
    panel_size: float = 4.0,
    fontsize: float = 11.0,
    dpi: int = 100,
) -> Figure:
    """One step of "tracing" a caption: tokens ``0..step`` generated, token ``step`` highlighted.

    Colours are per phrase (:func:`split_phrases`, or ``phrases``), as in :func:`figure_word_trace`. The
    image shows one dot per earlier token (the centre of its predicted box, alpha ``fade``, gid
    ``"word_points"``), and the current token's box with its two corners (or its point for W×2) large with
    a black edge (gid ``"word_points:current"``, box ``"word_box:current"``); when ``gt_points`` (W×2 or
    W×4, same frame as ``points``; NaN = unknown) is given, the current token's ground truth is drawn as
    black crosses (gid ``"gt_point:current"``) plus a dashed box for W×4. With ``gt_trace`` a second panel
    shows the human trace, each utterance span ``gt_spans[k]`` in its own colour (the whole narrative: a
    generated token has no utterance of its own). The caption shows the current token bold on a box, later
    tokens grey. The figure size depends only on the caption, so all steps of one caption render to the
    same pixel size (GIF frames).
    """
    n = len(words)
    if not 0 <= step < n:
        raise ValueError(f"step {step} out of range for {n} words")
    hw = image_hw(image) if image is not None else None
    p = scale_points(as_points(points, n), normalized, hw, "points")
    ok = as_valid(valid, n, p)
    phr = [list(g) for g in (phrases if phrases is not None else split_phrases(words))]
    tcols = token_colors(n, phr)
    lines = _caption_lines(words, panel_size, fontsize)
    head = f"word {step + 1}/{n}: “{clean_tokens(list(words))[step][0]}”"
    fig, imgs, caps = _panel_figure(2 if gt_trace is not None else 1, panel_size, lines, fontsize, dpi,
                                    f"{title} — {head}" if title else head)
    ax = imgs[0]
    if image is not None:
        show_image(ax, image)
    before = np.flatnonzero(ok & (np.arange(n) < step))
    cent = p.reshape(n, -1, 2).mean(1) if n else np.zeros((0, 2))
    _scatter_points(ax, cent[before], tcols[before], "word_points", 45, alpha=fade)
    if ok[step]:
        c = tcols[step]
        xy = p[step].reshape(-1, 2)
        if p.shape[1] == 4:
            x0, x1 = sorted(p[step, [0, 2]])
            y0, y1 = sorted(p[step, [1, 3]])
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=3,
                                   gid="word_box:current", zorder=3))
            ax.scatter(*cent[step], s=160, c=[c], marker="*", edgecolors="black", linewidths=1.0, zorder=5,
                       gid="word_centre:current")
        ax.scatter(xy[:, 0], xy[:, 1], s=70, c=[c] * len(xy), edgecolors="black", linewidths=1.5, zorder=4,
                   gid="word_points:current")
    if gt_points is not None:
        g = scale_points(as_points(gt_points, n, "gt_points"), normalized, hw, "gt_points")[step]
        if np.isfinite(g).all():
            xy = g.reshape(-1, 2)
            ax.scatter(xy[:, 0], xy[:, 1], marker="x", s=120, c="black", linewidths=2.5, zorder=4,
                       gid="gt_point:current")
            if len(g) == 4:
                x0, x1 = sorted(g[[0, 2]])
                y0, y1 = sorted(g[[1, 3]])
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="black",
                                       linestyle="--", linewidth=2, gid="gt_box:current", zorder=2))
    ax.set_title("★ current word: its box · ● earlier words", fontsize=9)
    caption_colored(caps[0], words, colors=tcols, highlight=step, upto=step, fontsize=fontsize)
    if gt_trace is not None:
        ucols = phrase_colors(len(gt_spans)) if gt_spans is not None else None
        plot_narrative_trace(imgs[1], image, gt_trace, word_spans=gt_spans, normalized=gt_normalized,
                             colors=ucols)
        imgs[1].set_title("human trace (colour = utterance)", fontsize=9)
        caps[1].set_axis_off()
    return fig


def plot_attention_grid(
    ax: Axes,
    image: Any,
    attention: Any,
    grid_hw: tuple[int, int],
    frame_hw: tuple[int, int] | None = None,
    point: Any = None,
    cmap: str = "magma",
    alpha: float = 0.6,
    title: str | None = None,
) -> Axes:
    """A pointer head's attention over the image grid as a heatmap on the image.

    Args:
        image: H×W×3 (the S×S input frame the grid covers, padding included) or None.
        attention: N = gh·gw weights (row-major over the grid, as ``PointerHead.attention`` returns per token;
            they need not sum to 1).
        grid_hw: (gh, gw), the grid's cells.
        frame_hw: (h, w) pixels the grid covers (default the image's size).
        point: optional (x, y) or (x0, y0, x1, y1) predicted for this token, pixels of the frame: drawn as a
            white-edged dot at the centre (gid ``"attention_point"``), plus the box for 4 values
            (gid ``"attention_box"``).
    The heatmap is an ``imshow`` (gid ``"attention"``) of the gh×gw weights stretched over ``(0, w, h, 0)``,
    normalised to its maximum. Returns ``ax``.
    """
    gh, gw = grid_hw
    a = to_numpy(attention).astype(np.float64).reshape(-1)
    if a.size != gh * gw:
        raise ValueError(f"attention: {a.size} weights for a {gh}×{gw} grid ({gh * gw} cells)")
    if image is not None:
        show_image(ax, image)
    if frame_hw is None:
        if image is None:
            raise ValueError("plot_attention_grid: give the image or frame_hw")
        frame_hw = image_hw(image)
    h, w = frame_hw
    heat = a.reshape(gh, gw) / max(float(a.max()), 1e-12)
    ax.imshow(heat, extent=(0, w, h, 0), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="nearest",
              gid="attention", zorder=1)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if point is not None:
        q = to_numpy(point).astype(np.float64).reshape(-1)
        c = q.reshape(-1, 2).mean(0)
        if q.size == 4:
            x0, x1 = sorted(q[[0, 2]])
            y0, y1 = sorted(q[[1, 3]])
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5,
                                   linestyle="--", gid="attention_box", zorder=3))
        ax.scatter([c[0]], [c[1]], s=90, c="cyan", edgecolors="black", linewidths=1.2, zorder=4,
                   gid="attention_point")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def figure_attention(
    image: Any,
    words: Sequence[str],
    attention: Any,
    grid_hw: tuple[int, int],
    points: Any = None,
    frame_hw: tuple[int, int] | None = None,
    panel_size: float = 2.6,
    title: str | None = None,
) -> Figure:
    """One panel per word: where the pointer head looks (:func:`plot_attention_grid`) and the point it
    predicts. ``attention``: K×N (one row per word), or None for a head without attention (the MLP head):
    then only the image and the points are drawn. ``points``: K×2 / K×4 or None, ``words``: K titles.
    A key below says what the heatmap, dot and box are."""
    k = len(words)
    a = None if attention is None else to_numpy(attention).reshape(k, -1)
    pts = None if points is None else to_numpy(points).reshape(k, -1)
    fig = Figure(figsize=(panel_size * k, panel_size + 0.9), dpi=100, layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    gh, gw = grid_hw
    for j, ax in enumerate(axes):
        plot_attention_grid(ax, image, np.zeros(gh * gw) if a is None else a[j], grid_hw, frame_hw,
                            None if pts is None else pts[j], alpha=0.0 if a is None else 0.6,
                            title=_wrap_title(f"“{words[j]}”", panel_size, 10))
    handles = [Line2D([], [], marker="o", ls="none", mfc="cyan", mec="black", ms=8, label="predicted point"),
               Line2D([], [], color="0.3", ls="--", lw=1.5, label="predicted box")]
    if a is not None:
        handles.insert(0, Line2D([], [], marker="s", ls="none", mfc=colormaps["magma"](0.9), mec="none", ms=10,
                                 label="attention over the grid cells (bright = high)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles) if k >= 3 else 1, fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


__all__ = [
    "narrative_to_trace", "plot_narrative_trace", "plot_word_points", "caption_colored", "word_groups",
    "split_phrases", "phrase_text", "phrase_colors", "token_colors", "default_highlights", "figure_word_trace", "figure_word_step",
    "plot_attention_grid", "figure_attention",
]
