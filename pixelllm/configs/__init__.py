"""Experiment configs: each module ``pixelllm/configs/<name>.py`` has ``get_config(smoke=False) -> TrainConfig``.

    from pixelllm.configs import get_config
    cfg = get_config("ln_trace", smoke=True, overrides=["lr=3e-4"])

Importing this package does no I/O and imports no torch.
"""
from __future__ import annotations

import importlib

from pixelllm.configs.base import TrainConfig, apply_overrides

#: every config of record, in the order a full run makes them: name → "module:function". The
#: prerequisites first (notebooks 01/02), then the stages (notebooks 03–07).
REGISTRY = {
    "data": "prerequisites:get_data_config",
    "tokenizer": "prerequisites:get_tokenizer_config",
    "sam_tiny": "prerequisites:get_sam_config",
    "t5_tiny": "prerequisites:get_t5_config",
    "semantic_tiny": "prerequisites:get_semantic_config",
    "pretrain": "pretrain:get_config",
    "ln_trace": "ln_trace:get_config",
    "refcoco": "refcoco:get_config",
    "refseg": "refcoco:get_refseg_config",
    "loc_caption": "loc_caption:get_config",
    "densecap": "densecap:get_config",
    "own_data": "own_data:get_config",      # stage 2 continued on your own converted data (notebook 11)
    "pixellm": "pixellm:get_config",
}
CONFIGS = tuple(REGISTRY)
PREREQUISITES = ("data", "tokenizer", "sam_tiny", "t5_tiny", "semantic_tiny")


def get_config(name: str, smoke: bool = False, preset: str | None = None, overrides=None):
    """Build the named config of record (SMOKE variant when ``smoke``), then apply ``preset`` and
    ``key=value`` overrides (list of strings or a dict). The numbers are those the notebooks and
    ``make reproduce`` run: a notebook passes only what it deliberately changes, as overrides."""
    if name not in REGISTRY:
        raise KeyError(f"unknown config {name!r}; available: {', '.join(CONFIGS)}")
    module, fn = REGISTRY[name].split(":")
    cfg = getattr(importlib.import_module(f"pixelllm.configs.{module}"), fn)(smoke=smoke)
    if preset is not None:
        cfg = apply_overrides(cfg, {"preset": preset})
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def config_from_dict(d: dict):
    """A stored config (e.g. from a checkpoint) back as its class: the registry config of the same
    ``stage`` when its fields cover the stored ones, else the first config class that does (ablation arms,
    renamed stages), else :class:`TrainConfig` (unknown keys raise)."""
    import dataclasses

    from pixelllm.configs import ablations, densecap, loc_caption, pixellm, prerequisites, refcoco

    classes = [TrainConfig, refcoco.ReferringConfig, refcoco.RefSegConfig, loc_caption.LocCaptionConfig,
               densecap.DenseCapConfig, pixellm.PixelLMTrainConfig, ablations.AblationConfig,
               prerequisites.SamPretrainConfig, prerequisites.T5PretrainConfig, prerequisites.SemanticPretrainConfig]
    if d.get("stage") in REGISTRY:
        classes.insert(0, type(get_config(d["stage"])))
    for cls in classes:
        if set(d) <= {f.name for f in dataclasses.fields(cls)}:
            return cls.from_dict(d)
    return TrainConfig.from_dict(d)


def config_from_json(s: str):
    import json

    return config_from_dict(json.loads(s))


__all__ = ["config_from_dict", "config_from_json", "TrainConfig", "apply_overrides", "get_config", "CONFIGS", "PREREQUISITES", "REGISTRY"]
