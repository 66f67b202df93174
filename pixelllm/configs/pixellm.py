"""PixelLM beside PixelLLM (notebook 09, PAPER_NOTES.md §10): the stage ``pixellm``.

A :class:`~pixelllm.modeling.pixellm.PixelLM` is built around the stage-2 PixelLLM (``init_from="ln_trace"``:
the same image encoder, extractor and T5 + LoRA as every other task) and trained by the engine's
``Trainer`` on referring segmentation (RefCOCO train masks, one target per answer: "<expression>
[codebook group]") mixed with the multi-target questions of the synthetic MUSE split (one group per
target). The image encoder and the T5 base stay frozen; the codebook, fusion φ, projections p_{V→D}, the
pixel decoder, the extractor and LoRA train (the release trains all but the image encoder and the LLM
base). Fixed step count and seed.

``get_config(smoke)`` — the recipe of record (docs/lab/pixellm.md, rows 20–21): 9,600 steps at batch 8,
the LM (LoRA + extractor) at lr × 0.1, and the tiny-preset attention loss (``attn_weight`` 1: the coarsest
scale's token→image attention against the target mask, not in PixelLM's paper; without it the lightweight
decoder learns far more slowly on this world). About 33 minutes on one core of a 2-core CPU.

``ablation_config(arm, seed, smoke)`` — notebook 09's ablations (PixelLM §4.4 in spirit): the same recipe
at :data:`ABLATION_STEPS` with one change per arm (:data:`ABLATION_ARMS`), the recipe itself included as the
baseline the arms are compared with, each at :data:`ABLATION_SEEDS`::

    ablation_config("n1", seed=1)        # N = 1 token per scale, stage pixellm_abl_n1_s1
    ablation_config("1scale")            # the coarsest scale only
    ablation_config("noref")             # no target-refinement loss
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pixelllm.configs.refcoco import REFER_PROMPT, ReferringConfig

MUSE_FILE = "muse/synthetic_{split}_muse.json"

#: arm → (label, PixelLMConfig fields changed from the recipe's ``pixellm_overrides``)
ABLATION_ARMS: dict[str, tuple[str, dict]] = {
    "recipe": ("recipe (2 scales × 3 tokens, refinement on)", {}),
    "n1": ("N = 1 token per scale", {"tokens_per_scale": 1}),
    "1scale": ("one scale (coarsest only)", {"num_scales": 1, "scale_layers": []}),
    "noref": ("no target-refinement loss", {"refine_weight": 0.0}),
}
ABLATION_STEPS = 1200        # per arm: 1/8 of the recipe; at 150 steps no arm separates (docs/lab/pixellm.md)
ABLATION_SEEDS = (0, 1)


@dataclass
class PixelLMTrainConfig(ReferringConfig):
    """:class:`ReferringConfig` + the PixelLM parts and the multi-target data."""

    pixellm_preset: str = field(default="tiny", metadata={"help": "pixelllm.modeling.pixellm.PIXELLM_PRESETS name"})
    pixellm_overrides: dict = field(default_factory=dict, metadata={"help": "PixelLMConfig fields, e.g. {'tokens_per_scale': 1}"})
    muse_file: str = field(default=MUSE_FILE, metadata={"help": "MUSE-style JSON per split, relative to data_dir"})
    max_targets: int = field(default=4, metadata={"help": "targets kept per multi-target answer"})
    muse_samples: int = field(default=0, metadata={"help": "use only the first N MUSE training questions (0 = all)"})


def get_config(smoke: bool = False) -> PixelLMTrainConfig:
    """PixelLM training (stage ``pixellm``)."""
    cfg = PixelLMTrainConfig(
        stage="pixellm",
        preset="tiny",
        smoke=smoke,
        init_from="ln_trace",
        tasks={"refer": 1.0, "muse": 1.0},
        prompts={"refer": REFER_PROMPT},
        pixellm_overrides={"attn_weight": 1.0},
        max_target_len=24,
        batch_size=8,
        steps=9600,
        lr=1e-3,
        lr_multipliers={"llm.": 0.1},
        warmup_steps=60,
        weight_decay=0.0,
        grad_clip=1.0,
        label_smoothing=0.0,
        log_interval=20,
        ckpt_interval=1600,
        keep_last=1,
        eval_samples=32,
        seed=0,
    )
    if smoke:
        cfg = cfg.smoke_variant(steps=2, max_samples=8, muse_samples=8, ckpt_interval=2, eval_samples=4)
    return cfg


def ablation_stage(arm: str, seed: int = 0) -> str:
    """Stage (checkpoint folder) name of an ablation run: ``pixellm_abl_<arm>`` (``_s<seed>`` past seed 0)."""
    return f"pixellm_abl_{arm}" + (f"_s{seed}" if seed else "")


def ablation_config(arm: str, seed: int = 0, smoke: bool = False) -> PixelLMTrainConfig:
    """The recipe of record at :data:`ABLATION_STEPS` with arm ``arm``'s change (:data:`ABLATION_ARMS`)."""
    from pixelllm.configs.base import apply_overrides

    if arm not in ABLATION_ARMS:
        raise KeyError(f"unknown PixelLM ablation arm {arm!r}; the arms: {', '.join(ABLATION_ARMS)}")
    cfg = get_config(smoke)
    changes = {"stage": ablation_stage(arm, seed), "seed": seed,
               "pixellm_overrides": {**cfg.pixellm_overrides, **ABLATION_ARMS[arm][1]}}
    if not smoke:
        changes.update(steps=ABLATION_STEPS, ckpt_interval=ABLATION_STEPS)
    return apply_overrides(cfg, changes)
