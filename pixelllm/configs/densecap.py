"""Downstream task 4 — dense object captioning (PAPER_NOTES.md §3).

A Simple Feature Pyramid + CenterNet head on PixelLLM's image features proposes boxes; proposals matched
to ground truth at IoU ≥ 0.6 become prompt boxes for location-conditioned captioning; detection loss and
caption loss are trained end to end. Initialised from the location-conditioned captioning stage
(``<run>/checkpoints/loc_caption``, loaded over the LN trace stage), else the LN trace stage, else the
pretrained parts only; the proposer starts from scratch. Metric: DenseCap mAP / mAP_detection on the VG test split.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pixelllm.configs.base import TrainConfig
from pixelllm.configs.loc_caption import BOX_PROMPT_FIX


@dataclass
class DenseCapConfig(TrainConfig):
    """:class:`TrainConfig` + the proposer, the prompt matching and the inference decoding."""

    proposer_dim: int = field(default=128, metadata={"help": "Simple Feature Pyramid / CenterNet head width"})
    proposer_scale: float = field(default=2.0, metadata={"help": "pyramid scale factor (2 → stride 8 px on a p16 grid)"})
    train_image_encoder: bool = field(default=True, metadata={"help": "train the semantic ViT with both losses (end to end, paper); False freezes it"})
    det_weight: float = field(default=1.0, metadata={"help": "λ_det, weight of the CenterNet loss"})
    caption_weight: float = field(default=1.0, metadata={"help": "λ_cap, weight of the caption CE"})
    match_iou: float = field(default=0.6, metadata={"help": "proposal ↔ ground-truth IoU to become a training prompt (official 0.6)"})
    append_gt: bool = field(default=True, metadata={"help": "add ground-truth boxes to the proposals before matching (detectron2 default)"})
    max_prompts_per_image: int = field(default=4, metadata={"help": "captioned prompts per image per step (0 = all)"})
    train_topk: int = field(default=50, metadata={"help": "CenterNet peaks decoded per image during training"})
    score_thr: float = field(default=0.05, metadata={"help": "objectness threshold at inference"})
    nms_iou: float = field(default=0.5, metadata={"help": "NMS IoU of the proposals"})
    max_det: int = field(default=20, metadata={"help": "boxes per image at inference"})
    eval_limit: int = field(default=0, metadata={"help": "evaluate the first N test images (0 = all)"})
    eval_batch_size: int = field(default=8, metadata={"help": "images per inference batch"})
    max_new_tokens: int = field(default=12, metadata={"help": "generated tokens per caption"})


def get_config(smoke: bool = False) -> DenseCapConfig:
    cfg = DenseCapConfig(
        stage="densecap",
        preset="tiny",
        smoke=smoke,
        init_from="ln_trace,loc_caption",   # existing ones loaded in this order; none → pretrained parts only
        model_overrides=dict(BOX_PROMPT_FIX),   # the location-conditioned captioner's extractor
        tasks={"region_caption": 1.0},
        prompts={"region_caption": "an object of"},
        max_target_len=24,
        batch_size=8,
        steps=300,
        lr=1e-3,
        warmup_steps=30,
        weight_decay=0.0,
        grad_clip=1.0,
        label_smoothing=0.1,
        log_interval=10,
        ckpt_interval=150,
        keep_last=1,
    )
    if smoke:
        cfg = cfg.smoke_variant(batch_size=2, max_samples=8, ckpt_interval=3, proposer_dim=32, eval_limit=4,
                                max_new_tokens=6, max_det=5)
    return cfg
