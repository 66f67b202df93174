"""The prerequisites of every stage: the synthetic world, the tokenizer, and the three pretrainings that
stand in for the paper's pretrained parts (SAM ViT-H → tiny SAM, Flan-T5-XL → tiny T5, EVA02 → the
semantic ViT; PAPER_NOTES.md §1).

Notebooks 01/02 and ``python -m pixelllm.train --config <name>`` make them from these configs, with the
same numbers, into ``<run>/data``, ``<run>/tokenizer``, ``<run>/sam_tiny/sam_tiny.pth``,
``<run>/t5_tiny`` and ``<run>/semantic_tiny/semantic_tiny.safetensors``. Each artifact stores the config
that made it (``<artifact>.config.json``) and is reused only when that config matches.

Every pretraining runs a fixed number of optimizer steps (the recipe of record) through the one training
loop, :class:`pixelllm.engine.trainer.Trainer`: a slower CPU gets the same weights, only later, and an
interrupted run resumes exactly from the checkpoints beside its artifact. ``time_limit_s`` is a safety net
that stops with a warning; it is off (0) here. ``log_interval=1``: the artifact's training history has one
record per step.

Importing this module does no I/O and imports no torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pixelllm.configs.base import TrainConfig


@dataclass
class DataConfig:
    """The synthetic world (real-format files; PAPER_NOTES.md §6)."""

    stage: str = field(default="data", metadata={"help": "artifact name: <run>/data"})
    smoke: bool = field(default=False, metadata={"help": "SMOKE run (runs/smoke)"})
    n_scenes: int = field(default=2000, metadata={"help": "images in the world (split train/val/test)"})
    image_size: int = field(default=128, metadata={"help": "side of the generated images, pixels"})
    seed: int = field(default=0, metadata={"help": "the world is a function of the seed"})
    run_dir: str = field(default="", metadata={"help": "run folder (default pixelllm.utils.run_dir(smoke))"})
    data_dir: str = field(default="", metadata={"help": "output folder (default <run>/data)"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TokenizerConfig:
    """The T5-style BPE tokenizer trained on the world's texts (loadable by ``AutoTokenizer``)."""

    stage: str = field(default="tokenizer", metadata={"help": "artifact name: <run>/tokenizer"})
    smoke: bool = field(default=False, metadata={"help": "SMOKE run (runs/smoke)"})
    vocab_size: int = field(default=1000, metadata={"help": "specials + learned pieces"})
    run_dir: str = field(default="", metadata={"help": "run folder (default pixelllm.utils.run_dir(smoke))"})
    data_dir: str = field(default="", metadata={"help": "synthetic world folder (default <run>/data)"})
    tokenizer_dir: str = field(default="", metadata={"help": "output folder (default <run>/tokenizer)"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SamPretrainConfig(TrainConfig):
    """Tiny SAM (``build_sam("tiny")``) trained from scratch on box/point → mask (focal×20 + dice + IoU MSE)."""

    sam_preset: str = field(default="tiny", metadata={"help": "build_sam preset"})
    sam_overrides: dict = field(default_factory=dict, metadata={"help": "SamConfig fields over the preset's (e.g. {'patch_size': 8})"})
    prompts_per_image: int = field(default=4, metadata={"help": "box/point prompts decoded per image and step"})
    point_prob: float = field(default=0.25, metadata={"help": "probability that a prompt is a point, not a box"})
    box_jitter: float = field(default=0.05, metadata={"help": "box prompt noise, fraction of the box side"})
    eval_split: str = field(default="val", metadata={"help": "split of the mask-IoU evaluations ('' = none)"})
    eval_images: int = field(default=64, metadata={"help": "images of the periodic mask-IoU evaluation (the final one uses the whole split)"})


@dataclass
class T5PretrainConfig(TrainConfig):
    """Tiny T5 from scratch: span corruption + prefix-LM captions + reconstruction (denoising)."""

    t5_overrides: dict = field(default_factory=dict, metadata={"help": "T5Config fields over the preset's tiny T5 widths"})
    caption_fraction: float = field(default=0.25, metadata={"help": "share of caption-style (prefix-LM) examples"})
    denoise_fraction: float = field(default=0.5, metadata={"help": "share of reconstruction examples (corrupted → whole text)"})
    max_tokens: int = field(default=64, metadata={"help": "tokens per text"})
    n_val: int = field(default=512, metadata={"help": "validation texts scored"})


@dataclass
class SemanticPretrainConfig(TrainConfig):
    """The semantic ViT (EVA02 stand-in) of ``build_pixelllm(preset, **model_overrides)`` (``image_size``
    > 0 replaces the preset's) trained on per-patch colour/category soft targets."""


def get_data_config(smoke: bool = False) -> DataConfig:
    return DataConfig(smoke=smoke, n_scenes=60 if smoke else 2000)


def get_tokenizer_config(smoke: bool = False) -> TokenizerConfig:
    return TokenizerConfig(smoke=smoke)


def get_sam_config(smoke: bool = False) -> SamPretrainConfig:
    cfg = SamPretrainConfig(stage="sam_tiny", smoke=smoke, tasks={}, prompts={}, batch_size=16, steps=800, lr=2e-3,
                            warmup_steps=30, weight_decay=0.05, grad_clip=1.0, eval_interval=100,
                            log_interval=1, ckpt_interval=400, keep_last=1, cache_sam_features=False)
    if smoke:
        cfg = cfg.smoke_variant(batch_size=4, steps=3, max_samples=0, eval_interval=0, eval_images=8, ckpt_interval=3)
    return cfg


def get_t5_config(smoke: bool = False) -> T5PretrainConfig:
    cfg = T5PretrainConfig(stage="t5_tiny", smoke=smoke, tasks={}, prompts={}, batch_size=32, steps=1000, lr=1e-3,
                           warmup_steps=100, weight_decay=0.01, betas=(0.9, 0.98), grad_clip=1.0,
                           eval_interval=166, log_interval=1, ckpt_interval=500, keep_last=1,
                           cache_sam_features=False)
    if smoke:
        cfg = cfg.smoke_variant(batch_size=8, steps=5, max_samples=0, eval_interval=0, n_val=16, ckpt_interval=5)
    return cfg


def get_semantic_config(smoke: bool = False) -> SemanticPretrainConfig:
    cfg = SemanticPretrainConfig(stage="semantic_tiny", smoke=smoke, tasks={}, prompts={}, batch_size=32, steps=2400,
                                 lr=1e-3, warmup_steps=30, weight_decay=0.05, grad_clip=1.0, eval_interval=133,
                                 log_interval=1, ckpt_interval=400, keep_last=1, cache_sam_features=False)
    if smoke:
        cfg = cfg.smoke_variant(batch_size=8, steps=3, max_samples=0, eval_interval=0, ckpt_interval=3)
    return cfg
