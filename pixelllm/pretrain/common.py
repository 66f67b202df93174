"""What the three pretrainings share around the one training loop (:class:`pixelllm.engine.trainer.Trainer`).

* :func:`checkpoint_dir` — where a pretraining's checkpoints and ``metrics.jsonl`` go: beside its artifact;
* :class:`RecordedEval` — an eval hook that keeps every result (the Trainer's log keeps them too, when it writes one);
* :func:`resume_and_fit` — resume from that folder when its checkpoint was made by the same config (else
  start afresh), then train to ``config.steps``;
* :func:`run_records` — the per-step training records and the evaluation records of the whole run, read back
  from ``metrics.jsonl`` (a resumed run included: the Trainer cuts the log at the checkpoint it resumes).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

#: keys of a Trainer log record that describe the loop, not the task's loss terms
LOOP_KEYS = ("samples_per_s", "time", "epoch")


def checkpoint_dir(artifact: str | os.PathLike, cfg) -> Path:
    """``cfg.out_dir`` when set, else ``<artifact folder>/<artifact stem>_checkpoints`` (e.g.
    ``<run>/sam_tiny/sam_tiny_checkpoints``, ``<run>/t5_tiny_checkpoints`` for the T5 folder)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    a = Path(artifact)
    return a.parent / f"{a.stem}_checkpoints"


class RecordedEval:
    """Wraps an eval hook ``fn(model, step) -> dict`` and keeps every result (``results``: ``{"step", ...}``)."""

    def __init__(self, fn: Callable[[Any, int], dict]):
        self.fn = fn
        self.results: list[dict] = []

    def __call__(self, model, step: int) -> dict:
        res = self.fn(model, step)
        self.results.append({"step": step, **res})
        return res


def resume_and_fit(trainer) -> dict:
    """Resume ``trainer`` from its ``out_dir`` and train to ``config.steps``.

    A checkpoint made by another config (compared as :func:`pixelllm.utils.found_or_compute` compares
    artifacts, volatile keys ignored) is discarded with its log, and so is the log of a run that never
    wrote a checkpoint: the run then starts from step 0. Returns ``{"resumed_at": step | None,
    "steps_run", "seconds"}`` — this call's optimizer steps and its training seconds (evaluation
    excluded, :attr:`Trainer.eval_seconds`)."""
    trainer.discard_mismatched_run(ignore=())
    resumed = trainer.resume()
    if resumed and trainer.progress:
        print(f"[{trainer.cfg.stage}] resumed from {trainer.last_checkpoint} at step {trainer.step}")
    start = trainer.step
    eval_before = trainer.eval_seconds
    t0 = time.time()
    trainer.fit()
    eval_s = trainer.eval_seconds - eval_before
    return {"resumed_at": start if resumed else None, "steps_run": trainer.step - start,
            "seconds": time.time() - t0 - eval_s}


def run_records(trainer) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of the whole run, oldest first.

    From ``<out_dir>/metrics.jsonl`` when the trainer writes one: training records ``{"step", <loss
    terms>, "lr", "grad_norm"}`` (one per step with ``log_interval=1``, else the mean of each logged window)
    and evaluation records ``{"step", <eval metrics>}``. Without an ``out_dir``: this process's
    ``trainer.history`` and the results of a :class:`RecordedEval` hook."""
    log: Optional[Path] = trainer.log_path
    if log is None or not log.is_file():
        hook = trainer.eval_fn
        train = [{k: v for k, v in r.items() if k not in LOOP_KEYS} for r in trainer.history]
        return train, list(hook.results) if isinstance(hook, RecordedEval) else []
    train, evals = [], []
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "event" in rec:
            continue
        if "loss" in rec:
            train.append({k: v for k, v in rec.items() if k not in LOOP_KEYS})
        elif any(k.startswith("eval/") for k in rec):
            evals.append({"step": rec["step"], **{k[5:]: v for k, v in rec.items() if k.startswith("eval/")}})
    return train, evals
