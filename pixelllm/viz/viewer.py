"""Interactive word <-> trace viewer (ipywidgets): pick an image, step through the generated words and
see where the model points for each one (and where the human trace was, when known).

    viewer = TraceViewer(items)
    display(viewer.widget)          # in a notebook

Without a browser (tests, papermill) the same state machine runs headless: setting
``viewer.slider.value`` or ``viewer.dropdown.value`` fires the callbacks, which re-render the PNG in
``viewer.image.value`` and keep the last figure in ``viewer.figure``; ``viewer.render(i, j)`` returns
the figure for image ``i``, word ``j`` directly.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pixelllm.viz.inputs import as_points, clean_tokens
from pixelllm.viz.output import figure_to_png
from pixelllm.viz.trace import figure_word_step

_REQUIRED = ("image", "words", "pred_points")


class TraceViewer:
    """Step through the words of generated captions and their predicted locations.

    Args:
        items: one dict per image with
            ``image`` H×W×3 uint8 or float [0, 1];
            ``words`` list[str] (tokens; SentencePiece ``"▁"`` handled);
            ``pred_points`` W×2 (x, y) or W×4 (x0, y0, x1, y1) pixels of ``image`` ([0, 1] with ``normalized``);
            optional ``gt_points`` (W×2 / W×4 per word, same frame, NaN rows = unknown),
            ``gt_trace`` (N×2 (x, y) trace; [0, 1] with ``gt_normalized``), ``gt_spans`` (per word
            ``(i0, i1)`` into ``gt_trace``), ``valid`` (W bool), ``title`` (str).
        normalized / gt_normalized: coordinate frame of the points / of the traces (see above).
        fade: alpha of the earlier words' points; panel_size (inches) and dpi set the rendered PNG size.
    Raises ``ValueError`` naming the item and field for a missing key or a points array that does not
    have one row per word, before any widget is built.
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        normalized: bool = False,
        gt_normalized: bool = False,
        fade: float = 0.3,
        panel_size: float = 4.0,
        dpi: int = 80,
    ) -> None:
        import ipywidgets as w

        if len(items) == 0:
            raise ValueError("TraceViewer: no items")
        for i, it in enumerate(items):
            for k in _REQUIRED:
                if k not in it:
                    raise ValueError(f"items[{i}]: missing field {k!r} (needs {', '.join(_REQUIRED)})")
            n = len(it["words"])
            if n == 0:
                raise ValueError(f"items[{i}]['words']: empty caption")
            as_points(it["pred_points"], n, f"items[{i}]['pred_points']")
            if it.get("gt_points") is not None:
                as_points(it["gt_points"], n, f"items[{i}]['gt_points']")
        self.items = list(items)
        self.normalized, self.gt_normalized = normalized, gt_normalized
        self.fade, self.panel_size, self.dpi = fade, panel_size, dpi
        self.figure = None  # the last rendered matplotlib Figure
        self._busy = False  # True while re-configuring widgets (suppresses intermediate renders)

        self.dropdown = w.Dropdown(
            options=[(str(it.get("title") or f"image {i}"), i) for i, it in enumerate(self.items)],
            value=0, description="image",
        )
        self.slider = w.IntSlider(value=0, min=0, max=len(self.items[0]["words"]) - 1, description="word",
                                  continuous_update=False)
        self.play = w.Play(value=0, min=0, max=self.slider.max, interval=800, description="play")
        w.jslink((self.play, "value"), (self.slider, "value"))
        self.label = w.HTML()
        self.image = w.Image(format="png")
        self.dropdown.observe(self._on_image_change, names="value")
        self.slider.observe(self._on_word_change, names="value")
        self.widget = w.VBox([w.HBox([self.dropdown, self.play, self.slider]), self.label, self.image])
        self._refresh()

    # -- state ---------------------------------------------------------------------------------
    @property
    def image_idx(self) -> int:
        return int(self.dropdown.value)

    @property
    def word_idx(self) -> int:
        return int(self.slider.value)

    @property
    def current_word(self) -> str:
        """Display text of the highlighted word (SentencePiece ``"▁"`` removed)."""
        return clean_tokens(list(self.items[self.image_idx]["words"]))[self.word_idx][0]

    # -- rendering -----------------------------------------------------------------------------
    def render(self, image_idx: int, word_idx: int):
        """Figure for image ``image_idx`` with words ``0..word_idx`` shown and ``word_idx`` highlighted.

        The current word's predicted point(s) are the ``gid="word_points:current"`` scatter (pixels of
        the image), its ground truth (if known) ``"gt_point:current"``; see ``trace.figure_word_step``.
        """
        it = self.items[image_idx]
        return figure_word_step(
            it["image"], it["words"], it["pred_points"], word_idx,
            normalized=self.normalized, valid=it.get("valid"), gt_points=it.get("gt_points"),
            gt_trace=it.get("gt_trace"), gt_spans=it.get("gt_spans"), gt_normalized=self.gt_normalized,
            title=it.get("title"), fade=self.fade, panel_size=self.panel_size, dpi=self.dpi,
        )

    def render_png(self, image_idx: int, word_idx: int) -> bytes:
        """PNG bytes of :meth:`render`."""
        return figure_to_png(self.render(image_idx, word_idx))

    def _refresh(self) -> None:
        self.figure = self.render(self.image_idx, self.word_idx)
        self.image.value = figure_to_png(self.figure)
        n = len(self.items[self.image_idx]["words"])
        self.label.value = f"<b>{self.word_idx + 1}/{n}</b>: {self.current_word}"

    # -- callbacks (fired by the widgets; callable directly without a browser) -----------------
    def _on_image_change(self, change: Mapping[str, Any] | None = None) -> None:
        """New image picked: rewind to its first word, resize the slider to its caption, re-render."""
        n = len(self.items[self.image_idx]["words"])
        self._busy = True
        try:
            self.slider.value = 0  # before shrinking max, so the slider never clamps mid-update
            self.slider.max = n - 1
            self.play.max = n - 1
            self.play.value = 0
        finally:
            self._busy = False
        self._refresh()

    def _on_word_change(self, change: Mapping[str, Any] | None = None) -> None:
        """Slider moved (by hand, by the Play button or programmatically): re-render."""
        if not self._busy:
            self._refresh()

    def current_points(self) -> np.ndarray:
        """Offsets (pixels, k×2) of the highlighted word's point(s) in the current figure, read back
        from its artists (empty when the word has no valid point)."""
        ax = self.figure.axes[0]
        for c in ax.collections:
            if c.get_gid() == "word_points:current":
                return np.asarray(c.get_offsets(), dtype=np.float64)
        return np.zeros((0, 2))

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)
