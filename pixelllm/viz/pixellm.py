"""Notebook 09's figures (PixelLM beside PixelLLM), drawn from arrays the task module computes
(:mod:`pixelllm.tasks.pixellm`); no model code is imported here.

* :func:`figure_multi_target` — per question, the masks of each target (one colour per target, drawn as
  outlines so the shapes keep their colours) for each method, titled with the question and the answer;
* :func:`figure_scale_attention` — for one question, per target and per scale (coarse → fine), the
  codebook token's attention over that scale's grid, the scale's mask m^l and the final mask M̂ (PixelLM
  paper, Fig. 5-style).
"""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from pixelllm.viz.inputs import to_numpy
from pixelllm.viz.scene import outline_masks, show_scene

TARGET_COLOURS = np.array([[1, 0.1, 0.1], [0.1, 0.5, 1], [1, 0.8, 0], [0.2, 0.9, 0.3], [0.9, 0.2, 0.9]])


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def figure_multi_target(examples: Sequence[Mapping[str, Any]], methods: Sequence[str] = ("pixellm", "sam_path"),
                        labels: Mapping[str, str] | None = None, panel: float = 2.6) -> Figure:
    """One column per question, one row per method (+ a ground-truth row first).

    ``examples``: dicts with ``image`` h×w×3, ``question``, ``answer``, ``gt_masks`` K×h×w bool and, per
    method name, ``<method>`` K'×h×w bool masks (target k in colour k) and optional ``<method>_iou`` (the
    question's matched IoU, shown in the panel title)."""
    labels = dict(labels or {})
    rows = ["gt_masks", *methods]
    n = len(examples)
    fig = Figure(figsize=(panel * max(n, 1), (panel + 0.5) * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), max(n, 1), squeeze=False)
    for j, ex in enumerate(examples):
        for i, key in enumerate(rows):
            ax = axes[i, j]
            show_scene(ax, ex["image"])
            masks = to_numpy(ex[key]).astype(bool)
            if len(masks):
                outline_masks(ax, masks, colors=TARGET_COLOURS[np.arange(len(masks)) % len(TARGET_COLOURS)],
                              linewidth=1.6)
            name = "ground truth" if key == "gt_masks" else labels.get(key, key)
            if i == 0:
                ax.set_title(_wrap(f"Q: {ex['question']}") + "\n" + _wrap(f"A: {ex['answer']}"), fontsize=8)
            ax.set_xlabel(name + (f" (IoU {ex[key + '_iou']:.2f})" if key + "_iou" in ex else ""), fontsize=8)
    return fig


def figure_scale_attention(image: Any, phrases: Sequence[str], attention: Sequence[Any], scale_masks: Sequence[Any],
                           final_masks: Any, panel: float = 1.9) -> Figure:
    """Rows = targets; columns = the image with the target's final mask, then per scale (coarse → fine) the
    token→image attention (L panels) and the scale's mask σ(m^l) (L panels).

    ``attention[l]``: K×g_l×g_l weights; ``scale_masks[l]``: K×2g_l×2g_l logits; ``final_masks``: K×h×w bool;
    all for the S×S input frame whose valid part is ``image`` (h×w×3)."""
    k, nl = len(phrases), len(attention)
    img = to_numpy(image)
    h, w = img.shape[:2]
    fig = Figure(figsize=(panel * (1 + 2 * nl), panel * k + 0.4), layout="constrained")
    axes = fig.subplots(k, 1 + 2 * nl, squeeze=False)
    final = to_numpy(final_masks).astype(bool)
    for t in range(k):
        show_scene(axes[t, 0], img)
        outline_masks(axes[t, 0], final[t:t + 1], colors=TARGET_COLOURS[[t % len(TARGET_COLOURS)]], linewidth=1.6)
        axes[t, 0].set_title(_wrap(phrases[t], 22), fontsize=8)
        for l in range(nl):
            for col, arr, cmap, name in ((1 + l, attention[l], "magma", "attention"),
                                         (1 + nl + l, scale_masks[l], "viridis", "σ(m)")):
                a = to_numpy(arr[t]).astype(np.float32)
                if name == "σ(m)":
                    a = 1 / (1 + np.exp(-a))
                ax = axes[t, col]
                side = a.shape[0]
                # the frame is S×S; the image occupies the top-left h×w of it
                ax.imshow(img, extent=(0, w, h, 0))
                ax.imshow(a, cmap=cmap, alpha=0.6, extent=(0, side * max(h, w) / side, side * max(h, w) / side, 0),
                          interpolation="nearest")
                ax.set_xlim(0, w), ax.set_ylim(h, 0)
                ax.set_xticks([]), ax.set_yticks([])
                if t == 0:
                    ax.set_title(f"scale {l + 1}/{nl} {name}\n({side}×{side})", fontsize=8)
    return fig


__all__ = ["TARGET_COLOURS", "figure_multi_target", "figure_scale_attention"]
