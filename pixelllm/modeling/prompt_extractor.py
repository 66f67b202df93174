"""Prompt feature extractor E: a learnable ROIAlign from image features to a fixed set of LM tokens.

    f_l = E(P(b), V(I)) ∈ R^{N×D}

Queries are ``[P(b) ; q_1..q_N]`` — SAM's 2 box-corner tokens followed by N learnable tokens (init
N(0, 1)); keys/values are the image feature grid. Both go through segment-anything's
``TwoWayTransformer`` (the same block SAM's mask decoder uses); the N learnable tokens' outputs are
projected to the LM width and LayerNorm-ed. Paper: depth 2, N = 32; the official configs use depth 6 and
width 512 (options here).
"""
from __future__ import annotations

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn


class PromptFeatureExtractor(nn.Module):
    """Args:
        image_dim: channels C of the image feature grid B×C×H×W.
        prompt_dim: width of the prompt tokens (SAM's prompt embed dim).
        lm_dim: the LM's model width D (output width).
        dim: extractor width; depth / num_heads / mlp_dim: the TwoWayTransformer's.
        num_queries: N learnable tokens (paper 32).
    """

    def __init__(self, image_dim: int, prompt_dim: int, lm_dim: int, dim: int = 256, depth: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048, num_queries: int = 32) -> None:
        super().__init__()
        self.num_queries = num_queries
        # "image features through an MLP" to the extractor width (release)
        self.image_proj = nn.Sequential(nn.Linear(image_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.prompt_proj = nn.Linear(prompt_dim, dim) if prompt_dim != dim else nn.Identity()
        self.queries = nn.Parameter(torch.randn(num_queries, dim))     # N(0, 1) init (release)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)              # SAM's Fourier positional encoding
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.out_proj = nn.Linear(dim, lm_dim)
        self.out_norm = nn.LayerNorm(lm_dim)

    def forward(self, image_features: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """image_features B×C×H×W, prompt_tokens B×2×P (box corners) → f_l: B×N×D (N = num_queries)."""
        b, _, h, w = image_features.shape
        keys = self.image_proj(image_features.permute(0, 2, 3, 1))          # B×H×W×dim
        keys = keys.permute(0, 3, 1, 2)                                      # B×dim×H×W
        pe = self.pe_layer((h, w)).unsqueeze(0).expand(b, -1, -1, -1)        # B×dim×H×W
        queries = torch.cat([self.prompt_proj(prompt_tokens),                # B×2×dim
                             self.queries.unsqueeze(0).expand(b, -1, -1)], dim=1)  # B×(2+N)×dim
        out, _keys = self.transformer(keys, pe, queries)                     # B×(2+N)×dim
        return self.out_norm(self.out_proj(out[:, -self.num_queries:]))      # B×N×D
