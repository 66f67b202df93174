"""Task figures: SAM's masks from box prompts, referring localization / segmentation, location-conditioned
(region) captions, dense captions and the proposal matching of dense-caption training.

These functions only draw. What needs a model (predicted masks, boxes, matched proposals) is computed by
the task or pretraining module and passed in as arrays: ``pixelllm.pretrain.sam.box_prompt_masks``,
``pixelllm.tasks.referring.qualitative_examples``, ``pixelllm.tasks.densecap.matching_example``,
``pixelllm.tasks.densecap.predict_dataset``, ``pixelllm.tasks.region_caption.evaluate_loc_caption``.
This module imports no model code (``pixelllm.tasks``, ``pixelllm.engine``). Boxes are
(x0, y0, x1, y1) pixels of the image they are drawn on.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pixelllm.viz.inputs import to_numpy
from pixelllm.viz.scene import draw_boxes, outline_masks, show_scene

#: Colours of SAM's masks and prompt boxes, cycling per instance.
SAM_MASK_COLOURS = np.array([[1, 0.1, 0.1], [0.1, 0.5, 1], [1, 0.8, 0], [0.2, 0.9, 0.3], [0.9, 0.2, 0.9],
                             [0, 0.9, 0.9]])


def figure_box_prompt_masks(examples: Sequence[Mapping[str, Any]], cols: int = 3, title: str = "") -> Figure:
    """SAM's masks from box prompts, one panel per scene: each prompt box (dashed) and its predicted mask
    (coloured overlay, box and mask in the same colour), titled with the scene's mean mask IoU.

    ``examples``: dicts with ``image`` H×W×3 float in [0, 1], ``masks`` K×H×W bool, ``boxes`` K×4 (pixels of
    ``image``), ``image_id`` and ``iou`` (float), as ``pixelllm.pretrain.sam.box_prompt_masks`` returns them.
    """
    n = len(examples)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3 * cols, 3.1 * rows))
    colours = SAM_MASK_COLOURS
    for k, ex in enumerate(examples):
        overlay = np.array(ex["image"], copy=True)
        for j, m in enumerate(to_numpy(ex["masks"]).astype(bool)):
            overlay[m] = 0.45 * overlay[m] + 0.55 * colours[j % len(colours)]
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(overlay)
        for j, b in enumerate(to_numpy(ex["boxes"])):
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ls="--", lw=1.2,
                                   ec=colours[j % len(colours)]))
        ax.set_title(f"image {ex['image_id']}: IoU {ex['iou']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title or "SAM masks from box prompts", fontsize=10)
    fig.tight_layout()
    return fig


#: Colours of the referring / captioning figures: not among the synthetic objects' colours (red, green,
#: blue, yellow, purple, orange), so boxes never blend into the object they frame.
GT_COLOUR = "white"
PRED_COLOUR = "cyan"


def _halo(linewidth: float) -> list:
    import matplotlib.patheffects as pe

    return [pe.Stroke(linewidth=linewidth + 1.5, foreground="black"), pe.Normal()]


def _key(fig: Figure, handles: list, ncol: int) -> None:
    """The figure's key (legend) below the panels (constrained layout keeps it inside the figure)."""
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` (≈ 0.55 em per character)."""
    return "\n".join(textwrap.wrap(text, max(8, int(width_in * 72 / (0.55 * fontsize))))) or text


def figure_referring(examples: Sequence[Mapping[str, Any]], ncols: int = 4, panel: float = 2.8) -> Figure:
    """Grid of qualitative referring results: the image, the ground-truth box (white, dashed), the predicted
    box (cyan) and, when given, the predicted mask as a cyan outline (so the object's colour stays true),
    titled with the expression (wrapped, never cut) and the box IoU; a key below the grid.

    ``examples``: dicts with ``image`` h×w×3, ``expression``, ``pred_box`` / ``gt_box`` (x0, y0, x1, y1),
    optional ``mask`` h×w bool and ``iou``, as ``pixelllm.tasks.referring.qualitative_examples`` returns them.
    Artists: rectangles gid ``"box:0"`` (ground truth, then prediction), outline ``"mask_outline:0"``.
    """
    from matplotlib.lines import Line2D

    n = len(examples)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(panel * ncols, (panel + 0.6) * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    has_mask = False
    for ax, ex in zip(axes.flat, examples):
        show_scene(ax, ex["image"])
        if ex.get("mask") is not None:
            has_mask = True
            outline_masks(ax, ex["mask"], colors=[PRED_COLOUR], linewidth=1.5)
        for r in draw_boxes(ax, np.asarray(ex["gt_box"])[None], colors=[GT_COLOUR], linestyle="--", linewidth=2):
            r.set_path_effects(_halo(2))
        for r in draw_boxes(ax, np.asarray(ex["pred_box"])[None], colors=[PRED_COLOUR], linewidth=2):
            r.set_path_effects(_halo(2))
        ax.set_title(_wrap(f"“{ex['expression']}” (IoU {ex.get('iou', float('nan')):.2f})", panel, 9),
                     fontsize=9)
    handles = [Line2D([], [], color=GT_COLOUR, ls="--", lw=2, path_effects=_halo(2), label="ground-truth box"),
               Line2D([], [], color=PRED_COLOUR, lw=2, path_effects=_halo(2), label="predicted box")]
    if has_mask:
        handles.append(Line2D([], [], color=PRED_COLOUR, lw=1.5, path_effects=_halo(1.5),
                              label="predicted mask (outline)"))
    _key(fig, handles, len(handles) if ncols >= 2 else 1)
    return fig


def figure_region_captions(results: Sequence[dict], dataset, n: int = 6, ncols: int = 3, title: str = "",
                           panel: float = 2.8) -> Figure:
    """One panel per (image, box): the scene, the prompt box (cyan), the generated caption as the title
    (bold) and the first reference below (grey), both wrapped to the panel; a key below the grid. Boxes are
    drawn in pixels of the resized input.

    ``results``: per-box predictions (``index`` into ``dataset``, ``box_input``, ``text``, ``references``) as
    ``pixelllm.tasks.region_caption.evaluate_loc_caption`` returns them; ``dataset[index]`` is a sample with
    ``images`` 3×S×S and ``image_sizes`` (h, w).
    """
    from matplotlib.lines import Line2D

    items = list(results[:n])
    if not items:
        raise ValueError("figure_region_captions: no results to draw")
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    fig = Figure(figsize=(panel * ncols, (panel + 0.9) * nrows + 0.4 + (0.3 if title else 0)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(items):]:
        ax.set_axis_off()
    for ax, r in zip(axes, items):
        s = dataset[r["index"]]
        h, w = s["image_sizes"].tolist()
        show_scene(ax, s["images"][:, :h, :w].permute(1, 2, 0).numpy())
        for rect in draw_boxes(ax, [r["box_input"]], colors=[PRED_COLOUR], linewidth=2.5):
            rect.set_path_effects(_halo(2.5))
        gen, ref = r["text"] or "(empty)", r["references"][0]
        ax.set_title(_wrap(gen, panel, 10), fontsize=10, fontweight="bold")
        ax.set_xlabel(_wrap(f"reference: {ref}", panel, 8), fontsize=8, color="0.35", labelpad=3)
        ax.set_xticks([]), ax.set_yticks([])
    _key(fig, [Line2D([], [], color=PRED_COLOUR, lw=2.5, path_effects=_halo(2.5), label="prompt box"),
               Line2D([], [], ls="none", marker="$\\mathbf{Aa}$", color="black", ms=12,
                      label="generated caption (bold)"),
               Line2D([], [], ls="none", marker="$Aa$", color="0.35", ms=12, label="reference")],
         3 if ncols >= 2 else 1)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def figure_dense_captions(detections: Sequence[dict], dataset, n: int = 4, top: int = 5, ncols: int = 2,
                          min_score: float = 0.0, panel: float = 3.8) -> Figure:
    """Dense captions on test scenes: the ``top`` highest-scoring boxes (≥ ``min_score``), each numbered on
    the image in its colour, with the numbered captions and scores listed beside the image in the same
    colours (legible however the boxes overlap), over the ground-truth boxes (dashed grey), drawn on the
    original image; a key below the grid.

    ``detections``: per image ``image_id``, ``boxes`` (original pixels), ``scores``, ``captions``, as
    ``pixelllm.tasks.densecap.predict_dataset`` returns them; ``dataset``: a dense-caption dataset, whose
    ``records`` (``image_id``, ``file_name``, ``regions`` with (x, y, w, h) ``bbox``) and ``image_root`` are read.
    Artists: rectangles ``"box:i"`` (ground truth first, then the predictions), number tags
    ``"box_label:i"`` and the list ``"caption_list:i"`` (text ``"<caption> <score>"``).
    """
    from matplotlib.lines import Line2D
    from PIL import Image

    from pixelllm.data.datasets import xywh_to_xyxy
    from pixelllm.viz.inputs import word_colors

    recs = {str(r["image_id"]): r for r in dataset.records}
    items = list(detections[:n])
    if not items:
        raise ValueError("figure_dense_captions: no detections to draw")
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    fig = Figure(figsize=(ncols * panel * 1.6, nrows * (panel + 0.35) + 0.4), layout="constrained")
    grid = fig.add_gridspec(nrows, 2 * ncols, width_ratios=[1.0, 0.6] * ncols)
    for k, d in enumerate(items):
        r = recs[d["image_id"]]
        ax = fig.add_subplot(grid[k // ncols, 2 * (k % ncols)])
        lst = fig.add_subplot(grid[k // ncols, 2 * (k % ncols) + 1])
        lst.set_axis_off()
        with Image.open(dataset.image_root / r["file_name"]) as im:
            show_scene(ax, im.convert("RGB"))
        draw_boxes(ax, [xywh_to_xyxy(g["bbox"]) for g in r["regions"]], colors=[(0.6, 0.6, 0.6, 1.0)] * len(r["regions"]),
                   linestyle="--", linewidth=1.0)
        keep = [j for j, s in enumerate(d["scores"]) if s >= min_score][:top]
        cols = word_colors(len(keep))
        for rect in draw_boxes(ax, [d["boxes"][j] for j in keep], colors=cols, labels=[str(i + 1) for i in range(len(keep))],
                               fontsize=9):
            rect.set_path_effects(_halo(2))
        for i, j in enumerate(keep):
            lst.text(0.0, 1.0 - i * 0.13, f"{i + 1}.", color=cols[i], fontsize=10, fontweight="bold",
                     va="top", ha="left", transform=lst.transAxes)
            lst.text(0.1, 1.0 - i * 0.13, f"{d['captions'][j] or '(empty)'} {d['scores'][j]:.2f}",
                     color=cols[i], fontsize=10, va="top", ha="left", transform=lst.transAxes,
                     gid=f"caption_list:{i}", wrap=True)
        ax.set_title(f"image {d['image_id']}", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    _key(fig, [Line2D([], [], color="tab:blue", lw=2, label="predicted box n (caption n and score listed right)"),
               Line2D([], [], color="0.6", ls="--", lw=1, label="ground-truth region")], 2)
    return fig


def figure_matching(image: Any, gt_boxes: Any, proposals: Any, matched: Any, match_iou: float) -> Figure:
    """How training prompts are chosen on one image: ground truth (dashed grey), the proposals that match a
    ground-truth box at IoU ≥ ``match_iou`` (green, the prompt boxes) and those that do not (red, no caption
    loss). ``gt_boxes`` M×4 and ``proposals`` P×4 are pixels of ``image``; ``matched`` is P bool.
    ``pixelllm.tasks.densecap.matching_example`` returns exactly these keyword arguments.
    """
    props = to_numpy(proposals).astype(np.float64).reshape(-1, 4)
    hit = to_numpy(matched).astype(bool).reshape(-1)
    gt = to_numpy(gt_boxes).reshape(-1, 4)
    fig = Figure(figsize=(4.2, 4.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    show_scene(ax, image)
    draw_boxes(ax, gt, colors=[(0.7, 0.7, 0.7, 1.0)] * len(gt), linestyle="--", linewidth=1.5)
    draw_boxes(ax, props[~hit], colors=[(0.9, 0.1, 0.1, 0.8)] * int((~hit).sum()), linewidth=1.0)
    draw_boxes(ax, props[hit], colors=[(0.1, 0.8, 0.2, 1.0)] * int(hit.sum()), linewidth=2.0)
    ax.set_title(f"{int(hit.sum())}/{len(props)} proposals with IoU ≥ {match_iou} → prompts", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    return fig


__all__ = ["figure_box_prompt_masks", "figure_referring", "figure_region_captions", "figure_dense_captions",
           "figure_matching"]
