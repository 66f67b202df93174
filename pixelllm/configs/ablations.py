"""The ablation arms of notebook 08 (paper Tables 4 and 5 analogues, the encoder and point-target ablations).

Every arm is a short stage-2 run on Localized Narratives, initialised from the shared stage-1 checkpoint
(``<run>/checkpoints/pretrain``), trained and evaluated **the same way**; an arm differs from the
:data:`BASELINE` in exactly the fields listed in :data:`ARMS`::

    from pixelllm.configs.ablations import get_arm_config, ARMS, TABLES
    cfg = get_arm_config("loc_box", smoke=True, seed=1)     # an AblationConfig (a TrainConfig)

Protocol (one place, :func:`get_config`):

* stage 2 = LN captions with per-word point targets (``tasks={"trace": 1}``, prompt "A long image
  caption:"), paper loss (CE, ε = 0.1, + λ = 0.1 · L1 in pixels);
* **CPU-budget deviation**: the whole image encoder (frozen SAM and the stage-1 semantic ViT) stays
  frozen in the ablation runs, so its feature grid is computed once per image and shared by all arms
  (about 4× faster steps); only the prompt extractor, the LM part of the arm (LoRA / all / nothing) and
  the trace head train. The paper keeps EVA02 trainable;
* Table 4 arms are followed by two short downstream fine-tunes of the stage-2 model: referring
  localization (P@0.5 on the refer val split) and location-conditioned captioning (METEOR / CIDEr-D on
  the VG test split).

Importing this module does no I/O and imports no torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pixelllm.configs.base import TrainConfig, apply_overrides

#: the larger LM of the Table 5 analogue: 4 + 4 layers and d_ff 1024 (≈ 2× the tiny T5's 2 + 2 layers,
#: d_ff 512), same d_model 128 so the stage-1 visual side (extractor → LM width) fits both LMs.
LARGE_T5 = {"num_layers": 4, "num_decoder_layers": 4, "d_ff": 1024}
LM_SIZES = ("tiny", "large")
LOC_SUPERVISION = ("dense", "box", "none")


@dataclass
class AblationConfig(TrainConfig):
    """:class:`TrainConfig` + what an ablation arm varies and how every arm is evaluated."""

    arm: str = field(default="baseline", metadata={"help": "arm name (key of ARMS); results go to <run>/ablations/<arm>/<seed>.json"})
    loc_supervision: str = field(default="dense", metadata={
        "help": "stage-2 point targets: dense (per-word utterance boxes, paper) | box (one box per narrative — the "
                "union of its per-word boxes = the box of its whole trace — on every word) | none (caption-only stage 2)"})
    point_target: str = field(default="box", metadata={"help": "per-word target: box (utterance box corners, release) | center (utterance centre twice)"})
    lm_size: str = field(default="tiny", metadata={"help": "tiny (the run's t5_tiny) | large (LARGE_T5, pretrained the same way into <run>/t5_large)"})
    init_lm: bool = field(default=True, metadata={"help": "load the LM weights (LoRA) of the stage-1 checkpoint; False = the LM starts from its text-only pretraining (Table 5 arms)"})
    downstream: bool = field(default=False, metadata={"help": "after stage 2: fine-tune + evaluate referring localization and location-conditioned captioning"})
    # --- evaluation (identical for every arm) ---------------------------------------------------------
    eval_samples: int = field(default=96, metadata={"help": "test narratives for the teacher-forced CE / point_l1"})
    caption_images: int = field(default=32, metadata={"help": "test images captioned free-running (LN CIDEr-D / METEOR)"})
    max_new_tokens: int = field(default=40, metadata={"help": "generated tokens per LN caption"})
    # --- downstream fine-tunes (Table 4 arms) -------------------------------------------------------------
    refer_steps: int = field(default=60, metadata={"help": "referring-localization fine-tuning steps"})
    refer_eval: int = field(default=128, metadata={"help": "refer val expressions scored (P@0.5)"})
    loccap_steps: int = field(default=60, metadata={"help": "location-conditioned captioning fine-tuning steps"})
    loccap_eval: int = field(default=64, metadata={"help": "VG test regions captioned (METEOR / CIDEr-D)"})
    downstream_batch: int = field(default=16, metadata={"help": "batch of both downstream fine-tunes (warm-up: a tenth of their steps)"})


def get_config(smoke: bool = False) -> AblationConfig:
    """The baseline arm = the tiny preset's recipe: the paper's dense per-word trace supervision, both
    encoders, tiny T5 + LoRA, utterance-box corners, read by the tiny preset's pointer head (PAPER_NOTES.md
    §9; the arm ``head_mlp`` has the paper's MLP head) from the state that predicts each word, on the paper's
    relative-position targets: the three pointing levers of stage 2 of record (context layer, span targets,
    read state) are not part of the arms, so each arm changes one of the paper's choices and nothing else. The numbers notebook 08 runs: a fixed step count per
    arm and per downstream fine-tune, sized for its 20-minute budget on a 2-core CPU (no wall-clock cap;
    ``time_limit_s`` stays the safety net, 0 = off). The larger T5 of the Table 5 arms is pretrained with the
    ``t5_tiny`` config's fixed steps (``pixelllm.pretrain.prerequisites.ensure_t5``)."""
    cfg = AblationConfig(
        stage="ablation",
        preset="tiny",
        smoke=smoke,
        init_from="pretrain",
        model_overrides={"head": "pointer"},
        tasks={"trace": 1.0},
        prompts={"trace": "A long image caption:"},
        max_target_len=64,
        batch_size=16,
        steps=80,
        lr=1e-3,
        warmup_steps=8,             # a tenth of the steps
        weight_decay=0.0,
        grad_clip=1.0,
        lambda_point=0.1,
        label_smoothing=0.1,
        log_interval=10,
        ckpt_interval=0,
        keep_last=1,
        downstream=True,
    )
    if smoke:  # same code path, seconds of compute
        cfg = cfg.smoke_variant(steps=2, eval_samples=4, caption_images=2, max_new_tokens=6,
                                refer_steps=2, refer_eval=4, loccap_steps=2, loccap_eval=3, downstream_batch=4)
    return cfg


#: arm → the fields it changes relative to :func:`get_config` (nothing else differs).
ARMS: dict[str, dict] = {
    "baseline": {},
    # Table 4 analogue: localization supervision of stage 2
    "loc_none": {"loc_supervision": "none", "downstream": True},
    "loc_box": {"loc_supervision": "box", "downstream": True},
    # encoder ablation
    "enc_sam_only": {"model_overrides": {"encoder_mode": "sam_only"}, "downstream": False},
    "enc_semantic_only": {"model_overrides": {"encoder_mode": "semantic_only"}, "downstream": False},
    # point target
    "target_center": {"point_target": "center", "downstream": False},
    # trace head: the tiny preset's pointer head (baseline) vs the paper's MLP, same budget
    "head_mlp": {"model_overrides": {"head": "mlp", "head_parametrization": "corners"}, "downstream": True},
    # Table 5 analogue: LM size × LM training; the LM starts from its text-only pretraining in every cell
    **{f"lm_{size}_{mode}": {"lm_size": size, "model_overrides": {"lm_mode": mode}, "init_lm": False, "downstream": False}
       for size in LM_SIZES for mode in ("frozen", "lora", "full")},
}

#: table → {row label: arm}; the baseline arm is shared by three tables (computed once).
TABLES: dict[str, dict[str, str]] = {
    "loc_supervision": {"none": "loc_none", "box": "loc_box", "dense": "baseline"},
    "lm": {f"{size}/{mode}": f"lm_{size}_{mode}" for size in LM_SIZES for mode in ("frozen", "lora", "full")},
    "encoder": {"sam_only": "enc_sam_only", "semantic_only": "enc_semantic_only", "both": "baseline"},
    "point_target": {"center": "target_center", "box": "baseline"},
    "head": {"paper MLP": "head_mlp", "pointer (tiny preset)": "baseline"},
}

#: what the paper reports for each table (PAPER_NOTES.md §5; exact ablation numbers are not available).
PAPER_FINDINGS: dict[str, str] = {
    "loc_supervision": "Table 4: dense per-word trace supervision (LN) beats box-only and no localization "
                       "pre-training on referring localization",
    "lm": "Table 5: a larger LM helps, and LoRA beats a frozen LM",
    "encoder": "motivation for two encoders: frozen SAM localizes, the trainable semantic encoder names; both together are best",
    "point_target": "no ablation published; the release regresses the utterance-box corners",
    "head": "no ablation published; the paper's head is the MLP on the decoder state. The pointer head "
            "(soft-argmax over the grid + offset + size MLP) is this repo's tiny-preset deviation",
}


def get_arm_config(arm: str, smoke: bool = False, seed: int = 0, overrides=None) -> AblationConfig:
    """The config of one arm and seed: :func:`get_config` + ``ARMS[arm]`` + ``seed`` + ``overrides``
    (``["steps=50"]`` or a dict, applied to every arm alike — e.g. the notebook's step budget)."""
    if arm not in ARMS:
        raise KeyError(f"unknown ablation arm {arm!r}; known: {', '.join(ARMS)}")
    cfg = get_config(smoke)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    diff = dict(ARMS[arm])
    if "model_overrides" in diff:
        diff["model_overrides"] = {**cfg.model_overrides, **diff["model_overrides"]}
    cfg = dataclasses.replace(cfg, **diff, arm=arm, seed=seed, stage=f"ablation_{arm}")
    check_config(cfg)
    return cfg


def check_config(cfg: AblationConfig) -> None:
    """Reject unknown values of the ablation fields (clear message naming the field)."""
    if cfg.loc_supervision not in LOC_SUPERVISION:
        raise ValueError(f"AblationConfig.loc_supervision must be one of {LOC_SUPERVISION}, got {cfg.loc_supervision!r}")
    if cfg.point_target not in ("box", "center"):
        raise ValueError(f"AblationConfig.point_target must be 'box' or 'center', got {cfg.point_target!r}")
    if cfg.lm_size not in LM_SIZES:
        raise ValueError(f"AblationConfig.lm_size must be one of {LM_SIZES}, got {cfg.lm_size!r}")
    if list(cfg.tasks) != ["trace"]:
        raise ValueError(f"AblationConfig.tasks must be {{'trace': w}} (stage 2 on LN), got {cfg.tasks}")
