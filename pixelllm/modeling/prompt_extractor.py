"""Prompt feature extractor E: a learnable ROIAlign from image features to a fixed set of LM tokens.

    f_l = E(P(b), V(I)) ∈ R^{N×D}

Queries are ``[P(b) ; q_1..q_N]`` — SAM's 2 box-corner tokens followed by N learnable tokens (init
N(0, 1)); keys/values are the image feature grid. Both go through segment-anything's
``TwoWayTransformer`` (the same block SAM's mask decoder uses); the N learnable tokens' outputs are
projected to the LM width and LayerNorm-ed. Paper: depth 2, N = 32; the official configs use depth 6 and
width 512 (options here).

Box-reading options (PAPER_NOTES.md §3; all off = the paper's plain path):

* ``roi_tokens = k > 0`` — k×k ROIAlign cells (``torchvision.ops.roi_align``) of the image grid at the box,
  each projected to the LM width (+ a learned per-cell embedding) and appended to the N query outputs:
  f_l ∈ R^{(N + k²)×D}. The paper calls E "a learnable ROIAlign"; this makes the box's own features a
  direct input of the LM instead of something the free queries may or may not look up.
* ``box_key_embedding`` — a learned vector added to every key cell in proportion to the fraction of the
  cell the box covers, so attention can tell inside from outside the box.
* ``keep_prompt_outputs`` — also pass the 2 box-corner query outputs to the LM (N + 2 tokens).
* ``sam_key_pe`` — the keys' positional encoding is the one the box corners were encoded with (SAM prompt
  encoder's random Fourier features on the grid, passed in as ``key_pe``), as in SAM's mask decoder
  (``get_dense_pe()``). With the extractor's own, independently drawn Fourier matrix, a corner token's
  position code has no relation to the keys' codes, so the box cannot pick out its cells by attention.
"""
from __future__ import annotations

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn
from torchvision.ops import roi_align


class PromptFeatureExtractor(nn.Module):
    """Args:
        image_dim: channels C of the image feature grid B×C×H×W.
        prompt_dim: width of the prompt tokens (SAM's prompt embed dim).
        lm_dim: the LM's model width D (output width).
        dim: extractor width; depth / num_heads / mlp_dim: the TwoWayTransformer's.
        num_queries: N learnable tokens (paper 32).
        roi_tokens: k: append k×k ROIAlign tokens of the box (0 = off, the paper's path).
        box_key_embedding: add a learned in-box embedding to the keys, weighted by box coverage per cell.
        keep_prompt_outputs: also output the 2 box-corner query outputs.
        sam_key_pe: use the caller's ``key_pe`` (the box prompt encoder's dense positional encoding) for the keys.
    """

    def __init__(self, image_dim: int, prompt_dim: int, lm_dim: int, dim: int = 256, depth: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048, num_queries: int = 32, roi_tokens: int = 0,
                 box_key_embedding: bool = False, keep_prompt_outputs: bool = False, sam_key_pe: bool = False) -> None:
        super().__init__()
        if roi_tokens < 0:
            raise ValueError(f"PromptFeatureExtractor: roi_tokens must be >= 0, got {roi_tokens}")
        self.num_queries = num_queries
        self.roi_tokens = roi_tokens
        self.keep_prompt_outputs = keep_prompt_outputs
        self.sam_key_pe = sam_key_pe
        if roi_tokens:
            self.roi_proj = nn.Sequential(nn.Linear(image_dim, dim), nn.GELU(), nn.Linear(dim, lm_dim))
            self.roi_pos = nn.Parameter(0.02 * torch.randn(roi_tokens * roi_tokens, lm_dim))
        self.box_embed = nn.Parameter(torch.zeros(dim)) if box_key_embedding else None
        # "image features through an MLP" to the extractor width (release)
        self.image_proj = nn.Sequential(nn.Linear(image_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.prompt_proj = nn.Linear(prompt_dim, dim) if prompt_dim != dim else nn.Identity()
        self.queries = nn.Parameter(torch.randn(num_queries, dim))     # N(0, 1) init (release)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)              # SAM's Fourier positional encoding
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.out_proj = nn.Linear(dim, lm_dim)
        self.out_norm = nn.LayerNorm(lm_dim)

    @property
    def num_tokens(self) -> int:
        """Visual tokens per box: N (+ 2 corner outputs) (+ k² ROI tokens)."""
        return self.num_queries + 2 * self.keep_prompt_outputs + self.roi_tokens ** 2

    @property
    def needs_boxes(self) -> bool:
        return bool(self.roi_tokens) or self.box_embed is not None or self.sam_key_pe

    def forward(self, image_features: torch.Tensor, prompt_tokens: torch.Tensor, boxes: torch.Tensor | None = None,
                frame_hw: tuple[int, int] | None = None, key_pe: torch.Tensor | None = None) -> torch.Tensor:
        """image_features B×C×H×W covering the ``frame_hw`` (h, w) pixel frame, prompt_tokens B×2×P (box
        corners), boxes B×4 (x0, y0, x1, y1) frame pixels (needed by the box-reading options), key_pe P×H×W
        the prompt encoder's positional encoding of the grid (needed with ``sam_key_pe``) → f_l: B×T×D, T = :attr:`num_tokens` (N with every option off)."""
        b, _, h, w = image_features.shape
        if self.needs_boxes and (boxes is None or frame_hw is None):
            raise ValueError("PromptFeatureExtractor: roi_tokens / box_key_embedding need boxes and frame_hw")
        if boxes is not None and boxes.shape != (b, 4):
            raise ValueError(f"PromptFeatureExtractor: boxes must be {b}×4, got {tuple(boxes.shape)}")
        keys = self.image_proj(image_features.permute(0, 2, 3, 1))          # B×H×W×dim
        if self.box_embed is not None:
            keys = keys + box_coverage(boxes, (h, w), frame_hw).unsqueeze(-1) * self.box_embed
        keys = keys.permute(0, 3, 1, 2)                                      # B×dim×H×W
        if self.sam_key_pe:
            if key_pe is None or tuple(key_pe.shape[-2:]) != (h, w):
                raise ValueError(f"PromptFeatureExtractor: sam_key_pe needs key_pe P×{h}×{w}, got "
                                 f"{None if key_pe is None else tuple(key_pe.shape)}")
            pe = self.prompt_proj(key_pe.permute(1, 2, 0)).permute(2, 0, 1)  # dim×H×W, same map as the corners
        else:
            pe = self.pe_layer((h, w))
        pe = pe.to(keys.dtype).unsqueeze(0).expand(b, -1, -1, -1)           # B×dim×H×W
        queries = torch.cat([self.prompt_proj(prompt_tokens),                # B×2×dim
                             self.queries.unsqueeze(0).expand(b, -1, -1)], dim=1)  # B×(2+N)×dim
        out, _keys = self.transformer(keys, pe, queries)                     # B×(2+N)×dim
        tokens = self.out_proj(out if self.keep_prompt_outputs else out[:, -self.num_queries:])
        if self.roi_tokens:
            k = self.roi_tokens
            rois = torch.cat([torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None], boxes], 1)
            cells = roi_align(image_features, rois.to(image_features.dtype), output_size=k,
                              spatial_scale=w / frame_hw[1], sampling_ratio=2, aligned=True)  # B×C×k×k
            roi = self.roi_proj(cells.flatten(2).transpose(1, 2)) + self.roi_pos          # B×k²×D
            tokens = torch.cat([tokens, roi.to(tokens.dtype)], 1)
        return self.out_norm(tokens)                                         # B×T×D


def box_coverage(boxes: torch.Tensor, grid_hw: tuple[int, int], frame_hw: tuple[int, int]) -> torch.Tensor:
    """Fraction of each grid cell covered by each box: boxes B×4 (x0, y0, x1, y1) pixels of the ``frame_hw``
    frame → B×H×W in [0, 1] (the H×W grid tiles the frame evenly)."""
    (gh, gw), (fh, fw) = grid_hw, frame_hw
    def overlap(lo: torch.Tensor, hi: torch.Tensor, n: int, size: float) -> torch.Tensor:   # B×n
        edges = torch.arange(n + 1, device=boxes.device, dtype=boxes.dtype) * (size / n)
        inter = (torch.minimum(hi[:, None], edges[None, 1:]) - torch.maximum(lo[:, None], edges[None, :-1]))
        return inter.clamp(min=0) / (size / n)
    return overlap(boxes[:, 1], boxes[:, 3], gh, fh)[:, :, None] * overlap(boxes[:, 0], boxes[:, 2], gw, fw)[:, None, :]
