"""The one model builder and loader.

* :func:`build_model` — the PixelLLM of a stage: ``build_pixelllm(preset, the run's tiny SAM / tiny T5 /
  semantic ViT, **model_overrides)`` seeded by ``cfg.seed``, then the trainable weights of every existing
  ``init_from`` checkpoint, in order (:func:`load_matching`);
* :func:`resolve_inits` — ``init_from`` (comma-separated stage names under ``<run>/checkpoints`` or paths)
  as checkpoint files;
* :func:`init_checksums` — the SHA-256 of each of those checkpoints (stored in the checkpoints of the stage
  they initialise, so that a stage whose initialisation was retrained is not reused);
* :func:`load_matching` — the one way an initialisation is loaded: every tensor whose name and shape fit,
  the rest reported;
* :func:`load_stage_model` — a trained (or interrupted) stage's PixelLLM rebuilt from the config stored in
  its checkpoint.

Task models (the referring segmenter, the dense captioner) wrap the PixelLLM that :func:`build_model` makes;
their builders sit beside their task (``pixelllm.tasks``) and use these functions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from pixelllm.engine.paths import Paths, pretrains_semantic, resolve_paths


def resolve_inits(cfg, paths: Paths, required: bool = False) -> list[Path]:
    """Every existing checkpoint among ``cfg.init_from`` (comma-separated stage names under
    ``<run>/checkpoints`` or checkpoint files/folders), in the given order. None found → [] (the model
    starts from the pretrained parts only), or :class:`FileNotFoundError` when ``required``."""
    from pixelllm.engine.checkpoint import latest_checkpoint

    names = [x.strip() for x in (cfg.init_from or "").split(",") if x.strip()]
    found = []
    for name in names:
        for cand in (Path(name), paths.checkpoints / name):
            if cand.exists() and latest_checkpoint(cand) is not None:
                found.append(latest_checkpoint(cand))
                break
    if names and not found and required:
        raise FileNotFoundError(f"init_from={cfg.init_from!r}: no checkpoint under {paths.checkpoints} nor at "
                                "that path (train that stage first)")
    return found


def checkpoint_checksums(checkpoints: Sequence[Path]) -> dict[str, str]:
    """``{"<stage folder>/<checkpoint file>": sha256}`` of checkpoint files (the sidecar's value,
    :func:`~pixelllm.engine.checkpoint.checkpoint_checksum`): what identifies the weights a stage started from
    or an evaluation scored."""
    from pixelllm.engine.checkpoint import checkpoint_checksum

    return {f"{p.parent.name}/{p.name}": checkpoint_checksum(p) for p in checkpoints}


def init_checksums(cfg, paths: Paths | None = None) -> dict[str, str]:
    """``{"<stage folder>/<checkpoint file>": sha256}`` of every checkpoint :func:`resolve_inits` finds for
    ``cfg`` (the sidecar's value, :func:`~pixelllm.engine.checkpoint.checkpoint_checksum`); {} without
    ``init_from``. The Trainer stores it in each checkpoint and compares it on resume: an ``init_from``
    stage retrained since (another file, or the same step with other weights) makes the stage a run of
    another configuration."""
    if not (getattr(cfg, "init_from", "") or "").strip():
        return {}
    return checkpoint_checksums(resolve_inits(cfg, paths or resolve_paths(cfg)))


def stage_config(cfg) -> dict:
    """What a stage's artifact is reused by (``found_or_compute(<out>/final.json, ..., config=stage_config(cfg))``):
    the config as a dict plus, when it has ``init_from``, ``init_checksums`` (:func:`init_checksums`) — so a
    stage is retrained, not reused, when a stage it starts from was retrained since."""
    out = cfg.to_dict()
    if (getattr(cfg, "init_from", "") or "").strip():
        out["init_checksums"] = init_checksums(cfg)
    return out


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], skip_prefixes: Sequence[str] = ()) -> dict:
    """Copy every tensor of ``state`` whose name exists in ``model`` with the same shape (and does not start
    with one of ``skip_prefixes``). Hand-written because ``load_state_dict(strict=False)`` still fails on
    shape mismatches, which an initialisation legitimately has (another trace head, another LM).
    Returns ``{"loaded": n, "skipped": [names]}``."""
    own = model.state_dict()
    keep, skipped = {}, []
    for k, v in state.items():
        if k in own and own[k].shape == v.shape and not k.startswith(tuple(skip_prefixes)):
            keep[k] = v
        else:
            skipped.append(k)
    model.load_state_dict(keep, strict=False)
    return {"loaded": len(keep), "skipped": skipped}


def build_model(cfg, paths: Paths | None = None, tokenizer=None, device: str = "cpu", init: bool = True,
                skip_prefixes: Sequence[str] = (), verbose: bool = True):
    """``build_pixelllm(cfg.preset, ...)`` with the run's frozen SAM, T5 and pretrained semantic ViT (when
    present), seeded by ``cfg.seed``; then, when ``init``, the weights of each existing ``init_from``
    checkpoint in order (:func:`load_matching`, skipping names under ``skip_prefixes``)."""
    from pixelllm.engine.checkpoint import load_checkpoint
    from pixelllm.modeling.build import build_pixelllm
    from pixelllm.utils import seed_everything

    paths = paths or resolve_paths(cfg)
    seed_everything(cfg.seed)
    kw = dict(cfg.model_overrides)
    if cfg.image_size:
        kw["image_size"] = cfg.image_size
    if "semantic_checkpoint" not in kw and paths.semantic.is_file() and pretrains_semantic(cfg):
        kw["semantic_checkpoint"] = str(paths.semantic)
    model = build_pixelllm(cfg.preset, sam_checkpoint=paths.sam if paths.sam.is_file() else None,
                           t5=paths.t5 if (paths.t5 / "config.json").is_file() else None,
                           tokenizer=tokenizer, **kw)
    if init:
        inits = resolve_inits(cfg, paths)
        if cfg.init_from and not inits and verbose:
            print(f"[{cfg.stage}] no checkpoint among init_from={cfg.init_from!r}: starting from the pretrained "
                  "parts only")
        for path in inits:
            state = load_checkpoint(path)
            info = load_matching(model, state["model"], skip_prefixes)
            if verbose:
                left = info["skipped"]
                print(f"[{cfg.stage}] initialised from {path} (step {state['step']}): {info['loaded']} tensors"
                      + (f", {len(left)} left out: {left[:4]}" if left else ""))
    return model.to(device)


def checkpoint_config(checkpoint: str | os.PathLike, overrides: Mapping[str, object] | None = None):
    """(the config stored in a checkpoint — file or folder → latest — as its config class, the checkpoint
    state). The class is the one of the registry config of the same ``stage`` when it has the stored
    fields, else :class:`~pixelllm.configs.TrainConfig`. ``overrides``: fields set on top of the stored
    ones (e.g. ``{"run_dir": ...}`` for a run folder that moved: the stored config says where the run's
    parts were, not where they are now)."""
    from pixelllm.configs import config_from_json
    from pixelllm.configs.base import apply_overrides
    from pixelllm.engine.checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(checkpoint)
    try:
        cfg = config_from_json(state["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(state["path"], f"its stored config cannot be read ({type(e).__name__}: {e})") from None
    return (apply_overrides(cfg, dict(overrides)) if overrides else cfg), state


def load_stage_model(checkpoint: str | os.PathLike, tokenizer=None, device: str = "cpu",
                     overrides: Mapping[str, object] | None = None):
    """A stage's PixelLLM rebuilt from its checkpoint (file, or folder → latest): built from the stored
    config (with ``overrides``, see :func:`checkpoint_config`) without initialisation, then the
    checkpoint's trainable weights over the ``init_from`` ones (so parts a fine-tuning froze keep the
    earlier stage's weights) → (model in eval mode, config)."""
    from pixelllm.engine.checkpoint import load_trainable_state_dict

    cfg, state = checkpoint_config(checkpoint, overrides)
    model = build_model(cfg, resolve_paths(cfg), tokenizer, device=device, verbose=False)
    load_trainable_state_dict(model, state["model"], strict=False, source=state["path"])
    return model.eval(), cfg


def load_trained_model(cfg, tokenizer=None, device: str = "cpu"):
    """The model of the stage ``cfg`` describes, from the newest checkpoint in its ``out_dir``."""
    model, _ = load_stage_model(resolve_paths(cfg).out, tokenizer, device)
    return model


__all__ = ["build_model", "checkpoint_checksums", "checkpoint_config", "init_checksums", "load_matching", "stage_config", "load_stage_model", "load_trained_model",
           "resolve_inits"]
