"""Downstream tasks 1–2 — referring localization (stage ``refcoco``) and referring segmentation
(stage ``refseg``) on the synthetic RefCOCO (PAPER_NOTES.md §3). The numbers are the ones notebook 05 and
``python -m pixelllm.train --config refcoco|refseg`` run.

``get_config(smoke)`` — referring localization: whole-image prompt box, text prompt "where is <expr>",
target = the expression + EOS; the decoder state that emits EOS regresses the box (its two points =
the corners). The tiny preset reads that state with the pointer head of stage 2 (box centre = soft-argmax
over the patch grid + a sub-cell offset, size = a small MLP; the semantic ViT frozen and the grid cached,
as in stage 2) and the box gets L1 (λ = 0.1, pixels) + GIoU: two raw corners collapsed to zero-area boxes
at CPU scale while centre + size with L1 + GIoU trained well (PAPER_NOTES.md §8, §9). As in stage 2 the box
is read from the state that has read EOS (``point_state="read"``); stage 2's context layer is left out (its
weights are not loaded): with it the referring box collapsed in the lab (row ``sem_long_lr5_context``,
P@0.5 0.20 against 0.53 without it). The paper's MLP
head, read as centre + size or as the paper's raw ``corners``, is one override away::

    get_config(overrides=["model_overrides={'head': 'mlp', 'head_parametrization': 'center_size'}"])
    get_config(overrides=["model_overrides={'head': 'mlp', 'head_parametrization': 'corners'}", "giou_weight=0.0"])

Initialised from the LN trace stage (``<run>/checkpoints/ln_trace``) when it exists, else from the
pretrained parts only (:func:`pixelllm.engine.builder.build_model` decides and says so).

``get_refseg_config(smoke)`` — referring segmentation: the fine-tuned referring model named by
``init_from`` (stage name or checkpoint path) is frozen; its predicted box goes through the frozen SAM
prompt encoder + mask decoder with the gated mask adapter, the only trainable part (loss focal×20 + dice +
IoU regression). The adapter's sizes and the loss weights are fields of :class:`RefSegConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pixelllm.configs.base import TrainConfig

REFER_PROMPT = "where is {expr}"


@dataclass
class ReferringConfig(TrainConfig):
    """:class:`TrainConfig` + the size of the end-of-training validation."""

    eval_samples: int = field(default=64, metadata={"help": "val expressions scored by the eval hook (0 = none)"})


@dataclass
class RefSegConfig(ReferringConfig):
    """:class:`ReferringConfig` + the gated mask adapter and its loss (PAPER_NOTES.md §3)."""

    adapter_depth: int = field(default=2, metadata={"help": "two-way transformer blocks of the mask adapter (release 2)"})
    adapter_num_heads: int = field(default=4, metadata={"help": "attention heads of the mask adapter"})
    adapter_mlp_dim: int = field(default=256, metadata={"help": "MLP width of the mask adapter's blocks"})
    multimask_output: bool = field(default=True, metadata={"help": "SAM's 3 candidate masks, best predicted IoU kept (False: the single-mask token)"})
    focal_weight: float = field(default=20.0, metadata={"help": "weight of the focal term (release 20)"})
    dice_weight: float = field(default=1.0, metadata={"help": "weight of the dice term"})
    iou_weight: float = field(default=1.0, metadata={"help": "weight of the IoU-prediction MSE"})


def get_config(smoke: bool = False) -> ReferringConfig:
    """Referring localization fine-tuning (stage ``refcoco``)."""
    cfg = ReferringConfig(
        stage="refcoco",
        preset="tiny",
        smoke=smoke,
        init_from="ln_trace",                                   # falls back to the pretrained parts
        model_overrides={"head": "pointer", "semantic_trainable": False,   # tiny-preset recipe (docstring)
                         "point_state": "read"},                # no context layer: stage 2's is left out
        tasks={"refer": 1.0},
        prompts={"refer": REFER_PROMPT},
        image_size=0,
        max_target_len=16,
        batch_size=32,
        steps=1600,                                             # lab: 200 -> 600 steps took val P@0.5 0.47 -> 0.68
        lr=1e-3,
        lr_multipliers={"trace_head.": 5.0},                    # the head at 5x, as in stage 2
        warmup_steps=80,
        weight_decay=0.0,
        grad_clip=1.0,
        lambda_point=0.1,                                       # paper λ, L1 in pixels of the input
        label_smoothing=0.1,
        giou_weight=1.0,
        log_interval=20,
        eval_interval=0,
        ckpt_interval=400,
        keep_last=1,
        eval_samples=64,
    )
    if smoke:
        cfg = cfg.smoke_variant(ckpt_interval=3, eval_samples=8)
    return cfg


def get_refseg_config(smoke: bool = False) -> RefSegConfig:
    """Mask-adapter training for referring segmentation (stage ``refseg``)."""
    cfg = RefSegConfig(
        stage="refseg",
        preset="tiny",
        smoke=smoke,
        init_from="refcoco",                                    # the referring model (frozen here)
        tasks={"refer": 1.0},
        prompts={"refer": REFER_PROMPT},
        max_target_len=16,
        batch_size=16,
        steps=200,
        lr=1e-3,
        warmup_steps=20,
        weight_decay=0.0,
        grad_clip=1.0,
        log_interval=20,
        ckpt_interval=100,
        keep_last=1,
        eval_samples=32,
        adapter_depth=2,
        adapter_num_heads=4,
        adapter_mlp_dim=256,
        focal_weight=20.0,
    )
    if smoke:
        cfg = cfg.smoke_variant(steps=2, max_samples=8, ckpt_interval=2, eval_samples=8)
    return cfg
