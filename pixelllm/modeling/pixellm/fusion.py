"""Token fusion φ (PAPER_NOTES.md §10; PixelLM paper §3.2, "multi-token fusion").

For each target, the LM's last-layer states at the L·N codebook tokens, h_n^l (n = 1…N per scale l),
are fused per scale into one vector for the pixel decoder::

    h^l = φ([h_1^l ; … ; h_N^l])        φ: a linear layer R^{N·D} → R^{d}, shared by the scales

The release projects every state with an MLP (``text_hidden_fcs``: D → D → 256) and sums the N states of a
scale with scalar weights (``multiseg_scalar``, 1/N each; kept in a plain Python list, so they are not
registered parameters and stay at 1/N). The linear φ here learns both the projection to the decoder width
d and the mixing of the N tokens; with N = 1 it is a plain projection (the ablation N = 1 vs N > 1).
"""
from __future__ import annotations

import torch
from torch import nn


class TokenFusion(nn.Module):
    """Args: ``tokens_per_scale`` N, ``d_model`` D (LM), ``dim`` d (decoder).
    forward(states R×L×N×D) → R×L×d."""

    def __init__(self, tokens_per_scale: int, d_model: int, dim: int) -> None:
        super().__init__()
        self.tokens_per_scale, self.d_model = tokens_per_scale, d_model
        self.norm = nn.LayerNorm(d_model)
        self.proj = nn.Linear(tokens_per_scale * d_model, dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.ndim != 4 or states.shape[2:] != (self.tokens_per_scale, self.d_model):
            raise ValueError(f"TokenFusion: states must be R×L×{self.tokens_per_scale}×{self.d_model}, "
                             f"got {tuple(states.shape)}")
        return self.proj(self.norm(states).flatten(2))


__all__ = ["TokenFusion"]
