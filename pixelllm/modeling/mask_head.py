"""Referring segmentation head: predicted box → frozen SAM prompt encoder + mask decoder, with the
release's gated mask adapter (PAPER_NOTES.md §3).

PixelLLM segments a referred object by turning its predicted box (the two points regressed at the EOS
token) into a SAM box prompt and running SAM's **frozen** prompt encoder and mask decoder on the frozen
SAM image embedding. The official release (``scenic/projects/pixel_llm/modeling/mask_adapter.py``,
``SamMaskAdaptor``) adds a small trainable *mask adapter* so that the language model's understanding of
the expression can reach the mask decoder:

    t_out = TwoWayTransformer(queries = o_1..o_O,  keys = [MLP_v(visual) ; MLP_t(text)],  key PE = 0)
    sparse' = sparse + tanh(α) ⊙ t_out                       α ∈ R^{O×C}, initialised to 0

* ``o_1..o_O``: O = 2 learnable output tokens (N(0, 1) init), one per box-corner token of the prompt;
* ``MLP_v`` / ``MLP_t``: pre-LayerNorm + one Linear to the adapter width (the release's 1-layer MLPs);
* ``sparse``: SAM's 2 box-corner tokens (B×2×C); the gate makes the head **exactly plain SAM at init**.

SAM's decoder then predicts M = 3 masks (``multimask_output=True``) and their IoU estimates; inference
keeps the mask with the best predicted IoU (release ``decode_mask``); training takes, per sample, the
mask with the lowest loss (SAM's recipe, release ``sam_mask_loss``).

Loss (release ``sam_mask_loss``), per predicted mask m against the ground truth g (pixels of the S×S
input frame, padding excluded):

    L_mask = 20 · mean_px FL(m, g) + Dice(m, g),    FL = −α_t (1 − p_t)^γ log p_t,  α = 0.5, γ = 2
    Dice   = 1 − (2 Σ σ(m) g + 1) / (Σ σ(m) + Σ g + 1)
    L      = min_M L_mask + mean_M (IoU_pred − IoU(m > 0, g))²

Frames: boxes are (x0, y0, x1, y1) pixels of the S×S model input (after resize, before/with padding);
the image embedding is SAM's B×C×h×w grid (h = w = S / patch); low-res masks are logits on the
4h×4w grid, which covers the whole padded S×S frame.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn
from torchvision.ops import sigmoid_focal_loss


class MaskAdapter(nn.Module):
    """The release's gated mask adapter (``SamMaskAdaptor``), PyTorch port.

    Args:
        dim: adapter width = SAM's prompt embed dim C (its output is added to the C-wide corner tokens).
        visual_dim: width of the visual context tokens (e.g. the prompt extractor's f_l), or None.
        text_dim: width of the text context tokens (e.g. the LM's decoder hidden states), or None.
        depth / num_heads / mlp_dim: segment-anything ``TwoWayTransformer`` sizes (release: depth 2,
            SAM's defaults 8 heads, MLP 2048).
        num_outputs: O, number of output tokens = number of sparse prompt tokens (2 for a box).
    """

    def __init__(self, dim: int, visual_dim: int | None = None, text_dim: int | None = None, depth: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048, num_outputs: int = 2) -> None:
        super().__init__()
        if visual_dim is None and text_dim is None:
            raise ValueError("MaskAdapter: give visual_dim and/or text_dim (the context it attends to)")
        self.dim, self.num_outputs = dim, num_outputs
        self.output_tokens = nn.Parameter(torch.randn(num_outputs, dim))          # N(0, 1) init (release)
        # release MLP(num_layers=1, pre_norm=True): LayerNorm(eps 1e-6) then one Dense to the adapter width
        self.visual_proj = (nn.Sequential(nn.LayerNorm(visual_dim, eps=1e-6), nn.Linear(visual_dim, dim))
                            if visual_dim is not None else None)
        self.text_proj = (nn.Sequential(nn.LayerNorm(text_dim, eps=1e-6), nn.Linear(text_dim, dim))
                          if text_dim is not None else None)
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.alpha = nn.Parameter(torch.zeros(num_outputs, dim))                  # gate tanh(α), α = 0 at init

    def forward(self, sparse: torch.Tensor, visual_tokens: torch.Tensor | None = None,
                text_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """sparse: B×O×C SAM prompt tokens; visual_tokens: B×L1×Dv; text_tokens: B×L2×Dt (either may be
        None, not both). Returns B×O×C = sparse + tanh(α) ⊙ transformer output.

        Like the release, padded text positions are not masked out (segment-anything's attention takes no
        key mask); pass only the positions you want attended, or accept the padding as context."""
        if sparse.ndim != 3 or sparse.shape[1:] != (self.num_outputs, self.dim):
            raise ValueError(f"MaskAdapter: sparse must be B×{self.num_outputs}×{self.dim}, got {tuple(sparse.shape)}")
        context = []
        if visual_tokens is not None:
            if self.visual_proj is None:
                raise ValueError("MaskAdapter: got visual_tokens but was built with visual_dim=None")
            context.append(self.visual_proj(visual_tokens))                     # B×L1×C
        if text_tokens is not None:
            if self.text_proj is None:
                raise ValueError("MaskAdapter: got text_tokens but was built with text_dim=None")
            context.append(self.text_proj(text_tokens))                         # B×L2×C
        if not context:
            raise ValueError("MaskAdapter: pass visual_tokens and/or text_tokens")
        keys = torch.cat(context, dim=1)                                        # B×L×C, L = L1 + L2
        b = keys.shape[0]
        # TwoWayTransformer takes its keys as an image B×C×h×w; a token sequence is a C×L×1 "image".
        keys_img = keys.transpose(1, 2).unsqueeze(-1)                           # B×C×L×1
        queries = self.output_tokens.unsqueeze(0).expand(b, -1, -1)             # B×O×C
        out, _ = self.transformer(keys_img, torch.zeros_like(keys_img), queries)  # key PE = 0 (release)
        return sparse + torch.tanh(self.alpha) * out                            # B×O×C


class MaskHead(nn.Module):
    """Box → mask with SAM's frozen prompt encoder and mask decoder, plus the optional gated adapter.

    Args:
        prompt_encoder: ``segment_anything.modeling.PromptEncoder`` (e.g. ``build_sam(...).prompt_encoder``);
            its ``input_image_size`` must be the model's S×S input frame. Frozen here.
        mask_decoder: ``segment_anything.modeling.MaskDecoder`` of the same SAM. Frozen here.
        visual_dim / text_dim: widths of the adapter's context tokens; both None → no adapter (plain SAM).
        adapter_depth / adapter_num_heads / adapter_mlp_dim: the adapter's TwoWayTransformer sizes.
        multimask_output: True (default, PAPER_NOTES.md §3): the decoder's 3 masks, best predicted IoU kept at
            inference. The release's ``forward_mask_decode`` passes False (single-mask token); set False
            for that variant.
    Only the adapter (with its gate α) is trainable.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, visual_dim: int | None = None,
                 text_dim: int | None = None, adapter_depth: int = 2, adapter_num_heads: int = 8,
                 adapter_mlp_dim: int = 2048, multimask_output: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder.requires_grad_(False)
        self.mask_decoder = mask_decoder.requires_grad_(False)
        self.multimask_output = multimask_output
        self.adapter = None
        if visual_dim is not None or text_dim is not None:
            self.adapter = MaskAdapter(prompt_encoder.embed_dim, visual_dim, text_dim, depth=adapter_depth,
                                       num_heads=adapter_num_heads, mlp_dim=adapter_mlp_dim, num_outputs=2)

    @property
    def frame_hw(self) -> tuple[int, int]:
        """(h, w) pixels of the S×S input frame the prompt encoder expects."""
        return tuple(self.prompt_encoder.input_image_size)

    def train(self, mode: bool = True) -> "MaskHead":
        super().train(mode)
        self.prompt_encoder.eval()  # frozen parts stay in eval mode
        self.mask_decoder.eval()
        return self

    def predict_all(self, image_embeddings: torch.Tensor, boxes: torch.Tensor,
                    visual_tokens: torch.Tensor | None = None,
                    text_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All decoder outputs, for training (min-loss selection in :func:`mask_loss`).

        image_embeddings: B×C×h×w frozen SAM embedding; boxes: B×4 (x0, y0, x1, y1) pixels of the S×S input
        frame, one box per image (detached: the release stops gradients into the predicted box);
        visual_tokens B×L1×Dv / text_tokens B×L2×Dt: adapter context (ignored without an adapter).
        Returns (low-res mask logits B×M×4h×4w, IoU predictions B×M); M = 3 with multimask_output else 1.
        """
        if image_embeddings.ndim != 4:
            raise ValueError(f"MaskHead: image_embeddings must be B×C×h×w, got {tuple(image_embeddings.shape)}")
        b = image_embeddings.shape[0]
        if boxes.shape != (b, 4):
            raise ValueError(f"MaskHead: boxes must be B×4 = ({b}, 4) (x0, y0, x1, y1), got {tuple(boxes.shape)}")
        boxes = boxes.detach().to(image_embeddings)
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)   # B×2×C, B×C×h×w
        if self.adapter is not None and (visual_tokens is not None or text_tokens is not None):
            sparse = self.adapter(sparse, visual_tokens, text_tokens)                 # B×2×C
        image_pe = self.prompt_encoder.get_dense_pe()                                # 1×C×h×w
        masks, ious = [], []
        # segment-anything's MaskDecoder.predict_masks repeats ONE image embedding over all prompts
        # (repeat_interleave), so B images with one prompt each are decoded image by image (as Sam.forward).
        for i in range(b):
            m, q = self.mask_decoder(image_embeddings=image_embeddings[i:i + 1], image_pe=image_pe,
                                     sparse_prompt_embeddings=sparse[i:i + 1],
                                     dense_prompt_embeddings=dense[i:i + 1],
                                     multimask_output=self.multimask_output)         # 1×M×4h×4w, 1×M
            masks.append(m)
            ious.append(q)
        return torch.cat(masks, dim=0), torch.cat(ious, dim=0)

    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor,
                visual_tokens: torch.Tensor | None = None,
                text_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: (mask logits B×1×4h×4w low-res, IoU prediction B) of the best-predicted-IoU mask.
        Arguments as :meth:`predict_all`. Upsample with :func:`upsample_masks` / :func:`postprocess_masks`."""
        masks, ious = self.predict_all(image_embeddings, boxes, visual_tokens, text_tokens)
        return select_best_mask(masks, ious)


def select_best_mask(masks: torch.Tensor, iou_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """masks B×M×h×w, iou_pred B×M → (B×1×h×w, B): the mask with the highest predicted IoU per sample."""
    best = iou_pred.argmax(dim=1)                                           # B
    idx = torch.arange(masks.shape[0], device=masks.device)
    return masks[idx, best].unsqueeze(1), iou_pred[idx, best]


def upsample_masks(low_res: torch.Tensor, frame_size: int | tuple[int, int]) -> torch.Tensor:
    """Low-res logits B×M×h×w → B×M×S×S logits on the padded S×S input frame (bilinear, as SAM)."""
    size = (frame_size, frame_size) if isinstance(frame_size, int) else tuple(frame_size)
    return F.interpolate(low_res, size, mode="bilinear", align_corners=False)


def postprocess_masks(low_res: torch.Tensor, frame_size: int | tuple[int, int],
                      input_sizes: torch.Tensor | Sequence[Sequence[int]],
                      original_sizes: torch.Tensor | Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``Sam.postprocess_masks`` per image, with per-image sizes.

    low_res: B×M×h×w logits; frame_size: S (padded square input); input_sizes: B×2 (h, w) after resize,
    before padding; original_sizes: B×2 (h, w) of the original image. Returns a list of B tensors
    M×H0×W0 (logits in original-image pixels): upsample to S×S, crop the padding, resize to the original.
    """
    up = upsample_masks(low_res, frame_size)                                 # B×M×S×S
    if len(input_sizes) != up.shape[0] or len(original_sizes) != up.shape[0]:
        raise ValueError(f"postprocess_masks: {up.shape[0]} masks but {len(input_sizes)} input_sizes / "
                         f"{len(original_sizes)} original_sizes")
    out = []
    for i in range(up.shape[0]):
        h, w = (int(v) for v in input_sizes[i])
        h0, w0 = (int(v) for v in original_sizes[i])
        m = up[i:i + 1, :, :h, :w]                                           # crop bottom/right padding
        out.append(F.interpolate(m, (h0, w0), mode="bilinear", align_corners=False)[0])
    return out


def padding_valid_mask(image_sizes: torch.Tensor, frame_size: int | tuple[int, int]) -> torch.Tensor:
    """B×2 (h, w) sizes after resize (before padding) → B×S×S bool, True on real image pixels of the
    bottom/right-padded S×S input frame (the ``valid`` argument of :func:`mask_loss`)."""
    fh, fw = (frame_size, frame_size) if isinstance(frame_size, int) else tuple(frame_size)
    sizes = torch.as_tensor(image_sizes)
    rows = torch.arange(fh, device=sizes.device)[None, :, None] < sizes[:, 0, None, None]   # B×S×1
    cols = torch.arange(fw, device=sizes.device)[None, None, :] < sizes[:, 1, None, None]   # B×1×S
    return rows & cols


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None,
              eps: float = 1.0) -> torch.Tensor:
    """Dice = 1 − (2 Σ σ(x)·t + eps) / (Σ σ(x) + Σ t + eps) over the last two dims (release eps = 1).
    logits, targets (0/1), valid (0/1, optional): …×H×W → …"""
    p = torch.sigmoid(logits)
    if valid is not None:  # the release masks only the focal term; masking both keeps padding out of Dice too
        p, targets = p * valid, targets * valid
    num = 2 * (p * targets).sum(dim=(-2, -1))
    den = p.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1 - (num + eps) / (den + eps)


def mask_loss(mask_logits: torch.Tensor, gt_masks: torch.Tensor, iou_pred: torch.Tensor | None = None,
              valid: torch.Tensor | None = None, focal_weight: float = 20.0, dice_weight: float = 1.0,
              iou_weight: float = 1.0, focal_alpha: float = 0.5, focal_gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """SAM / release mask loss (module docstring), min over the M candidate masks per sample.

    mask_logits: B×M×h×w (low-res or already upsampled) logits; bilinearly upsampled to gt's H×W.
    gt_masks: B×H×W (bool or 0/1) in pixels of the S×S input frame. iou_pred: B×M or None (no IoU term).
    valid: B×H×W, 1 on real image pixels, 0 on padding (None = all valid).
    Focal (``torchvision.ops.sigmoid_focal_loss``, release α = 0.5, γ = 2) is averaged over valid pixels.

    Returns dict: ``loss`` (scalar), ``focal`` (×focal_weight), ``dice`` (×dice_weight), ``iou`` (×iou_weight,
    0 without iou_pred) — each averaged over the batch at the selected mask — and ``best`` (B, long).
    """
    if mask_logits.ndim != 4 or gt_masks.ndim != 3 or gt_masks.shape[0] != mask_logits.shape[0]:
        raise ValueError(f"mask_loss: expected mask_logits B×M×h×w and gt_masks B×H×W, got "
                         f"{tuple(mask_logits.shape)} and {tuple(gt_masks.shape)}")
    b, m = mask_logits.shape[:2]
    hw = gt_masks.shape[-2:]
    if mask_logits.shape[-2:] != hw:
        mask_logits = F.interpolate(mask_logits, hw, mode="bilinear", align_corners=False)
    gt = (gt_masks > 0).to(mask_logits.dtype).unsqueeze(1).expand(-1, m, -1, -1)     # B×M×H×W
    v = (torch.ones_like(gt) if valid is None else (valid > 0).to(mask_logits.dtype).unsqueeze(1).expand_as(gt))
    focal = sigmoid_focal_loss(mask_logits, gt, alpha=focal_alpha, gamma=focal_gamma, reduction="none")
    focal = (focal * v).sum(dim=(-2, -1)) / v.sum(dim=(-2, -1)).clamp(min=1.0)         # B×M
    dice = dice_loss(mask_logits, gt, v)                                              # B×M
    per_mask = focal_weight * focal + dice_weight * dice                              # B×M
    best = per_mask.argmin(dim=1)                                                     # B
    idx = torch.arange(b, device=mask_logits.device)
    out = {"loss": per_mask[idx, best].mean(), "focal": focal_weight * focal[idx, best].mean(),
           "dice": dice_weight * dice[idx, best].mean(), "best": best}
    if iou_pred is not None:
        with torch.no_grad():  # the IoU of each binarised candidate is the regression target
            pred = (mask_logits > 0) & (v > 0)
            inter = (pred & (gt > 0)).sum(dim=(-2, -1)).float()
            union = (pred | (gt > 0)).sum(dim=(-2, -1)).float()
            gt_iou = inter / union.clamp(min=1.0)                                     # B×M
        iou_term = iou_weight * ((iou_pred - gt_iou) ** 2).mean()
        out["iou"] = iou_term
        out["loss"] = out["loss"] + iou_term
    else:
        out["iou"] = mask_logits.new_zeros(())
    return out
