"""PixelLM's lightweight pixel decoder (PAPER_NOTES.md §10; PixelLM paper §3.2; release
``model/segment_anything/modeling/mask_decoder_multi_scale.py``).

Coarse to fine over L scales, one attention block per scale::

    f^L' = f^L
    f^l' = f^l ⊙ (σ(up(m^{l+1})) + 1)          l < L: the coarser mask modulates the finer features
    m^l  = Attn^l(h^l, f^l')                    one mask per target and scale
    M̂    = Σ_l γ^l · up(m^l)                   γ = softmax(w): learned, Σ γ = 1, initialised 1/L

``f^l`` are the image features of scale l after the vision→decoder projection p_{V→D}
(:class:`ScaleProjection`); ``h^l`` the fused codebook state of scale l (:mod:`.fusion`).
Indexing here runs coarse → fine: list position 0 is the coarsest scale (the paper's l = L).

Each :class:`ScaleAttention` block is a one-layer version of SAM's two-way block, as the release's
``MaskDecoderMultiScale`` uses per scale (a TwoWayTransformer with a level embedding, a 2× transposed-conv
upscaling of the image features and a hypernetwork MLP turning the output token into mask weights):
token → image cross-attention (its weights are the per-scale attention map shown in notebook 09),
token MLP, image → token cross-attention, then ``m = MLP(t) · up2(x)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn


class ScaleProjection(nn.Module):
    """p_{V→D} of one scale: B×C_in×g×g → B×d×(g·2^k)×(g·2^k).

    The release's ``image_feature_neck`` (1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d) followed by
    ``upsample`` 2× transposed-conv steps (the release's ``upsample_2x``: finer scales are upsampled
    versions of an earlier ViT layer's grid)."""

    def __init__(self, in_channels: int, dim: int, upsample: int = 0) -> None:
        super().__init__()
        if upsample < 0:
            raise ValueError(f"ScaleProjection: upsample must be ≥ 0, got {upsample}")
        self.neck = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), LayerNorm2d(dim),
                                  nn.Conv2d(dim, dim, 3, padding=1, bias=False), LayerNorm2d(dim))
        self.up = nn.Sequential(*[nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), LayerNorm2d(dim), nn.GELU())
                                  for _ in range(upsample)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.neck(x))


class ScaleAttention(nn.Module):
    """Attn^l(h^l, f^l'): one target token against one scale's feature grid → (mask logits B×2g×2g,
    token→image attention B×g×g).

    h: B×d fused codebook state; feats: B×d×g×g (already modulated by the coarser mask)."""

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"ScaleAttention: dim must be a multiple of 4, got {dim}")
        self.pe = PositionEmbeddingRandom(dim // 2)
        self.t2i = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.i2t = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm3 = nn.LayerNorm(dim)
        self.upscale = nn.Sequential(nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU())
        self.hyper = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim // 4))

    def forward(self, h: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, d, gh, gw = feats.shape
        if h.shape != (b, d):
            raise ValueError(f"ScaleAttention: h must be B×d = ({b}, {d}), got {tuple(h.shape)}")
        pos = self.pe((gh, gw)).to(feats).flatten(1).t().unsqueeze(0)              # 1×g²×d
        x = feats.flatten(2).transpose(1, 2)                                        # B×g²×d
        t = h.unsqueeze(1)                                                          # B×1×d
        attn_out, attn = self.t2i(t + 0.0, x + pos, x, need_weights=True)           # attn B×1×g²
        t = self.norm1(t + attn_out)
        t = self.norm2(t + self.mlp(t))
        x = self.norm3(x + self.i2t(x + pos, t, t, need_weights=False)[0])
        up = self.upscale(x.transpose(1, 2).reshape(b, d, gh, gw))                  # B×d/4×2g×2g
        w = self.hyper(t[:, 0])                                                     # B×d/4
        mask = torch.einsum("bc,bchw->bhw", w, up)                                  # B×2g×2g
        return mask, attn.reshape(b, gh, gw)


@dataclass
class PixelDecoderOutput:
    """masks: R×O×O final logits M̂ (O = ``out_size``); scale_masks: per scale (coarse → fine) R×2g_l×2g_l
    logits m^l; attention: per scale R×g_l×g_l token→image attention; gamma: L weights γ (sum 1)."""

    masks: torch.Tensor
    scale_masks: list[torch.Tensor]
    attention: list[torch.Tensor]
    gamma: torch.Tensor


class PixelDecoder(nn.Module):
    """The L-scale decoder. Args: ``dim`` d; ``num_scales`` L; ``num_heads``; ``out_size`` O, the side of
    the summed mask (the release decodes at 128 for a 448-px input, i.e. ~S/4).

    forward(h R×L×d fused states, feats: list of L grids R×d×g_l×g_l coarse → fine) → :class:`PixelDecoderOutput`.
    R = rows = (image, target) pairs: a multi-target answer decodes one row per target."""

    def __init__(self, dim: int, num_scales: int, num_heads: int = 4, out_size: int = 32,
                 modulate: bool = True) -> None:
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"PixelDecoder: num_scales must be ≥ 1, got {num_scales}")
        self.num_scales, self.out_size, self.modulate = num_scales, out_size, modulate
        self.blocks = nn.ModuleList([ScaleAttention(dim, num_heads) for _ in range(num_scales)])
        self.level_embed = nn.Embedding(num_scales, dim)            # release: level embedding on the tokens
        self.gamma_logits = nn.Parameter(torch.zeros(num_scales))   # softmax → 1/L each at init

    @property
    def gamma(self) -> torch.Tensor:
        return torch.softmax(self.gamma_logits, dim=0)

    def forward(self, h: torch.Tensor, feats: list[torch.Tensor]) -> PixelDecoderOutput:
        if h.ndim != 3 or h.shape[1] != self.num_scales or len(feats) != self.num_scales:
            raise ValueError(f"PixelDecoder: expected h R×{self.num_scales}×d and {self.num_scales} feature grids, "
                             f"got h {tuple(h.shape)} and {len(feats)} grids")
        return coarse_to_fine(h, feats, self.gamma, self.out_size, self.modulate,
                              lambda level, h_l, f: self.blocks[level](h_l + self.level_embed.weight[level], f))


def coarse_to_fine(h: torch.Tensor, feats: list[torch.Tensor], gamma: torch.Tensor, out_size: int, modulate: bool,
                   decode: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                   ) -> PixelDecoderOutput:
    """PixelLM's decoding order, shared by :class:`PixelDecoder` and the SAM-initialised decoder: scale by
    scale, coarse to fine, f^l' = f^l ⊙ (σ(m^{l+1}) + 1) (when ``modulate``), m^l = ``decode(l, h[:, l], f^l')``
    (→ R×h_l×w_l mask logits, its attention map), and M̂ = Σ_l γ^l up(m^l) at ``out_size``."""
    total = h.new_zeros(h.shape[0], out_size, out_size)
    prev: torch.Tensor | None = None
    scale_masks, attention = [], []
    for level, f in enumerate(feats):
        if prev is not None and modulate:                      # f^l' = f^l ⊙ (σ(m^{l+1}) + 1)
            m = F.interpolate(prev.unsqueeze(1), size=f.shape[-2:], mode="bilinear", align_corners=False)
            f = f * (torch.sigmoid(m) + 1)
        m_l, attn = decode(level, h[:, level], f)
        scale_masks.append(m_l)
        attention.append(attn)
        total = total + gamma[level] * F.interpolate(m_l.unsqueeze(1), size=(out_size, out_size),
                                                     mode="bilinear", align_corners=False)[:, 0]
        prev = m_l
    return PixelDecoderOutput(total, scale_masks, attention, gamma)


__all__ = ["PixelDecoder", "coarse_to_fine", "PixelDecoderOutput", "ScaleAttention", "ScaleProjection"]
