"""Stages 1 and 2 — captioning pretraining and Localized-Narratives captioning with per-word traces
(paper §3.3): a config's task mixture on the train split, the PixelLLM of :func:`build_model`, the one
:class:`~pixelllm.engine.trainer.Trainer`.
"""
from __future__ import annotations

from typing import Callable


def run_training(cfg, eval_fn: Callable | str | None = "default", resume: bool = True,
                 progress: bool = True, dist_info=None):
    """Everything from a config to a trained model (resuming ``out_dir`` when it has a checkpoint).
    Returns the :class:`Trainer` (``.model``, ``.history``, ``.last_checkpoint``)."""
    from pixelllm.data.datasets import collate
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine import distributed
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.datasets import build_train_dataset
    from pixelllm.engine.evaluate import make_eval_fn
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.engine.trainer import Trainer
    from pixelllm.modeling.losses import loss_for_config
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    info = dist_info or distributed.init_distributed(cfg.device)
    if info.is_main:
        paths = ensure_prerequisites(cfg, progress=progress)
    distributed.barrier()
    paths = resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    model = build_model(cfg, paths, tok)
    size = model.image_size
    train = build_train_dataset(cfg, paths, tok, size)
    if eval_fn == "default":
        eval_fn = make_eval_fn(cfg, paths, tok, size, device=info.device)
    trainer = Trainer(model, cfg, train, collate, out_dir=paths.out, eval_fn=eval_fn,
                      loss_fn=loss_for_config(cfg, tok), dist_info=info, progress=progress)
    return trainer.resume_and_fit(resume)
