"""PixelLM's pixel decoder with SAM's mask-decoder architecture, initialisable from a pretrained SAM
(PAPER_NOTES.md §10; PixelLM paper §3.2; release ``model/segment_anything/modeling/mask_decoder_multi_scale.py``
and ``model/PixelLM.py``).

The release's ``MaskDecoderMultiScale`` is one SAM mask decoder (two-way transformer, output upscaling,
hypernetwork MLP) shared by all scales, with a level embedding; the fused codebook state of a scale enters
it as the *sparse prompt* (``prompt_encoder(text_embeds=…)``), next to SAM's IoU and mask output tokens.
:class:`SamPixelDecoder` is that decoder, coarse to fine exactly as :class:`~.pixel_decoder.PixelDecoder`::

    f^L' = f^L,   f^l' = f^l ⊙ (σ(up(m^{l+1})) + 1)
    m^l  = SAMDecoder([iou ; mask tokens ; h^l + e_l], f^l' + dense, PE)   mask token 0 → hypernetwork
    M̂    = Σ_l γ^l · up(m^l),   γ = softmax(w)

The release builds this decoder from scratch (its ``vision_pretrained`` SAM weights are used only by the
LISA-style branch that runs SAM's own encoder). Here :meth:`SamPixelDecoder.load_sam` can copy the
weights of this repo's pretrained tiny SAM (two-way transformer, output tokens, upscaling, hypernetwork
MLP of mask token 0, no-mask dense embedding, random-Fourier PE), so the decoder starts as a box → mask
decoder and only has to learn to read the codebook state as its prompt.
"""
from __future__ import annotations

import math

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from .pixel_decoder import PixelDecoderOutput, coarse_to_fine


def token_to_image_attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Softmax weights of a segment-anything ``Attention`` (its q/k projections): q B×T×C, k B×P×C →
    B×T×P, averaged over the ``num_heads`` heads."""
    qp, kp = attn.q_proj(q), attn.k_proj(k)
    b, t, c = qp.shape
    qh = qp.reshape(b, t, num_heads, c // num_heads).transpose(1, 2)
    kh = kp.reshape(b, kp.shape[1], num_heads, c // num_heads).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(c // num_heads), dim=-1)   # B×H×T×P
    return w.mean(1)


class SamPixelDecoder(nn.Module):
    """L-scale pixel decoder with one shared SAM mask decoder. Args: ``dim`` d (SAM's prompt width);
    ``num_scales`` L; ``depth``/``mlp_dim``/``num_heads`` of the two-way transformer (SAM's decoder
    numbers, e.g. the tiny SAM's 2 / 512 / 4); ``num_mask_tokens`` SAM's output mask tokens (4);
    ``out_size`` O, the side of M̂; ``modulate`` the coarse-to-fine feature modulation.

    forward(h R×L×d fused states, feats: L grids R×d×g_l×g_l coarse → fine) → :class:`PixelDecoderOutput`
    with per-scale masks R×4g_l×4g_l and attention maps R×g_l×g_l (the final token → image attention of
    mask token 0)."""

    def __init__(self, dim: int, num_scales: int, depth: int = 2, mlp_dim: int = 512, num_heads: int = 4,
                 num_mask_tokens: int = 4, out_size: int = 64, modulate: bool = True) -> None:
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"SamPixelDecoder: num_scales must be ≥ 1, got {num_scales}")
        if dim % 8:
            raise ValueError(f"SamPixelDecoder: dim must be a multiple of 8 (SAM upscales to d/8), got {dim}")
        self.num_scales, self.out_size, self.modulate, self.num_heads = num_scales, out_size, modulate, num_heads
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, mlp_dim=mlp_dim, num_heads=num_heads)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU())
        self.hyper = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                   nn.Linear(dim, dim // 8))      # SAM's MLP(d, d, d/8, 3) of mask token 0
        self.no_mask_embed = nn.Embedding(1, dim)
        self.pe = PositionEmbeddingRandom(dim // 2)
        self.level_embed = nn.Embedding(num_scales, dim)          # release: level embedding on the tokens
        nn.init.zeros_(self.level_embed.weight)                   # scale 0 starts as SAM's own decoder
        self.gamma_logits = nn.Parameter(torch.zeros(num_scales))

    @property
    def gamma(self) -> torch.Tensor:
        return torch.softmax(self.gamma_logits, dim=0)

    @torch.no_grad()
    def load_sam(self, mask_decoder: MaskDecoder, prompt_encoder: PromptEncoder) -> "SamPixelDecoder":
        """Copy a segment-anything ``MaskDecoder`` / ``PromptEncoder`` pair (e.g. ``build_sam("tiny",
        checkpoint=…)``): transformer, IoU and mask tokens, output upscaling, hypernetwork MLP 0, the no-mask
        dense embedding and the PE's Gaussian matrix. Raises ``ValueError`` naming the mismatching part."""
        hyper_src = mask_decoder.output_hypernetworks_mlps[0].layers
        pairs = {"transformer": (self.transformer, mask_decoder.transformer),
                 "iou_token": (self.iou_token, mask_decoder.iou_token),
                 "mask_tokens": (self.mask_tokens, mask_decoder.mask_tokens),
                 "output_upscaling": (self.output_upscaling, mask_decoder.output_upscaling),
                 "no_mask_embed": (self.no_mask_embed, prompt_encoder.no_mask_embed)}
        try:
            for name, (dst, src) in pairs.items():
                dst.load_state_dict(src.state_dict())
            for dst, src in zip([self.hyper[0], self.hyper[2], self.hyper[4]], hyper_src):
                dst.load_state_dict(src.state_dict())
            self.pe.positional_encoding_gaussian_matrix.copy_(prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"SamPixelDecoder.load_sam: the SAM decoder does not fit this decoder "
                             f"(d={self.iou_token.embedding_dim}, {len(self.transformer.layers)} layers): {e}") from e
        return self

    def decode_scale(self, level: int, h: torch.Tensor, feats: torch.Tensor, prompts: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One scale: h R×d, feats R×d×g×g, optional extra sparse prompt tokens R×P×d (e.g. SAM box
        embeddings) → (mask logits R×4g×4g, attention R×g×g)."""
        r, d, gh, gw = feats.shape
        if h.shape != (r, d):
            raise ValueError(f"SamPixelDecoder: h must be R×d = ({r}, {d}), got {tuple(h.shape)}")
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)      # (1+M)×d
        prompt = (h + self.level_embed.weight[level]).unsqueeze(1)                            # R×1×d
        parts = [out_tokens.unsqueeze(0).expand(r, -1, -1), prompt] + ([prompts] if prompts is not None else [])
        tokens = torch.cat(parts, dim=1)                                                     # R×T×d
        src = feats + self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        pos = self.pe((gh, gw)).to(feats).unsqueeze(0)                                       # 1×d×g×g
        captured: dict[str, torch.Tensor] = {}
        hook = self.transformer.final_attn_token_to_image.register_forward_pre_hook(
            lambda _m, _a, kw: captured.update(q=kw["q"], k=kw["k"]), with_kwargs=True)
        try:
            hs, keys = self.transformer(src, pos, tokens)                                    # R×T×d, R×g²×d
        finally:
            hook.remove()
        up = self.output_upscaling(keys.transpose(1, 2).reshape(r, d, gh, gw))               # R×d/8×4g×4g
        w = self.hyper(hs[:, 1])                                                             # mask token 0
        mask = torch.einsum("rc,rchw->rhw", w, up)
        attn = token_to_image_attention(self.transformer.final_attn_token_to_image, captured["q"][:, 1:2],
                                        captured["k"], self.num_heads)[:, 0]
        return mask, attn.reshape(r, gh, gw)

    def forward(self, h: torch.Tensor, feats: list[torch.Tensor], prompts: torch.Tensor | None = None
                ) -> PixelDecoderOutput:
        """``prompts``: optional R×P×d extra sparse tokens given to every scale."""
        if h.ndim != 3 or h.shape[1] != self.num_scales or len(feats) != self.num_scales:
            raise ValueError(f"SamPixelDecoder: expected h R×{self.num_scales}×d and {self.num_scales} feature "
                             f"grids, got h {tuple(h.shape)} and {len(feats)} grids")
        return coarse_to_fine(h, feats, self.gamma, self.out_size, self.modulate,
                              lambda level, h_l, f: self.decode_scale(level, h_l, f, prompts))


__all__ = ["SamPixelDecoder", "token_to_image_attention"]
