"""The referring read-out of a PixelLLM and the referring segmenter built on it (PAPER_NOTES.md §3).

* :func:`referring_forward` — :meth:`PixelLLM.forward` step by step, keeping the visual tokens f_l and the
  frozen SAM embedding, and reading the box at the EOS position: the decoder state that emits EOS,
  h_EOS = L⁻(f_l, expr), goes through the trace head and its two points are the box corners::

      b̂ = TraceHead(h_EOS) = (x0, y0, x1, y1)      pixels of the S×S input frame

* :class:`ReferringSegmenter` — b̂ (detached, clipped to the image) → SAM's frozen prompt encoder → SAM's
  frozen mask decoder on the frozen SAM image embedding, with the release's gated mask adapter
  (:class:`~pixelllm.modeling.mask_head.MaskHead`) letting f_l and the decoder states of the expression
  steer the box tokens. Only the adapter trains; the segmenter computes its own loss (focal×20 + dice,
  min over SAM's 3 candidates, + IoU regression), so the engine's ``Trainer`` trains it as it is.

Frames: boxes are (x0, y0, x1, y1) pixels of the resized, bottom/right zero-padded S×S input; masks are
low-res logits on the 4h×4w grid covering that frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn


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
    logits, hidden = model.decode_targets(embeds, mask, batch["target_ids"])         # B×T×V, B×T×D
    points = model.trace_head(hidden, model.frame_hw, model.head_grid(grid, images))  # B×T×4 pixels
    eos = eos_positions(batch["target_ids"], batch["target_mask"], model.language_model.eos_token_id)
    box = points[torch.arange(len(eos), device=points.device), eos]                  # B×4
    return ReferringOutput(logits, points, hidden, visual, sam_features, eos, box)


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


def build_mask_head(model, adapter_depth: int = 2, adapter_num_heads: int = 4, adapter_mlp_dim: int = 256,
                    multimask_output: bool = True):
    """:class:`~pixelllm.modeling.mask_head.MaskHead` for ``model``: its own frozen SAM prompt encoder, the
    mask decoder of the SAM checkpoint the model was built with (``model.config.sam_checkpoint``; a
    random SAM when None, so seed first), and a gated adapter attending to the visual tokens f_l (width D)
    and the decoder states (width D)."""
    from pixelllm.modeling.mask_head import MaskHead
    from pixelllm.modeling.sam import build_sam

    sam = build_sam(getattr(model.config, "sam", "tiny"), checkpoint=getattr(model.config, "sam_checkpoint", None),
                    image_size=model.image_size)
    d = model.language_model.d_model
    return MaskHead(model.prompt_encoder.sam_prompt_encoder, sam.mask_decoder, visual_dim=d, text_dim=d,
                    adapter_depth=adapter_depth, adapter_num_heads=adapter_num_heads,
                    adapter_mlp_dim=adapter_mlp_dim, multimask_output=multimask_output).to(model.device)


class ReferringSegmenter(nn.Module):
    """Frozen referring model + :class:`~pixelllm.modeling.mask_head.MaskHead` (only its adapter trains).

    A task that computes its own loss (``computes_own_loss``): ``forward(batch, features=None)`` returns
    ``{"loss", "focal", "dice", "iou"}`` against ``batch["masks"]`` (:func:`mask_loss`, padding excluded);
    :meth:`predict` gives the best-IoU mask for evaluation. ``features`` = :meth:`frozen_image_features`
    of the batch's images (the engine caches them per image).

    The referring model's parameters are set to ``requires_grad=False`` (in place) and it always stays in
    eval mode.
    """

    computes_own_loss = True

    def __init__(self, model, mask_head, focal_weight: float = 20.0, dice_weight: float = 1.0,
                 iou_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.mask_head = mask_head
        self.focal_weight, self.dice_weight, self.iou_weight = focal_weight, dice_weight, iou_weight
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

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen SAM embedding B×C×h×w (cached per image by the trainer)."""
        return self.model.image_encoder.frozen_sam_features(images, image_sizes)

    def predict_all(self, batch: Mapping[str, Any], features: torch.Tensor | None = None,
                    prompt_boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every candidate mask of a collate batch → (low-res mask logits B×M×4h×4w on the padded S×S frame,
        predicted IoUs B×M, prompt boxes B×4 pixels of the S×S frame). ``prompt_boxes`` B×4 replaces the
        predicted box as the SAM prompt (e.g. the ground truth, for an oracle upper bound)."""
        with torch.no_grad():
            ref = referring_forward(self.model, batch, features)
        sizes = batch.get("image_sizes")
        box = ref.box if prompt_boxes is None else prompt_boxes.to(ref.box)
        box = clip_boxes_per_image(box, sizes, self.model.image_size)                     # B×4
        # text context: decoder states of the expression and its EOS; padding rows zeroed (the
        # adapter's attention takes no key mask, as in the release)
        text = ref.hidden * batch["target_mask"][..., None].to(ref.hidden)               # B×T×D
        masks, ious = self.mask_head.predict_all(ref.sam_features, box, ref.visual, text)  # B×M×4h×4w, B×M
        return masks, ious, box

    def forward(self, batch: Mapping[str, Any], features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of a collate batch with ``masks`` B×S×S (``return_masks=True`` datasets): ``loss`` (the mean
        over the batch) and its ``focal``, ``dice``, ``iou`` terms."""
        from pixelllm.modeling.mask_head import mask_loss, padding_valid_mask

        if "masks" not in batch:
            raise KeyError("ReferringSegmenter: the batch has no 'masks' (build the datasets with return_masks=True)")
        masks, ious, _ = self.predict_all(batch, features)
        gt = batch["masks"].to(masks.device)
        valid = padding_valid_mask(batch["image_sizes"].to(masks.device), tuple(gt.shape[-2:]))
        out = mask_loss(masks, gt, iou_pred=ious, valid=valid, focal_weight=self.focal_weight,
                        dice_weight=self.dice_weight, iou_weight=self.iou_weight)
        out.pop("best")                                          # per-sample index, not a loss term
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    @torch.no_grad()
    def predict(self, batch: Mapping[str, Any], features: torch.Tensor | None = None,
                prompt_boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Inference on a collate batch: ``{"boxes": B×4 prompt boxes (pixels of the S×S frame),
        "masks": B×1×4h×4w low-res logits of the best-predicted-IoU mask, "iou": B its predicted IoU}``."""
        from pixelllm.modeling.mask_head import select_best_mask

        masks, ious, box = self.predict_all(batch, features, prompt_boxes)
        best, iou = select_best_mask(masks, ious)
        return {"boxes": box, "masks": best, "iou": iou}


__all__ = ["ReferringOutput", "ReferringSegmenter", "build_mask_head", "clip_boxes_per_image", "eos_positions",
           "referring_forward"]
