"""The prerequisites of every stage, found → reused, else made from their configs of record
(:mod:`pixelllm.configs.prerequisites`): the synthetic world, the tokenizer, tiny SAM (box → mask), tiny T5
(span corruption + reconstruction) and the semantic ViT (per-patch colour/category, the EVA02 stand-in).

Notebooks 01/02 and ``python -m pixelllm.train --config <name>`` call the same functions, so whichever
runs first makes the same artifact. Each artifact stores its config beside it and is reused only when that
config matches (``pixelllm.utils.found_or_compute``).
"""
from __future__ import annotations

from pathlib import Path

from pixelllm.configs import get_config
from pixelllm.configs.base import apply_overrides
from pixelllm.engine.paths import Paths, pretrains_semantic, resolve_paths
from pixelllm.utils import found_or_compute


def prerequisite_config(name: str, cfg):
    """The config of prerequisite ``name`` for ``cfg``: ``cfg`` itself when it is that prerequisite's config
    (``python -m pixelllm.train --config sam_tiny steps=...``), else its config of record in the same SMOKE
    mode and run folder."""
    if cfg.stage == name:
        return cfg
    pre = get_config(name, smoke=cfg.smoke)
    return apply_overrides(pre, {"run_dir": cfg.run_dir}) if getattr(cfg, "run_dir", "") else pre


def ensure_data(cfg, progress: bool = True) -> Path:
    """``<run>/data``: the synthetic world of ``get_config("data")``. A reused world made before the pointing
    sidecars existed gets them added (re-drawn and checked against its narratives; nothing else changes,
    so the world is not regenerated), and likewise its multi-target questions ``muse/`` (made from its
    scenes and instances by :func:`pixelllm.data.synthetic.muse.write_muse`)."""
    from pixelllm.data.synthetic import add_pointing_sidecars, generate

    dc = prerequisite_config("data", cfg)
    out = resolve_paths(cfg).data
    found_or_compute(out / "stats.json", lambda: generate(out, n_scenes=dc.n_scenes, image_size=dc.image_size,
                                                          seed=dc.seed, progress=progress), config=dc)
    for p in add_pointing_sidecars(out):
        print(f"added the pointing sidecar {p}")
    from pixelllm.data.synthetic.muse import write_muse

    for p in write_muse(out, seed=dc.seed):
        print(f"added the multi-target questions {p}")
    return out


def ensure_tokenizer(cfg, progress: bool = True) -> Path:
    """``<run>/tokenizer``: the BPE tokenizer of ``get_config("tokenizer")`` on the world's texts."""
    from pixelllm.data.tokenizer import corpus_texts, train_tokenizer

    tc = prerequisite_config("tokenizer", cfg)
    p = resolve_paths(cfg)
    found_or_compute(p.tokenizer, lambda: train_tokenizer(corpus_texts(p.data), p.tokenizer, vocab_size=tc.vocab_size),
                     config=tc)
    return p.tokenizer


def ensure_sam(cfg, progress: bool = True) -> Path:
    """``<run>/sam_tiny/sam_tiny.pth``: tiny SAM pretrained with ``get_config("sam_tiny")``."""
    from pixelllm.pretrain.sam import train_tiny_sam

    sc = prerequisite_config("sam_tiny", cfg)
    p = resolve_paths(cfg)
    found_or_compute(p.sam, lambda: train_tiny_sam(sc, p.data, p.sam, progress=progress), config=sc)
    return p.sam


def ensure_t5(cfg, progress: bool = True, out: Path | None = None, t5_overrides: dict | None = None) -> Path:
    """``<run>/t5_tiny`` (or ``out``): tiny T5 pretrained with ``get_config("t5_tiny")`` (``t5_overrides``
    changes its widths, e.g. the larger LM of the ablations; everything else stays the same)."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.pretrain.t5 import pretrain_tiny_t5, t5_corpus

    tc = prerequisite_config("t5_tiny", cfg)
    if t5_overrides:
        tc = apply_overrides(tc, {"t5_overrides": dict(t5_overrides)})
    p = resolve_paths(cfg)
    out = out or p.t5

    def compute():
        train_texts, val_texts = t5_corpus(p.data)
        pretrain_tiny_t5(tc, train_texts, val_texts, load_tokenizer(p.tokenizer), out, progress=progress)

    found_or_compute(out, compute, config=tc)
    return out


def ensure_semantic(cfg, progress: bool = True) -> Path:
    """``<run>/semantic_tiny/semantic_tiny.safetensors``: the semantic ViT pretrained with
    ``get_config("semantic_tiny")`` at the stage's preset and input size."""
    from pixelllm.pretrain.semantic import pretrain_semantic_encoder

    sc = prerequisite_config("semantic_tiny", cfg)
    sc = apply_overrides(sc, {"preset": cfg.preset, "image_size": getattr(cfg, "image_size", 0) or 0})
    p = resolve_paths(cfg)
    found_or_compute(p.semantic, lambda: pretrain_semantic_encoder(sc, p.data, p.semantic, progress=progress),
                     config=sc)
    return p.semantic


def ensure_prerequisites(cfg, progress: bool = True) -> Paths:
    """Found → reuse, else make: synthetic world, tokenizer, tiny SAM, tiny T5, and the semantic ViT (only
    for presets whose semantic ViT is ours — a timm EVA02 comes with its own weights via
    ``model_overrides={"semantic_checkpoint": ...}``). Explicit paths in the config must exist (never
    silently recomputed elsewhere). Returns the run's :class:`Paths`."""
    p = resolve_paths(cfg)
    for field, path in (("data_dir", p.data), ("tokenizer_dir", p.tokenizer), ("sam_checkpoint", p.sam), ("t5_dir", p.t5)):
        if getattr(cfg, field, "") and not path.exists():
            raise FileNotFoundError(f"config field {field}={getattr(cfg, field)!r}: {path} does not exist")
    if (getattr(cfg, "model_overrides", None) or {}).get("semantic_checkpoint") and not p.semantic.exists():
        raise FileNotFoundError(f"model_overrides semantic_checkpoint: {p.semantic} does not exist")
    if not getattr(cfg, "data_dir", ""):
        ensure_data(cfg, progress)
    if not getattr(cfg, "tokenizer_dir", ""):
        ensure_tokenizer(cfg, progress)
    if not getattr(cfg, "sam_checkpoint", ""):
        ensure_sam(cfg, progress)
    if not getattr(cfg, "t5_dir", ""):
        ensure_t5(cfg, progress)
    if pretrains_semantic(cfg) and not cfg.model_overrides.get("semantic_checkpoint"):
        ensure_semantic(cfg, progress)
    return p
