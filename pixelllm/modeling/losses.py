"""PixelLLM training losses (paper §3.3, official ``scenic/projects/pixel_llm/modeling/losses.py``).

The paper trains captioning and per-word localization jointly::

    L = 1/n Σ_i [ CE(L(f_l, w_<i), w_i)  +  λ · ‖p̂_i − p_i‖₁ ],      λ = 0.1

* CE is label-smoothed (ε = 0.1) the way the official code (following GRiT) does it: the target
  distribution puts 1 − ε on the true token and **ε / (V − 1) on every other token** (torch's
  ``label_smoothing=ε`` instead spreads ε / V over *all* tokens, the true one included).
  Pad tokens (``target_mask`` False) are ignored, EOS is supervised. Averaged over the valid tokens.
* The point term is an L1 distance in **pixels of the resized model input** (longest side = S), taken
  only where ``point_valid`` is True (begin/end/pad tokens and caption-only samples carry no target).
  As in the official ``point_loss``, the per-token distance is the mean over the 2 points × (x, y)
  = 4 coordinates, then averaged over the valid tokens.

Both averages can be taken over a *global* count (all micro-batches of one optimizer step, all DDP
ranks) instead of this batch's count: pass ``num_tokens`` / ``num_points``. The trainer does this so that
gradient accumulation and data parallelism give exactly the gradient of one large batch.

``token_weights`` (a tiny-preset option, off by default) multiplies the CE of chosen target token ids, e.g.
the shape nouns of the synthetic world; the normaliser stays the token count (:func:`word_token_weights`).

Box tasks (referring localization, PAPER_NOTES.md §8): the two points at the EOS token are the box corners;
``giou_weight > 0`` adds a GIoU loss (torchvision) on them, next to the L1.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

POINT_TASKS = ("trace", "refer")  # tasks whose point targets are supervised
BOX_TASKS = ("refer",)            # tasks whose EOS points are a box (x0, y0, x1, y1)


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Per-token cross entropy against the official smoothed target distribution.

    q_k = 1 − ε if k = y else ε / (V − 1);   CE = −Σ_k q_k log softmax(z)_k

    Computed without materialising the B×T×V one-hot: Σ_{k≠y} log p_k = Σ_k log p_k − log p_y.

    Args:
        logits: B×T×V (any float dtype; computed in float32).
        targets: B×T long token ids.
        smoothing: ε.
    Returns:
        B×T float32 per-token loss (no masking applied).
    """
    V = logits.shape[-1]
    logp = F.log_softmax(logits.float(), dim=-1)                       # B×T×V
    logp_true = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)     # B×T, log p_y
    logp_sum = logp.sum(-1)                                            # B×T, Σ_k log p_k
    if V == 1:
        return -logp_true
    return -(1.0 - smoothing) * logp_true - smoothing / (V - 1) * (logp_sum - logp_true)


def word_token_weights(tokenizer, word_weights: dict) -> dict[int, float]:
    """{word: w} → {token id: w} for every token the tokenizer makes of ``" " + word`` (specials left out);
    a token shared by two words takes the larger weight."""
    out: dict[int, float] = {}
    specials = set(getattr(tokenizer, "all_special_ids", []))
    for word, w in word_weights.items():
        ids = [i for i in tokenizer(" " + word, add_special_tokens=False).input_ids if i not in specials]
        if not ids:
            raise ValueError(f"word_weights: the tokenizer makes no token of {word!r}")
        for i in ids:
            out[i] = max(out.get(i, 0.0), float(w))
    return out


def loss_for_config(cfg, tokenizer) -> Callable:
    """The loss a PixelLLM ``Trainer`` of ``cfg`` uses: :func:`pixelllm_loss`, with ``cfg.word_weights`` turned
    into ``token_weights`` by ``tokenizer`` when the config has any (every stage that trains on this loss calls
    this, so the field is never silently ignored)."""
    word_weights = getattr(cfg, "word_weights", None)
    if not word_weights:
        return pixelllm_loss
    return partial(pixelllm_loss, token_weights=word_token_weights(tokenizer, word_weights))


def text_valid_mask(target_ids: torch.Tensor, target_mask: torch.Tensor, eos_id: int = 1) -> torch.Tensor:
    """Tokens that carry a CE target: not pad, and not part of an empty caption (official code drops
    samples whose first target token is EOS — e.g. padding samples). Returns B×T bool."""
    return target_mask.bool() & (target_ids[:, :1] != eos_id)


def point_valid_mask(point_valid: torch.Tensor, tasks: Optional[Iterable[str]], point_tasks=POINT_TASKS) -> torch.Tensor:
    """``point_valid`` restricted to samples whose task supervises points (per-task mask), B×T bool.
    ``tasks=None`` keeps ``point_valid`` as is."""
    valid = point_valid.bool()
    if tasks is not None:
        keep = torch.tensor([t in point_tasks for t in tasks], dtype=torch.bool, device=valid.device)
        valid = valid & keep[:, None]
    return valid


def cell_cross_entropy(cell_logits: torch.Tensor, target: torch.Tensor, frame_hw: tuple[int, int]) -> torch.Tensor:
    """Cross entropy of a pointer head's attention over the grid against the cell that holds the centre of
    the target box (not in the paper; PAPER_NOTES.md §9).

    The L1 term reaches the attention only through the soft-argmax, whose gradient is weak where the
    attention is split between two objects (their mean can sit near the target); this term asks the
    attention itself to peak on the right cell, as heatmap keypoint heads do.

    Args:
        cell_logits: B×T×H×W attention logits over the H×W grid covering the frame.
        target: B×T×4 target boxes (x0, y0, x1, y1), pixels of the frame (h, w) = ``frame_hw``.
    Returns:
        B×T float32 per-token loss (no masking applied).
    """
    gh, gw = cell_logits.shape[-2:]
    h, w = frame_hw
    target = torch.nan_to_num(target.float(), nan=0.0, posinf=0.0, neginf=0.0)   # invalid tokens: any cell
    cx = ((target[..., 0] + target[..., 2]) / 2 * (gw / w)).floor().clamp(0, gw - 1).long()
    cy = ((target[..., 1] + target[..., 3]) / 2 * (gh / h)).floor().clamp(0, gh - 1).long()
    logp = F.log_softmax(cell_logits.float().flatten(-2), dim=-1)                      # B×T×N
    return -logp.gather(-1, (cy * gw + cx).unsqueeze(-1)).squeeze(-1)


def count_targets(batch: dict, point_tasks: Iterable[str] = POINT_TASKS, eos_id: int = 1) -> tuple[int, int]:
    """(number of CE tokens, number of point targets) of a batch — the normalisers of
    :func:`pixelllm_loss`, countable before the forward pass (the trainer sums them over micro-batches
    and ranks to get the exact large-batch average)."""
    n_tok = int(text_valid_mask(batch["target_ids"], batch["target_mask"], eos_id).sum())
    n_pt = 0
    if "point_valid" in batch:
        n_pt = int(point_valid_mask(batch["point_valid"], batch.get("task"), tuple(point_tasks)).sum())
    return n_tok, n_pt


def pixelllm_loss(
    logits: torch.Tensor,
    points: Optional[torch.Tensor],
    batch: dict,
    *,
    lambda_point: float = 0.1,
    label_smoothing: float = 0.1,
    giou_weight: float = 0.0,
    num_tokens: Optional[float] = None,
    num_points: Optional[float] = None,
    point_tasks: Iterable[str] = POINT_TASKS,
    box_tasks: Iterable[str] = BOX_TASKS,
    eos_id: int = 1,
    cell_logits: Optional[torch.Tensor] = None,
    cell_weight: float = 0.0,
    token_weights: Optional[dict] = None,
) -> dict:
    """The PixelLLM loss on one (micro-)batch.

    Args:
        logits: B×T×V decoder logits (teacher forcing, aligned with ``batch["target_ids"]``).
        points: B×T×4 predicted (x0, y0, x1, y1) per token, pixels of the resized input; may be None
            for a caption-only model.
        batch: the collate dict (docs/ARCHITECTURE.md): ``target_ids`` B×T, ``target_mask`` B×T and,
            when present, ``points`` B×T×4 (pixels), ``point_valid`` B×T, ``task`` list[str].
        lambda_point: λ, weight of the L1 point term (paper 0.1).
        label_smoothing: ε (paper 0.1).
        giou_weight: weight of a GIoU term on the box of box tasks (0 = paper, L1 only).
        num_tokens / num_points: normalisers for the CE / point sums (default: this batch's counts).
        cell_logits / cell_weight: a pointer head's attention logits B×T×H×W over the image grid and the
            weight of :func:`cell_cross_entropy` on them (0 = the paper's loss), on the same tokens and
            with the same normaliser as the point term.
        token_weights: {token id: w} multiplying those targets' CE (None = the paper's unweighted CE;
            :func:`word_token_weights`); the normaliser stays the token count.
    Returns:
        dict of scalar tensors: ``loss`` (to backpropagate), ``ce``, ``point_l1`` (already normalised,
        unweighted), ``giou`` when enabled, and the counts ``n_tokens`` / ``n_points`` of this batch.
    """
    target_ids = batch["target_ids"]
    tok_valid = text_valid_mask(target_ids, batch["target_mask"], eos_id)
    ce_tok = label_smoothed_cross_entropy(logits, target_ids, label_smoothing)      # B×T
    if token_weights:
        table = torch.ones(max(max(token_weights) + 1, int(target_ids.max()) + 1), device=ce_tok.device)
        table[list(token_weights)] = torch.tensor(list(token_weights.values()), device=ce_tok.device)
        ce_tok = ce_tok * table[target_ids]
    n_tok = tok_valid.sum()
    denom_tok = torch.as_tensor(num_tokens if num_tokens is not None else n_tok, dtype=torch.float32).clamp(min=1)
    ce = (ce_tok * tok_valid).sum() / denom_tok
    out = {"ce": ce, "n_tokens": n_tok.detach()}
    loss = ce

    if points is not None and "points" in batch and "point_valid" in batch:
        tasks = batch.get("task")
        pt_valid = point_valid_mask(batch["point_valid"], tasks, tuple(point_tasks))       # B×T
        target = batch["points"].to(points.device, torch.float32)
        # mean over the 4 coordinates (2 points × (x, y)), as the official point_loss
        l1_tok = (points.float() - target).abs().mean(-1)                                  # B×T
        # where() rather than multiply: a NaN/inf target at an invalid token must not leak in
        l1_tok = torch.where(pt_valid, l1_tok, torch.zeros_like(l1_tok))
        n_pt = pt_valid.sum()
        denom_pt = torch.as_tensor(num_points if num_points is not None else n_pt, dtype=torch.float32).clamp(min=1)
        point_l1 = l1_tok.sum() / denom_pt
        out["point_l1"] = point_l1
        out["n_points"] = n_pt.detach()
        loss = loss + lambda_point * point_l1
        if cell_weight > 0 and cell_logits is not None:
            frame_hw = tuple(batch["images"].shape[-2:])
            ce_cell = cell_cross_entropy(cell_logits, target, frame_hw)                   # B×T
            cell_ce = torch.where(pt_valid, ce_cell, torch.zeros_like(ce_cell)).sum() / denom_pt
            out["cell_ce"] = cell_ce
            loss = loss + cell_weight * cell_ce

        if giou_weight > 0 and tasks is not None:
            box_tok = pt_valid & torch.tensor([t in tuple(box_tasks) for t in tasks], dtype=torch.bool,
                                              device=pt_valid.device)[:, None]
            pred_b, tgt_b = points.float()[box_tok], target[box_tok]                      # N×4 each
            if len(pred_b):
                # torchvision's GIoU expects x1 ≥ x0; sort the corners so a flipped prediction is still a box
                pred_b = torch.cat([torch.minimum(pred_b[:, :2], pred_b[:, 2:]),
                                    torch.maximum(pred_b[:, :2], pred_b[:, 2:])], dim=1)
                giou = generalized_box_iou_loss(pred_b, tgt_b, reduction="sum") / denom_pt
            else:
                giou = pred_b.sum()  # empty → 0, keeps the graph
            out["giou"] = giou
            loss = loss + giou_weight * giou

    out["loss"] = loss
    return out
