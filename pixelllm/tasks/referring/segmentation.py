"""Referring segmentation: the segmenter of a ``refseg`` config, its training (stage ``refseg``), loading,
evaluation and qualitative examples (PAPER_NOTES.md §3).

The referring model of the config's ``init_from`` (a ``refcoco`` checkpoint) is frozen; its EOS box
prompts SAM's frozen decoder through the gated mask adapter, the only part trained
(:class:`~pixelllm.modeling.referring.ReferringSegmenter`, which computes its own loss, so the engine's
``Trainer`` trains it as it is). Scored by cIoU = ΣI/ΣU, gIoU = mean IoU and box P@0.5 of the mask's tight
box, per split, in original-image pixels.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pixelllm.modeling.referring import ReferringSegmenter, build_mask_head, eos_positions
from pixelllm.tasks.referring.data import dataset_records, eval_batches, gt_boxes_original, training_datasets
from pixelllm.tasks.referring.localization import val_metric_hook


# ------------------------------------------------------------------------------------------- model
def build_refseg_model(cfg, tokenizer=None, device: str = "cpu") -> ReferringSegmenter:
    """The :class:`ReferringSegmenter` of a ``refseg`` config: the referring model rebuilt from the
    checkpoint that ``cfg.init_from`` names (:func:`~pixelllm.engine.builder.load_stage_model`; it must
    exist) and a mask head with the config's adapter sizes and loss weights, initialised from
    ``cfg.seed`` (so a rebuild has the same frozen SAM decoder when the run has no SAM checkpoint).
    ``tokenizer``: default the run's."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import load_stage_model, resolve_inits
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.utils import seed_everything

    paths = resolve_paths(cfg)
    inits = resolve_inits(cfg, paths, required=True)
    if len(inits) != 1:
        raise ValueError(f"{cfg.stage}: init_from={cfg.init_from!r} must name one referring checkpoint, "
                         f"found {len(inits)} (or none: train that stage first)")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(paths.tokenizer)
    # the referring stage belongs to the same run: its parts are looked up in this config's run folder
    model, _ = load_stage_model(inits[0], tokenizer, device=device,
                                overrides={"run_dir": cfg.run_dir} if cfg.run_dir else None)
    seed_everything(cfg.seed)
    head = build_mask_head(model, adapter_depth=cfg.adapter_depth, adapter_num_heads=cfg.adapter_num_heads,
                           adapter_mlp_dim=cfg.adapter_mlp_dim, multimask_output=cfg.multimask_output)
    return ReferringSegmenter(model, head, focal_weight=cfg.focal_weight, dice_weight=cfg.dice_weight,
                              iou_weight=cfg.iou_weight).to(device)


def load_refseg(checkpoint: str | os.PathLike, tokenizer=None, device: str = "cpu",
                overrides: Mapping[str, Any] | None = None):
    """A trained (or interrupted) ``refseg`` stage from its checkpoint (file, or folder → latest): the stored
    config (with ``overrides``, e.g. ``{"run_dir": ...}``) rebuilds the segmenter (:func:`build_refseg_model`:
    the referring model of its ``init_from``), then the checkpoint's adapter weights → (segmenter in eval
    mode, config)."""
    from pixelllm.engine.builder import checkpoint_config
    from pixelllm.engine.checkpoint import load_trainable_state_dict

    cfg, state = checkpoint_config(checkpoint, overrides)
    segmenter = build_refseg_model(cfg, tokenizer, device=device)
    load_trainable_state_dict(segmenter, state["model"], source=state["path"])
    return segmenter.eval(), cfg


# ---------------------------------------------------------------------------------------- training
def refseg_trainer(cfg, segmenter: ReferringSegmenter, tokenizer, progress: bool = True):
    """The engine ``Trainer`` of a ``refseg`` config for ``segmenter`` (:func:`build_refseg_model`): the
    RefCOCO train masks (first ``cfg.max_samples``), checkpoints in the config's ``out_dir``, the frozen SAM
    embedding cached per image, an eval hook scoring val cIoU on ``cfg.eval_samples`` expressions."""
    from pixelllm.data.datasets import collate
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.engine.trainer import Trainer

    paths = resolve_paths(cfg)
    sets = training_datasets(cfg, paths.data, tokenizer, segmenter.model.image_size, return_masks=True)
    return Trainer(segmenter, cfg, sets["train"], collate, out_dir=paths.out, progress=progress,
                   eval_fn=val_metric_hook(sets.get("val"), evaluate_refseg, "cIoU"))


def train_mask_adapter(cfg, progress: bool = True, resume: bool = True):
    """Make stage ``cfg.stage`` (:func:`pixelllm.configs.refcoco.get_refseg_config`): the prerequisites found
    or made, the segmenter built (:func:`build_refseg_model`; the ``init_from`` referring stage must exist),
    the trainer resumed from its ``out_dir`` when ``resume``, then trained to ``cfg.steps``. Returns the
    :class:`~pixelllm.engine.trainer.Trainer` (``.model`` is the segmenter); it loads back with
    :func:`load_refseg`."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    paths = ensure_prerequisites(cfg, progress=progress)
    tokenizer = load_tokenizer(paths.tokenizer)
    trainer = refseg_trainer(cfg, build_refseg_model(cfg, tokenizer), tokenizer, progress=progress)
    return trainer.resume_and_fit(resume)


# --------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def segment_batch(segmenter: ReferringSegmenter, batch: Mapping[str, Any], prompt_boxes: torch.Tensor | None = None,
                  sam_features: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Best-IoU masks for a collate batch → (boxes B×4 pixels of the S×S frame, list of B bool masks
    H0×W0 in original-image pixels, low-res best logits B×1×4h×4w)."""
    from pixelllm.modeling.mask_head import postprocess_masks

    out = segmenter.predict(batch, sam_features, prompt_boxes)
    full = postprocess_masks(out["masks"], segmenter.model.image_size, batch["image_sizes"], batch["orig_sizes"])
    return out["boxes"], [m[0] > 0 for m in full], out["masks"]


@torch.no_grad()
def evaluate_refseg(segmenter: ReferringSegmenter, datasets, batch_size: int = 16, max_per_split: int | None = None,
                    box_source: str = "pred", progress: bool = True, return_predictions: bool = False):
    """cIoU (ΣI/ΣU), gIoU (mean IoU) and box P@0.5 of the predicted mask's tight box, per split, all in
    original-image pixels against the records' segmentations / boxes.

    Args:
        datasets: ``{split: RefExpDataset | Subset}`` or one dataset.
        box_source: ``"pred"`` (the referring box, the task) or ``"gt"`` (ground-truth box prompt: the
            SAM decoder's upper bound).
    Returns ``{split: {"cIoU", "gIoU", "mask_box_P@0.5", "n"}, "all": ...}`` (+ per-sample rows with
    ``return_predictions``: split, ref_id, expression, iou, the RLE of the predicted mask).
    """
    from pycocotools import mask as mask_utils

    from pixelllm.data.coco import decode_segmentation
    from pixelllm.eval.masks import mask_box_precision_at, mask_iou, refseg_metrics

    if box_source not in ("pred", "gt"):
        raise ValueError(f"evaluate_refseg: box_source must be 'pred' or 'gt', got {box_source!r}")
    was = segmenter.training
    segmenter.eval()
    device = segmenter.device
    preds, gts, gt_boxes, splits, rows = [], [], [], [], []
    try:
        for split, batch, recs in eval_batches(datasets, batch_size, max_per_split, device, progress,
                                               "evaluate_refseg", "refseg"):
            prompt = None
            if box_source == "gt":
                eos = eos_positions(batch["target_ids"], batch["target_mask"])
                prompt = batch["points"][torch.arange(len(eos), device=device), eos]       # B×4 resized
            _, masks, _ = segment_batch(segmenter, batch, prompt_boxes=prompt)
            for m, r in zip(masks, recs):
                preds.append(mask_utils.encode(np.asfortranarray(m.cpu().numpy().astype(np.uint8))))
                seg = r.get("segmentation")
                if not seg:      # an all-zero ground truth would score IoU 1 against an empty prediction
                    raise ValueError(f"evaluate_refseg[{split}]: ref {r.get('ref_id')} (annotation {r.get('ann_id')}) "
                                     "has no segmentation; referring segmentation needs a mask for every expression")
                g = decode_segmentation(seg, r["height"], r["width"], field=f"annotation {r.get('ann_id')}.segmentation")
                gts.append(mask_utils.encode(np.asfortranarray(g)))
            gt_boxes.append(gt_boxes_original(recs))
            splits += [split] * len(recs)
            rows += recs
    finally:
        segmenter.train(was)
    gtb = torch.cat(gt_boxes)
    metrics = refseg_metrics(preds, gts, splits)
    for s in metrics:
        sel = [k for k, x in enumerate(splits) if s == "all" or x == s]
        metrics[s]["mask_box_P@0.5"] = mask_box_precision_at([preds[k] for k in sel], gtb[sel])
        metrics[s] = {k: metrics[s][k] for k in ("cIoU", "gIoU", "mask_box_P@0.5", "n")}
    if not return_predictions:
        return metrics
    out = [{"split": s, "ref_id": r.get("ref_id"), "expression": r["expression"], "iou": mask_iou(p, g), "mask_rle": p}
           for s, r, p, g in zip(splits, rows, preds, gts)]
    return metrics, out


# --------------------------------------------------------------------------------------- examples
@torch.no_grad()
def qualitative_examples(segmenter: ReferringSegmenter, dataset, indices: Sequence[int]) -> list[dict]:
    """Predictions for a few samples of a RefExpDataset, in pixels of the resized image (padding cropped):
    dicts with ``image`` h×w×3, ``expression``, ``pred_box`` / ``gt_box`` (x0, y0, x1, y1), ``mask`` /
    ``gt_mask`` h×w bool (``gt_mask`` when the dataset returns masks), ``iou`` (boxes)."""
    from pixelllm.data.datasets import collate
    from pixelllm.eval.boxes import paired_box_iou
    from pixelllm.modeling.mask_head import upsample_masks

    base, idx = dataset_records(dataset)
    batch = collate([base[idx[i]] for i in indices])
    batch = {k: (v.to(segmenter.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    boxes, _, best = segment_batch(segmenter, batch)
    full = upsample_masks(best, segmenter.model.image_size)[:, 0] > 0                   # B×S×S
    eos = eos_positions(batch["target_ids"], batch["target_mask"])
    gt = batch["points"][torch.arange(len(eos)), eos]
    iou = paired_box_iou(boxes.cpu(), gt.cpu())
    out = []
    for k in range(len(indices)):
        h, w = (int(v) for v in batch["image_sizes"][k])
        ex = {"image": batch["images"][k, :, :h, :w].permute(1, 2, 0).cpu().numpy(),
              "expression": batch["meta"][k]["expression"], "pred_box": boxes[k].cpu().numpy(),
              "gt_box": gt[k].cpu().numpy(), "mask": full[k, :h, :w].cpu().numpy(), "iou": float(iou[k])}
        if "masks" in batch:
            ex["gt_mask"] = batch["masks"][k, :h, :w].cpu().numpy()
        out.append(ex)
    return out
