"""SAM builder with the image size and widths as parameters.

The paper's image encoder V starts from a frozen **SAM ViT-H** (plus its frozen prompt encoder for the box
prompt). ``segment_anything.build_sam._build_sam`` hard-codes 1024-px inputs, a 16-px patch and a 256-wide
prompt embedding; this module mirrors it line by line, but takes those numbers from a :class:`SamConfig`, so
that

* ``build_sam("vit_h" | "vit_l" | "vit_b")`` builds exactly segment-anything's architecture (same
  state_dict keys and shapes, tested) and loads an official ``sam_vit_h_4b8939.pth``;
* ``build_sam("tiny")`` builds the same modules (``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``,
  ``TwoWayTransformer`` from segment-anything) sized for our 128-px synthetic world, pretrained by
  :mod:`pixelllm.pretrain.sam` and loaded through the very same checkpoint path.

Frames: ``Sam`` expects images as B×3×S×S **0–255** floats (``Sam.preprocess`` subtracts
:data:`SAM_PIXEL_MEAN` and divides by :data:`SAM_PIXEL_STD`, both 0–255 ImageNet statistics, then pads
bottom/right to ``image_encoder.img_size``). Our batches carry [0, 1] images, so multiply by 255 first
(or normalise with ``SAM_PIXEL_MEAN / 255``). Box prompts are (x0, y0, x1, y1) in pixels of the S×S input.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

# ImageNet mean / std on the 0-255 scale, as in segment_anything.build_sam (per RGB channel).
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Every number ``_build_sam`` needs. Defaults are segment-anything's (ViT-B widths, 1024 px)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    image_size: int = 1024          # S: square input side in pixels (after resize + padding)
    patch_size: int = 16            # ViT patch; image-embedding grid = S / patch (64×64 for SAM)
    window_size: int = 14           # windowed-attention window (in patches) of the non-global blocks
    prompt_embed_dim: int = 256     # width of the image embedding, prompt tokens and mask decoder
    mask_in_chans: int = 16         # dense (mask) prompt conv width
    decoder_depth: int = 2          # TwoWayTransformer blocks in the mask decoder
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (patches); low-res masks are 4× this."""
        return self.image_size // self.patch_size


SAM_CONFIGS: dict[str, SamConfig] = {
    # The three official encoders (segment_anything.build_sam.build_sam_vit_{h,l,b}).
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31)),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                       encoder_global_attn_indexes=(2, 5, 8, 11)),
    # Our stand-in for 128-px scenes: 16-px patches -> 8×8 grid (low-res masks 32×32), two windowed
    # (4×4 windows) + two global blocks, like SAM's alternation, and a 128-wide prompt/decoder space.
    "tiny": SamConfig(encoder_embed_dim=160, encoder_depth=4, encoder_num_heads=4,
                      encoder_global_attn_indexes=(1, 3), image_size=128, patch_size=16, window_size=4,
                      prompt_embed_dim=128, decoder_depth=2, decoder_mlp_dim=512, decoder_num_heads=4,
                      iou_head_hidden_dim=128),
}


def _build_sam(cfg: SamConfig) -> Sam:
    """``segment_anything.build_sam._build_sam`` with its constants taken from ``cfg``."""
    image_embedding_size = cfg.image_size // cfg.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
            window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(image_embedding_size, image_embedding_size),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=list(cfg.pixel_mean),
        pixel_std=list(cfg.pixel_std),
    )
    return sam


def resize_sam_position_tables(state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                               ) -> dict[str, torch.Tensor]:
    """Adapt a SAM checkpoint trained at another input size (the official ones are 1024 px: a 64×64 grid)
    to this model's grid (the paper feeds SAM 384 px: 24×24), as ViTDet/EfficientSAM-style ports do.

    * ``image_encoder.pos_embed`` 1×H×W×C: bicubic resize of the grid to the target H'×W'.
    * ``…attn.rel_pos_h / rel_pos_w`` (2·L−1)×head_dim of the *global*-attention blocks (window blocks keep
      their 14-token window, so their tables already match): linear resize along the length, exactly what
      segment-anything's own ``get_rel_pos`` does on the fly when lengths differ.
    Tensors whose shapes already match are returned untouched (so equal sizes load bit-exactly).
    segment-anything has no such helper (its builder hard-codes 1024 px), hence this one.
    """
    import torch.nn.functional as F

    out = dict(state_dict)
    for k, v in state_dict.items():
        t = target.get(k)
        if t is None or t.shape == v.shape:
            continue
        if k.endswith("pos_embed") and v.ndim == 4:                       # 1×H×W×C
            grid = v.permute(0, 3, 1, 2).float()                            # 1×C×H×W
            grid = F.interpolate(grid, size=t.shape[1:3], mode="bicubic", align_corners=False)
            out[k] = grid.permute(0, 2, 3, 1).to(v.dtype)
        elif (k.endswith("rel_pos_h") or k.endswith("rel_pos_w")) and v.ndim == 2 and v.shape[1] == t.shape[1]:
            table = v.t().unsqueeze(0).float()                              # 1×head_dim×(2L−1)
            table = F.interpolate(table, size=t.shape[0], mode="linear")
            out[k] = table[0].t().to(v.dtype)
    return out


def load_sam_state_dict(sam: Sam, checkpoint: str | Path) -> Sam:
    """Load a SAM-format state_dict (a flat ``{name: tensor}`` dict, as ``sam_vit_h_4b8939.pth``) into
    ``sam`` — ``torch.load(weights_only=True)``, never plain pickle. Raises ``ValueError`` naming the
    file and the mismatching keys when the checkpoint does not fit the architecture."""
    path = Path(checkpoint)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: expected a SAM state_dict (dict of tensors), got {type(state_dict).__name__}")
    state_dict = resize_sam_position_tables(state_dict, sam.state_dict())
    try:
        sam.load_state_dict(state_dict)
    except RuntimeError as e:  # size mismatch / missing / unexpected keys: say which file
        raise ValueError(f"{path}: state_dict does not match this SAM architecture: {e}") from e
    return sam


def build_sam(name: str | SamConfig = "tiny", checkpoint: str | Path | None = None, **overrides: Any) -> Sam:
    """Build a segment-anything ``Sam`` by preset name (``"vit_h" | "vit_l" | "vit_b" | "tiny"``) or from
    a :class:`SamConfig`; ``overrides`` replace config fields (e.g. ``patch_size=8``).

    ``checkpoint``: optional path to a SAM-format state_dict (e.g. the official ``sam_vit_h_4b8939.pth``
    or our ``runs/<mode>/sam_tiny/sam_tiny.pth``). Returned in ``eval()`` mode like segment-anything's.
    The model takes B×3×S×S 0–255 images (``S = cfg.image_size``); its image embedding is
    B×prompt_embed_dim×(S/patch)×(S/patch).
    """
    if isinstance(name, SamConfig):
        cfg = name
    elif name in SAM_CONFIGS:
        cfg = SAM_CONFIGS[name]
    else:
        raise KeyError(f"build_sam: unknown SAM preset {name!r}; known: {sorted(SAM_CONFIGS)}")
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    sam = _build_sam(cfg)
    sam.eval()
    if checkpoint is not None:
        load_sam_state_dict(sam, checkpoint)
    return sam


def sam_config(sam: Sam) -> dict[str, int]:
    """The sizes a downstream module needs from a built SAM: image size, grid side and embedding width."""
    enc = sam.image_encoder
    return {
        "image_size": enc.img_size,
        "embedding_size": sam.prompt_encoder.image_embedding_size[0],
        "prompt_embed_dim": sam.prompt_encoder.embed_dim,
    }
