"""Where a run's artifacts live: the run folder, the synthetic world, the tokenizer, the pretrained parts
(tiny SAM, tiny T5, semantic ViT) and the stage checkpoints. Config fields win over the run-folder defaults."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Paths:
    run: Path
    data: Path
    tokenizer: Path
    sam: Path
    t5: Path
    semantic: Path       # pretrained semantic ViT (our EVA02 stand-in), safetensors
    out: Path
    checkpoints: Path


def resolve_paths(cfg) -> Paths:
    """Where everything of this config lives (config fields win over the run-folder defaults)."""
    from pixelllm.utils import run_dir

    run = Path(cfg.run_dir) if cfg.run_dir else run_dir(cfg.smoke)
    ck = run / "checkpoints"
    def given(name: str) -> str:
        return getattr(cfg, name, "") or ""

    semantic = (getattr(cfg, "model_overrides", None) or {}).get("semantic_checkpoint")
    return Paths(run=run, data=Path(given("data_dir")) if given("data_dir") else run / "data",
                 tokenizer=Path(given("tokenizer_dir")) if given("tokenizer_dir") else run / "tokenizer",
                 sam=Path(given("sam_checkpoint")) if given("sam_checkpoint") else run / "sam_tiny" / "sam_tiny.pth",
                 t5=Path(given("t5_dir")) if given("t5_dir") else run / "t5_tiny",
                 semantic=Path(semantic) if semantic else run / "semantic_tiny" / "semantic_tiny.safetensors",
                 out=Path(given("out_dir")) if given("out_dir") else ck / cfg.stage, checkpoints=ck)


def pretrains_semantic(cfg) -> bool:
    """Our semantic-encoder pretraining applies to the presets whose semantic ViT is our small Eva (no timm
    model name) and whose encoder mode uses it."""
    from pixelllm.modeling.build import PRESETS

    merged = {**dataclasses.asdict(PRESETS[cfg.preset]), **cfg.model_overrides} if cfg.preset in PRESETS else {}
    return bool(merged) and not merged.get("semantic_timm") and merged.get("encoder_mode", "both") != "sam_only"


