"""Downstream tasks 1–2 — referring localization (stage ``refcoco``) and referring segmentation
(stage ``refseg``) on the synthetic RefCOCO (PAPER_NOTES.md §3).

``get_config(smoke)`` — referring localization: whole-image prompt box, text prompt "where is <expr>",
target = the expression + EOS; the decoder state that emits EOS regresses the box (its two points =
the corners). The trace head reads that state with the ``center_size`` parametrisation and the box gets
L1 (λ = 0.1, pixels) + GIoU: two raw corners collapsed to zero-area boxes at CPU scale while centre + size
with L1 + GIoU trained well (PAPER_NOTES.md §8). The paper's ``corners`` head is one override away::

    get_config(overrides=["model_overrides={'head_parametrization': 'corners'}", "giou_weight=0.0"])

Initialised from the LN trace stage (``<run>/checkpoints/ln_trace``) when it exists, else from the
pretrained parts only (:func:`pixelllm.tasks.referring.finetune_referring` decides).

``get_refseg_config(smoke)`` — referring segmentation: the fine-tuned referring model is frozen; its
predicted box goes through the frozen SAM prompt encoder + mask decoder with the gated mask adapter,
the only trainable part (loss focal×20 + dice + IoU regression). For this stage ``model_overrides``
holds the adapter's sizes (``adapter_depth``, ``adapter_num_heads``, ``adapter_mlp_dim``) and
``init_from`` names the referring checkpoint (stage name or path).
"""
from __future__ import annotations

from pixelllm.configs.base import TrainConfig

REFER_PROMPT = "where is {expr}"


def get_config(smoke: bool = False) -> TrainConfig:
    """Referring localization fine-tuning (stage ``refcoco``)."""
    cfg = TrainConfig(
        stage="refcoco",
        preset="tiny",
        smoke=smoke,
        init_from="ln_trace",                                   # falls back to the pretrained parts
        model_overrides={"head_parametrization": "center_size"},
        tasks={"refer": 1.0},
        prompts={"refer": REFER_PROMPT},
        image_size=0,
        max_target_len=16,
        batch_size=32,
        steps=500,
        lr=1e-3,
        warmup_steps=50,
        weight_decay=0.0,
        grad_clip=1.0,
        lambda_point=0.1,                                       # paper λ, L1 in pixels of the input
        label_smoothing=0.1,
        giou_weight=1.0,
        log_interval=20,
        eval_interval=0,
        ckpt_interval=250,
        keep_last=1,
    )
    if smoke:
        cfg = cfg.smoke_variant(ckpt_interval=3)
    return cfg


def get_refseg_config(smoke: bool = False) -> TrainConfig:
    """Mask-adapter training for referring segmentation (stage ``refseg``)."""
    cfg = TrainConfig(
        stage="refseg",
        preset="tiny",
        smoke=smoke,
        init_from="refcoco",                                    # the referring model (frozen here)
        model_overrides={"adapter_depth": 2, "adapter_num_heads": 4, "adapter_mlp_dim": 256},
        tasks={"refer": 1.0},
        prompts={"refer": REFER_PROMPT},
        max_target_len=16,
        batch_size=16,
        steps=250,
        lr=1e-3,
        warmup_steps=20,
        weight_decay=0.0,
        grad_clip=1.0,
        log_interval=20,
        ckpt_interval=250,
        keep_last=1,
    )
    if smoke:
        cfg = cfg.smoke_variant(steps=2, max_samples=8, ckpt_interval=2)
    return cfg
