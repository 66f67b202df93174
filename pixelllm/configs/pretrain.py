"""Stage 1 — captioning pretraining (paper: WebLI, 10 epochs, 224 px; here: short synthetic captions).

Caption loss only (no point targets). What trains follows the paper's recipe at tiny scale: the prompt
feature extractor, the trace head, the LoRA adapters of T5 (and the trainable semantic encoder when the
preset has one); SAM stays frozen, so its features are cached per image.

Tiny-preset deviation: the semantic ViT stays frozen here too (``semantic_trainable=False``; the paper trains
EVA02 in every stage). Fine-tuned on short captions at this stage's learning rate, the tiny ViT pretrained on
per-patch colour and shape (``pixelllm/pretrain/semantic.py``) forgets the shapes: a linear probe of an
object's shape from its centre cell of the feature grid falls from 0.86 to 0.27 (chance 0.17;
``bench/feature_probe.py``, ``results/feature_probe.json``), and every later stage, which keeps it frozen,
inherited a captioner that names colours but guesses shapes (teacher-forced shape-word accuracy 0.19). Frozen
here, its features are cached per image, and stage 1 takes a quarter of the time. The paper's trainable ViT is
``model_overrides={}``. Grounding lab row ``s1_frozen_sem_context_span_read`` (``docs/GROUNDING_LAB.md``).
"""
from __future__ import annotations

from pixelllm.configs.base import TrainConfig


def get_config(smoke: bool = False) -> TrainConfig:
    cfg = TrainConfig(
        stage="pretrain",
        preset="tiny",
        smoke=smoke,
        model_overrides={"semantic_trainable": False},   # the pretrained semantic ViT keeps its shapes (docstring)
        tasks={"caption": 1.0},
        prompts={"caption": "A short image caption:"},
        image_size=0,           # 0 = the preset's input size
        max_target_len=32,
        batch_size=32,
        steps=500,
        lr=1e-3,                # 1e-3 with clipping 1.0 was stable at this scale (PAPER_NOTES.md §8)
        warmup_steps=40,
        weight_decay=0.0,
        grad_clip=1.0,
        lambda_point=0.1,
        label_smoothing=0.1,
        log_interval=10,
        eval_interval=0,
        ckpt_interval=166,
        keep_last=2,
    )
    if smoke:  # big_vision "runlocal": same code path, seconds of compute
        cfg = cfg.smoke_variant(ckpt_interval=2)
    return cfg
