"""The playground: ask a trained PixelLLM about an image in JupyterLab (ipywidgets), and the overlay figure
of one prediction (what ``python -m pixelllm.predict --out`` writes).

    from pixelllm.predict import Predictor, example_images
    pg = Playground(Predictor("runs/full"), example_images("runs/full"))
    pg                                  # in a notebook cell: the widget

* pick a test image (``image``) or upload one (``FileUpload``);
* **Caption**: the caption with a point per word; the ``word`` slider highlights one word in the caption
  and its point on the image (word ↔ point linking, the paper's Fig. 1);
* **Find**: type an expression → its box and mask (referring segmentation; box only with a ``locate``-only
  predictor);
* **Describe**: type a box x0, y0, x1, y1 (pixels of the image) → its region caption. Dragging the box
  would need mouse events on the image (the ``ipyevents`` package), which the environment does not ship;
  the four fields take the box instead;
* **ground truth**: the test image's objects (boxes, masks, categories) and captions, dashed.

Nothing here imports model code: the ``predictor`` is any object with ``caption(image)``,
``segment(image, expr)`` (or ``locate``) and ``region(image, box)`` methods returning the result dicts of
:mod:`pixelllm.predict` for one image (:class:`pixelllm.predict.Predictor` is one). Every widget callback
calls a plain method (:meth:`Playground.select_image`, :meth:`~Playground.upload`,
:meth:`~Playground.run_caption`, :meth:`~Playground.highlight_word`, :meth:`~Playground.run_expression`,
:meth:`~Playground.run_region`, :meth:`~Playground.show_ground_truth`), so tests drive it without a browser;
the last rendered figure is :attr:`Playground.figure`, its PNG is in ``Playground.image.value``.
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from pixelllm.viz.inputs import as_masks, as_rgb, word_colors
from pixelllm.viz.output import figure_to_png
from pixelllm.viz.scene import draw_boxes, outline_masks, show_image
from pixelllm.viz.trace import caption_colored, plot_word_points, split_phrases, token_colors

#: prediction colour (not among the synthetic objects' colours) and the ground truth's
PRED_COLOUR = "cyan"
GT_COLOUR = "white"


# ------------------------------------------------------------------------------------------ figures
def caption_colours(tokens: Sequence[str]) -> tuple[np.ndarray, list[list[int]]]:
    """(T×4 token colours — one per phrase, :func:`~pixelllm.viz.trace.split_phrases` — and the phrases)."""
    phrases = split_phrases(list(tokens))
    return token_colors(len(tokens), phrases), phrases


def draw_ground_truth(ax, gt: Mapping[str, Any] | None) -> None:
    """Dashed white boxes (labelled with their category) and mask outlines of ``gt`` (``boxes`` N×4
    (x0, y0, x1, y1) pixels, optional ``labels`` N, ``masks`` N×H×W)."""
    if not gt:
        return
    boxes = np.asarray(gt.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    if len(boxes):
        draw_boxes(ax, boxes, labels=list(gt.get("labels") or [""] * len(boxes)), colors=GT_COLOUR,
                   linewidth=1.2, linestyle="--", fontsize=7)
        for art in [*ax.patches, *ax.texts]:
            gid = art.get_gid() or ""
            if gid.startswith(("box:", "box_label:")):
                art.set_gid("gt_" + gid)
                if gid.startswith("box_label:"):          # dark text on the white label
                    art.set_color("black")
    if gt.get("masks") is not None and len(gt["masks"]):
        for cs in outline_masks(ax, gt["masks"], colors=GT_COLOUR, linewidth=0.8, halo=False):
            cs.set_gid("gt_" + cs.get_gid())


def figure_prediction(image: Any, result: Mapping[str, Any], highlight: int | None = None,
                      gt: Mapping[str, Any] | None = None, panel: float = 5.0, dpi: int = 100) -> Figure:
    """One prediction of :mod:`pixelllm.predict` drawn on its image (original pixels).

    * ``caption``: each word's point in its phrase's colour (the caption below in the same colours);
      ``highlight`` = word index drawn large (gid ``"word_points:current"``) and boxed in the caption;
    * ``locate`` / ``segment``: the box (gid ``"box:0"``) labelled with the expression, the mask's outline
      (``"mask_outline:0"``; ``result["mask_array"]`` H×W bool or the RLE ``result["mask"]``);
    * ``region``: the box labelled with its caption; ``dense``: every region's box and caption.
    ``gt``: ground truth drawn dashed (:func:`draw_ground_truth`); its ``captions`` go under the title.
    """
    task = result.get("task")
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    aspect = h / max(w, 1)
    cap_h = 1.3 if task == "caption" else 0.0
    fig = Figure(figsize=(panel, panel * aspect + cap_h + 0.5), dpi=dpi)
    if cap_h:
        top = 1 - 0.5 / fig.get_figheight()
        split = cap_h / fig.get_figheight()
        ax = fig.add_axes((0.02, split, 0.96, top - split))
        cap_ax = fig.add_axes((0.03, 0.01, 0.94, split - 0.02))
    else:
        ax = fig.add_axes((0.02, 0.02, 0.96, 1 - 0.52 / fig.get_figheight()))
        cap_ax = None
    show_image(ax, rgb)
    draw_ground_truth(ax, gt)
    title = ""
    if task == "caption":
        words = result.get("words", [])
        keep = [k for wd in words for k in wd["tokens"]]          # the words' tokens (no <pad>, no EOS)
        tokens = [result.get("tokens", [])[k] for k in keep]
        cols, _ = caption_colours(tokens)
        first = np.cumsum([0] + [len(wd["tokens"]) for wd in words])[:-1]   # each word's first shown token
        wcols = cols[first] if words else np.zeros((0, 4))
        pts = np.array([wd["point"] for wd in words], dtype=np.float64).reshape(-1, 2)
        plot_word_points(ax, None, [wd["text"] for wd in words], pts, colors=wcols, highlight=highlight,
                         fade=0.55 if highlight is not None else 1.0)
        tok_hl = int(first[highlight]) if highlight is not None and 0 <= highlight < len(words) else None
        caption_colored(cap_ax, tokens, colors=cols, highlight=tok_hl, fontsize=10)
        title = ("caption — a point per word" + (f": “{words[highlight]['text']}”" if tok_hl is not None else "")
                 if words else "caption — empty (the model generated no word)")
    elif task in ("locate", "segment"):
        mask = result.get("mask_array")
        if mask is None and result.get("mask"):
            from pycocotools import mask as mask_utils

            rle = dict(result["mask"])
            rle["counts"] = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
            mask = mask_utils.decode(rle).astype(bool)
        if mask is not None:
            outline_masks(ax, as_masks(mask), colors=PRED_COLOUR, linewidth=2.0)
        draw_boxes(ax, [result["box"]], labels=[result.get("expression", "")], colors=PRED_COLOUR)
        title = f"“{result.get('expression', '')}”" + (f" — predicted IoU {result['score']:.2f}"
                                                      if "score" in result else "")
    elif task == "region":
        draw_boxes(ax, [result["box"]], labels=[result.get("text", "")], colors=PRED_COLOUR)
        title = f"region caption: “{result.get('text', '')}”"
    elif task == "dense":
        regions = result.get("regions", [])
        if regions:
            draw_boxes(ax, [r["box"] for r in regions], labels=[f"{r['text']} ({r['score']:.2f})" for r in regions],
                       colors=word_colors(len(regions)))
        title = f"dense captions: {len(regions)} regions"
    else:
        raise ValueError(f"figure_prediction: result['task'] = {task!r} is not one of caption, locate, segment, "
                         "region, dense")
    if gt and gt.get("captions"):
        title += "\nground truth: " + gt["captions"][0]
    ax.set_title(title, fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------ widget
class Playground:
    """Ask a PixelLLM about test images or your own (module docstring).

    Args:
        predictor: object with ``caption(image)``, ``segment(image, expr)`` or ``locate(image, expr)``, and
            ``region(image, box)`` → one result dict (:class:`pixelllm.predict.Predictor`).
        examples: dicts with ``image`` (H×W×3), ``title`` and optional ``gt`` (``boxes`` N×4 pixels,
            ``labels``, ``masks`` N×H×W, ``captions``, ``expressions`` [{``text``, ``box``}]).
        panel, dpi: size of the rendered figure.
    """

    def __init__(self, predictor: Any, examples: Sequence[Mapping[str, Any]] = (), *, panel: float = 5.0,
                 dpi: int = 90) -> None:
        import ipywidgets as w

        self.predictor = predictor
        self.examples: list[dict] = [dict(e) for e in examples]
        for i, e in enumerate(self.examples):
            if "image" not in e:
                raise ValueError(f"examples[{i}]: missing field 'image'")
            e.setdefault("title", f"example {i}")
        self.panel, self.dpi = panel, dpi
        self.index: int | None = 0 if self.examples else None
        self.result: dict | None = None          # the last prediction shown
        self.word: int | None = None             # highlighted word of a caption
        self.figure: Figure | None = None
        self._busy = False

        self.dropdown = w.Dropdown(options=self._options(), value=self.index, description="image")
        self.upload_button = w.FileUpload(accept="image/*", multiple=False, description="upload")
        self.caption_button = w.Button(description="Caption", tooltip="caption + a point per word")
        self.word_slider = w.IntSlider(value=0, min=0, max=0, description="word", continuous_update=True,
                                       disabled=True)
        first = self._expressions()
        self.expr_text = w.Text(value=first[0] if first else "", placeholder="the red circle",
                                description="expression")
        self.expr_button = w.Button(description="Find", tooltip="box + mask of the expression")
        self.box_fields = [w.FloatText(value=v, description=n, layout=w.Layout(width="120px"),
                                       style={"description_width": "24px"})
                           for n, v in zip(("x0", "y0", "x1", "y1"), self._default_box())]
        self.region_button = w.Button(description="Describe", tooltip="caption of the box")
        self.gt_checkbox = w.Checkbox(value=False, description="ground truth")
        self.status = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(max_width=f"{int(panel * dpi)}px"))

        self.dropdown.observe(self._on_select, names="value")
        self.upload_button.observe(self._on_upload, names="value")
        self.caption_button.on_click(self._on_caption)
        self.word_slider.observe(self._on_word, names="value")
        self.expr_button.on_click(self._on_expression)
        self.region_button.on_click(self._on_region)
        self.gt_checkbox.observe(self._on_gt, names="value")
        self.widget = w.VBox([
            w.HBox([self.dropdown, self.upload_button, self.gt_checkbox]),
            w.HBox([self.caption_button, self.word_slider]),
            w.HBox([self.expr_text, self.expr_button]),
            w.HBox([*self.box_fields, self.region_button]),
            self.status, self.image])
        if self.index is not None:
            self.refresh()

    # -- state ---------------------------------------------------------------------------------------
    def _options(self) -> list[tuple[str, int]]:
        return [(str(e["title"]), i) for i, e in enumerate(self.examples)]

    @property
    def current(self) -> dict:
        if self.index is None:
            raise ValueError("Playground: no image yet (pick a test image or upload one)")
        return self.examples[self.index]

    def _expressions(self) -> list[str]:
        if self.index is None:
            return []
        return [x["text"] for x in (self.current.get("gt") or {}).get("expressions", [])]

    def _default_box(self) -> list[float]:
        """The first ground-truth box of the current image, else its centre half."""
        if self.index is None:
            return [0.0, 0.0, 1.0, 1.0]
        boxes = (self.current.get("gt") or {}).get("boxes")
        if boxes is not None and len(boxes):
            return [float(v) for v in np.asarray(boxes[0], dtype=np.float64)]
        h, w = np.asarray(self.current["image"]).shape[:2]
        return [w / 4, h / 4, 3 * w / 4, 3 * h / 4]

    @property
    def words(self) -> list[str]:
        """The words of the current caption (empty when no caption is shown)."""
        if not self.result or self.result.get("task") != "caption":
            return []
        return [wd["text"] for wd in self.result.get("words", [])]

    # -- rendering -----------------------------------------------------------------------------------
    def render(self) -> Figure:
        """The figure of the current image: the last prediction (or the bare image), the highlighted word,
        the ground truth when toggled on."""
        ex = self.current
        gt = ex.get("gt") if self.gt_checkbox.value else None
        if self.result is None:
            fig = Figure(figsize=(self.panel, self.panel * _aspect(ex["image"]) + 0.5), dpi=self.dpi)
            ax = fig.add_axes((0.02, 0.02, 0.96, 1 - 0.52 / fig.get_figheight()))
            show_image(ax, ex["image"])
            draw_ground_truth(ax, gt)
            ax.set_title(str(ex["title"]) + (("\nground truth: " + gt["captions"][0]) if gt and gt.get("captions")
                                             else ""), fontsize=9)
            return fig
        return figure_prediction(ex["image"], self.result, highlight=self.word, gt=gt, panel=self.panel, dpi=self.dpi)

    def refresh(self) -> None:
        self.figure = self.render()
        self.image.value = figure_to_png(self.figure, dpi=self.dpi)

    def _say(self, html: str) -> None:
        self.status.value = html

    def _run(self, what: str, fn, *args) -> dict | None:
        """Call the predictor; an error (bad box, missing stage, ...) is shown in the status line, not raised."""
        try:
            out = fn(self.current["image"], *args)
        except Exception as e:  # shown to the person using the widget
            self._say(f"<span style='color:#b00'>{what}: {type(e).__name__}: {e}</span>")
            return None
        return out

    # -- actions (the widget callbacks call these) ---------------------------------------------------
    def select_image(self, index: int) -> None:
        """Show example ``index``: the last prediction is cleared, the expression and box fields take its
        first ground-truth expression and box."""
        if not 0 <= int(index) < len(self.examples):
            raise IndexError(f"Playground.select_image: {index} not in 0..{len(self.examples) - 1}")
        self.index = int(index)
        self.result, self.word = None, None
        self._busy = True
        try:
            if self.dropdown.value != self.index:
                self.dropdown.value = self.index
            self.word_slider.disabled = True
            exprs = self._expressions()
            if exprs:
                self.expr_text.value = exprs[0]
            for f, v in zip(self.box_fields, self._default_box()):
                f.value = round(v, 1)
        finally:
            self._busy = False
        h, w = np.asarray(self.current["image"]).shape[:2]
        self._say(f"{self.current['title']}: {w}×{h} pixels")
        self.refresh()

    def upload(self, name: str, content: bytes) -> int:
        """Add an uploaded image file (its bytes) as a new example without ground truth and show it → its
        index. An unreadable file is reported in the status line (nothing added) → -1."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(bytes(content))) as im:
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            self._say(f"<span style='color:#b00'>cannot read {name}: {e}</span>")
            return -1
        self.examples.append({"image": arr, "title": f"upload: {name}", "gt": None})
        self._busy = True
        try:
            self.dropdown.options = self._options()
        finally:
            self._busy = False
        self.select_image(len(self.examples) - 1)
        return self.index

    def run_caption(self) -> dict | None:
        """Caption the current image; the word slider then walks its words (first word highlighted)."""
        res = self._run("caption", self.predictor.caption)
        if res is None:
            return None
        self.result = res
        n = len(res.get("words", []))
        self._busy = True
        try:
            self.word_slider.value = 0
            self.word_slider.max = max(n - 1, 0)
            self.word_slider.disabled = n == 0
        finally:
            self._busy = False
        self.word = 0 if n else None
        self._say(f"<b>caption</b>: {res.get('text', '')}" + (f" — word 1/{n}: <b>{self.words[0]}</b>" if n else ""))
        self.refresh()
        return res

    def highlight_word(self, j: int) -> None:
        """Highlight word ``j`` of the current caption and its point."""
        if not self.words:
            raise ValueError("Playground.highlight_word: no caption yet (run_caption first)")
        if not 0 <= int(j) < len(self.words):
            raise IndexError(f"Playground.highlight_word: word {j} not in 0..{len(self.words) - 1}")
        self.word = int(j)
        if self.word_slider.value != self.word:            # called directly: move the slider with it
            self._busy = True
            try:
                self.word_slider.value = self.word
            finally:
                self._busy = False
        pt = self.result["words"][self.word]["point"]
        self._say(f"<b>caption</b>: {self.result.get('text', '')} — word {self.word + 1}/{len(self.words)}: "
                  f"<b>{self.words[self.word]}</b> at ({pt[0]:.0f}, {pt[1]:.0f})")
        self.refresh()

    def run_expression(self, text: str | None = None) -> dict | None:
        """Box and mask of ``text`` (default the expression field) on the current image: the predictor's
        ``segment`` when it has one, else ``locate`` (box only)."""
        text = self.expr_text.value if text is None else text
        if text != self.expr_text.value:
            self._busy = True
            self.expr_text.value = text
            self._busy = False
        fn = getattr(self.predictor, "segment", None) or getattr(self.predictor, "locate")
        res = self._run("expression", fn, text)
        if res is None:
            return None
        self.result, self.word = res, None
        self.word_slider.disabled = True
        extra = f", mask {res['area']} px, predicted IoU {res['score']:.2f}" if "area" in res else ""
        self._say(f"<b>{res['expression']}</b>: box ({', '.join(f'{v:.0f}' for v in res['box'])}){extra}")
        self.refresh()
        return res

    def run_region(self, box: Sequence[float] | None = None) -> dict | None:
        """Caption of ``box`` (x0, y0, x1, y1 pixels; default the four box fields) on the current image."""
        if box is None:
            box = [f.value for f in self.box_fields]
        else:
            for f, v in zip(self.box_fields, box):
                f.value = float(v)
        res = self._run("region", self.predictor.region, [float(v) for v in box])
        if res is None:
            return None
        self.result, self.word = res, None
        self.word_slider.disabled = True
        self._say(f"<b>region</b> ({', '.join(f'{v:.0f}' for v in res['box'])}): {res.get('text', '')}")
        self.refresh()
        return res

    def show_ground_truth(self, on: bool) -> None:
        """Toggle the ground truth (uploaded images have none: said in the status line)."""
        if self.gt_checkbox.value != bool(on):
            self._busy = True
            self.gt_checkbox.value = bool(on)
            self._busy = False
        if on and not self.current.get("gt"):
            self._say("this image has no ground truth (only the test images do)")
        self.refresh()

    # -- callbacks -----------------------------------------------------------------------------------
    def _on_select(self, change: Mapping[str, Any]) -> None:
        if not self._busy and change.get("new") is not None:
            self.select_image(change["new"])

    def _on_upload(self, change: Mapping[str, Any]) -> None:
        value = change.get("new") or ()
        files = list(value.values()) if isinstance(value, dict) else list(value)   # ipywidgets 7 / 8
        for f in files:
            name = f.get("name") or (f.get("metadata") or {}).get("name", "upload")
            self.upload(name, f["content"])

    def _on_caption(self, _button: Any = None) -> None:
        self.run_caption()

    def _on_word(self, change: Mapping[str, Any]) -> None:
        if not self._busy and self.words:
            self.highlight_word(change["new"])

    def _on_expression(self, _source: Any = None) -> None:
        self.run_expression()

    def _on_region(self, _button: Any = None) -> None:
        self.run_region()

    def _on_gt(self, change: Mapping[str, Any]) -> None:
        if not self._busy:
            self.show_ground_truth(bool(change["new"]))

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a notebook front-end
        from IPython.display import display

        display(self.widget)


def _aspect(image: Any) -> float:
    h, w = np.asarray(image).shape[:2]
    return h / max(w, 1)


__all__ = ["GT_COLOUR", "PRED_COLOUR", "Playground", "caption_colours", "draw_ground_truth", "figure_prediction"]
