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
from pixelllm.viz.scene import draw_boxes, grid_figure, show_scene

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


def figure_referring(examples: Sequence[Mapping[str, Any]], ncols: int = 4, panel: float = 2.6) -> Figure:
    """Grid of qualitative referring results: the image, the predicted mask (overlay), the ground-truth box
    (green, dashed) and the predicted box (red), titled with the expression and the box IoU.

    ``examples``: dicts with ``image`` h×w×3, ``expression``, ``pred_box`` / ``gt_box`` (x0, y0, x1, y1),
    optional ``mask`` h×w bool and ``iou``, as ``pixelllm.tasks.referring.qualitative_examples`` returns them.
    """
    n = len(examples)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(panel * ncols, (panel + 0.5) * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples):
        show_scene(ax, ex["image"], masks=ex["mask"][None] if ex.get("mask") is not None else None,
                   colors=["tab:red"])
        draw_boxes(ax, np.asarray(ex["gt_box"])[None], colors=["tab:green"], linestyle="--")
        draw_boxes(ax, np.asarray(ex["pred_box"])[None], colors=["tab:red"])
        ax.set_title("\n".join(textwrap.wrap(f"{ex['expression']} (IoU {ex.get('iou', float('nan')):.2f})", 28)),
                     fontsize=8)
    fig.tight_layout()
    return fig


def figure_region_captions(results: Sequence[dict], dataset, n: int = 6, ncols: int = 3, title: str = "") -> Figure:
    """One panel per (image, box): the scene, the prompt box, the generated caption (bold) and the first
    reference (grey). Boxes are drawn in pixels of the resized input.

    ``results``: per-box predictions (``index`` into ``dataset``, ``box_input``, ``text``, ``references``) as
    ``pixelllm.tasks.region_caption.evaluate_loc_caption`` returns them; ``dataset[index]`` is a sample with
    ``images`` 3×S×S and ``image_sizes`` (h, w).
    """
    items = list(results[:n])
    if not items:
        raise ValueError("figure_region_captions: no results to draw")

    def draw(ax, r):
        s = dataset[r["index"]]
        h, w = s["image_sizes"].tolist()
        show_scene(ax, s["images"][:, :h, :w].permute(1, 2, 0).numpy())
        draw_boxes(ax, [r["box_input"]], colors=[(1.0, 0.1, 0.1, 1.0)])
        ax.set_title(f"{r['text'] or '(empty)'}\nref: {r['references'][0]}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])

    fig = grid_figure(items, ncols=ncols, draw=draw, panel_size=2.6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_dense_captions(detections: Sequence[dict], dataset, n: int = 4, top: int = 5, ncols: int = 2,
                          min_score: float = 0.0) -> Figure:
    """Dense captions on test scenes: the ``top`` highest-scoring boxes (≥ ``min_score``) with their captions
    (solid) over the ground-truth boxes (dashed grey), drawn on the original image.

    ``detections``: per image ``image_id``, ``boxes`` (original pixels), ``scores``, ``captions``, as
    ``pixelllm.tasks.densecap.predict_dataset`` returns them; ``dataset``: a dense-caption dataset, whose
    ``records`` (``image_id``, ``file_name``, ``regions`` with (x, y, w, h) ``bbox``) and ``image_root`` are read.
    """
    from PIL import Image

    from pixelllm.data.datasets import xywh_to_xyxy

    recs = {str(r["image_id"]): r for r in dataset.records}
    items = list(detections[:n])
    if not items:
        raise ValueError("figure_dense_captions: no detections to draw")

    def draw(ax, d):
        r = recs[d["image_id"]]
        with Image.open(dataset.image_root / r["file_name"]) as im:
            show_scene(ax, im.convert("RGB"))
        draw_boxes(ax, [xywh_to_xyxy(g["bbox"]) for g in r["regions"]], colors=[(0.6, 0.6, 0.6, 1.0)] * len(r["regions"]),
                   linestyle="--", linewidth=1.0)
        keep = [j for j, s in enumerate(d["scores"]) if s >= min_score][:top]
        draw_boxes(ax, [d["boxes"][j] for j in keep],
                   labels=[f"{d['captions'][j] or '(empty)'} {d['scores'][j]:.2f}" for j in keep], fontsize=7)
        ax.set_title(f"image {d['image_id']}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])

    return grid_figure(items, ncols=ncols, draw=draw, panel_size=3.6)


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
