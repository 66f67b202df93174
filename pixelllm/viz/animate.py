"""GIF export: a caption being "traced", one frame per generated word.

Frame ``i`` is :func:`pixelllm.viz.trace.figure_word_step` at step ``i`` (earlier words' points faded,
word ``i`` highlighted, later words of the caption grey). All frames of one caption have the same size.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from pixelllm.viz.output import figure_to_png
from pixelllm.viz.trace import figure_word_step


def trace_frames(
    image: Any,
    words: Sequence[str],
    points: Any,
    gt_trace: Any = None,
    *,
    gt_points: Any = None,
    gt_spans: Sequence[tuple[int, int]] | None = None,
    normalized: bool = False,
    gt_normalized: bool = False,
    valid: Any = None,
    title: str | None = None,
    panel_size: float = 3.5,
    dpi: int = 72,
    progress: bool = False,
) -> list:
    """One RGB ``PIL.Image`` per word (see :func:`save_trace_gif` for the arguments)."""
    from PIL import Image
    from tqdm.auto import tqdm

    frames = []
    for step in tqdm(range(len(words)), desc="frames", disable=not progress):
        fig = figure_word_step(
            image, words, points, step, normalized=normalized, valid=valid, gt_points=gt_points,
            gt_trace=gt_trace, gt_spans=gt_spans, gt_normalized=gt_normalized, title=title,
            panel_size=panel_size, dpi=dpi,
        )
        frames.append(Image.open(io.BytesIO(figure_to_png(fig))).convert("RGB"))
    return frames


def save_trace_gif(
    path: str | Path,
    image: Any,
    words: Sequence[str],
    points: Any,
    gt_trace: Any = None,
    fps: float = 3,
    *,
    gt_points: Any = None,
    gt_spans: Sequence[tuple[int, int]] | None = None,
    normalized: bool = False,
    gt_normalized: bool = False,
    valid: Any = None,
    title: str | None = None,
    panel_size: float = 3.5,
    dpi: int = 72,
    loop: int = 0,
    progress: bool = False,
) -> Path:
    """Write an animated GIF of the caption being traced, one frame per word; returns ``path``.

    Args:
        image: H×W×3 uint8 or float [0, 1].
        words: W tokens / words (frame count = W).
        points: W×2 (x, y) or W×4 (x0, y0, x1, y1) predicted points, pixels of ``image`` ([0, 1] with
            ``normalized``); NaN rows / ``valid=False`` words show no point.
        gt_trace: optional N×2 human trace (pixels, or [0, 1] with ``gt_normalized``) shown in a second
            panel, with ``gt_spans`` (per word ``(i0, i1)`` into the trace) coloured up to the current word.
        gt_points: optional W×2 / W×4 per-word ground truth (same frame as ``points``).
        fps: frames per second (each frame lasts ``1000 / fps`` ms); ``loop=0`` loops forever.
    Frames are rendered with matplotlib (Agg) and assembled with Pillow; the file is written atomically.
    Every frame differs (its title counts "word i/W"), so Pillow never merges consecutive frames.
    """
    from pixelllm.utils import atomic_write_bytes

    if len(words) == 0:
        raise ValueError("save_trace_gif: no words, nothing to animate")
    if fps <= 0:
        raise ValueError(f"save_trace_gif: fps must be > 0, got {fps}")
    frames = trace_frames(
        image, words, points, gt_trace, gt_points=gt_points, gt_spans=gt_spans, normalized=normalized,
        gt_normalized=gt_normalized, valid=valid, title=title, panel_size=panel_size, dpi=dpi,
        progress=progress,
    )
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=int(round(1000 / fps)), loop=loop, disposal=1)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p
