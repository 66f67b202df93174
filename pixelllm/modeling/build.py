"""``build_pixelllm``: the one registry of PixelLLM presets (segment-anything ``sam_model_registry`` style).

    model = build_pixelllm("tiny", sam_checkpoint=RUN / "sam_tiny/sam_tiny.pth", t5=RUN / "t5_tiny")
    model = build_pixelllm("paper", device="meta")          # SAM ViT-H + EVA02-L @384 + Flan-T5-XL, no memory

Presets (all numbers in :data:`PRESETS`):

* ``tiny``  — 128 px synthetic world on 2 CPU cores: our tiny SAM (``build_sam("tiny")``), a 4-layer
  EVA02-style ViT (dim 192, patch 16), extractor depth 2 / 32 tokens, T5 d_model 128 with 2+2 layers
  (PAPER_NOTES.md §8: fastest and learned no worse; :func:`tiny_t5_config`), LoRA r 16.
* ``small`` — one consumer GPU: 256 px, SAM ViT-B encoder, EVA02-S (timm), T5-small-sized LM (v1.1 widths).
* ``paper`` — SAM ViT-H + EVA02-L (timm ``eva02_large_patch14_clip_224`` at 384 px) + a Flan-T5-XL
  config, LoRA r 32 on q, v. Without checkpoints it builds on the **meta** device (shapes only).

Nothing is downloaded: weights come only from the paths given (``sam_checkpoint``, ``t5`` folder,
``semantic_checkpoint``); otherwise modules are randomly initialised.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .image_encoder import ImageEncoder
from .language_model import LanguageModel
from .pixelllm import CONFIG_NAME, FROZEN_SAM_NAME, LORA_DIR, T5_DIR, WEIGHTS_NAME, PixelLLM
from .prompt_encoder import BoxPromptEncoder
from .prompt_extractor import PromptFeatureExtractor
from .sam import build_sam
from .trace_head import PointerHead, SpatialTraceHead, TraceHead

if TYPE_CHECKING:
    from transformers import T5Config


@dataclass
class PixelLLMConfig:
    """Every number needed to build a PixelLLM; saved as ``config.json`` by ``save_pretrained``."""

    name: str = "tiny"
    image_size: int = 128                      # S: square input side, pixels (longest side resized to S)
    # --- image encoder V -------------------------------------------------------------------------------
    encoder_mode: str = "both"                 # "both" | "sam_only" | "semantic_only" (ablations)
    sam: str = "tiny"                          # pixelllm.modeling.sam.build_sam preset
    sam_checkpoint: str | None = None          # SAM-format state_dict (.pth), loaded weights_only
    semantic_timm: str | None = None           # timm model name (EVA02 family); None = our small Eva below
    semantic_checkpoint: str | None = None     # state_dict for the semantic ViT (.safetensors or .pth)
    semantic_embed_dim: int = 192
    semantic_depth: int = 4
    semantic_num_heads: int = 3
    semantic_patch_size: int = 16
    out_size: int | None = None                # output grid side; None = the larger encoder grid
    semantic_trainable: bool = True            # paper: EVA02 trains; False freezes it, so the whole grid of
                                               # V(I) is frozen and the Trainer caches it per image
    # --- prompt feature extractor E ---------------------------------------------------------------------
    extractor_dim: int = 128
    extractor_depth: int = 2                   # paper 2, release 6
    extractor_heads: int = 4
    extractor_mlp_dim: int = 512
    num_queries: int = 32                      # paper 32 learnable tokens
    roi_tokens: int = 0                        # k: + k×k ROIAlign tokens of the box (0 = paper's plain E)
    box_key_embedding: bool = False            # learned in-box embedding added to E's keys
    keep_prompt_outputs: bool = False          # E also outputs its 2 box-corner query outputs
    sam_key_pe: bool = False                   # E's keys use the box prompt encoder's positional encoding
    # --- language model L ---------------------------------------------------------------------------------
    t5: str | None = None                      # T5ForConditionalGeneration.from_pretrained(dir or name)
    t5_config: dict[str, Any] = field(default_factory=dict)  # random init: T5Config kwargs over tiny_t5_config's
                                                             # (with vocab_size: the complete T5Config)
    vocab_size: int = 300                      # random-init vocab when no tokenizer is given
    lm_mode: str = "lora"                      # "frozen" | "lora" | "full"
    lora_rank: int = 16                        # paper 32
    lora_scale: float = 1.0                    # alpha / rank; release 2
    lora_targets: str = "paper"                # "paper" (self-attn q, v) | "release" (+ cross-attn) | regex
    lora_dropout: float = 0.0
    # --- trace head -----------------------------------------------------------------------------------------
    head: str = "mlp"                          # "mlp" (paper) | "pointer" (tiny preset) | "spatial" (ablation)
    head_parametrization: str = "corners"      # "corners" (paper) | "center_size" (box at EOS)
    head_layers: int = 4
    head_hidden_dim: int | None = None
    spatial_attn_dim: int = 128                # query/key width of the "spatial" and "pointer" heads
    pointer_stem: int = 0                      # channels of a stride-8 conv stem giving the pointer head a grid
                                               # of 8-px cells (0 = none; not in the paper)
    pointer_context: int = 0                   # causal self-attention layers over the decoder states in the
                                               # pointer head before its query (0 = none; not in the paper)
    point_state: str = "emit"                  # which decoder state gives word i's point: "emit" (paper: the state
                                               # that predicts w_i) | "read" (the next one, which has read w_i)
    caption_prompt: str = "A long image caption:"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "PixelLLMConfig":
        """Build from a dict (e.g. config.json); unknown fields raise ``ValueError`` naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown PixelLLMConfig field(s) {unknown}")
        return cls(**d)


#: How every randomly initialised T5 here is built besides its widths: T5 v1.1 / Flan-T5 conventions
#: (gated-GELU feed-forward, relative position buckets), no dropout, T5 ids pad 0 (also the decoder start)
#: and eos 1.
T5_CONVENTIONS: dict[str, Any] = dict(
    feed_forward_proj="gated-gelu", dropout_rate=0.0, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

PRESETS: dict[str, PixelLLMConfig] = {
    # the tiny T5: d_model 128, 2 encoder + 2 decoder layers, 4 heads of 32, d_ff 512 (PAPER_NOTES.md §8:
    # d128 with 2+2 layers learned as well as d192 with 3+3 and was 1.7× faster)
    "tiny": PixelLLMConfig(
        t5_config=dict(d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4)),
    "small": PixelLLMConfig(
        name="small", image_size=256, sam="vit_b", semantic_timm="eva02_small_patch14_224",
        semantic_embed_dim=384, semantic_depth=12, semantic_num_heads=6, semantic_patch_size=14,
        extractor_dim=256, extractor_depth=2, extractor_heads=8, extractor_mlp_dim=1024,
        # T5 v1.1-small widths (d_model 512, d_kv 64, d_ff 1024, 8+8 layers, 6 heads)
        t5_config=dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
        lora_rank=16),
    "paper": PixelLLMConfig(
        name="paper", image_size=384, sam="vit_h", semantic_timm="eva02_large_patch14_clip_224",
        semantic_embed_dim=1024, semantic_depth=24, semantic_num_heads=16, semantic_patch_size=14,
        extractor_dim=256, extractor_depth=2, extractor_heads=8, extractor_mlp_dim=2048,
        # google/flan-t5-xl config.json (v1.1 architecture, untied output embedding)
        t5_config=dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                       num_heads=32, feed_forward_proj="gated-gelu", dropout_rate=0.1, tie_word_embeddings=False,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
        lora_rank=32),
}


def tiny_t5_config(vocab_size: int, **overrides: Any) -> "T5Config":
    """The ``T5Config`` of the tiny preset's language model: :data:`T5_CONVENTIONS` + the widths of
    ``PRESETS["tiny"].t5_config`` + ``vocab_size``; ``overrides`` replace any ``T5Config`` field (e.g.
    ``d_model=192, num_layers=3``: the other from-scratch presets give their widths this way)."""
    from transformers import T5Config

    return T5Config(**{**T5_CONVENTIONS, **PRESETS["tiny"].t5_config, "vocab_size": vocab_size, **overrides})


def build_semantic_encoder(cfg: PixelLLMConfig) -> torch.nn.Module:
    """The trainable semantic ViT: timm ``create_model(cfg.semantic_timm, img_size=S)`` (EVA02 family, no
    download) or a small timm ``Eva`` with EVA02's block design (SwiGLU MLP, 2-D RoPE); the weights of
    ``cfg.semantic_checkpoint`` (safetensors or torch state_dict) when set, else random.

    ``global_pool="token"`` puts the final LayerNorm on every token in ``forward_features`` (with "avg"
    timm moves it into an ``fc_norm`` after pooling, which we never run: unused parameters)."""
    import timm
    from timm.models.eva import Eva

    if cfg.semantic_timm:
        model = timm.create_model(cfg.semantic_timm, pretrained=False, img_size=cfg.image_size, num_classes=0,
                                  global_pool="token")
    else:
        grid = cfg.image_size // cfg.semantic_patch_size
        model = Eva(img_size=cfg.image_size, patch_size=cfg.semantic_patch_size, embed_dim=cfg.semantic_embed_dim,
                    depth=cfg.semantic_depth, num_heads=cfg.semantic_num_heads, mlp_ratio=4 * 2 / 3,
                    swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(grid, grid), num_classes=0,
                    global_pool="token")
    if cfg.semantic_checkpoint:
        path = Path(cfg.semantic_checkpoint)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{path}: state_dict does not match the semantic encoder: {e}") from e
    return model


def _untie_output_embedding(t5: Any) -> None:
    """transformers 5 always ties ``lm_head`` to ``shared`` when building from a config, even with
    ``tie_word_embeddings=False`` (it only switches off the d_model^-0.5 output scaling). Flan-T5 has a
    separate ``lm_head`` (``from_pretrained`` unties it because the checkpoint holds both); mirror that so
    the architecture and parameter count match the real model."""
    if t5.lm_head.weight is t5.shared.weight:
        t5.lm_head.weight = torch.nn.Parameter(t5.shared.weight.detach().clone())
        getattr(t5, "all_tied_weights_keys", {}).pop("lm_head.weight", None)


def _build_t5(cfg: PixelLLMConfig, t5: Any, tokenizer: Any, meta: bool) -> Any:
    """A ``T5ForConditionalGeneration`` from a model, a path/hub name (``from_pretrained``, local files
    only), a ``T5Config``, or ``cfg.t5_config`` (random init)."""
    from transformers import T5Config, T5ForConditionalGeneration

    if isinstance(t5, T5ForConditionalGeneration):
        return t5
    if isinstance(t5, T5Config):
        return T5ForConditionalGeneration(t5)
    if t5 is not None:  # a folder or a hub name already in the local cache
        if meta:
            return T5ForConditionalGeneration(T5Config.from_pretrained(str(t5), local_files_only=True))
        return T5ForConditionalGeneration.from_pretrained(str(t5), local_files_only=True)
    kw = dict(cfg.t5_config)
    if cfg.name == "paper" or "vocab_size" in kw:
        config = T5Config(**kw)
    else:
        vocab = len(tokenizer) if tokenizer is not None else cfg.vocab_size
        config = tiny_t5_config(vocab, **kw)
    model = T5ForConditionalGeneration(config)
    if kw.get("tie_word_embeddings") is False:
        _untie_output_embedding(model)
    return model


def build_pixelllm(name: str | PixelLLMConfig = "tiny", sam_checkpoint: str | Path | None = None,
                   t5: Any = None, tokenizer: Any = None, device: str | torch.device | None = None,
                   **overrides: Any) -> PixelLLM:
    """Build a PixelLLM preset.

    Args:
        name: "tiny" | "small" | "paper", or a :class:`PixelLLMConfig`.
        sam_checkpoint: SAM-format state_dict for the frozen SAM (e.g. ``runs/full/sam_tiny/sam_tiny.pth``,
            ``sam_vit_h_4b8939.pth`` at matching image size); None = random init.
        t5: folder / hub name for ``T5ForConditionalGeneration.from_pretrained`` (local files only), a
            ``T5Config`` or a model; None = random init from the preset's ``t5_config``.
        tokenizer: sets the vocabulary size of a random-init T5 (``len(tokenizer)``).
        device: where to put the model; "meta" builds shapes only. The paper preset defaults to "meta"
            when neither checkpoint is given (3.8 B parameters).
        overrides: replace :class:`PixelLLMConfig` fields, e.g. ``lora_rank=8, head="spatial"``.
    """
    from pixelllm.utils import preset_config

    cfg = preset_config(name, PRESETS, overrides, "build_pixelllm")
    if sam_checkpoint is not None:
        cfg.sam_checkpoint = str(sam_checkpoint)
    if cfg.semantic_checkpoint is not None:
        cfg.semantic_checkpoint = str(cfg.semantic_checkpoint)   # config.json holds strings
    if isinstance(t5, (str, Path)):
        cfg.t5 = str(t5)
    elif t5 is None and cfg.t5 is not None:
        t5 = cfg.t5
    if device is None and cfg.name == "paper" and cfg.sam_checkpoint is None and t5 is None:
        device = "meta"
    meta = device is not None and torch.device(device).type == "meta"
    if meta and cfg.sam_checkpoint is not None:
        raise ValueError("build_pixelllm: cannot load a SAM checkpoint on the meta device")

    ctx = torch.device("meta") if meta else contextlib.nullcontext()
    with ctx:
        sam = build_sam(cfg.sam, checkpoint=cfg.sam_checkpoint, image_size=cfg.image_size)
        semantic = build_semantic_encoder(cfg) if cfg.encoder_mode != "sam_only" else None
        image_encoder = ImageEncoder(sam.image_encoder if cfg.encoder_mode != "semantic_only" else None,
                                     semantic, out_size=cfg.out_size, mode=cfg.encoder_mode,
                                     image_size=cfg.image_size)
        if semantic is not None and not cfg.semantic_trainable:
            semantic.requires_grad_(False)
        prompt_encoder = BoxPromptEncoder(sam.prompt_encoder)
        language_model = LanguageModel(_build_t5(cfg, t5, tokenizer, meta), mode=cfg.lm_mode,
                                       lora_rank=cfg.lora_rank, lora_scale=cfg.lora_scale,
                                       lora_targets=cfg.lora_targets, lora_dropout=cfg.lora_dropout)
        d_model = language_model.d_model
        extractor = PromptFeatureExtractor(image_encoder.out_channels, prompt_encoder.embed_dim, d_model,
                                           dim=cfg.extractor_dim, depth=cfg.extractor_depth,
                                           num_heads=cfg.extractor_heads, mlp_dim=cfg.extractor_mlp_dim,
                                           num_queries=cfg.num_queries, roi_tokens=cfg.roi_tokens,
                                           box_key_embedding=cfg.box_key_embedding,
                                           keep_prompt_outputs=cfg.keep_prompt_outputs,
                                           sam_key_pe=cfg.sam_key_pe)
        if cfg.head == "mlp":
            head = TraceHead(d_model, cfg.head_hidden_dim, cfg.head_layers, cfg.head_parametrization)
        elif cfg.head == "spatial":
            head = SpatialTraceHead(d_model, image_encoder.out_channels, cfg.spatial_attn_dim)
        elif cfg.head == "pointer":
            head = PointerHead(d_model, image_encoder.out_channels, cfg.spatial_attn_dim,
                               stem_channels=cfg.pointer_stem, context_layers=cfg.pointer_context)
        else:
            raise ValueError(f"build_pixelllm: head must be 'mlp', 'pointer' or 'spatial', got {cfg.head!r}")
        model = PixelLLM(image_encoder, prompt_encoder, extractor, language_model, head, config=cfg)
    if device is not None and not meta:
        model.to(device)
    return model


def load_pretrained(directory: str | Path, device: str | torch.device | None = None, tokenizer: Any = None) -> PixelLLM:
    """Inverse of :meth:`PixelLLM.save_pretrained`: rebuild from ``config.json`` (:func:`build_pixelllm`) and load
    every saved part (trainable safetensors, the LoRA adapter, frozen bases saved without a path)."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"load_pretrained: {cfg_path} not found")
    cfg = PixelLLMConfig.from_dict(json.loads(cfg_path.read_text()), source=str(cfg_path))
    t5_src = str(d / T5_DIR) if (d / T5_DIR).is_dir() else cfg.t5
    # the semantic encoder's weights are in model.safetensors: its pretraining checkpoint is not needed
    model = build_pixelllm(dataclasses.replace(cfg, semantic_checkpoint=None), t5=t5_src, tokenizer=tokenizer)
    model.config.t5 = cfg.t5  # keep the original references, not the folder we loaded from
    model.config.semantic_checkpoint = cfg.semantic_checkpoint
    state = load_file(str(d / WEIGHTS_NAME))
    if (d / FROZEN_SAM_NAME).is_file():
        state.update(load_file(str(d / FROZEN_SAM_NAME)))
    missing_here = [k for k in state if k not in model.state_dict()]
    if missing_here:
        raise ValueError(f"{d / WEIGHTS_NAME}: keys not in the model built from {cfg_path}: {missing_here[:5]}")
    model.load_state_dict(state, strict=False)
    if model.language_model.mode == "lora":
        from peft.utils import set_peft_model_state_dict

        adapter = d / LORA_DIR / "adapter_model.safetensors"
        if not adapter.is_file():
            raise FileNotFoundError(f"load_pretrained: LoRA adapter {adapter} not found")
        result = set_peft_model_state_dict(model.language_model.model, load_file(str(adapter)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{adapter}: unexpected adapter keys {unexpected[:5]}")
    if device is not None:
        model.to(device)
    return model


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters; works on meta tensors."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_report(model: PixelLLM) -> dict[str, dict[str, int]]:
    """Per-component {total, trainable} parameter counts (SAM encoder, semantic encoder, prompt encoder,
    extractor, T5 base, LoRA, head) and the overall trainable fraction."""
    lm = model.language_model
    lora = sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n)
    parts = {
        "sam_image_encoder": model.image_encoder.sam_encoder,
        "semantic_encoder": model.image_encoder.semantic_encoder,
        "prompt_encoder": model.prompt_encoder,
        "prompt_extractor": model.prompt_extractor,
        "trace_head": model.trace_head,
    }
    report = {k: {"total": count_parameters(m) if m is not None else 0,
                  "trainable": count_parameters(m, True) if m is not None else 0} for k, m in parts.items()}
    lm_total = count_parameters(lm)
    report["t5_base"] = {"total": lm_total - lora, "trainable": count_parameters(lm, True) - (lora if lm.mode == "lora" else 0)}
    report["lora"] = {"total": lora, "trainable": lora if lm.mode == "lora" else 0}
    total = count_parameters(model)
    trainable = count_parameters(model, True)
    report["all"] = {"total": total, "trainable": trainable}
    return report
