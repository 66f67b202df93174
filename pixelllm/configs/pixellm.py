"""PixelLM beside PixelLLM (notebook 09, PAPER_NOTES.md §10): the stage ``pixellm``.

A :class:`~pixelllm.modeling.pixellm.PixelLM` is built around the stage-2 PixelLLM (``init_from="ln_trace"``:
the same image encoder, extractor and T5 + LoRA as every other task) and trained by the engine's
``Trainer`` on referring segmentation (RefCOCO train masks, one target per answer: "<expression>
[codebook group]") mixed with the multi-target questions of the synthetic MUSE split (one group per
target). The image encoder and the T5 base stay frozen; the codebook, fusion φ, projections p_{V→D}, the
pixel decoder, the extractor and LoRA train (the release trains all but the image encoder and the LLM
base). Fixed step count and seed.

``get_config(smoke)`` — the recipe of record; the ablations of notebook 09 are overrides::

    get_config(overrides=["pixellm_overrides={'tokens_per_scale': 1}"])                 # N = 1
    get_config(overrides=["pixellm_overrides={'num_scales': 1, 'scale_layers': ()}"])   # one scale
    get_config(overrides=["pixellm_overrides={'refine_weight': 0.0}"])                  # no refinement
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pixelllm.configs.refcoco import REFER_PROMPT, ReferringConfig

MUSE_FILE = "muse/synthetic_{split}_muse.json"


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
        max_target_len=24,
        batch_size=8,
        steps=150,
        lr=1e-3,
        warmup_steps=15,
        weight_decay=0.0,
        grad_clip=1.0,
        label_smoothing=0.0,
        log_interval=20,
        ckpt_interval=150,
        keep_last=1,
        eval_samples=32,
        seed=0,
    )
    if smoke:
        cfg = cfg.smoke_variant(steps=2, max_samples=8, muse_samples=8, ckpt_interval=2, eval_samples=4)
    return cfg
