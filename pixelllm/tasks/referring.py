"""Referring localization and referring segmentation with PixelLLM (PAPER_NOTES.md §3, paper Fig. 3/4).

The same model that captions and points at every word does both tasks; nothing about the architecture
changes, only what is read out:

* **Referring localization.** Location prompt = the whole image (0, 0, w, h); LM context =
  [f_l ; "where is <expr>"]; target = the expression followed by EOS. The decoder state that emits EOS,
  h_EOS = L⁻(f_l, expr), goes through the trace head, and its two points are the box corners::

      b̂ = TraceHead(h_EOS) = (x0, y0, x1, y1)      pixels of the S×S input frame

  Trained with the paper's loss (CE + λ·L1 at the EOS position, λ = 0.1, pixels) plus an optional GIoU
  term; the head's ``center_size`` parametrisation (sigmoid centre + size) is what trained well at CPU
  scale (PAPER_NOTES.md §8), the paper's raw ``corners`` is the other option. Scored by P@0.5 (IoU strictly
  > 0.5) in **original-image pixels**.
* **Referring segmentation.** b̂ (detached) → SAM's frozen prompt encoder → SAM's frozen mask decoder on
  the frozen SAM image embedding, with the release's gated mask adapter (:class:`MaskHead`) letting the
  visual tokens f_l and the decoder states of the expression steer the box tokens; the multimask output
  with the best predicted IoU is kept. Only the adapter trains (focal×20 + dice + IoU regression).
  Scored by cIoU = ΣI/ΣU, gIoU = mean IoU and box P@0.5 of the mask's tight box, per split.

Two read-outs of h_EOS are offered: ``"teacher_forced"`` (default; the decoder reads the given
expression and the state at its EOS position is used — one forward pass, identical to what
:meth:`PixelLLM.forward` gives at that position) and ``"generate"`` (:meth:`PixelLLM.locate`: greedy
decoding, the state that emitted the first generated EOS; equal to teacher forcing on the generated
tokens, tested).

Frames: boxes/points are (x0, y0, x1, y1) pixels of the resized, bottom/right zero-padded S×S input
unless a name says ``orig``; metrics are computed in original-image pixels (``boxes_to_original``,
``postprocess_masks``).

Bad input: records from files with an empty expression (or one that tokenises to nothing), a zero-size
box or a box outside its image are skipped and counted (:func:`check_refexp_records`, reported once);
the same problems passed directly to :func:`predict_referring` / the evaluators raise ``ValueError``
naming the sample.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pixelllm.data.errors import SkipCounter

REFER_PROMPT = "where is {expr}"
SPLITS = ("train", "val", "testA", "testB")
EVAL_SPLITS = ("val", "testA", "testB")
#: a ground-truth box may stick out of its image by this many pixels (rounding) before it is "outside"
BOX_TOLERANCE_PX = 1.0


# ------------------------------------------------------------------------------------------ bad input
def _content_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without EOS / pad (what the expression contributes)."""
    specials = {getattr(tokenizer, "eos_token_id", 1), getattr(tokenizer, "pad_token_id", 0)}
    return [i for i in tokenizer(text)["input_ids"] if i not in specials]


def refexp_problem(rec: Mapping[str, Any], tokenizer: Any = None) -> str | None:
    """Why a per-expression record (``pixelllm.data.refcoco`` format: ``expression``, ``bbox`` [x, y, w, h]
    original pixels, ``width``, ``height``) is unusable, or None. Reasons: "empty expression",
    "expression with no tokens", "zero-size box", "box outside the image"."""
    expr = str(rec.get("expression", "")).strip()
    if not expr:
        return "empty expression"
    if tokenizer is not None and not _content_ids(tokenizer, expr):
        return "expression with no tokens"
    x, y, w, h = (float(v) for v in rec["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return "zero-size box"
    W, H, tol = float(rec["width"]), float(rec["height"]), BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
        return "box outside the image"
    return None


def check_refexp_records(records: Iterable[Mapping[str, Any]], tokenizer: Any = None,
                         skips: SkipCounter | None = None, source: str = "refer") -> list[dict]:
    """Keep the usable records (:func:`refexp_problem`); the others are counted by reason in ``skips``
    (a new :class:`SkipCounter` named ``source`` when None, reported once at the end)."""
    own = skips is None
    skips = skips if skips is not None else SkipCounter(source)
    kept = []
    for r in records:
        why = refexp_problem(r, tokenizer)
        if why is None:
            kept.append(dict(r))
        else:
            skips.add(f"skipped: {why}", detail=f"ref {r.get('ref_id')} sent {r.get('sent_id')} {r.get('expression')!r}")
    if own:
        skips.report()
    return kept


def _require_clean(records: Sequence[Mapping[str, Any]], tokenizer: Any, where: str) -> None:
    """Raise ``ValueError`` (naming the first offenders) when any record is unusable — evaluators refuse
    to score a sample whose ground truth is broken instead of silently counting it wrong."""
    bad = [(k, r, refexp_problem(r, tokenizer)) for k, r in enumerate(records)]
    bad = [(k, r, why) for k, r, why in bad if why]
    if bad:
        ex = "; ".join(f"[{k}] ref {r.get('ref_id')} {r.get('expression')!r}: {why}" for k, r, why in bad[:3])
        raise ValueError(f"{where}: {len(bad)} unusable record(s) (clean them with check_refexp_records): {ex}")


# ---------------------------------------------------------------------------------------------- data
def refexp_datasets(data_dir: str | os.PathLike, tokenizer: Any, image_size: int,
                    splits: Sequence[str] = SPLITS, prompt: str = REFER_PROMPT, return_masks: bool = False,
                    max_target_len: int = 16, dataset: str = "refcoco", split_by: str = "unc",
                    max_samples: int | Mapping[str, int] | None = None) -> dict:
    """{split: :class:`~pixelllm.data.datasets.RefExpDataset`} of the refer-format files under
    ``data_dir/<dataset>/`` (images in ``data_dir/images``), unusable records skipped and counted.

    Samples: whole-image prompt box, prompt "where is <expr>", target = expression + EOS whose point
    target is the box (resized frame); ``masks`` S×S bool with ``return_masks``. ``max_samples`` keeps
    the first N records of each split (an int, or a per-split dict)."""
    from pixelllm.data.datasets import RefExpDataset
    from pixelllm.data.refcoco import RefCOCO

    data_dir = Path(data_dir)
    refer = RefCOCO(data_dir, dataset, split_by)
    skips = SkipCounter(f"referring {dataset}({split_by})")
    out = {}
    for split in splits:
        recs = check_refexp_records(refer.expressions(split), tokenizer, skips)
        cap = max_samples.get(split) if isinstance(max_samples, Mapping) else max_samples
        if cap:
            recs = recs[:cap]
        out[split] = RefExpDataset(recs, data_dir / "images", tokenizer, image_size=image_size, prompt=prompt,
                                   target="{expr}", return_masks=return_masks, max_target_len=max_target_len)
    skips.report()
    return out


def _base_and_indices(dataset) -> tuple[Any, list[int]]:
    """(dataset with ``records``, indices into it) for a RefExpDataset or a ``Subset`` of one."""
    from torch.utils.data import Subset

    idx = None
    while isinstance(dataset, Subset):
        inner = list(dataset.indices)
        idx = inner if idx is None else [inner[i] for i in idx]
        dataset = dataset.dataset
    if not hasattr(dataset, "records"):
        raise TypeError(f"expected a RefExpDataset (or a Subset of one), got {type(dataset).__name__}")
    return dataset, list(range(len(dataset))) if idx is None else idx


def _batches(dataset, batch_size: int, limit: int | None = None):
    """Yield (batch dict, records) over ``dataset`` in order (first ``limit`` samples)."""
    from pixelllm.data.datasets import collate

    base, idx = _base_and_indices(dataset)
    if limit is not None:
        idx = idx[:limit]
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        yield collate([base[i] for i in chunk]), [base.records[i] for i in chunk]


def _as_split_dict(datasets) -> dict:
    if isinstance(datasets, Mapping):
        return dict(datasets)
    base, idx = _base_and_indices(datasets)
    from torch.utils.data import Subset

    by: dict[str, list[int]] = {}
    for i in idx:
        by.setdefault(base.records[i]["split"], []).append(i)
    return {s: Subset(base, ix) for s, ix in by.items()}


def _eval_batches(datasets, batch_size: int, max_per_split: int | None, device, progress: bool, where: str, desc: str):
    """Yield ``(split, batch on device, records)`` over the first ``max_per_split`` samples of each split of
    ``datasets`` (:func:`_as_split_dict`), in order; a split's records are checked (:func:`_require_clean`,
    named ``where[split]``) before its first batch; one progress bar ``desc split`` per split."""
    from tqdm.auto import tqdm

    for split, ds in _as_split_dict(datasets).items():
        base, idx = _base_and_indices(ds)
        n = len(idx) if max_per_split is None else min(len(idx), max_per_split)
        _require_clean([base.records[i] for i in idx[:n]], None, f"{where}[{split}]")
        bar = tqdm(total=n, desc=f"{desc} {split}", disable=not progress, leave=False)
        for batch, recs in _batches(ds, batch_size, n):
            yield split, {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}, recs
            bar.update(len(recs))
        bar.close()


# ------------------------------------------------------------------------------------------ read-out
def eos_positions(target_ids: torch.Tensor, target_mask: torch.Tensor, eos_id: int = 1) -> torch.Tensor:
    """Index of each row's last target token (B long), which must be EOS (the dataset appends it)."""
    pos = target_mask.long().sum(1) - 1                                              # B
    if (pos < 0).any():
        raise ValueError("eos_positions: a row has no target token (empty target_mask)")
    at = target_ids.gather(1, pos[:, None]).squeeze(1)
    if (at != eos_id).any():
        rows = torch.nonzero(at != eos_id).flatten().tolist()
        raise ValueError(f"eos_positions: rows {rows[:5]} do not end with EOS (id {eos_id}) at their last valid token")
    return pos


@dataclass
class ReferringOutput:
    """One teacher-forced pass. logits B×T×V; points B×T×4 and box B×4 (x0, y0, x1, y1) pixels of the S×S
    input frame; hidden B×T×D decoder states after the final norm; visual B×N×D the visual tokens f_l;
    sam_features B×C×h×w the frozen SAM image embedding (None without a SAM branch); eos B long."""

    logits: torch.Tensor
    points: torch.Tensor
    hidden: torch.Tensor
    visual: torch.Tensor
    sam_features: torch.Tensor | None
    eos: torch.Tensor
    box: torch.Tensor


def referring_forward(model, batch: Mapping[str, Any], sam_features: torch.Tensor | None = None) -> ReferringOutput:
    """:meth:`PixelLLM.forward` step by step (same modules, same order), keeping what the mask head
    needs — the visual tokens f_l and the frozen SAM embedding — and reading the box at the EOS position.

    batch: the collate dict (``images``, ``boxes``, ``prompt_ids/mask``, ``target_ids/mask``,
    ``image_sizes``); sam_features: cached B×C×h×w frozen SAM features (computed when None)."""
    images, sizes = batch["images"], batch.get("image_sizes")
    if sam_features is None and model.image_encoder.sam_encoder is not None:
        sam_features = model.image_encoder.frozen_sam_features(images, sizes)         # B×C×h×w, no grad
    grid = model.image_encoder(images, sizes, sam_features)                          # B×C'×H×W
    visual = model.prompt_tokens(grid, batch.get("boxes"), sizes)                    # B×N×D
    embeds, mask = model.encoder_inputs(visual, batch["prompt_ids"], batch.get("prompt_mask"))
    decoder_input_ids = model.language_model.shift_right(batch["target_ids"])        # B×T
    logits, hidden = model.language_model(embeds, mask, decoder_input_ids)           # B×T×V, B×T×D
    points = model.trace_head(hidden, model.frame_hw, grid)                          # B×T×4 pixels
    eos = eos_positions(batch["target_ids"], batch["target_mask"], model.language_model.eos_token_id)
    box = points[torch.arange(len(eos), device=points.device), eos]                  # B×4
    return ReferringOutput(logits, points, hidden, visual, sam_features, eos, box)


def predict_boxes(model, batch: Mapping[str, Any], mode: str = "teacher_forced", tokenizer: Any = None,
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
                            features=model.image_encoder(batch["images"], batch.get("image_sizes"), sam_features)
                            if sam_features is not None and not model.image_encoder_trainable else sam_features)
    raise ValueError(f"predict_boxes: mode must be 'teacher_forced' or 'generate', got {mode!r}")


def clip_boxes_per_image(boxes: torch.Tensor, image_sizes: torch.Tensor | None, frame: int) -> torch.Tensor:
    """Order the corners (x0 ≤ x1, y0 ≤ y1) and clip each box to its own image (w, h) after resize
    (``image_sizes`` B×2 (h, w); the S×S frame when None). Hand-written because
    ``torchvision.ops.clip_boxes_to_image`` takes one size for all boxes."""
    lo = torch.minimum(boxes[:, :2], boxes[:, 2:])
    hi = torch.maximum(boxes[:, :2], boxes[:, 2:])
    if image_sizes is None:
        lim = torch.full_like(lo, float(frame))
    else:
        lim = image_sizes.to(boxes).flip(-1)                                          # B×2 (w, h)
    return torch.cat([torch.minimum(lo.clamp(min=0), lim), torch.minimum(hi.clamp(min=0), lim)], dim=1)


# --------------------------------------------------------------------------------------- evaluation
def _gt_boxes_orig(records: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    b = torch.tensor([[float(v) for v in r["bbox"]] for r in records], dtype=torch.float64)   # N×4 xywh
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)                                    # xyxy


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
        for split, batch, recs in _eval_batches(datasets, batch_size, max_per_split, device, progress,
                                                "evaluate_referring", "refer"):
            box = predict_boxes(model, batch, mode, tokenizer, prompt).float().cpu()
            preds.append(boxes_to_original(box, batch["orig_sizes"].cpu(), resized_size=batch["image_sizes"].cpu()))
            gts.append(_gt_boxes_orig(recs))
            splits += [split] * len(recs)
            rows += recs
    finally:
        model.train(was)
    if not preds:
        return ({}, []) if return_predictions else {}
    pred, gt = torch.cat(preds), torch.cat(gts)
    metrics = precision_by_split(pred, gt, splits)
    if not return_predictions:
        return metrics
    iou = paired_box_iou(pred, gt)
    out = [{"split": s, "ref_id": r.get("ref_id"), "sent_id": r.get("sent_id"), "image_id": r.get("image_id"),
            "expression": r["expression"], "pred_box": p.tolist(), "gt_box": g.tolist(), "iou": float(i)}
           for s, r, p, g, i in zip(splits, rows, pred, gt, iou)]
    return metrics, out


# ------------------------------------------------------------------------------------- segmentation
def build_mask_head(model, sam_checkpoint: str | os.PathLike | None = None, adapter_depth: int = 2,
                    adapter_num_heads: int = 4, adapter_mlp_dim: int = 256, multimask_output: bool = True):
    """:class:`~pixelllm.modeling.mask_head.MaskHead` for ``model``: its own frozen SAM prompt encoder, the
    mask decoder of the same SAM checkpoint (``sam_checkpoint`` or the model config's), and a gated
    adapter attending to the visual tokens f_l (width D) and the decoder states (width D)."""
    from pixelllm.modeling.mask_head import MaskHead
    from pixelllm.modeling.sam import build_sam

    ckpt = sam_checkpoint if sam_checkpoint is not None else getattr(model.config, "sam_checkpoint", None)
    name = getattr(model.config, "sam", "tiny")
    sam = build_sam(name, checkpoint=ckpt, image_size=model.image_size)
    d = model.language_model.d_model
    return MaskHead(model.prompt_encoder.sam_prompt_encoder, sam.mask_decoder, visual_dim=d, text_dim=d,
                    adapter_depth=adapter_depth, adapter_num_heads=adapter_num_heads,
                    adapter_mlp_dim=adapter_mlp_dim, multimask_output=multimask_output).to(model.device)


class ReferringSegmenter(nn.Module):
    """Frozen referring model + :class:`MaskHead` (only its adapter trains).

    ``forward`` takes the batch-dict keys (so the engine's :class:`Trainer` trains it unchanged, with
    :func:`refseg_loss`) and returns ``{"logits": B×M×4h×4w low-res mask logits on the padded S×S frame,
    "points": B×M predicted IoUs, "boxes": B×4 prompt boxes (pixels of the S×S frame)}`` — the keys are
    the engine's names, the contents are the mask head's.

    The referring model's parameters are set to ``requires_grad=False`` (in place) and it always stays in
    eval mode.
    """

    def __init__(self, model, mask_head) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.mask_head = mask_head
        if model.image_encoder.sam_encoder is None:
            raise ValueError("ReferringSegmenter: the model has no frozen SAM branch (encoder_mode "
                             f"{model.image_encoder.mode!r}); the mask decoder needs SAM's image embedding")

    @property
    def device(self) -> torch.device:
        return self.model.device

    def train(self, mode: bool = True) -> "ReferringSegmenter":
        super().train(mode)
        self.model.eval()                                       # frozen: no dropout, no LoRA dropout
        return self

    def frozen_image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen SAM embedding B×C×h×w (cached per image by the trainer)."""
        return self.model.image_encoder.frozen_sam_features(images, image_sizes)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None, prompt_ids: torch.Tensor,
                prompt_mask: torch.Tensor | None, target_ids: torch.Tensor, target_mask: torch.Tensor,
                image_sizes: torch.Tensor | None = None, sam_features: torch.Tensor | None = None,
                prompt_boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Arguments as :meth:`PixelLLM.forward` (``boxes`` = the LM's whole-image location prompt);
        ``prompt_boxes`` B×4 (pixels of the S×S frame) replaces the predicted box as the SAM prompt
        (e.g. the ground truth, for an oracle upper bound)."""
        batch = dict(images=images, boxes=boxes, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                     target_ids=target_ids, target_mask=target_mask, image_sizes=image_sizes)
        with torch.no_grad():
            ref = referring_forward(self.model, batch, sam_features)
        box = ref.box if prompt_boxes is None else prompt_boxes.to(ref.box)
        box = clip_boxes_per_image(box, image_sizes, self.model.image_size)               # B×4
        # text context: decoder states of the expression and its EOS; padding rows zeroed (the
        # adapter's attention takes no key mask, as in the release)
        text = ref.hidden * target_mask[..., None].to(ref.hidden)                         # B×T×D
        masks, ious = self.mask_head.predict_all(ref.sam_features, box, ref.visual, text)  # B×M×4h×4w, B×M
        return {"logits": masks, "points": ious, "boxes": box}


def refseg_loss(logits: torch.Tensor, points: torch.Tensor, batch: Mapping[str, Any], focal_weight: float = 20.0,
                dice_weight: float = 1.0, iou_weight: float = 1.0, **_: Any) -> dict[str, torch.Tensor]:
    """Engine-compatible loss for :class:`ReferringSegmenter`: ``logits`` = B×M mask logits, ``points`` =
    B×M predicted IoUs, ground truth ``batch["masks"]`` B×S×S (padding excluded via ``image_sizes``).
    :func:`~pixelllm.modeling.mask_head.mask_loss`: min over M of focal×20 + dice, + IoU MSE.
    The trainer's other keyword arguments (λ, smoothing, counts) do not apply and are ignored."""
    from pixelllm.modeling.mask_head import mask_loss, padding_valid_mask

    if "masks" not in batch:
        raise KeyError("refseg_loss: the batch has no 'masks' (build the datasets with return_masks=True)")
    gt = batch["masks"].to(logits.device)
    valid = padding_valid_mask(batch["image_sizes"].to(logits.device), tuple(gt.shape[-2:]))
    out = mask_loss(logits, gt, iou_pred=points, valid=valid, focal_weight=focal_weight, dice_weight=dice_weight,
                    iou_weight=iou_weight)
    out.pop("best")                                              # per-sample index, not a loss term
    return out


@torch.no_grad()
def segment_batch(segmenter: ReferringSegmenter, batch: Mapping[str, Any], prompt_boxes: torch.Tensor | None = None,
                  sam_features: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Best-IoU masks for a collate batch → (boxes B×4 pixels of the S×S frame, list of B bool masks
    H0×W0 in original-image pixels, low-res best logits B×1×4h×4w)."""
    from pixelllm.modeling.mask_head import postprocess_masks, select_best_mask

    keys = ("images", "boxes", "prompt_ids", "prompt_mask", "target_ids", "target_mask", "image_sizes")
    out = segmenter(**{k: batch[k] for k in keys}, sam_features=sam_features, prompt_boxes=prompt_boxes)
    best, _ = select_best_mask(out["logits"], out["points"])                            # B×1×4h×4w
    full = postprocess_masks(best, segmenter.model.image_size, batch["image_sizes"], batch["orig_sizes"])
    return out["boxes"], [m[0] > 0 for m in full], best


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
        for split, batch, recs in _eval_batches(datasets, batch_size, max_per_split, device, progress,
                                                "evaluate_refseg", "refseg"):
            prompt = None
            if box_source == "gt":
                eos = eos_positions(batch["target_ids"], batch["target_mask"])
                prompt = batch["points"][torch.arange(len(eos), device=device), eos]       # B×4 resized
            _, masks, _ = segment_batch(segmenter, batch, prompt_boxes=prompt)
            for m, r in zip(masks, recs):
                preds.append(mask_utils.encode(np.asfortranarray(m.cpu().numpy().astype(np.uint8))))
                seg = r.get("segmentation")
                g = decode_segmentation(seg, r["height"], r["width"]) if seg else np.zeros((r["height"], r["width"]), np.uint8)
                gts.append(mask_utils.encode(np.asfortranarray(g)))
            gt_boxes.append(_gt_boxes_orig(recs))
            splits += [split] * len(recs)
            rows += recs
    finally:
        segmenter.train(was)
    if not preds:
        return ({}, []) if return_predictions else {}
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


# -------------------------------------------------------------------------------------- prediction
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
    from pixelllm.modeling.mask_head import select_best_mask, upsample_masks

    if len(expressions) != images.shape[0]:
        raise ValueError(f"predict_referring: {len(expressions)} expressions for {images.shape[0]} images")
    for i, e in enumerate(expressions):
        if not str(e).strip() or not _content_ids(tokenizer, str(e)):
            raise ValueError(f"predict_referring: expressions[{i}] = {e!r} has no tokens")
    device = model.device
    b, s = images.shape[0], model.image_size
    sizes = image_sizes if image_sizes is not None else torch.tensor([[s, s]] * b)
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
    batch = {"images": images.to(device), "image_sizes": sizes,
             "boxes": torch.stack([zeros, zeros, sizes[:, 1].float(), sizes[:, 0].float()], 1),
             "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "target_ids": target_ids, "target_mask": target_mask}
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
        out = segmenter(**batch)
    finally:
        segmenter.train(was)
    best, _ = select_best_mask(out["logits"], out["points"])
    return out["boxes"], upsample_masks(best, s)[:, 0] > 0


# ---------------------------------------------------------------------------------------- training
def _paths_and_init(cfg, progress: bool):
    from pixelllm.engine.checkpoint import latest_checkpoint
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    paths = ensure_prerequisites(cfg, progress=progress)
    if cfg.init_from and not Path(cfg.init_from).exists() and latest_checkpoint(paths.checkpoints / cfg.init_from) is None:
        print(f"[{cfg.stage}] no checkpoint for init_from={cfg.init_from!r} under {paths.checkpoints}: "
              "starting from the pretrained parts (tiny SAM, tiny T5) only")
        cfg = dataclasses.replace(cfg, init_from="")
    return cfg, paths


def fit_within(trainer, time_limit_s: float | None = None, chunk: int = 10) -> None:
    """``trainer.fit()``, but stop early when the next ``chunk`` steps would overrun ``time_limit_s``
    (None/0 = no limit): the run is then closed at the step reached (checkpoint + ``final.json`` with the
    actual step count, so found → load treats it as done). The LR schedule keeps the configured length,
    so an early stop ends above the cosine floor; it is a safety net for a shared 2-core machine."""
    import time

    if not time_limit_s:
        trainer.fit()
        return
    t0, start = time.time(), trainer.step
    while trainer.step < trainer.cfg.steps:
        trainer.fit(until=trainer.step + chunk)
        done = trainer.step - start
        elapsed = time.time() - t0
        if trainer.step < trainer.cfg.steps and elapsed + elapsed / max(done, 1) * chunk > time_limit_s:
            print(f"[{trainer.cfg.stage}] time limit {time_limit_s:.0f} s: stopping at step {trainer.step}/"
                  f"{trainer.cfg.steps} ({elapsed:.0f} s)")
            trainer.cfg = dataclasses.replace(trainer.cfg, steps=trainer.step)
            trainer.save(metrics=trainer.history[-1] if trainer.history else None)
            trainer.fit()                     # no step left: runs the final eval and writes final.json
            return


def _val_hook(val, evaluate, metric: str):
    """Trainer eval hook: ``{"val_<metric>": evaluate(model, {"val": val})["val"][metric]}`` ({} when ``val`` is empty)."""

    def eval_fn(m, step):
        if len(val) == 0:
            return {}
        return {f"val_{metric}": evaluate(m, {"val": val}, progress=False)["val"][metric]}

    return eval_fn


def _resume_and_fit(trainer, resume: bool, progress: bool, time_limit_s: float | None):
    """Resume ``trainer`` from its latest checkpoint (when ``resume``), then :func:`fit_within`; returns it."""
    if resume and trainer.resume() and progress:
        print(f"[{trainer.cfg.stage}] resumed from {trainer.last_checkpoint} at step {trainer.step}")
    fit_within(trainer, time_limit_s)
    return trainer


def _build_initialised(cfg, paths, tokenizer):
    """``build_model`` from ``cfg`` (preset, overrides, the run's SAM / T5), then the trainable weights of
    ``cfg.init_from`` that fit. Unlike ``pixelllm.train.build_model`` a tensor the new model lacks or shapes
    differently (e.g. an MLP trace head when this run uses the spatial head) is left out and reported
    instead of raising, so a referring run can start from an LN trace stage with another head."""
    from pixelllm.engine.checkpoint import load_checkpoint, load_trainable_state_dict
    from pixelllm.engine.builder import build_model, resolve_inits

    inits = resolve_inits(cfg, paths)
    init = inits[0] if inits else None
    model = build_model(dataclasses.replace(cfg, init_from=""), paths, tokenizer)
    if init is not None:
        state = load_checkpoint(init)
        own = model.state_dict()
        keep = {k: v for k, v in state["model"].items() if k in own and own[k].shape == v.shape}
        dropped = sorted(set(state["model"]) - set(keep))
        load_trainable_state_dict(model, keep, strict=False)
        print(f"[{cfg.stage}] initialised from {init} (step {state['step']}); "
              + (f"{len(dropped)} tensor(s) left out: {dropped[:4]}" if dropped else "all tensors used"))
    return model


def finetune_referring(config, model=None, tokenizer=None, progress: bool = True, eval_samples: int = 64,
                       resume: bool = True, time_limit_s: float | None = None):
    """Fine-tune PixelLLM for referring localization on the RefCOCO train split (stage ``config.stage``,
    e.g. :func:`pixelllm.configs.refcoco.get_config`). Returns the :class:`Trainer` (``.out_dir`` holds
    the checkpoints, ``metrics.jsonl`` and ``final.json``).

    ``model`` / ``tokenizer``: use these instead of building them (then no prerequisite is computed; the
    model should come from :func:`pixelllm.train.build_model` with ``config`` so that
    :func:`load_referring` can rebuild it). Otherwise the run's prerequisites are found or computed and
    the model is built from ``config.init_from`` (the LN trace stage when it exists, else only the
    pretrained parts). The eval hook scores val P@0.5 on ``eval_samples`` expressions;
    ``time_limit_s`` stops early (:func:`fit_within`)."""
    from torch.utils.data import Subset

    from pixelllm.data.datasets import collate
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.trainer import Trainer
    from pixelllm.engine.paths import resolve_paths

    if model is None:
        config, paths = _paths_and_init(config, progress)
        tokenizer = tokenizer or load_tokenizer(paths.tokenizer)
        model = _build_initialised(config, paths, tokenizer)
    else:
        paths = resolve_paths(config)
        tokenizer = tokenizer or load_tokenizer(paths.tokenizer)
    prompt = config.prompts.get("refer", REFER_PROMPT)
    sets = refexp_datasets(paths.data, tokenizer, model.image_size, ("train", "val"), prompt=prompt,
                           max_target_len=config.max_target_len,
                           max_samples={"train": config.max_samples or None, "val": eval_samples})
    eval_fn = _val_hook(sets["val"], evaluate_referring, "P@0.5")
    trainer = Trainer(model, config, sets["train"], collate, out_dir=paths.out, eval_fn=eval_fn, progress=progress)
    return _resume_and_fit(trainer, resume, progress, time_limit_s)


def load_referring(checkpoint: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a fine-tuned referring model from its checkpoint (file or folder → latest): the config
    stored inside says how to build it (preset, overrides, SAM/T5 paths) → (model in eval mode, tokenizer)."""
    from pixelllm.configs.base import TrainConfig
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.checkpoint import load_checkpoint, load_trainable_state_dict
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.paths import resolve_paths

    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_json(state["config"])
    paths = resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    model = build_model(dataclasses.replace(cfg, init_from=""), paths, tok, device=str(device))
    load_trainable_state_dict(model, state["model"])
    return model.eval(), tok


def _refseg_parts(cfg, model, paths):
    head_kw = dict(cfg.model_overrides)
    sam_ckpt = paths.sam if paths.sam.is_file() else None
    return ReferringSegmenter(model, build_mask_head(model, sam_ckpt, **head_kw))


def train_mask_adapter(config, model=None, tokenizer=None, progress: bool = True, eval_samples: int = 32,
                       resume: bool = True, time_limit_s: float | None = None):
    """Train the gated mask adapter for referring segmentation (stage ``config.stage``, e.g.
    :func:`pixelllm.configs.refcoco.get_refseg_config`) on the RefCOCO train masks; the referring model
    (``model``, else loaded from ``config.init_from``) is frozen. Returns the :class:`Trainer`
    (``.model`` is the :class:`ReferringSegmenter`); the eval hook scores val cIoU on ``eval_samples``;
    ``time_limit_s`` stops early (:func:`fit_within`)."""
    from pixelllm.data.datasets import collate
    from pixelllm.engine.checkpoint import latest_checkpoint
    from pixelllm.engine.trainer import Trainer
    from pixelllm.engine.paths import resolve_paths

    paths = resolve_paths(config)
    if model is None:
        ref = Path(config.init_from) if Path(config.init_from).exists() else paths.checkpoints / config.init_from
        if not config.init_from or latest_checkpoint(ref) is None:
            raise FileNotFoundError(f"train_mask_adapter: no referring checkpoint at init_from={config.init_from!r} "
                                    f"({ref}); run finetune_referring first")
        model, tokenizer = load_referring(ref)
    elif tokenizer is None:
        from pixelllm.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(paths.tokenizer)
    seg = _refseg_parts(config, model, paths)
    sets = refexp_datasets(paths.data, tokenizer, model.image_size, ("train", "val"),
                           prompt=config.prompts.get("refer", REFER_PROMPT), return_masks=True,
                           max_target_len=config.max_target_len,
                           max_samples={"train": config.max_samples or None, "val": eval_samples})
    eval_fn = _val_hook(sets["val"], evaluate_refseg, "cIoU")
    trainer = Trainer(seg, config, sets["train"], collate, out_dir=paths.out, eval_fn=eval_fn,
                      loss_fn=refseg_loss, progress=progress)
    return _resume_and_fit(trainer, resume, progress, time_limit_s)


def load_refseg(checkpoint: str | os.PathLike, model=None, device: str | torch.device = "cpu"):
    """Rebuild a :class:`ReferringSegmenter` from a ``refseg`` checkpoint (its stored config names the
    referring checkpoint and the adapter sizes) → (segmenter in eval mode, tokenizer)."""
    from pixelllm.configs.base import TrainConfig
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.checkpoint import load_checkpoint, load_trainable_state_dict
    from pixelllm.engine.paths import resolve_paths

    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_json(state["config"])
    paths = resolve_paths(cfg)
    if model is None:
        ref = Path(cfg.init_from) if Path(cfg.init_from).exists() else paths.checkpoints / cfg.init_from
        model, tok = load_referring(ref, device)
    else:
        tok = load_tokenizer(paths.tokenizer)
    seg = _refseg_parts(cfg, model, paths)
    load_trainable_state_dict(seg, state["model"])
    return seg.to(device).eval(), tok


# --------------------------------------------------------------------------------------- figures
@torch.no_grad()
def qualitative_examples(segmenter: ReferringSegmenter, dataset, indices: Sequence[int]) -> list[dict]:
    """Predictions for a few samples of a RefExpDataset, in pixels of the resized image (padding cropped):
    dicts with ``image`` h×w×3, ``expression``, ``pred_box`` / ``gt_box`` (x0, y0, x1, y1), ``mask`` /
    ``gt_mask`` h×w bool (``gt_mask`` when the dataset returns masks), ``iou`` (boxes)."""
    from pixelllm.data.datasets import collate
    from pixelllm.eval.boxes import paired_box_iou
    from pixelllm.modeling.mask_head import upsample_masks

    base, idx = _base_and_indices(dataset)
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
