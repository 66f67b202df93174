"""Scenes: an image in its pixel frame with boxes, masks and labels, and grids of such panels.

Artists carry ``gid`` tags (``"box:0"``, ``"box_label:0"``, ``"masks"``) so tests and callers can find them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pixelllm.viz.inputs import as_masks, as_rgb, resolve_colors, to_numpy


def show_image(ax: Axes, image: Any):
    """``imshow`` of ``image`` (see :func:`pixelllm.viz.inputs.as_rgb`) in its pixel frame
    (``extent = (0, W, H, 0)``, nearest-neighbour, no ticks); returns the AxesImage."""
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
    b = to_numpy(boxes).astype(np.float64).reshape(-1, 4) if np.size(to_numpy(boxes)) else np.zeros((0, 4))
    if labels is not None and len(labels) != len(b):
        raise ValueError(f"labels: {len(labels)} labels for {len(b)} boxes")
    cols = resolve_colors(colors, len(b))
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
    m = as_masks(masks)
    n, h, w = m.shape
    cols = resolve_colors(colors, n)
    rgba = np.zeros((h, w, 4), dtype=np.float32)
    for i in range(n):
        rgba[m[i], :3] = cols[i, :3]
        rgba[m[i], 3] = alpha
    return ax.imshow(rgba, extent=(0, w, h, 0), interpolation="nearest", gid="masks")


def outline_masks(ax: Axes, masks: Any, colors: Any = None, linewidth: float = 2.0, halo: bool = True) -> list:
    """Draw N bool masks (N×H×W, or H×W) as outlines (``ax.contour`` at level 0.5 in the pixel frame), so
    the object's own colours stay visible; returns the contour sets (gid ``"mask_outline:i"``).

    ``halo`` draws a thin black line under each outline so it reads on light and dark images alike.
    Empty masks draw nothing.
    """
    import matplotlib.patheffects as pe

    m = as_masks(masks)
    n, h, w = m.shape
    cols = resolve_colors(colors, n)
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5  # pixel centres in the (0, W, H, 0) frame
    out = []
    for i in range(n):
        if not m[i].any():
            continue
        # pad so a mask touching the border still closes its outline
        pad = np.pad(m[i].astype(np.float32), 1)
        cs = ax.contour(np.r_[xs[0] - 1, xs, xs[-1] + 1], np.r_[ys[0] - 1, ys, ys[-1] + 1], pad, levels=[0.5],
                        colors=[cols[i]], linewidths=linewidth, zorder=3)
        if halo:
            cs.set_path_effects([pe.Stroke(linewidth=linewidth + 1.5, foreground="black"), pe.Normal()])
        cs.set_gid(f"mask_outline:{i}")
        out.append(cs)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    return out


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
    show_image(ax, image)
    n = 0
    if boxes is not None:
        n = len(to_numpy(boxes).reshape(-1, 4))
    if masks is not None:
        nm = to_numpy(masks)
        n = max(n, 1 if nm.ndim == 2 else nm.shape[0])
    cols = resolve_colors(colors, n)
    if masks is not None:
        nm = to_numpy(masks)
        overlay_masks(ax, masks, colors=cols[: (1 if nm.ndim == 2 else nm.shape[0])], alpha=mask_alpha)
    if boxes is not None:
        draw_boxes(ax, boxes, labels=labels, colors=cols[: len(to_numpy(boxes).reshape(-1, 4))])
    if title:
        ax.set_title(title, fontsize=10)
    return ax


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


__all__ = ["show_image", "draw_boxes", "overlay_masks", "outline_masks", "show_scene", "grid_figure"]
