"""PixelLM (Ren et al., CVPR 2024) built on this repo's parts, one file per component (PAPER_NOTES.md §10):

* :mod:`.codebook` — the segmentation codebook C_seg (L scales × N tokens, ids after the T5 vocabulary);
* :mod:`.fusion` — token fusion φ (the N states of a scale → one vector);
* :mod:`.pixel_decoder` — p_{V→D} per scale and the coarse-to-fine lightweight pixel decoder;
* :mod:`.sam_decoder` — the same decoder with SAM's mask-decoder architecture, loadable from a SAM checkpoint;
* :mod:`.losses` — text CE + mask BCE + Dice + target refinement;
* :mod:`.model` — :class:`PixelLM` around a PixelLLM (same image encoder, T5 + LoRA), presets, builder.

Importing this package is free: names load from their sub-module on first use.
"""
from __future__ import annotations

from pixelllm._lazy import lazy_module_getattr

_LAZY = {
    "PixelLM": ".model", "PixelLMConfig": ".model", "PixelLMOutput": ".model", "PIXELLM_PRESETS": ".model",
    "build_pixellm": ".model", "sam_block_features": ".model",
    "SegCodebook": ".codebook", "SEG_SLOT": ".codebook", "insert_groups": ".codebook", "TokenFusion": ".fusion",
    "PixelDecoder": ".pixel_decoder", "PixelDecoderOutput": ".pixel_decoder", "ScaleAttention": ".pixel_decoder",
    "ScaleProjection": ".pixel_decoder", "SamPixelDecoder": ".sam_decoder", "pixellm_loss": ".losses", "refinement_loss": ".losses",
    "mask_bce": ".losses", "mask_dice": ".losses",
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
