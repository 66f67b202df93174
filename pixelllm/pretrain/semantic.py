"""Pretrain the tiny semantic encoder — our stand-in for EVA02's pretraining.

The paper's trainable semantic encoder is EVA02-L, which arrives *pretrained* (masked image modelling +
CLIP on web data): that is where the colour and object names come from that a box→mask SAM lacks
(PAPER_NOTES.md §8, "mask pretraining does not teach colour names"). Our tiny EVA02-style ViT would otherwise
start from random weights, so it gets the equivalent head start on the synthetic world's **training**
split: dense per-patch classification of what covers each patch —

* the object **colour** (6 + background) and the object **category** (6 shapes + background),
* soft targets: the fraction of the patch each class covers (instance masks from
  ``coco/instances_train.json``, colours from ``scenes.json``), soft cross-entropy per patch,
* a 1×1 linear head on the patch tokens (thrown away afterwards), horizontal flips, AdamW + cosine —
  the repo's one loop (:class:`pixelllm.engine.trainer.Trainer`) on :class:`PatchClassifier`, with the
  numbers of :func:`pixelllm.configs.prerequisites.get_semantic_config`; the flips draw from the global
  torch RNG, which the Trainer checkpoints (exact resume).

The output is a plain ``state_dict`` of the ViT in safetensors, loaded by
``build_pixelllm(..., semantic_checkpoint=path)`` exactly as a converted EVA02 checkpoint would be.
Validation: per-patch accuracy on the foreground patches of ``val`` (colour, category).

Measured (2,000-scene world, 1 core, batch 64): colour accuracy 0.93 after 50 steps, category 0.22 after
300 steps and 0.74 after 1,000. In stage 1 (300 steps) the colour words' CE fell 1.50 → 1.41 with it.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixelllm.data.errors import DataFormatError, SkipCounter
from pixelllm.data.vocab import COLORS, SHAPES
from pixelllm.pretrain.common import RecordedEval, checkpoint_dir, resume_and_fit, run_records
from pixelllm.utils import atomic_write_bytes, seed_everything, write_json

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)   # class k+1; 0 = background
SHAPE_NAMES: tuple[str, ...] = SHAPES


def patch_targets(data_root: str | os.PathLike, split: str, image_size: int, patch_size: int
                  ) -> dict[str, torch.Tensor]:
    """Images and soft per-patch targets of one split, all in memory (uint8 images).

    → ``{"images": uint8 N×3×S×S, "colour": float N×(1+C)×g×g, "shape": float N×(1+K)×g×g}`` with
    g = S / patch_size; channel 0 = background. Images must be S×S (the synthetic world's size); others, and
    annotations without a scene object, are skipped and counted.
    """
    from pixelllm.data.coco import decode_segmentation, load_coco
    from pixelllm.data.errors import read_json
    from pixelllm.data.images import image_file, open_image

    root = Path(data_root)
    inst, scenes_path = root / "coco" / f"instances_{split}.json", root / "scenes.json"
    for p in (inst, scenes_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: needed for semantic-encoder pretraining (synthetic world)")
    skips = SkipCounter(f"semantic pretraining ({split})")
    coco = load_coco(inst, skips)                     # checked: fields, ids, boxes, segmentations
    try:
        objects = {o["id"]: o for s in read_json(scenes_path)["images"] for o in s["objects"]}
    except (KeyError, TypeError) as e:
        raise DataFormatError(scenes_path, None, "images[].objects", f"missing or malformed: {e}") from e
    images, colours, shapes = [], [], []
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        file = image_file(root / "images", info["file_name"], inst, f"images[id={img_id}].file_name")
        if not file.is_file():
            skips.add("image file missing", detail=str(file))
            continue
        img = np.asarray(open_image(file, (info["height"], info["width"]), what=f"image_id {img_id}"))
        if img.shape[:2] != (image_size, image_size):
            skips.add(f"image not {image_size}×{image_size}", detail=str(file))
            continue
        lc = np.zeros(img.shape[:2], np.int64)
        ls = np.zeros(img.shape[:2], np.int64)
        for a in coco.imgToAnns.get(img_id, []):       # annotation order = painting order
            o = objects.get(a["id"])
            if o is None or o.get("color") not in COLOR_NAMES or o.get("shape") not in SHAPE_NAMES:
                skips.add("annotation without a scene object / colour / shape", detail=f"ann {a['id']}")
                continue
            m = decode_segmentation(a.get("segmentation"), info["height"], info["width"], inst,
                                    f"annotation {a['id']}.segmentation").astype(bool)
            lc[m] = COLOR_NAMES.index(o["color"]) + 1
            ls[m] = SHAPE_NAMES.index(o["shape"]) + 1
        images.append(torch.from_numpy(img.copy()).permute(2, 0, 1))
        colours.append(torch.from_numpy(lc))
        shapes.append(torch.from_numpy(ls))
    skips.report()
    if not images:
        raise ValueError(f"{inst}: no usable image for semantic pretraining")

    def soft(labels: list[torch.Tensor], n: int) -> torch.Tensor:
        onehot = F.one_hot(torch.stack(labels), n).permute(0, 3, 1, 2).float()       # N×n×S×S
        return F.avg_pool2d(onehot, patch_size)                                         # N×n×g×g

    return {"images": torch.stack(images), "colour": soft(colours, len(COLOR_NAMES) + 1),
            "shape": soft(shapes, len(SHAPE_NAMES) + 1)}


class PatchTargets(torch.utils.data.Dataset):
    """Map-style view of :func:`patch_targets`: item i = ``{"images": uint8 3×S×S, "colour", "shape"}``;
    ``torch.utils.data.default_collate`` stacks items into the batch dict."""

    def __init__(self, targets: dict[str, torch.Tensor]):
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets["images"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.targets.items()}


class PatchClassifier(torch.nn.Module):
    """The semantic ViT + a 1×1 head: images B×3×S×S in [0, 1] → (colour logits B×(1+C)×g×g, shape logits)
    (:meth:`logits`). The ViT runs through PixelLLM's own :class:`ImageEncoder` ("semantic_only"), so it sees
    exactly the normalisation and patch-grid read-out it will see inside PixelLLM.

    A task for the Trainer (``computes_own_loss``): ``forward(batch)`` with ``batch = {"images": uint8,
    "colour", "shape"}`` returns :func:`patch_loss`'s dict; in training mode the whole batch is flipped
    horizontally (targets too) with probability 1/2, drawn from the global torch RNG."""

    computes_own_loss = True

    def __init__(self, vit: torch.nn.Module):
        from pixelllm.modeling.image_encoder import ImageEncoder

        super().__init__()
        self.encoder = ImageEncoder(None, vit, mode="semantic_only")
        self.head = torch.nn.Conv2d(vit.embed_dim, len(COLOR_NAMES) + len(SHAPE_NAMES) + 2, 1)

    @property
    def vit(self) -> torch.nn.Module:
        return self.encoder.semantic_encoder

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.encoder.semantic_features(images))                          # B×(C+K+2)×g×g
        return out[:, : len(COLOR_NAMES) + 1], out[:, len(COLOR_NAMES) + 1:]

    def forward(self, batch: dict[str, torch.Tensor], features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x, yc, ys = batch["images"], batch["colour"], batch["shape"]
        if self.training and torch.rand(1).item() < 0.5:                  # horizontal flip (targets too)
            x, yc, ys = x.flip(-1), yc.flip(-1), ys.flip(-1)
        return patch_loss(self, x, yc, ys)


def patch_loss(model: PatchClassifier, images: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """``{"loss": soft CE (colour + shape, mean over patches), "colour_acc", "shape_acc"}``: the accuracies
    over the foreground patches (background fraction < 0.5; 0 when the batch has none)."""
    pc, ps = model.logits(images.float() / 255)
    pc, ps = pc.float(), ps.float()
    loss = -(colour * pc.log_softmax(1)).sum(1).mean() - (shape * ps.log_softmax(1)).sum(1).mean()
    fg = colour[:, 0] < 0.5                                                              # patches mostly object
    with torch.no_grad():
        n_fg = fg.sum().clamp(min=1)
        acc_c = (pc.argmax(1) == colour.argmax(1))[fg].sum() / n_fg
        acc_s = (ps.argmax(1) == shape.argmax(1))[fg].sum() / n_fg
    return {"loss": loss, "colour_acc": acc_c, "shape_acc": acc_s}


def semantic_trainer(cfg, data_root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                     progress: bool = True):
    """The Trainer of the semantic-encoder pretraining: ``build_semantic_encoder`` of
    ``build_pixelllm(cfg.preset, **cfg.model_overrides)``'s config (``cfg.image_size`` > 0 replaces the
    preset's; random init seeded by ``cfg.seed``) + a 1×1 head (:class:`PatchClassifier`) on the per-patch
    targets of ``<data_root>``'s train split (the first ``cfg.max_samples`` images when > 0). Its eval hook (a
    :class:`~pixelllm.pretrain.common.RecordedEval`) scores the val split when there is one. Checkpoints go to
    ``out_dir`` (None: none)."""
    from torch.utils.data import default_collate

    from pixelllm.engine.trainer import Trainer
    from pixelllm.modeling.build import PRESETS, build_semantic_encoder

    arch = dataclasses.replace(PRESETS[cfg.preset], **_model_overrides(cfg), semantic_checkpoint=None)
    seed_everything(cfg.seed)
    model = PatchClassifier(build_semantic_encoder(arch))
    patch = arch.image_size // (arch.image_size // arch.semantic_patch_size)    # the ViT's grid
    train = patch_targets(data_root, "train", arch.image_size, patch)
    if cfg.max_samples:
        train = {k: v[: cfg.max_samples] for k, v in train.items()}
    has_val = (Path(data_root) / "coco" / "instances_val.json").is_file()
    val = patch_targets(data_root, "val", arch.image_size, patch) if has_val else None

    def evaluate(m: PatchClassifier, step: int) -> dict[str, float]:
        dev = next(m.parameters()).device
        parts = [patch_loss(m, *(val[k][i: i + 256].to(dev) for k in ("images", "colour", "shape")))
                 for i in range(0, len(val["images"]), 256)]
        return {k: float(np.mean([float(p[k]) for p in parts])) for k in parts[0]}

    hook = RecordedEval(evaluate) if val is not None else None
    return Trainer(model, cfg, PatchTargets(train), default_collate, out_dir=out_dir, eval_fn=hook, progress=progress)


def _model_overrides(cfg) -> dict[str, Any]:
    """``PixelLLMConfig`` overrides of a :class:`~pixelllm.configs.prerequisites.SemanticPretrainConfig`."""
    return {**cfg.model_overrides, **({"image_size": cfg.image_size} if cfg.image_size else {})}


def pretrain_semantic_encoder(cfg, data_root: str | os.PathLike, out_path: str | os.PathLike | None = None,
                              progress: bool = True) -> dict[str, Any]:
    """Train the semantic ViT (random init) on per-patch colour/category targets with the config ``cfg``
    (:class:`~pixelllm.configs.prerequisites.SemanticPretrainConfig`, ``get_config("semantic_tiny")``)
    through the Trainer (:func:`semantic_trainer`): ``cfg.steps`` AdamW steps, warm-up + cosine, gradient
    clipping; checkpoints in ``<out_path folder>/<stem>_checkpoints`` (or ``cfg.out_dir``), resumed exactly
    when the run was interrupted.

    Saves the ViT's ``state_dict`` (safetensors, atomic) to ``out_path`` and ``<stem>.json`` beside it
    (preset, overrides, config, history, val accuracies). Returns ``{"vit", "history": [{"step", "loss",
    "colour_acc", "shape_acc", "lr", "grad_norm"}], "val": [{"step", "loss", "colour_acc", "shape_acc"}]
    (every ``cfg.eval_interval`` steps and at the end), "steps_done", "seconds" (training, evaluation
    excluded; of this call when it resumed), "stopped_early", "resumed_at": the step it resumed from | None}``.
    """
    from safetensors.torch import save

    out_dir = checkpoint_dir(out_path, cfg) if out_path is not None else None
    trainer = semantic_trainer(cfg, data_root, out_dir, progress)
    run = resume_and_fit(trainer)
    model = trainer.model.eval()
    history, val_hist = run_records(trainer)
    result = {"history": history, "val": val_hist, "steps_done": trainer.step, "seconds": run["seconds"],
              "stopped_early": trainer.stopped_early, "resumed_at": run["resumed_at"]}
    if out_path is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.vit.state_dict().items()}
        atomic_write_bytes(out_path, save(state))
        write_json(Path(out_path).with_suffix(".json"), {
            "preset": cfg.preset, "overrides": _model_overrides(cfg), "format": "semantic ViT state_dict (safetensors)",
            "objective": "per-patch soft CE: colour (6 + background) + category (6 + background)",
            "train": {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed},
            "config": cfg.to_dict(), "checkpoints": str(out_dir), **result})
    return {"vit": model.vit, **result}
