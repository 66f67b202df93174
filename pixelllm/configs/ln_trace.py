"""Stage 2 — Localized-Narratives captioning + per-word trace localization, trained jointly.

Initialised from stage 1 (``<run>/checkpoints/pretrain``). Loss = label-smoothed CE + λ·L1 on the two
per-token points (λ = 0.1, pixels of the resized input). Prompt "A long image caption:" as the official
trace config; like the release, short COCO-style captions can be mixed in (captions : LN = 1 : 2) —
set ``tasks={'trace': 1.0}`` for the paper's LN-only stage.
"""
from __future__ import annotations

from pixelllm.configs.base import TrainConfig


def get_config(smoke: bool = False) -> TrainConfig:
    cfg = TrainConfig(
        stage="ln_trace",
        preset="tiny",
        smoke=smoke,
        init_from="pretrain",   # a stage name under <run>/checkpoints, or a checkpoint path
        tasks={"trace": 2.0, "caption": 1.0},
        prompts={"trace": "A long image caption:", "caption": "A short image caption:"},
        image_size=0,           # 0 = the preset's input size
        max_target_len=64,
        batch_size=32,
        steps=600,
        lr=1e-3,
        warmup_steps=60,
        weight_decay=0.0,
        grad_clip=1.0,
        lambda_point=0.1,
        label_smoothing=0.1,
        log_interval=10,
        eval_interval=150,      # teacher-forced val point_l1 four times during the run
        ckpt_interval=200,
        keep_last=2,
    )
    if smoke:
        cfg = cfg.smoke_variant(ckpt_interval=2, eval_interval=1)
    return cfg
