"""PixelLM's training losses (PAPER_NOTES.md §10; PixelLM paper §3.3; release ``model/PixelLM.py``:
``sigmoid_ce_loss``, ``dice_loss``, ``overlap_loss``; weights from ``train_ds.py``).

    L = w_txt · CE(text, incl. codebook tokens) + w_bce · BCE(M̂, M) + w_dice · Dice(M̂, M) + w_ref · L_ref

* BCE: per mask, mean over pixels; averaged over the masks of the batch (release ``sigmoid_ce_loss``).
* Dice: 1 − (2 Σ σ·t + ε) / (Σ σ + Σ t + ε) per mask, averaged over the masks (release ``dice_loss``).
* Target refinement L_ref: within one answer, the pixels that **two or more** predicted masks claim
  (logit > 0) get an extra BCE term: per mask, BCE on those pixels (weight 1, 0 elsewhere), mean over all
  pixels, averaged over the masks (release ``overlap_loss``). Added with the BCE weight it makes the BCE
  weight 2× on contested pixels: the paper's weighted BCE that pushes the targets apart.
* Attention target (a tiny-preset lever, off by default, not in PixelLM): the coarsest scale's token → image
  attention is asked to fall on the target, cross entropy against the target mask pooled to the grid
  (:func:`attention_target_loss`).
* Release weights: w_txt 1.0, w_bce 2.0, w_dice 0.5; the release adds L_ref with w_bce (that line is
  commented out in the published forward). Padding pixels (outside the resized image) are excluded here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _valid(valid: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like) if valid is None else valid.to(like.dtype).expand_as(like)


def mask_bce(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """logits, gt R×H×W (gt 0/1), valid R×H×W or None → R: BCE per mask, mean over valid pixels."""
    v = _valid(valid, logits)
    loss = F.binary_cross_entropy_with_logits(logits, gt.to(logits.dtype), reduction="none")
    return (loss * v).sum((-2, -1)) / v.sum((-2, -1)).clamp(min=1.0)


def mask_dice(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None,
              eps: float = 1e-6) -> torch.Tensor:
    """logits, gt R×H×W → R: 1 − (2 Σ σ·t + ε) / (Σ σ + Σ t + ε) over valid pixels (release ε 1e-6)."""
    v = _valid(valid, logits)
    p, t = torch.sigmoid(logits) * v, gt.to(logits.dtype) * v
    return 1 - (2 * (p * t).sum((-2, -1)) + eps) / (p.sum((-2, -1)) + t.sum((-2, -1)) + eps)


def refinement_loss(logits: torch.Tensor, gt: torch.Tensor, target_valid: torch.Tensor,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """Target refinement (release ``overlap_loss``) for answers with several targets.

    logits, gt: B×K×H×W (K target slots per answer); target_valid B×K (real targets); valid B×H×W pixels.
    Overlap o = [#{k real : logit_k > 0} ≥ 2] (B×H×W, no gradient); per real mask BCE·o summed over its
    pixels / the number of valid pixels; mean over the real masks → scalar (0 when there are none)."""
    tv = target_valid.to(logits.dtype)                                            # B×K
    with torch.no_grad():
        overlap = (((logits > 0).to(logits.dtype) * tv[..., None, None]).sum(1) >= 2).to(logits.dtype)  # B×H×W
    v = torch.ones_like(overlap) if valid is None else valid.to(logits.dtype)
    w = (overlap * v).unsqueeze(1)                                                # B×1×H×W
    bce = F.binary_cross_entropy_with_logits(logits, gt.to(logits.dtype), reduction="none")
    per_mask = (bce * w).sum((-2, -1)) / v.sum((-2, -1)).clamp(min=1.0).unsqueeze(1)   # B×K
    return (per_mask * tv).sum() / tv.sum().clamp(min=1.0)


def attention_target_loss(attn: torch.Tensor, gt: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """attn R×g×g (each row a distribution over the grid), gt R×H×W target masks (0/1) → scalar:
    mean over rows of −Σ q log a, with q the mask's area per grid cell (adaptive average pooling) normalised
    to sum 1. Rows with an empty mask are left out (0 when all are)."""
    q = F.adaptive_avg_pool2d(gt.unsqueeze(1).to(attn.dtype), attn.shape[-2:])[:, 0].flatten(1)   # R×g²
    keep = q.sum(1) > 0
    if not keep.any():
        return attn.sum() * 0
    q = q[keep] / q[keep].sum(1, keepdim=True)
    return -(q * attn[keep].flatten(1).clamp(min=eps).log()).sum(1).mean()


def pixellm_loss(text_logits: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor,
                 mask_logits: torch.Tensor, gt_masks: torch.Tensor, target_valid: torch.Tensor,
                 valid: torch.Tensor | None = None, ce_weight: float = 1.0, bce_weight: float = 2.0,
                 dice_weight: float = 0.5, refine_weight: float = 2.0) -> dict[str, torch.Tensor]:
    """The total loss and its (weighted) terms.

    text_logits B×T×V' (V' = V + L·N), target_ids/mask B×T; mask_logits / gt_masks B×K×H×W (logits already
    at the gt resolution); target_valid B×K; valid B×H×W (real image pixels) or None.
    Returns ``loss``, ``ce``, ``bce``, ``dice``, ``refine`` (scalars, weights applied)."""
    if mask_logits.shape != gt_masks.shape or mask_logits.shape[:2] != target_valid.shape:
        raise ValueError(f"pixellm_loss: mask_logits {tuple(mask_logits.shape)}, gt_masks {tuple(gt_masks.shape)} "
                         f"and target_valid {tuple(target_valid.shape)} disagree")
    m = target_mask.bool()
    ce = F.cross_entropy(text_logits[m].float(), target_ids[m])
    tv = target_valid.bool()
    pix = None if valid is None else valid.unsqueeze(1).expand_as(gt_masks)[tv]
    if tv.any():
        bce = mask_bce(mask_logits[tv], gt_masks[tv], pix).mean()
        dice = mask_dice(mask_logits[tv], gt_masks[tv], pix).mean()
    else:
        bce = dice = mask_logits.sum() * 0
    ref = refinement_loss(mask_logits, gt_masks, target_valid, valid) if refine_weight else mask_logits.sum() * 0
    out = {"ce": ce_weight * ce, "bce": bce_weight * bce, "dice": dice_weight * dice, "refine": refine_weight * ref}
    out["loss"] = out["ce"] + out["bce"] + out["dice"] + out["refine"]
    return out


__all__ = ["attention_target_loss", "mask_bce", "mask_dice", "pixellm_loss", "refinement_loss"]
