"""Referring localization: box read-out, P@0.5 evaluation, prediction for free-form expressions, and the
fine-tuning of stage ``refcoco`` (PAPER_NOTES.md §3).

Location prompt = the whole image (0, 0, w, h); LM context = [f_l ; "where is <expr>"]; target = the
expression followed by EOS; the trace head on the state that emits EOS gives the box
(:func:`pixelllm.modeling.referring.referring_forward`). Trained by the engine's ``Trainer`` with the
paper's loss (CE + λ·L1 at the EOS position, λ = 0.1, pixels) plus the config's GIoU term; scored by P@0.5
(IoU strictly > 0.5) in **original-image pixels**.

Two read-outs of h_EOS: ``"teacher_forced"`` (default; the decoder reads the given expression — one
forward pass, identical to what :meth:`PixelLLM.forward` gives at that position) and ``"generate"``
(:meth:`PixelLLM.locate`: greedy decoding, the state that emitted the first generated EOS).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from pixelllm.configs.refcoco import REFER_PROMPT
from pixelllm.modeling.referring import ReferringSegmenter, referring_forward
from pixelllm.data.refexp import expression_token_ids
from pixelllm.tasks.referring.data import eval_batches, gt_boxes_original, training_datasets


# ------------------------------------------------------------------------------------------ read-out
def predict_boxes(model, batch, mode: str = "teacher_forced", tokenizer: Any = None,
                  prompt: str = REFER_PROMPT, sam_features: torch.Tensor | None = None) -> torch.Tensor:
    """Referring boxes B×4 (x0, y0, x1, y1), pixels of the S×S input frame, from the state emitting EOS.

    mode ``"teacher_forced"``: the batch's target (expression + EOS) is decoded with teacher forcing;
    ``"generate"``: :meth:`PixelLLM.locate` (greedy decoding; needs ``tokenizer`` and the expressions in
    ``batch["meta"]``)."""
    if mode == "teacher_forced":
        return referring_forward(model, batch, sam_features).box
    if mode == "generate":
        if tokenizer is None or "meta" not in batch:
            raise ValueError("predict_boxes(mode='generate') needs a tokenizer and batch['meta'] expressions")
        exprs = [m["expression"] for m in batch["meta"]]
        return model.locate(batch["images"], exprs, tokenizer, template=prompt.replace("{expr}", "{}"),
                            image_sizes=batch.get("image_sizes"),
                            features=None if sam_features is None else
                            model.frozen_image_features(batch["images"], batch.get("image_sizes"), sam_features))
    raise ValueError(f"predict_boxes: mode must be 'teacher_forced' or 'generate', got {mode!r}")


# --------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_referring(model, datasets, batch_size: int = 32, mode: str = "teacher_forced", tokenizer: Any = None,
                       max_per_split: int | None = None, progress: bool = True, return_predictions: bool = False,
                       prompt: str = REFER_PROMPT):
    """P@0.5 (IoU strictly > 0.5, original-image pixels) per split.

    Args:
        datasets: ``{split: RefExpDataset | Subset}`` or one dataset (grouped by its records' split).
        mode: ``"teacher_forced"`` | ``"generate"`` (:func:`predict_boxes`).
        max_per_split: score only the first N expressions of each split.
    Returns:
        ``{split: {"P@0.5", "n"}, ..., "all": {...}}``; with ``return_predictions`` also a list of dicts
        (split, ref_id, sent_id, image_id, expression, ``pred_box`` / ``gt_box`` in original pixels, iou).
    """
    from pixelllm.eval.boxes import boxes_to_original, paired_box_iou, precision_by_split

    was = model.training
    model.eval()
    device = model.device
    preds, gts, splits, rows = [], [], [], []
    try:
        for split, batch, recs in eval_batches(datasets, batch_size, max_per_split, device, progress,
                                               "evaluate_referring", "refer"):
            box = predict_boxes(model, batch, mode, tokenizer, prompt).float().cpu()
            preds.append(boxes_to_original(box, batch["orig_sizes"].cpu(), resized_size=batch["image_sizes"].cpu()))
            gts.append(gt_boxes_original(recs))
            splits += [split] * len(recs)
            rows += recs
    finally:
        model.train(was)
    pred, gt = torch.cat(preds), torch.cat(gts)                 # eval_batches refuses empty splits
    metrics = precision_by_split(pred, gt, splits)
    if not return_predictions:
        return metrics
    iou = paired_box_iou(pred, gt)
    out = [{"split": s, "ref_id": r.get("ref_id"), "sent_id": r.get("sent_id"), "image_id": r.get("image_id"),
            "expression": r["expression"], "pred_box": p.tolist(), "gt_box": g.tolist(), "iou": float(i)}
           for s, r, p, g, i in zip(splits, rows, pred, gt, iou)]
    return metrics, out


# -------------------------------------------------------------------------------------- prediction
def referring_batch(images: torch.Tensor, expressions: Sequence[str], tokenizer: Any, image_size: int,
                    image_sizes: torch.Tensor | None = None, prompt: str = REFER_PROMPT,
                    device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The collate-style batch of free-form expressions (what a RefExpDataset sample holds, without a
    ground truth): ``images``, ``image_sizes`` (default the whole S×S frame), ``boxes`` = the whole image,
    ``prompt_ids/mask`` = ``prompt`` with the expression, ``target_ids/mask`` = the expression + EOS.
    An empty expression or one that tokenises to nothing raises ``ValueError``."""
    if len(expressions) != images.shape[0]:
        raise ValueError(f"predict_referring: {len(expressions)} expressions for {images.shape[0]} images")
    for i, e in enumerate(expressions):
        if not str(e).strip() or not expression_token_ids(tokenizer, str(e)):
            raise ValueError(f"predict_referring: expressions[{i}] = {e!r} has no tokens")
    b = images.shape[0]
    sizes = image_sizes if image_sizes is not None else torch.tensor([[image_size, image_size]] * b)
    eos = tokenizer.eos_token_id

    def ids(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for t in texts:
            x = list(tokenizer(t)["input_ids"])
            rows.append(x if x and x[-1] == eos else x + [eos])
        n = max(len(r) for r in rows)
        out = torch.zeros(len(rows), n, dtype=torch.long)                             # pad 0
        for k, r in enumerate(rows):
            out[k, :len(r)] = torch.tensor(r)
        mask = torch.arange(n)[None] < torch.tensor([len(r) for r in rows])[:, None]   # B×n real tokens
        return out.to(device), mask.to(device)

    prompt_ids, prompt_mask = ids([prompt.format(expr=e) for e in expressions])
    target_ids, target_mask = ids(list(expressions))
    sizes = sizes.to(device)
    zeros = torch.zeros(b, device=device)
    return {"images": images.to(device), "image_sizes": sizes,
            "boxes": torch.stack([zeros, zeros, sizes[:, 1].float(), sizes[:, 0].float()], 1),
            "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "target_ids": target_ids, "target_mask": target_mask}


@torch.no_grad()
def predict_referring(model, images: torch.Tensor, expressions: Sequence[str], tokenizer: Any,
                      segmenter: ReferringSegmenter | None = None, image_sizes: torch.Tensor | None = None,
                      prompt: str = REFER_PROMPT) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Boxes (and masks) for free-form expressions.

    Args:
        images: B×3×S×S in [0, 1] (resized so the longest side is S, zero-padded bottom/right).
        expressions: B strings; an empty one or one that tokenises to nothing raises ``ValueError``.
        segmenter: a :class:`ReferringSegmenter` around ``model`` → also masks.
        image_sizes: B×2 (h, w) after resize (default: the whole frame).
    Returns:
        (boxes B×4 (x0, y0, x1, y1) pixels of the S×S frame, masks B×S×S bool on the padded frame or None).
    """
    from pixelllm.modeling.mask_head import upsample_masks

    s = model.image_size
    batch = referring_batch(images, expressions, tokenizer, s, image_sizes, prompt, model.device)
    if segmenter is None:
        was = model.training
        model.eval()
        try:
            return referring_forward(model, batch).box, None
        finally:
            model.train(was)
    was = segmenter.training
    segmenter.eval()
    try:
        out = segmenter.predict(batch)
    finally:
        segmenter.train(was)
    return out["boxes"], upsample_masks(out["masks"], s)[:, 0] > 0


# ---------------------------------------------------------------------------------------- training
def val_metric_hook(val, evaluate: Callable, metric: str) -> Callable | None:
    """Trainer eval hook ``{"val_<metric>": evaluate(model, {"val": val})["val"][metric]}`` (None without
    ``val`` samples)."""
    if val is None or len(val) == 0:
        return None

    def eval_fn(model, step):
        return {f"val_{metric}": evaluate(model, {"val": val}, progress=False)["val"][metric]}

    return eval_fn


def referring_trainer(cfg, model, tokenizer, progress: bool = True, write: bool = True):
    """The engine ``Trainer`` of a referring-localization config for ``model`` (a PixelLLM, e.g.
    ``build_model(cfg, paths, tokenizer)``): the RefCOCO train split (first ``cfg.max_samples``), checkpoints
    in the config's ``out_dir`` (nothing written when ``write`` is False, e.g. a short fine-tune scored
    right away), an eval hook scoring val P@0.5 on ``cfg.eval_samples`` expressions."""
    from pixelllm.data.datasets import collate
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.engine.trainer import Trainer
    from pixelllm.modeling.losses import loss_for_config

    paths = resolve_paths(cfg)
    sets = training_datasets(cfg, paths.data, tokenizer, model.image_size)
    return Trainer(model, cfg, sets["train"], collate, out_dir=paths.out if write else None, progress=progress,
                   eval_fn=val_metric_hook(sets.get("val"), evaluate_referring, "P@0.5"),
                   loss_fn=loss_for_config(cfg, tokenizer))


def finetune_referring(cfg, progress: bool = True, resume: bool = True):
    """Make stage ``cfg.stage`` (:func:`pixelllm.configs.refcoco.get_config`): the prerequisites found or
    made, the model built by ``build_model`` (the ``init_from`` checkpoints that exist, else the pretrained
    parts only), the trainer resumed from its ``out_dir`` when ``resume``, then trained to ``cfg.steps``.
    Returns the :class:`~pixelllm.engine.trainer.Trainer` (``.out_dir`` holds the checkpoints,
    ``metrics.jsonl`` and ``final.json``); the model loads back with
    :func:`pixelllm.engine.builder.load_stage_model`."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import build_model
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    paths = ensure_prerequisites(cfg, progress=progress)
    tokenizer = load_tokenizer(paths.tokenizer)
    trainer = referring_trainer(cfg, build_model(cfg, paths, tokenizer), tokenizer, progress=progress)
    return trainer.resume_and_fit(resume)
