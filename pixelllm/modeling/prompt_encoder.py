"""Prompt encoder P: a location prompt (a box) → 2 corner tokens, with SAM's frozen prompt encoder.

PixelLLM encodes its optional location prompt b exactly like SAM encodes a box: each corner gets
SAM's random-Fourier positional encoding plus a learned "top-left" / "bottom-right" embedding. The
module is frozen (official release). No prompt → the whole-image box.
"""
from __future__ import annotations

import torch
from segment_anything.modeling import PromptEncoder
from torch import nn


def whole_image_boxes(batch_size: int, image_sizes: torch.Tensor | None, frame_hw: tuple[int, int],
                      device: torch.device | None = None) -> torch.Tensor:
    """B×4 boxes (0, 0, w, h) in pixels of the input frame: the resized image's extent when
    ``image_sizes`` (B×2, (h, w) after resize, before padding) is given, else the whole S×S frame."""
    if image_sizes is not None:
        hw = image_sizes.to(device=device, dtype=torch.float32)
        zeros = torch.zeros_like(hw[:, 0])
        return torch.stack([zeros, zeros, hw[:, 1], hw[:, 0]], dim=1)
    h, w = frame_hw
    return torch.tensor([[0.0, 0.0, float(w), float(h)]], device=device).expand(batch_size, 4).clone()


class BoxPromptEncoder(nn.Module):
    """Frozen wrapper of ``segment_anything.modeling.PromptEncoder`` for box prompts.

    ``sam_prompt_encoder.input_image_size`` must be the model's S×S input frame (its positional encoding
    divides pixel coordinates by it).
    """

    def __init__(self, sam_prompt_encoder: PromptEncoder) -> None:
        super().__init__()
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_prompt_encoder.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        return self.sam_prompt_encoder.embed_dim

    @property
    def frame_hw(self) -> tuple[int, int]:
        """(h, w) in pixels of the input frame the encoder expects."""
        return tuple(self.sam_prompt_encoder.input_image_size)

    def dense_pe(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """C×H×W: the positional encoding the corner tokens use, evaluated at the centres of an H×W grid
        tiling the input frame (SAM's ``get_dense_pe`` for any grid size)."""
        return self.sam_prompt_encoder.pe_layer(tuple(grid_hw))

    def train(self, mode: bool = True) -> "BoxPromptEncoder":
        super().train(mode)
        self.sam_prompt_encoder.eval()  # frozen: always in eval mode
        return self

    def forward(self, boxes: torch.Tensor | None, batch_size: int | None = None,
                image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """boxes: B×4 (x0, y0, x1, y1) pixels of the S×S input frame, or None for the whole image
        (then ``batch_size`` and optionally ``image_sizes`` B×2 (h, w) give the extent).
        Returns B×2×C: the top-left and bottom-right corner tokens (C = SAM's prompt width)."""
        device = self.sam_prompt_encoder.point_embeddings[0].weight.device
        if boxes is None:
            if batch_size is None:
                raise ValueError("BoxPromptEncoder: pass boxes (B×4) or batch_size for whole-image boxes")
            boxes = whole_image_boxes(batch_size, image_sizes, self.frame_hw, device=device)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"BoxPromptEncoder: boxes must be B×4 (x0, y0, x1, y1), got {tuple(boxes.shape)}")
        sparse, _dense = self.sam_prompt_encoder(points=None, boxes=boxes.to(device=device, dtype=torch.float32),
                                                 masks=None)
        return sparse                                                       # B×2×C
