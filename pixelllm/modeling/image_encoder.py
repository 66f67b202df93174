"""Image encoder V: frozen SAM ViT + trainable semantic ViT (EVA02), concatenated on channels.

Paper: V = [SAM ViT-H (frozen) ; EVA02 ViT-L (trainable)]. SAM gives precise localisation features
(pretrained for box → mask), EVA02 the semantics (colour and object names) SAM lacks (PAPER_NOTES.md §8).
Official release details followed here:

* both encoders see the same S×S input (384 px in the paper); each normalises with its own statistics
  (SAM: ImageNet mean/std, EVA02: CLIP mean/std); pixels in the padding (outside ``image_sizes``) are
  set to zero **after** normalisation;
* the two feature grids are resized (bicubic) to the larger one and concatenated on channels.

``mode`` selects the ablations "both" | "sam_only" | "semantic_only".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from .sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD

# ImageNet statistics on the [0, 1] scale (SAM's 0-255 constants / 255).
IMAGENET_MEAN = tuple(m / 255.0 for m in SAM_PIXEL_MEAN)
IMAGENET_STD = tuple(s / 255.0 for s in SAM_PIXEL_STD)
# OpenAI CLIP statistics (EVA02 / EVA-CLIP), [0, 1] scale.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MODES = ("both", "sam_only", "semantic_only")


def normalize_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                     image_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """images B×3×S×S in [0, 1] → (x − mean) / std, with pixels outside each image's valid area
    (rows ≥ h or columns ≥ w, ``image_sizes`` B×2 = (h, w) after resize) set to 0 after normalising."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    x = (images - m) / s
    if image_sizes is not None:
        _, _, hh, ww = images.shape
        rows = torch.arange(hh, device=images.device).view(1, hh, 1)
        cols = torch.arange(ww, device=images.device).view(1, 1, ww)
        hs = image_sizes[:, 0].to(images.device).view(-1, 1, 1)
        ws = image_sizes[:, 1].to(images.device).view(-1, 1, 1)
        valid = (rows < hs) & (cols < ws)                                    # B×S×S
        x = x * valid.unsqueeze(1).to(x.dtype)
    return x


class ImageEncoder(nn.Module):
    """Args:
        sam_encoder: segment-anything ``ImageEncoderViT`` (frozen here), or None for "semantic_only".
        semantic_encoder: a timm ViT with ``forward_features`` and ``num_prefix_tokens`` (timm's ``Eva``
            for EVA02), trainable, or None for "sam_only".
        out_size: side of the output grid; None = the larger of the two grids.
        mode: "both" | "sam_only" | "semantic_only".
        image_size: S, the square input side in pixels (default: the SAM encoder's ``img_size``).
    """

    def __init__(self, sam_encoder: ImageEncoderViT | None, semantic_encoder: nn.Module | None,
                 out_size: int | None = None, mode: str = "both", image_size: int | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"ImageEncoder: mode must be one of {MODES}, got {mode!r}")
        if mode in ("both", "sam_only") and sam_encoder is None:
            raise ValueError(f"ImageEncoder: mode {mode!r} needs a sam_encoder")
        if mode in ("both", "semantic_only") and semantic_encoder is None:
            raise ValueError(f"ImageEncoder: mode {mode!r} needs a semantic_encoder")
        self.mode = mode
        self.sam_encoder = sam_encoder if mode != "semantic_only" else None
        self.semantic_encoder = semantic_encoder if mode != "sam_only" else None
        if self.sam_encoder is not None:
            self.sam_encoder.requires_grad_(False)
        if image_size is None:
            if self.sam_encoder is not None:
                image_size = self.sam_encoder.img_size
            else:
                image_size = _timm_img_size(self.semantic_encoder)
        self.image_size = int(image_size)
        if self.sam_encoder is not None and self.sam_encoder.img_size != self.image_size:
            raise ValueError(f"ImageEncoder: SAM encoder built for {self.sam_encoder.img_size} px, "
                             f"input frame is {self.image_size} px")
        self.out_size = out_size or max(self.grid_sizes)

    # --- sizes -----------------------------------------------------------------------------------------
    @property
    def sam_dim(self) -> int:
        return 0 if self.sam_encoder is None else self.sam_encoder.neck[0].out_channels

    @property
    def semantic_dim(self) -> int:
        return 0 if self.semantic_encoder is None else self.semantic_encoder.embed_dim

    @property
    def out_channels(self) -> int:
        """C of the concatenated grid: SAM's channels then the semantic encoder's."""
        return self.sam_dim + self.semantic_dim

    @property
    def grid_sizes(self) -> list[int]:
        """Grid sides of the active encoders (SAM first)."""
        sizes = []
        if self.sam_encoder is not None:
            sizes.append(self.image_size // self.sam_encoder.patch_embed.proj.kernel_size[0])
        if self.semantic_encoder is not None:
            sizes.append(int(self.semantic_encoder.patch_embed.grid_size[0]))
        return sizes

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if self.sam_encoder is not None:
            self.sam_encoder.eval()  # frozen: always in eval mode
        return self

    # --- features --------------------------------------------------------------------------------------
    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"ImageEncoder: images must be B×3×{self.image_size}×{self.image_size} in [0, 1], "
                             f"got {tuple(images.shape)}")

    @torch.no_grad()
    def frozen_sam_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen SAM features, cacheable per image: images B×3×S×S in [0, 1] → B×C_sam×(S/16)×(S/16)."""
        if self.sam_encoder is None:
            raise RuntimeError(f"ImageEncoder(mode={self.mode!r}) has no SAM encoder")
        self._check(images)
        x = normalize_images(images, IMAGENET_MEAN, IMAGENET_STD, image_sizes)
        return self.sam_encoder(x)

    def semantic_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Trainable semantic ViT features: images B×3×S×S in [0, 1] → B×C_sem×g×g (patch tokens only)."""
        if self.semantic_encoder is None:
            raise RuntimeError(f"ImageEncoder(mode={self.mode!r}) has no semantic encoder")
        self._check(images)
        x = normalize_images(images, CLIP_MEAN, CLIP_STD, image_sizes)
        tokens = self.semantic_encoder.forward_features(x)                   # B×(prefix+g·g)×C
        tokens = tokens[:, self.semantic_encoder.num_prefix_tokens:]         # B×g·g×C
        gh, gw = self.semantic_encoder.patch_embed.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)   # B×C×g×g

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.out_size and x.shape[-2] == self.out_size:
            return x
        return F.interpolate(x, size=(self.out_size, self.out_size), mode="bicubic", align_corners=False)

    def combine(self, sam_features: torch.Tensor | None, semantic_features: torch.Tensor | None) -> torch.Tensor:
        """Resize the grids to ``out_size`` (bicubic) and concatenate on channels → B×C×out×out."""
        parts = [self._resize(f) for f in (sam_features, semantic_features) if f is not None]
        return torch.cat(parts, dim=1)

    def encode(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None,
               sam_features: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(frozen SAM grid or None, semantic grid or None); ``sam_features`` (B×C_sam×h×w, e.g. cached)
        replaces running the frozen SAM."""
        sam = None
        if self.sam_encoder is not None:
            sam = sam_features if sam_features is not None else self.frozen_sam_features(images, image_sizes)
        sem = self.semantic_features(images, image_sizes) if self.semantic_encoder is not None else None
        return sam, sem

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None,
                sam_features: torch.Tensor | None = None) -> torch.Tensor:
        """images B×3×S×S in [0, 1] (resized, padded bottom/right) → B×C×out×out feature grid covering
        the whole S×S frame."""
        return self.combine(*self.encode(images, image_sizes, sam_features))


def _timm_img_size(model: nn.Module) -> int:
    size = model.patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
