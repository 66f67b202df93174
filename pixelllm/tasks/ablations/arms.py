"""One ablation arm up to its trained stage-2 model: the prerequisites it needs, its PixelLLM and the
Trainer of its stage 2.

* :func:`ensure_stage1` — the stage-1 checkpoint of record (``get_config("pretrain")``, what notebook 03
  runs), found or made; :func:`ensure_large_t5` — the larger LM of the Table 5 arms, pretrained with the
  ``t5_tiny`` config's fixed steps;
* :func:`build_arm_model` — ``build_model`` (seeded by ``cfg.seed``, the arm's T5) plus the stage-1 weights
  whose name and shape fit (``load_matching``); the whole image encoder is frozen (the CPU-budget deviation
  of :mod:`pixelllm.configs.ablations`), so ``PixelLLM.frozen_image_features`` is the full feature grid;
* :func:`arm_trainer` — the engine's ``Trainer`` on the LN train narratives seen through
  :class:`~pixelllm.tasks.ablations.supervision.SupervisionView`. The Trainer caches that grid per image id;
  :func:`shared_feature_store` lets every arm (and downstream fine-tune) of a process with the same frozen
  encoder reuse one cache.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from pixelllm.configs.ablations import LARGE_T5, AblationConfig
from pixelllm.tasks.ablations.supervision import SupervisionView

#: full feature grids per (run folder, encoder_mode, stage-1 checkpoint) → {image_id: C×H×W}; every arm
#: of a process with the same frozen encoder reuses them.
_FEATURE_STORES: dict[tuple, dict] = {}


def shared_feature_store(key: tuple) -> dict:
    """The process-wide ``{image_id: grid}`` store of ``key`` = (run folder, encoder mode, stage-1 file)."""
    return _FEATURE_STORES.setdefault(key, {})


def use_feature_store(trainer, store: dict | None):
    """Let ``trainer`` cache its frozen features in ``store`` (shared with other trainers); returns it."""
    if trainer.cache is not None and store is not None:
        trainer.cache.store = store
    return trainer


# ---------------------------------------------------------------------------------------- prerequisites
def ensure_stage1(cfg: AblationConfig, progress: bool = False) -> Path:
    """The shared stage-1 checkpoint: ``<run>/checkpoints/pretrain`` made by the config of record
    ``get_config("pretrain", smoke=cfg.smoke)`` — what notebook 03 runs, through the same
    ``found_or_compute(out / "final.json", ..., config=pre)``, so whichever runs first makes it and a stage 1
    of another config is retrained, not reused. The run's prerequisites come from ``ensure_prerequisites``.
    Returns the checkpoint file."""
    from pixelllm.configs import get_config
    from pixelllm.engine.checkpoint import latest_checkpoint
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.pretrain.prerequisites import ensure_prerequisites
    from pixelllm.tasks.captioning import run_training
    from pixelllm.utils import found_or_compute

    pre = get_config("pretrain", smoke=cfg.smoke, overrides={"run_dir": cfg.run_dir, "data_dir": cfg.data_dir,
                                                             "tokenizer_dir": cfg.tokenizer_dir})
    ensure_prerequisites(pre, progress=progress)
    out = resolve_paths(pre).out
    found_or_compute(out / "final.json", lambda: run_training(pre, eval_fn=None, progress=progress), config=pre)
    return latest_checkpoint(out)


def ensure_large_t5(cfg: AblationConfig, paths, progress: bool = False) -> Path:
    """The larger LM (:data:`~pixelllm.configs.ablations.LARGE_T5`) pretrained **the same way** as the
    run's tiny T5: the ``t5_tiny`` config (same corpus, objective mixture, fixed steps, batch, lr, seed) with
    ``t5_overrides=LARGE_T5`` → ``<run>/t5_large``. Found (made by that config) → reuse."""
    from pixelllm.pretrain.prerequisites import ensure_t5

    return ensure_t5(cfg, progress, out=paths.run / "t5_large", t5_overrides=LARGE_T5)


def arm_paths(cfg: AblationConfig):
    """The run's :class:`~pixelllm.engine.paths.Paths` with the arm's LM folder (``<run>/t5_large`` for
    ``lm_size="large"``)."""
    from pixelllm.engine.paths import resolve_paths

    paths = resolve_paths(cfg)
    if cfg.lm_size == "large":
        paths = dataclasses.replace(paths, t5=paths.run / "t5_large")
    return paths


# ------------------------------------------------------------------------------------------ the model
def build_arm_model(cfg: AblationConfig, paths, tokenizer, stage1: Path | None) -> tuple[nn.Module, dict]:
    """``build_model(cfg, paths, tokenizer, init=False)`` (seeded by ``cfg.seed``; the run's frozen SAM,
    semantic ViT and the arm's T5), then the stage-1 weights that fit (``load_matching``; the LM's are
    skipped when ``cfg.init_lm`` is False; arms whose architecture differs keep fresh weights where it
    does). The whole image encoder is then frozen. Returns (model, ``{"loaded", "skipped", "from"}``)."""
    from pixelllm.engine.builder import build_model, load_matching
    from pixelllm.engine.checkpoint import load_checkpoint

    model = build_model(cfg, paths, tokenizer, init=False)
    info = {"loaded": 0, "skipped": [], "from": None}
    if stage1 is not None:
        skip = () if cfg.init_lm else ("language_model.",)
        info = {**load_matching(model, load_checkpoint(stage1)["model"], skip), "from": str(stage1)}
    model.image_encoder.requires_grad_(False)
    return model, info


def feature_store_key(model: nn.Module, paths, stage1: Path | None) -> tuple:
    """What the frozen grid of ``model`` depends on: (run folder, encoder mode, stage-1 checkpoint)."""
    return (str(paths.run), model.image_encoder.mode, str(stage1))


# ----------------------------------------------------------------------------------------- training
def arm_trainer(cfg: AblationConfig, model: nn.Module, paths, tokenizer, store: dict | None = None,
                progress: bool = False):
    """The engine ``Trainer`` of the arm's stage 2, writing nothing (``out_dir=None``): the LN train
    narratives (first ``cfg.max_samples``; per-word target ``cfg.point_target``) viewed through
    :class:`SupervisionView` (``cfg.loc_supervision``); frozen grids cached in ``store`` (shared)."""
    from torch.utils.data import Subset

    from pixelllm.data.datasets import collate
    from pixelllm.engine.datasets import task_dataset
    from pixelllm.engine.trainer import Trainer
    from pixelllm.modeling.losses import loss_for_config

    train = task_dataset("trace", "train", cfg, paths, tokenizer, model.image_size, point_target=cfg.point_target)
    if cfg.max_samples:
        train = Subset(train, range(min(cfg.max_samples, len(train))))
    trainer = Trainer(model, cfg, SupervisionView(train, cfg.loc_supervision), collate, out_dir=None,
                      progress=progress, loss_fn=loss_for_config(cfg, tokenizer))
    return use_feature_store(trainer, store)
