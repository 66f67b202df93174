"""Experiment configs: each module ``pixelllm/configs/<name>.py`` has ``get_config(smoke=False) -> TrainConfig``.

    from pixelllm.configs import get_config
    cfg = get_config("ln_trace", smoke=True, overrides=["lr=3e-4"])

Importing this package does no I/O and imports no torch.
"""
from __future__ import annotations

import importlib

from pixelllm.configs.base import TrainConfig, apply_overrides

CONFIGS = ("pretrain", "ln_trace", "refcoco", "loc_caption", "densecap")


def get_config(name: str, smoke: bool = False, preset: str | None = None, overrides=None) -> TrainConfig:
    """Build the named experiment config (SMOKE variant when ``smoke``), then apply ``preset`` and
    ``key=value`` overrides (list of strings or a dict)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; available: {', '.join(CONFIGS)}")
    cfg = importlib.import_module(f"pixelllm.configs.{name}").get_config(smoke=smoke)
    if preset is not None:
        cfg = apply_overrides(cfg, {"preset": preset})
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


__all__ = ["TrainConfig", "apply_overrides", "get_config", "CONFIGS"]
