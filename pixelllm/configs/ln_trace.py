"""Stage 2 — Localized-Narratives captioning + per-word trace localization, trained jointly.

Initialised from stage 1 (``<run>/checkpoints/pretrain``). Loss = label-smoothed CE + λ·L1 on the two
per-token points (λ = 0.1, pixels of the resized input). Prompt "A long image caption:" as the official
trace config; like the release, short COCO-style captions can be mixed in (captions : LN = 1 : 2) —
set ``tasks={'trace': 1.0}`` for the paper's LN-only stage.

Maximum target length 128 (EOS included), the release's ``max_text_tokens`` of the trace configs
(``configs/t5/pixel_llm_t5_trace.py``). With the official alignment (``ln_alignment="official"``) a
narrative longer than the limit has all its utterances spread over the kept tokens, so a short limit
misplaces targets rather than dropping them. On the synthetic LN train split (1,600 captions, this
repo's tokenizer) captions have 9–87 tokens (median 42, 95th percentile 72): a limit of 64 would cut
14.4 % of them and move 78 % of their kept tokens to another utterance (1.9 utterances, 0.094 box-corner
L1 on average); 128 cuts none, at ~21 % more padded target tokens per batch (PAPER_NOTES.md §2.7).
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
        max_target_len=128,     # the release's max_text_tokens; no synthetic narrative is cut (module docstring)
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
