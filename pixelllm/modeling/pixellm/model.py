"""PixelLM on the repo's parts: the same image encoder, vision→language path and T5 + LoRA as PixelLLM,
plus a segmentation codebook, token fusion and a lightweight pixel decoder (PAPER_NOTES.md §10).

    I^l        frozen image features at L scales: the coarsest is V(I), the grid PixelLLM reads (frozen
               SAM neck ; semantic ViT); finer ones are earlier SAM ViT blocks (``scale_layers``)
    f_l        = E(P(whole image), V(I))        vision→language tokens (PixelLLM's extractor, fine-tuned)
    h          = L⁻([f_l ; question], answer with one codebook group per target)   T5 + LoRA
    h^l        = φ(h_1^l … h_N^l)                per target and scale (:class:`TokenFusion`)
    f^l        = p_{V→D}^l(I^l)                  (:class:`ScaleProjection`, finer scales upsampled 2×/step)
    M̂          = PixelDecoder(h^l, f^l)          (:class:`PixelDecoder`, coarse → fine, Σ γ^l m^l)

Batches are the repo's collate dict (``images``, ``image_sizes``, ``prompt_ids/mask``, ``target_ids/mask``
= the answer text + EOS, without codebook tokens) plus ``masks`` (B×S×S for one target, or B×K×S×S with
``mask_valid`` B×K for several). The model inserts one codebook group per target before EOS
(:func:`insert_groups`); masks are matched to groups in order. A task that computes its own loss
(``computes_own_loss``), trained by the engine's ``Trainer``; the frozen features are cached per image.

Masks are read at the reference answer (teacher forcing), exactly as the SAM path of
:mod:`pixelllm.modeling.referring` reads its box at the reference expression's EOS.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pixelllm.utils import eval_mode

from ..image_encoder import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from .codebook import SegCodebook, insert_groups
from .fusion import TokenFusion
from .losses import attention_target_loss, pixellm_loss
from .pixel_decoder import PixelDecoder, PixelDecoderOutput, ScaleProjection
from .sam_decoder import SamPixelDecoder


@dataclass
class PixelLMConfig:
    """The numbers of the PixelLM parts (the PixelLLM it wraps has its own config)."""

    num_scales: int = 2                   # L (release 2)
    tokens_per_scale: int = 3             # N (release 3)
    scale_layers: tuple[int, ...] = (1,)  # SAM ViT blocks for the L−1 finer scales, coarse → fine
    dim: int = 64                         # d: decoder width (release 256)
    num_heads: int = 4
    out_size: int = 32                    # side of the summed mask M̂ (release 128 for 448 px ≈ S/4)
    modulate: bool = True                 # f^l' = f^l ⊙ (σ(m^{l+1}) + 1)
    ce_weight: float = 1.0                # release train_ds.py defaults
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    refine_weight: float = 2.0            # release: overlap term added with the BCE weight; 0 = off
    decoder: str = "light"                # "light": PixelDecoder (one-layer blocks per scale, from scratch);
                                          # "sam": SamPixelDecoder (SAM's mask decoder shared by the scales,
                                          # loaded from the SAM checkpoint; d = SAM's prompt width)
    box_prompt: bool = False              # decoder "sam" only: the first codebook state of a group also goes
                                          # through the frozen trace head → box → SAM's box prompt tokens
    attn_weight: float = 0.0              # tiny-preset lever (0 = PixelLM's loss): cross entropy of the coarsest
                                          # scale's token→image attention against the target mask pooled to
                                          # its grid (:func:`.losses.attention_target_loss`)

    def __post_init__(self) -> None:
        self.scale_layers = tuple(int(x) for x in self.scale_layers)
        if len(self.scale_layers) != self.num_scales - 1:
            raise ValueError(f"PixelLMConfig: scale_layers {self.scale_layers} must name num_scales − 1 = "
                             f"{self.num_scales - 1} SAM blocks (the coarsest scale is the encoder grid)")
        if self.decoder not in ("light", "sam"):
            raise ValueError(f"PixelLMConfig: decoder must be 'light' or 'sam', got {self.decoder!r}")
        if not (math.isfinite(self.attn_weight) and self.attn_weight >= 0):
            raise ValueError(f"PixelLMConfig: attn_weight must be a finite number >= 0, got {self.attn_weight}")
        if self.box_prompt and self.decoder != "sam":
            raise ValueError("PixelLMConfig: box_prompt needs decoder='sam' (the box enters as SAM prompt tokens)")


PIXELLM_PRESETS: dict[str, PixelLMConfig] = {
    "tiny": PixelLMConfig(),
    # release-shaped: 2 scales × 3 tokens, 256-wide decoder; the finer scale from SAM ViT-H block 21
    # (the release takes CLIP ViT-L's hidden_states[-11] of 24 layers; 21 = 32 − 11)
    "paper": PixelLMConfig(dim=256, num_heads=8, scale_layers=(21,), out_size=96),
}


@dataclass
class PixelLMOutput:
    """masks B×K×S×S logits (input frame; rows past ``num_targets`` are zeros); text_logits B×T×(V+L·N);
    target_ids/mask the answer with codebook groups (B×T); decoder: the per-row (image, target) decoder
    output; rows B×K bool (which slots hold a target); losses (training) or None."""

    masks: torch.Tensor
    text_logits: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    decoder: PixelDecoderOutput
    rows: torch.Tensor
    losses: dict[str, torch.Tensor] | None = None


def sam_block_features(sam_encoder: nn.Module, x: torch.Tensor, layers: tuple[int, ...]
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """segment-anything ``ImageEncoderViT.forward`` keeping the outputs of ``layers``: normalised images
    B×3×S×S → (neck output B×C×g×g, [B×C_vit×g×g per layer])."""
    h = sam_encoder.patch_embed(x)
    if sam_encoder.pos_embed is not None:
        h = h + sam_encoder.pos_embed
    kept = {}
    for i, blk in enumerate(sam_encoder.blocks):
        h = blk(h)
        if i in layers:
            kept[i] = h.permute(0, 3, 1, 2)
    missing = [k for k in layers if k not in kept]
    if missing:
        raise ValueError(f"sam_block_features: SAM has {len(sam_encoder.blocks)} blocks, asked for {missing}")
    return sam_encoder.neck(h.permute(0, 3, 1, 2)), [kept[k] for k in layers]


class PixelLM(nn.Module):
    """Args: ``pixelllm`` a :class:`~pixelllm.modeling.pixelllm.PixelLLM` (e.g. the stage-2 checkpoint; its
    image encoder is frozen here, its trace head unused and frozen, its extractor and LoRA train);
    ``config`` :class:`PixelLMConfig`."""

    computes_own_loss = True

    def __init__(self, pixelllm: nn.Module, config: PixelLMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or PixelLMConfig()
        self.llm = pixelllm
        enc = pixelllm.image_encoder
        if enc.sam_encoder is None:
            raise ValueError("PixelLM: the image encoder has no SAM branch; the finer scales are SAM ViT blocks")
        enc.requires_grad_(False)
        pixelllm.trace_head.requires_grad_(False)
        lm = pixelllm.language_model
        table = lm.t5.get_input_embeddings().weight
        std = 1.0 if table.device.type == "meta" else float(table.detach().float().std())   # like the word rows
        self.codebook = SegCodebook(cfg.num_scales, cfg.tokens_per_scale, lm.d_model, table.shape[0], init_std=std)
        self.fusion = TokenFusion(cfg.tokens_per_scale, lm.d_model, cfg.dim)
        vit_dim = enc.sam_encoder.patch_embed.proj.out_channels
        ins = [enc.out_channels] + [vit_dim] * (cfg.num_scales - 1)
        self.projections = nn.ModuleList([ScaleProjection(c, cfg.dim, upsample=i) for i, c in enumerate(ins)])
        if cfg.decoder == "sam":
            from ..sam import SAM_CONFIGS

            sam_cfg = SAM_CONFIGS[getattr(getattr(pixelllm, "config", None), "sam", "tiny")]
            if cfg.dim != sam_cfg.prompt_embed_dim or enc.sam_dim != cfg.dim:
                raise ValueError(f"PixelLM: decoder='sam' needs dim = SAM's prompt width {sam_cfg.prompt_embed_dim} "
                                 f"(= its neck width {enc.sam_dim}), got dim={cfg.dim}")
            # the coarsest grid is SAM's own embedding plus a learned residual that starts at zero
            # (p_{V→D}'s last LayerNorm2d zeroed), so the SAM decoder first sees what it was trained on
            nn.init.zeros_(self.projections[0].neck[-1].weight)
            self.decoder = SamPixelDecoder(cfg.dim, cfg.num_scales, sam_cfg.decoder_depth, sam_cfg.decoder_mlp_dim,
                                           sam_cfg.decoder_num_heads, sam_cfg.num_multimask_outputs + 1,
                                           cfg.out_size, cfg.modulate)
        else:
            self.decoder = PixelDecoder(cfg.dim, cfg.num_scales, cfg.num_heads, cfg.out_size, cfg.modulate)

    # --- sizes ----------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.llm.image_size

    @property
    def device(self) -> torch.device:
        return self.codebook.embedding.device

    def added_modules(self) -> dict[str, nn.Module]:
        """The parts PixelLM adds to the LM: codebook, fusion φ, projections p_{V→D}, pixel decoder."""
        return {"codebook": self.codebook, "fusion": self.fusion, "projections": self.projections,
                "decoder": self.decoder}

    def added_parameters(self) -> int:
        return sum(p.numel() for m in self.added_modules().values() for p in m.parameters())

    def load_sam_decoder(self, sam_checkpoint: str | None) -> "PixelLM":
        """``decoder='sam'``: initialise the pixel decoder from the SAM checkpoint (SAM-format state_dict,
        e.g. ``<run>/sam_tiny/sam_tiny.pth``) — its mask decoder and its prompt encoder's no-mask embedding
        and PE. Raises ``ValueError`` for a ``'light'`` decoder or a missing file."""
        from pathlib import Path

        from ..sam import build_sam

        if self.config.decoder != "sam":
            raise ValueError(f"PixelLM.load_sam_decoder: decoder is {self.config.decoder!r}, not 'sam'")
        if not sam_checkpoint or not Path(sam_checkpoint).is_file():
            raise ValueError(f"PixelLM.load_sam_decoder: SAM checkpoint {sam_checkpoint!r} not found")
        sam = build_sam(getattr(getattr(self.llm, "config", None), "sam", "tiny"), checkpoint=sam_checkpoint,
                        image_size=self.image_size)
        self.decoder.load_sam(sam.mask_decoder, sam.prompt_encoder)
        return self

    def train(self, mode: bool = True) -> "PixelLM":
        super().train(mode)
        self.llm.image_encoder.eval()
        return self

    # --- features ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """All frozen image features, cacheable per image: B×(C + (L−1)·C_vit)×g×g = [V(I) ; SAM blocks]."""
        enc = self.llm.image_encoder
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"PixelLM: images must be B×3×{self.image_size}×{self.image_size}, got {tuple(images.shape)}")
        x = normalize_images(images, IMAGENET_MEAN, IMAGENET_STD, image_sizes)
        neck, blocks = sam_block_features(enc.sam_encoder, x, self.config.scale_layers)
        sem = enc.semantic_features(images, image_sizes) if enc.semantic_encoder is not None else None
        grid = enc.combine(neck, sem)
        blocks = [F.interpolate(b, size=grid.shape[-2:], mode="bilinear", align_corners=False)
                  if b.shape[-2:] != grid.shape[-2:] else b for b in blocks]
        return torch.cat([grid] + blocks, dim=1)

    def split_features(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """[V(I) grid, SAM block grids …] from :meth:`frozen_image_features` (coarse → fine sources)."""
        c = self.llm.image_encoder.out_channels
        vit = self.llm.image_encoder.sam_encoder.patch_embed.proj.out_channels
        expected = c + vit * (self.config.num_scales - 1)
        if feats.shape[1] != expected:
            raise ValueError(f"PixelLM: features have {feats.shape[1]} channels, expected {expected}")
        return [feats[:, :c]] + list(feats[:, c:].split(vit, dim=1))

    # --- forward ---------------------------------------------------------------------------------------
    @staticmethod
    def targets_of(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(gt masks B×K×S×S bool, target slots B×K bool) from ``masks`` B×S×S or B×K×S×S (+ ``mask_valid``)."""
        masks = batch["masks"]
        if masks.ndim == 3:
            masks = masks.unsqueeze(1)
        if masks.ndim != 4:
            raise ValueError(f"PixelLM: batch['masks'] must be B×S×S or B×K×S×S, got {tuple(masks.shape)}")
        valid = batch.get("mask_valid")
        if valid is None:
            valid = torch.ones(masks.shape[:2], dtype=torch.bool, device=masks.device)
        return masks.bool(), valid.bool().to(masks.device)

    def run(self, batch: Mapping[str, Any], features: torch.Tensor | None = None,
            num_targets: torch.Tensor | None = None) -> PixelLMOutput:
        """Teacher-forced pass. ``num_targets`` B (default from the batch's masks) groups are inserted."""
        llm, lm = self.llm, self.llm.language_model
        images, sizes = batch["images"], batch.get("image_sizes")
        if features is None:
            features = self.frozen_image_features(images, sizes)
        sources = self.split_features(features)
        if num_targets is None:
            num_targets = self.targets_of(batch)[1].sum(1)
        num_targets = num_targets.to(images.device).long()
        k_max = max(int(num_targets.max()), 1)
        # LM: [f_l ; question] → answer with one codebook group per target
        visual = llm.prompt_tokens(sources[0], None, sizes)                                 # B×Nq×D
        embeds, enc_mask = llm.encoder_inputs(visual, batch["prompt_ids"], batch.get("prompt_mask"))
        group = self.codebook.group_ids(images.device)
        ids, tmask = insert_groups(batch["target_ids"], batch["target_mask"], num_targets, group,
                                   lm.eos_token_id, lm.pad_token_id)
        enc = lm.encode(embeds, enc_mask)
        dec_in = self.codebook.embed(lm.shift_right(ids), lm.t5.get_input_embeddings())
        hidden = lm.t5.decoder(inputs_embeds=dec_in, encoder_hidden_states=enc,
                               encoder_attention_mask=enc_mask).last_hidden_state            # B×T×D
        logits = self.codebook.logits(hidden, lm.logits(hidden))                             # B×T×(V+LN)
        # states that emit the codebook tokens, per target: R×L×N×D (R = Σ num_targets, row-major)
        cb = self.codebook.is_codebook(ids) & tmask
        cfg = self.config
        states = hidden[cb].reshape(-1, cfg.num_scales, cfg.tokens_per_scale, hidden.shape[-1])
        image_of_row = torch.repeat_interleave(torch.arange(len(num_targets), device=images.device), num_targets)
        h = self.fusion(states)                                                              # R×L×d
        grids = [proj(src) for proj, src in zip(self.projections, sources)]
        if cfg.decoder == "sam":                                   # SAM's embedding + zero-initialised residual
            grids[0] = grids[0] + sources[0][:, :self.llm.image_encoder.sam_dim]
        prompts = None
        if cfg.box_prompt:                                         # hybrid: state → trace-head box → SAM box tokens
            from ..referring import clip_boxes_per_image

            grid_rows = sources[0][image_of_row]
            box = llm.trace_head(states[:, :1, 0], llm.frame_hw, grid_rows)[:, 0].detach()    # R×4 pixels
            box = clip_boxes_per_image(box, sizes[image_of_row] if sizes is not None else None, self.image_size)
            prompts, _ = llm.prompt_encoder.sam_prompt_encoder(points=None, boxes=box, masks=None)  # R×2×d
        dec = self.decoder(h, [g[image_of_row] for g in grids], prompts) if prompts is not None else \
            self.decoder(h, [g[image_of_row] for g in grids])
        # back to B×K slots, logits on the S×S frame
        rows = torch.arange(k_max, device=images.device)[None, :] < num_targets[:, None]     # B×K
        s = self.image_size
        full = F.interpolate(dec.masks.unsqueeze(1), size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        masks = full.new_zeros(len(num_targets), k_max, s, s)
        masks[rows] = full
        return PixelLMOutput(masks, logits, ids, tmask, dec, rows)

    def forward(self, batch: Mapping[str, Any], features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of a batch with ``masks``: ``loss`` and its weighted terms ``ce``, ``bce``, ``dice``, ``refine``."""
        from ..mask_head import padding_valid_mask

        gt, slots = self.targets_of(batch)
        out = self.run(batch, features, slots.sum(1))
        k = out.masks.shape[1]
        gt, slots = gt[:, :k], slots[:, :k]
        valid = padding_valid_mask(batch["image_sizes"].to(gt.device), tuple(gt.shape[-2:]))
        cfg = self.config
        terms = pixellm_loss(out.text_logits, out.target_ids, out.target_mask, out.masks, gt.float(), out.rows,
                             valid, cfg.ce_weight, cfg.bce_weight, cfg.dice_weight, cfg.refine_weight)
        if cfg.attn_weight > 0:
            terms["attn"] = cfg.attn_weight * attention_target_loss(out.decoder.attention[0], gt[out.rows].float())
            terms["loss"] = terms["loss"] + terms["attn"]
        return {k_: (v if k_ == "loss" else v.detach()) for k_, v in terms.items()}

    @torch.no_grad()
    def predict(self, batch: Mapping[str, Any], features: torch.Tensor | None = None,
                num_targets: torch.Tensor | None = None) -> PixelLMOutput:
        """Inference at the reference answer: masks B×K×S×S logits (see :class:`PixelLMOutput`)."""
        with eval_mode(self):
            return self.run(batch, features, num_targets)


def build_pixellm(pixelllm: nn.Module, preset: str | PixelLMConfig = "tiny", device: str | torch.device | None = None,
                  **overrides: Any) -> PixelLM:
    """PixelLM around a built PixelLLM (``build_pixelllm(...)`` or a loaded stage), from a preset of
    :data:`PIXELLM_PRESETS` with ``overrides`` (PixelLMConfig fields). ``device="meta"`` builds shapes only
    (the paper-shaped variant: ``build_pixellm(build_pixelllm("paper"), "paper", device="meta")``)."""
    from pixelllm.utils import preset_config

    cfg = preset_config(preset, PIXELLM_PRESETS, overrides, "build_pixellm")
    meta = device is not None and torch.device(device).type == "meta"
    with (torch.device("meta") if meta else contextlib.nullcontext()):
        model = PixelLM(pixelllm, cfg)
    if device is not None and not meta:
        model = model.to(device)
    return model


__all__ = ["PIXELLM_PRESETS", "PixelLM", "PixelLMConfig", "PixelLMOutput", "build_pixellm", "sam_block_features"]
