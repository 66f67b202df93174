"""Visualisation: scene plots, the paper's word<->trace figure (Fig. 1 / Fig. 5), an interactive
word<->trace viewer (ipywidgets), GIF export and training curves.

One module per job: ``inputs`` (arrays, colours, tokens), ``scene`` (image + boxes + masks, grids),
``trace`` (narrative traces, per-word points, the word<->trace figures), ``curves`` (training curves,
metric tables), ``output`` (PNG bytes, saving), ``tasks`` (the tasks' result figures, drawn from arrays the
task modules compute), ``viewer`` and ``playground`` (ipywidgets; the playground's prediction overlays), ``animate`` (GIF). Nothing here imports model code
(``pixelllm.tasks``, ``pixelllm.engine``).

Importing ``pixelllm.viz`` is light: matplotlib, PIL and ipywidgets are imported only when a function
is first used (``pixelllm.viz.figure_word_trace`` imports ``pixelllm.viz.trace`` on first access).

Inputs are plain arrays (numpy, or torch tensors which are converted): images H×W×3 uint8 or float
in [0, 1]; boxes (x0, y0, x1, y1) in pixels; masks bool N×H×W; per-word points W×2 (x, y) or W×4
(two points = box corners x0, y0, x1, y1) in pixels unless a ``normalized=True`` flag says [0, 1].
Every function returns a ``matplotlib.figure.Figure`` or the ``Axes`` it drew on and never calls
``plt.show()``; figures are built without pyplot (Agg-safe, no global figure registry). In a notebook,
build the figure, save it with :func:`save_figure`, and end the cell with ``fig`` (``display(fig)`` inside a
loop): importing this package in a Jupyter kernel registers the image formatter for ``Figure``
(:func:`pixelllm.viz.output.show_figures_inline`), so the figure is shown once, as a PNG.
"""
from __future__ import annotations

import sys

from pixelllm._lazy import lazy_module_getattr

_LAZY = {
    # pixellm.py: notebook 09 (PixelLM beside PixelLLM)
    "figure_multi_target": "pixelllm.viz.pixellm",
    "figure_scale_attention": "pixelllm.viz.pixellm",
    # inputs.py: arrays, colours, tokens
    "word_colors": "pixelllm.viz.inputs",
    "clean_tokens": "pixelllm.viz.inputs",
    "as_rgb": "pixelllm.viz.inputs",
    # scene.py: image + boxes + masks, grids
    "show_scene": "pixelllm.viz.scene",
    "draw_boxes": "pixelllm.viz.scene",
    "overlay_masks": "pixelllm.viz.scene",
    "outline_masks": "pixelllm.viz.scene",
    "grid_figure": "pixelllm.viz.scene",
    # trace.py: narrative traces, per-word points, the word<->trace figures
    "narrative_to_trace": "pixelllm.viz.trace",
    "plot_narrative_trace": "pixelllm.viz.trace",
    "plot_word_points": "pixelllm.viz.trace",
    "caption_colored": "pixelllm.viz.trace",
    "figure_word_trace": "pixelllm.viz.trace",
    "figure_word_step": "pixelllm.viz.trace",
    "word_groups": "pixelllm.viz.trace",
    "split_phrases": "pixelllm.viz.trace",
    "phrase_text": "pixelllm.viz.trace",
    "phrase_colors": "pixelllm.viz.trace",
    "default_highlights": "pixelllm.viz.trace",
    "plot_attention_grid": "pixelllm.viz.trace",
    "figure_attention": "pixelllm.viz.trace",
    # curves.py: training curves, metric tables
    "plot_curves": "pixelllm.viz.curves",
    "read_jsonl_records": "pixelllm.viz.curves",
    "plot_metric_table": "pixelllm.viz.curves",
    "plot_pointing": "pixelllm.viz.curves",
    # output.py: PNG bytes, saving
    "figure_to_png": "pixelllm.viz.output",
    "save_figure": "pixelllm.viz.output",
    "show_figures_inline": "pixelllm.viz.output",
    # tasks.py: figures of the tasks' results (drawing only; the task modules compute what is drawn)
    "figure_box_prompt_masks": "pixelllm.viz.tasks",
    "figure_referring": "pixelllm.viz.tasks",
    "figure_region_captions": "pixelllm.viz.tasks",
    "figure_dense_captions": "pixelllm.viz.tasks",
    "figure_matching": "pixelllm.viz.tasks",
    # viewer.py, playground.py
    "TraceViewer": "pixelllm.viz.viewer",
    "Playground": "pixelllm.viz.playground",
    "figure_prediction": "pixelllm.viz.playground",
    # animate.py
    "save_trace_gif": "pixelllm.viz.animate",
    "trace_frames": "pixelllm.viz.animate",
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)

if "IPython" in sys.modules:  # in a Jupyter kernel: show Figures as images (nothing is imported otherwise)
    from pixelllm.viz.output import show_figures_inline

    show_figures_inline()


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
