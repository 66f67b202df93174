"""Shared test helpers: one small PixelLLM for every test that needs a real model."""
from __future__ import annotations

#: a PixelLLM a few times smaller than the ``tiny`` preset (1-layer semantic ViT, 8 queries, 64-wide T5):
#: seconds to build and run, same code paths. ``model_overrides`` of test configs use it too.
SMALL_MODEL = dict(semantic_depth=1, semantic_embed_dim=64, semantic_num_heads=2, extractor_dim=64, extractor_heads=2,
                   extractor_mlp_dim=128, num_queries=8, t5_config=dict(d_model=64, d_kv=16, num_heads=4, d_ff=128),
                   lora_rank=4, head_hidden_dim=32)


def small_model_overrides(**overrides) -> dict:
    """:data:`SMALL_MODEL` with ``overrides`` on top (for ``build_pixelllm`` or a config's ``model_overrides``)."""
    return {**SMALL_MODEL, **overrides}


def make_test_model(preset: str = "tiny", seed: int | None = 0, eval: bool = True, **overrides):
    """``build_pixelllm(preset, **SMALL_MODEL, **overrides)`` seeded by ``seed`` (None: not seeded), in eval mode
    unless ``eval=False``. ``overrides`` also take ``build_pixelllm``'s own arguments (``tokenizer``,
    ``sam_checkpoint``, ``t5``)."""
    import torch

    from pixelllm.modeling.build import build_pixelllm

    if seed is not None:
        torch.manual_seed(seed)
    model = build_pixelllm(preset, **small_model_overrides(**overrides))
    return model.eval() if eval else model


def import_bench(name: str):
    """Import ``bench/<name>.py`` as a module (the benchmarks are scripts, not a package); a generator for a
    module-scoped fixture: ``yield from import_bench("grounding_lab")``. ``sys.path`` and ``sys.modules``
    are restored afterwards."""
    import importlib
    import sys
    from pathlib import Path

    import pytest

    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        yield importlib.import_module(name)
    finally:
        mp.undo()
        sys.modules.pop(name, None)
