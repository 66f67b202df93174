"""Ask a trained PixelLLM about any image: one function per task, and the command line.

    python -m pixelllm.predict caption --checkpoint runs/full --image photo.jpg --out caption.png
    python -m pixelllm.predict locate  --checkpoint runs/full --image photo.jpg --expr "the red circle"
    python -m pixelllm.predict segment --checkpoint runs/full --image photo.jpg --expr "the red circle"
    python -m pixelllm.predict region  --checkpoint runs/full --image photo.jpg --box 10,20,60,80
    python -m pixelllm.predict dense   --checkpoint runs/full --image photo.jpg

Each task reads out one trained stage (PAPER_NOTES.md §3), through the package's own inference path:

=========  ===================  ==================================================================
task       stage checkpoint     read-out
=========  ===================  ==================================================================
caption    ``ln_trace``         :meth:`PixelLLM.caption`: greedy caption, the trace head's two
           (or ``pretrain``)    points (x0, y0, x1, y1) per generated token (paper Eq. 1 / Fig. 1)
locate     ``refcoco``          :func:`~pixelllm.tasks.referring.predict_referring`: the trace head on
                                the state emitting EOS after "where is <expr>" = the box
segment    ``refseg``           the referring box → frozen SAM decoder + mask adapter
                                (:class:`~pixelllm.modeling.referring.ReferringSegmenter`), best-IoU mask
region     ``loc_caption``      :meth:`PixelLLM.caption` with the box as the location prompt,
                                text prompt "an object of"
dense      ``densecap``         :meth:`~pixelllm.modeling.dense_captioner.DenseCaptioner.predict`:
                                CenterNet proposals, each captioned as a region
=========  ===================  ==================================================================

``--checkpoint`` (``checkpoint=`` in Python) is a checkpoint file, a stage folder
(``runs/full/checkpoints/refseg`` → its latest checkpoint) or a **run folder** (``runs/full``, or its
``checkpoints/`` folder): then the task's stage is picked, ``<run>/checkpoints/<stage>``. The run's
frozen parts (tiny SAM, tiny T5, semantic ViT) and tokenizer are read from the run folder that holds
the checkpoint (``<run>/checkpoints/<stage>/ckpt_*.pt``), so a run folder can be moved or copied. A
checkpoint of another stage than the task reads (e.g. ``segment`` on a ``refcoco`` checkpoint) is refused
with the stage it needs.

Images: any file PIL reads, any size and mode; resized so the longest side is S and zero-padded
bottom/right exactly as training (:class:`pixelllm.data.datasets.ResizePad`); every coordinate that comes
back is in **original-image pixels** (:func:`pixelllm.eval.boxes.boxes_to_original` undoes the resize;
masks via :func:`pixelllm.modeling.mask_head.postprocess_masks`, the evaluation's path). Masks are given as
COCO RLE (``pycocotools.mask.encode``, ``counts`` as a string).

The command line prints one JSON object per image on stdout and writes the overlay PNG to ``--out``
(:func:`pixelllm.viz.playground.figure_prediction`); bad input (a missing or unreadable image, a malformed or
outside ``--box``, an empty ``--expr``, a checkpoint of the wrong stage or none at all) prints one line
``error: ...`` on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: the stages whose checkpoints each task reads, preferred first (a run folder → the first that exists)
TASK_STAGES: dict[str, tuple[str, ...]] = {
    "caption": ("ln_trace", "pretrain"),
    "locate": ("refcoco",),
    "segment": ("refseg",),
    "region": ("loc_caption",),
    "dense": ("densecap",),
}
TASKS = tuple(TASK_STAGES)

ImageLike = Any   # a path (str / PathLike), a PIL image, or an H×W×3 (or H×W) uint8 / float [0, 1] array


class PredictError(ValueError):
    """Bad input to a prediction (image, box, expression, checkpoint): the message names what and where."""


# ------------------------------------------------------------------------------------------- images
def load_image(image: ImageLike, name: str | None = None):
    """``image`` as an RGB PIL image. Paths are opened with PIL (any format it reads); arrays are
    H×W×3 / H×W×4 / H×W, uint8 or float in [0, 1]. A missing or unreadable file raises
    :class:`PredictError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise PredictError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise PredictError(f"cannot read image {path}: {e}") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    label = name or "image array"
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or min(arr.shape[:2]) < 1:
        raise PredictError(f"{label}: expected an H×W×3 image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def image_name(image: ImageLike, i: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image[{i}]"


def prepare_images(images: ImageLike | Sequence[ImageLike], image_size: int) -> dict[str, Any]:
    """A batch of images as the datasets make it (:class:`~pixelllm.data.datasets.ResizePad`):
    ``images`` B×3×S×S float [0, 1] (longest side S, zero padding bottom/right), ``image_sizes`` B×2
    (h, w) after resize, ``orig_sizes`` B×2 original (h, w), ``names`` B, ``pil`` B RGB images."""
    import torch

    from pixelllm.data.datasets import ResizePad

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise PredictError("no image given")
    tf = ResizePad(image_size)
    pil = [load_image(im, image_name(im, i)) for i, im in enumerate(items)]
    sizes, orig = [], []
    for im in pil:
        _, nh, nw = tf.geometry(im.height, im.width)
        sizes.append([nh, nw])
        orig.append([im.height, im.width])
    return {"images": torch.stack([tf.image(im) for im in pil]), "image_sizes": torch.tensor(sizes),
            "orig_sizes": torch.tensor(orig), "names": [image_name(im, i) for i, im in enumerate(items)],
            "pil": pil}


def parse_box(text: str) -> list[float]:
    """``"x0,y0,x1,y1"`` → four floats (original-image pixels); anything else raises :class:`PredictError`."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4 or not all(np.isfinite(box)):
        raise PredictError(f"--box {text!r}: expected four numbers x0,y0,x1,y1 (pixels of the image)")
    return box


def check_box(box: Sequence[float], width: int, height: int, name: str = "image") -> list[float]:
    """A region prompt (x0, y0, x1, y1) in original pixels: x0 < x1, y0 < y1 and inside the W×H image,
    else :class:`PredictError` naming the image and its size."""
    b = [float(v) for v in box]
    if len(b) != 4 or not all(np.isfinite(b)):
        raise PredictError(f"box {list(box)} for {name}: expected four finite numbers x0, y0, x1, y1")
    x0, y0, x1, y1 = b
    if not (x0 < x1 and y0 < y1):
        raise PredictError(f"box {b} for {name}: needs x0 < x1 and y0 < y1 (corners, not x, y, w, h)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise PredictError(f"box {b} lies outside {name} ({width}×{height} pixels)")
    return b


# --------------------------------------------------------------------------------------- checkpoints
@dataclass
class Stage:
    """A loaded stage: ``model`` (a PixelLLM; a ReferringSegmenter for ``segment``; a DenseCaptioner for
    ``dense``), its ``tokenizer``, the stage name, the checkpoint file and run folder it came from, the
    stored config and the text prompt the stage was trained with."""

    task: str
    stage: str
    model: Any
    tokenizer: Any
    prompt: str
    checkpoint: Path | None = None
    run: Path | None = None
    config: Any = None
    image_size: int = field(init=False)

    def __post_init__(self) -> None:
        m = self.model
        inner = getattr(m, "model", None) or getattr(m, "pixelllm", None) or m
        self.image_size = int(inner.image_size)


def find_checkpoint(task: str, checkpoint: str | os.PathLike) -> Path:
    """The checkpoint file ``task`` reads from ``checkpoint``: the file itself, the latest of a stage folder,
    or ``<run>/checkpoints/<stage>`` of a run folder (the first of :data:`TASK_STAGES` that exists)."""
    from pixelllm.engine.checkpoint import latest_checkpoint

    if task not in TASK_STAGES:
        raise PredictError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    path = Path(checkpoint)
    if not path.exists():
        raise PredictError(f"checkpoint not found: {path}")
    if path.is_file():
        return path
    found = latest_checkpoint(path)
    if found is not None:
        return Path(found)
    for ck in (path / "checkpoints", path):
        for stage in TASK_STAGES[task]:
            if (ck / stage).is_dir() and latest_checkpoint(ck / stage) is not None:
                return Path(latest_checkpoint(ck / stage))
    want = " or ".join(f"checkpoints/{s}" for s in TASK_STAGES[task])
    raise PredictError(f"{path}: no checkpoint for {task!r} (a stage folder, a checkpoint file, or a run folder "
                       f"with {want}; train it with python -m pixelllm.train --config {TASK_STAGES[task][0]})")


def run_of(checkpoint_file: Path) -> Path | None:
    """The run folder of ``<run>/checkpoints/<stage>/ckpt_*.pt`` (None for another layout)."""
    p = Path(checkpoint_file).resolve()
    return p.parent.parent.parent if p.parent.parent.name == "checkpoints" else None


_CACHE: dict[tuple[str, str, str], Stage] = {}


def load(task: str, checkpoint: str | os.PathLike, device: str = "cpu", cache: bool = True) -> Stage:
    """The stage ``task`` reads (:func:`find_checkpoint`), rebuilt with the package's loaders
    (:func:`~pixelllm.engine.builder.load_stage_model`, :func:`~pixelllm.tasks.referring.load_refseg`,
    :func:`~pixelllm.tasks.densecap.build_densecap`) from the run folder that holds it. Loaded stages are
    cached per (task, file, device) unless ``cache`` is False. A checkpoint of another stage, an unreadable
    one, or a run folder without the parts the stage needs raises :class:`PredictError`."""
    from pixelllm.configs.base import apply_overrides
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import checkpoint_config
    from pixelllm.engine.paths import resolve_paths

    file = find_checkpoint(task, checkpoint)
    key = (task, str(file.resolve()), str(device))
    if cache and key in _CACHE:
        return _CACHE[key]
    try:
        cfg, _ = checkpoint_config(file)
    except Exception as e:  # not a checkpoint of this package (any reader error)
        raise PredictError(f"cannot read checkpoint {file}: {type(e).__name__}: {e}") from None
    stage = getattr(cfg, "stage", "?")
    if stage not in TASK_STAGES[task]:
        need = " or ".join(repr(s) for s in TASK_STAGES[task])
        raise PredictError(f"{task} needs a {need} checkpoint; {file} is stage {stage!r} (pass the run folder or "
                           f"<run>/checkpoints/{TASK_STAGES[task][0]})")
    run = run_of(file)
    overrides = {"run_dir": str(run)} if run is not None and not cfg.run_dir else None
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    tok_dir = resolve_paths(cfg).tokenizer
    if not (tok_dir / "tokenizer_config.json").is_file():
        raise PredictError(f"no tokenizer at {tok_dir} (a run folder holds one under tokenizer/; {file} is not "
                           "inside <run>/checkpoints/<stage>/)")
    tok = load_tokenizer(tok_dir)
    try:
        model, prompt = build_stage(task, cfg, file, tok, device, overrides)
    except (FileNotFoundError, OSError) as e:          # a part of the run (SAM, T5, an init stage) is missing
        raise PredictError(f"cannot load the {stage} stage of {file}: {e}") from None
    out = Stage(task, stage, model.eval(), tok, prompt, file, run or resolve_paths(cfg).run, cfg)
    if cache:
        _CACHE[key] = out
    return out


def build_stage(task: str, cfg, file: Path, tokenizer, device: str = "cpu",
                overrides: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(the model ``task`` runs, rebuilt from checkpoint ``file`` of config ``cfg``; the stage's text prompt)."""
    from pixelllm.data.datasets import DEFAULT_PROMPTS
    from pixelllm.engine.builder import load_stage_model

    prompts = getattr(cfg, "prompts", {}) or {}
    if task == "segment":
        from pixelllm.tasks.referring import load_refseg

        model, _ = load_refseg(file, tokenizer, device=device, overrides=overrides)
        return model, prompts.get("refer", DEFAULT_PROMPTS["refer"])
    if task == "dense":
        from pixelllm.tasks.densecap import build_densecap

        model = build_densecap(cfg, tokenizer, device=device, checkpoint=file, verbose=False)
        return model, prompts.get("region_caption", DEFAULT_PROMPTS["region_caption"])
    model, _ = load_stage_model(file, tokenizer, device=device, overrides=overrides)
    return model, {"caption": prompts.get("trace") or prompts.get("caption") or DEFAULT_PROMPTS["trace"],
                   "locate": prompts.get("refer", DEFAULT_PROMPTS["refer"]),
                   "region": prompts.get("region_caption", DEFAULT_PROMPTS["region_caption"])}[task]


def as_stage(task: str, model: Stage | str | os.PathLike, device: str = "cpu") -> Stage:
    """``model`` as a loaded :class:`Stage` for ``task`` (a path is loaded with :func:`load`)."""
    if isinstance(model, Stage):
        if model.task != task and model.stage not in TASK_STAGES[task]:
            raise PredictError(f"{task} needs a {' or '.join(TASK_STAGES[task])} stage, got {model.stage!r}")
        return model
    return load(task, model, device)


# --------------------------------------------------------------------------------------- read-outs
def to_original(boxes, batch: Mapping[str, Any]):
    """N×4 (x0, y0, x1, y1) pixels of the S×S input → original-image pixels (float64, clipped),
    N = batch size (one row per image). Token points T×4 of one image: pass ``batch`` sliced to it."""
    from pixelllm.eval.boxes import boxes_to_original

    return boxes_to_original(boxes.detach().double().cpu(), batch["orig_sizes"].double(),
                             resized_size=batch["image_sizes"].double())


def _header(task: str, stage: Stage, batch: Mapping[str, Any], i: int) -> dict[str, Any]:
    h, w = (int(v) for v in batch["orig_sizes"][i])
    return {"task": task, "image": batch["names"][i], "width": w, "height": h, "stage": stage.stage,
            "checkpoint": str(stage.checkpoint) if stage.checkpoint else None}


def _listify(x) -> list:
    return np.round(np.asarray(x, dtype=np.float64), 2).tolist()


def caption(images: ImageLike | Sequence[ImageLike], model: Stage | str | os.PathLike, prompt: str | None = None,
            max_new_tokens: int = 32, num_beams: int = 1, device: str = "cpu") -> list[dict[str, Any]]:
    """Caption each image and point at every generated token (:meth:`PixelLLM.caption`).

    Returns one dict per image: ``text``, ``tokens`` (SentencePiece pieces), ``token_ids``, ``points``
    T×4 (x0, y0, x1, y1) per token — the trace head's two points, original pixels — and ``words``
    (``text``, ``tokens`` indices, ``point`` = mean centre of its tokens' points, original pixels; words made
    only of special tokens such as ``<pad>``, which an undertrained model can emit, are left out).
    """
    import torch

    from pixelllm.viz.inputs import clean_tokens
    from pixelllm.viz.trace import word_centres, word_groups

    st = as_stage("caption", model, device)
    batch = prepare_images(images, st.image_size)
    dev = st.model.device
    with torch.no_grad():
        res = st.model.caption(batch["images"].to(dev), prompt=prompt or st.prompt, tokenizer=st.tokenizer,
                               num_beams=num_beams, max_new_tokens=max_new_tokens,
                               image_sizes=batch["image_sizes"].to(dev))
    out = []
    for i, r in enumerate(res):
        one = {k: batch[k][i:i + 1] for k in ("orig_sizes", "image_sizes")}
        pts = to_original(r["points"].reshape(-1, 4), one).numpy() if len(r["points"]) else np.zeros((0, 4))
        special = set(getattr(st.tokenizer, "all_special_tokens", ()))
        groups = [g for g in word_groups(r["tokens"]) if any(r["tokens"][k] not in special for k in g)]
        centres = word_centres(pts, groups, np.ones(len(pts), bool))
        text = [t for t, _ in clean_tokens(r["tokens"])]
        words = [{"text": "".join(text[k] for k in g).strip(), "tokens": list(g), "point": _listify(c)}
                 for g, c in zip(groups, centres)]
        out.append({**_header("caption", st, batch, i), "text": r["text"], "tokens": list(r["tokens"]),
                    "token_ids": list(r["token_ids"]), "points": _listify(pts), "words": words})
    return out


def _expressions(expressions: str | Sequence[str], n: int) -> list[str]:
    exprs = [expressions] * n if isinstance(expressions, str) else list(expressions)
    if len(exprs) != n:
        raise PredictError(f"{len(exprs)} expressions for {n} images")
    for i, e in enumerate(exprs):
        if not str(e).strip():
            raise PredictError(f"expression {i} is empty (--expr 'the red circle')")
    return [str(e).strip() for e in exprs]


def locate(images: ImageLike | Sequence[ImageLike], expressions: str | Sequence[str],
           model: Stage | str | os.PathLike, device: str = "cpu") -> list[dict[str, Any]]:
    """Referring localization (:func:`~pixelllm.tasks.referring.predict_referring`, the EOS read-out):
    one expression per image (a string = the same for all) → dicts with ``expression`` and ``box``
    (x0, y0, x1, y1) original pixels."""
    from pixelllm.tasks.referring import predict_referring

    st = as_stage("locate", model, device)
    batch = prepare_images(images, st.image_size)
    exprs = _expressions(expressions, len(batch["names"]))
    try:
        boxes, _ = predict_referring(st.model, batch["images"], exprs, st.tokenizer,
                                     image_sizes=batch["image_sizes"], prompt=st.prompt)
    except ValueError as e:
        raise PredictError(str(e)) from None
    orig = to_original(boxes, batch).numpy()
    return [{**_header("locate", st, batch, i), "expression": e, "box": _listify(b)}
            for i, (e, b) in enumerate(zip(exprs, orig))]


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """H×W bool → COCO RLE ``{"size": [h, w], "counts": str}`` (``pycocotools.mask.encode``)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """:func:`mask_rle`'s output → H×W bool."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]),
                              "counts": counts.encode("ascii") if isinstance(counts, str) else counts}).astype(bool)


def segment(images: ImageLike | Sequence[ImageLike], expressions: str | Sequence[str],
            model: Stage | str | os.PathLike, device: str = "cpu") -> list[dict[str, Any]]:
    """Referring segmentation: the referring box prompts SAM's frozen decoder through the mask adapter
    (:meth:`ReferringSegmenter.predict`), the best-predicted-IoU mask is kept and brought back to the
    original image (:func:`~pixelllm.modeling.mask_head.postprocess_masks`). → dicts with ``expression``,
    ``box`` (the prompt box, original pixels), ``mask`` (COCO RLE), ``mask_box`` (its tight box or None),
    ``score`` (predicted IoU), ``area`` (pixels); ``mask_array`` H×W bool is kept for drawing."""
    import torch

    from pixelllm.modeling.mask_head import postprocess_masks
    from pixelllm.tasks.referring import referring_batch

    st = as_stage("segment", model, device)
    batch = prepare_images(images, st.image_size)
    exprs = _expressions(expressions, len(batch["names"]))
    seg = st.model
    try:
        rb = referring_batch(batch["images"], exprs, st.tokenizer, st.image_size, batch["image_sizes"], st.prompt,
                             seg.device)
    except ValueError as e:
        raise PredictError(str(e)) from None
    with torch.no_grad():
        pred = seg.predict(rb)
    masks = postprocess_masks(pred["masks"].float().cpu(), st.image_size, batch["image_sizes"], batch["orig_sizes"])
    boxes = to_original(pred["boxes"], batch).numpy()
    out = []
    for i, (e, b, m) in enumerate(zip(exprs, boxes, masks)):
        mk = (m[0] > 0).numpy()
        ys, xs = np.nonzero(mk)
        tight = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if len(xs) else None
        out.append({**_header("segment", st, batch, i), "expression": e, "box": _listify(b), "mask": mask_rle(mk),
                    "mask_box": tight, "area": int(mk.sum()), "score": round(float(pred["iou"][i]), 4),
                    "mask_array": mk})
    return out


def region(images: ImageLike | Sequence[ImageLike], boxes: Sequence[float] | Sequence[Sequence[float]],
           model: Stage | str | os.PathLike, max_new_tokens: int = 16, num_beams: int = 1,
           device: str = "cpu") -> list[dict[str, Any]]:
    """Location-conditioned captioning: each box (x0, y0, x1, y1, original pixels; one per image, or one
    box for every image) is the location prompt of :meth:`PixelLLM.caption` with the stage's text prompt
    ("an object of"). → dicts with ``box``, ``text``, ``tokens``."""
    import torch

    from pixelllm.data.datasets import ResizePad

    st = as_stage("region", model, device)
    batch = prepare_images(images, st.image_size)
    n = len(batch["names"])
    one_box = len(boxes) == 4 and all(np.isscalar(v) for v in boxes)
    rows = [boxes] * n if one_box else list(boxes)
    if len(rows) != n:
        raise PredictError(f"{len(rows)} boxes for {n} images")
    tf = ResizePad(st.image_size)
    checked, resized = [], []
    for i, b in enumerate(rows):
        h, w = (int(v) for v in batch["orig_sizes"][i])
        checked.append(check_box(b, w, h, batch["names"][i]))
        resized.append(tf.boxes(checked[-1], h, w))
    dev = st.model.device
    with torch.no_grad():
        res = st.model.caption(batch["images"].to(dev), torch.stack(resized).to(dev), prompt=st.prompt,
                               tokenizer=st.tokenizer, num_beams=num_beams, max_new_tokens=max_new_tokens,
                               image_sizes=batch["image_sizes"].to(dev))
    return [{**_header("region", st, batch, i), "box": _listify(b), "text": r["text"].strip(),
             "tokens": list(r["tokens"])} for i, (b, r) in enumerate(zip(checked, res))]


def dense(images: ImageLike | Sequence[ImageLike], model: Stage | str | os.PathLike, max_new_tokens: int = 16,
          top: int | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Dense object captioning (:meth:`DenseCaptioner.predict`): proposals by objectness, each captioned.
    → dicts with ``regions`` = [{``box`` original pixels, ``score``, ``text``}], best first (``top``: keep
    the first ``top``)."""
    import torch

    st = as_stage("dense", model, device)
    batch = prepare_images(images, st.image_size)
    dev = next(st.model.parameters()).device
    with torch.no_grad():
        res = st.model.predict(batch["images"].to(dev), batch["image_sizes"].to(dev), batch["orig_sizes"],
                               max_new_tokens=max_new_tokens)
    out = []
    for i, r in enumerate(res):
        one = {k: batch[k][i:i + 1].expand(len(r["boxes_input"]), 2) for k in ("orig_sizes", "image_sizes")}
        bx = to_original(r["boxes_input"], one).numpy() if len(r["boxes_input"]) else np.zeros((0, 4))
        regions = [{"box": _listify(b), "score": round(float(s), 4), "text": t}
                   for b, s, t in zip(bx, r["scores"].tolist(), r["captions"])]
        out.append({**_header("dense", st, batch, i), "regions": regions[:top] if top else regions})
    return out


def predict(task: str, images: ImageLike | Sequence[ImageLike], checkpoint: Stage | str | os.PathLike,
            expr: str | Sequence[str] | None = None, box: Sequence[float] | None = None,
            device: str = "cpu") -> list[dict[str, Any]]:
    """Dispatch to the task's function (the command line's entry point)."""
    if task == "caption":
        return caption(images, checkpoint, device=device)
    if task in ("locate", "segment"):
        if expr is None:
            raise PredictError(f"{task} needs an expression (--expr 'the red circle')")
        return (locate if task == "locate" else segment)(images, expr, checkpoint, device=device)
    if task == "region":
        if box is None:
            raise PredictError("region needs a box (--box x0,y0,x1,y1 in pixels of the image)")
        return region(images, box, checkpoint, device=device)
    if task == "dense":
        return dense(images, checkpoint, device=device)
    raise PredictError(f"unknown task {task!r}; one of {', '.join(TASKS)}")


class Predictor:
    """One image at a time, each task from its stage of ``checkpoint`` (a run folder: every task; a stage
    folder or file: the tasks that read that stage), loaded on first use — what
    :class:`pixelllm.viz.Playground` calls. Methods return one result dict (see the task functions)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu") -> None:
        self.checkpoint, self.device = Path(checkpoint), device

    def stage(self, task: str) -> Stage:
        return load(task, self.checkpoint, self.device)

    def caption(self, image: ImageLike) -> dict[str, Any]:
        return caption([image], self.stage("caption"))[0]

    def locate(self, image: ImageLike, expression: str) -> dict[str, Any]:
        return locate([image], [expression], self.stage("locate"))[0]

    def segment(self, image: ImageLike, expression: str) -> dict[str, Any]:
        return segment([image], [expression], self.stage("segment"))[0]

    def region(self, image: ImageLike, box: Sequence[float]) -> dict[str, Any]:
        return region([image], [box], self.stage("region"))[0]

    def dense(self, image: ImageLike) -> dict[str, Any]:
        return dense([image], self.stage("dense"))[0]


def example_images(run: str | os.PathLike, n: int = 8, split: str = "test") -> list[dict[str, Any]]:
    """The first ``n`` images of a synthetic-world split with their ground truth, for the playground:
    dicts with ``image`` H×W×3 uint8, ``title``, ``path``, ``image_id`` and ``gt`` = {``boxes`` N×4
    (x0, y0, x1, y1) pixels, ``labels`` (categories), ``masks`` N×H×W bool, ``captions``,
    ``expressions`` [{``text``, ``box``}] (RefCOCO expressions of the image, any split)}."""
    from pixelllm.data.coco import CocoInstances, load_coco_captions
    from pixelllm.data.datasets import xywh_to_xyxy
    from pixelllm.data.refcoco import RefCOCO

    data = Path(run) / "data"
    inst = CocoInstances(data / "coco" / f"instances_{split}.json")
    caps: dict[Any, list[str]] = {}
    cap_file = data / "captions" / f"captions_{split}.json"
    if cap_file.is_file():
        caps = {c["image_id"]: list(c["captions"]) for c in load_coco_captions(cap_file)}
    exprs: dict[Any, list[dict]] = {}
    if (data / "refcoco" / "instances.json").is_file():
        for r in RefCOCO(data).records:
            exprs.setdefault(r["image_id"], []).append({"text": r["expression"], "box": xywh_to_xyxy(r["bbox"])})
    out = []
    for iid in inst.image_ids()[:n]:
        info = inst.image_info(iid)
        path = data / "images" / info["file_name"]
        objs = inst.objects(iid)
        masks = np.stack([inst.mask(o["id"]).astype(bool) for o in objs]) if objs else \
            np.zeros((0, info["height"], info["width"]), bool)
        out.append({"image": np.asarray(load_image(path)), "title": f"{split} image {iid}", "path": str(path),
                    "image_id": iid,
                    "gt": {"boxes": np.array([xywh_to_xyxy(o["bbox"]) for o in objs]).reshape(-1, 4),
                           "labels": [o["category"] for o in objs], "masks": masks,
                           "captions": caps.get(iid, []), "expressions": exprs.get(iid, [])}})
    return out


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result without its drawing-only arrays (``mask_array``)."""
    return {k: v for k, v in result.items() if k != "mask_array"}


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixelllm.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint file, stage folder (<run>/checkpoints/<stage>) or run folder (runs/full)")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s), any size")
    parser.add_argument("--expr", help="referring expression (locate, segment)")
    parser.add_argument("--box", help="region x0,y0,x1,y1 in pixels of the image (region)")
    parser.add_argument("--out", help="overlay PNG (several images: OUT_0.png, OUT_1.png, ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    try:
        box = parse_box(args.box) if args.box is not None else None
        if args.expr is not None and not args.expr.strip():
            raise PredictError("--expr is empty")
        for im in args.image:            # a bad image or box is reported before any model is loaded
            pil = load_image(im)
            if box is not None and args.task == "region":
                check_box(box, pil.width, pil.height, str(im))
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()         # stderr is for errors: no weight-loading progress bars
        hf_logging.set_verbosity_error()
        torch.set_num_threads(max(1, args.threads))
        results = predict(args.task, args.image, args.checkpoint, args.expr, box, args.device)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, r in enumerate(results):
        if args.out:
            from pixelllm.viz.output import save_figure
            from pixelllm.viz.playground import figure_prediction

            out = Path(args.out)
            if len(results) > 1:
                out = out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}")
            pil = load_image(args.image[k])
            save_figure(figure_prediction(np.asarray(pil), r), out)
            r = {**r, "overlay": str(out)}
        print(json.dumps(to_json(r)))
    return 0


__all__ = ["TASKS", "TASK_STAGES", "PredictError", "Predictor", "Stage", "caption", "check_box", "decode_rle", "dense",
           "build_stage", "find_checkpoint", "load", "load_image", "locate", "mask_rle", "parse_box", "predict", "prepare_images",
           "region", "segment", "example_images", "to_json", "to_original"]

if __name__ == "__main__":
    sys.exit(main())
