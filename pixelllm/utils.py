"""Small helpers shared by the package, the notebooks and the benchmarks.

* :func:`repo_root` / :func:`run_dir` / :func:`figure_dir` / :func:`results_dir` — where artifacts live.
  Full runs write into ``runs/full`` (data, checkpoints), ``figures/`` and ``results/``;
  SMOKE runs write everything under ``runs/smoke`` so that CI never overwrites the committed figures.
* :func:`knobs` — the one place where SMOKE scales a notebook's parameters.
* :func:`found_or_compute` — "found → load, else compute" for artifacts shared between notebooks.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def repo_root() -> Path:
    """The repository root: ``$PIXELLLM_HOME`` if set, else the folder holding ``pyproject.toml``
    above this package (editable install), else the current directory."""
    env = os.environ.get("PIXELLLM_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd().resolve()


def run_dir(smoke: bool = False, create: bool = True) -> Path:
    """Root of one run's artifacts (data, pretrained parts, checkpoints, executed notebooks).

    ``$PIXELLLM_RUNS`` overrides the base folder (default ``<repo>/runs``); SMOKE runs use ``smoke/``,
    full runs ``full/`` below it.
    """
    base = Path(os.environ.get("PIXELLLM_RUNS", repo_root() / "runs"))
    d = base / ("smoke" if smoke else "full")
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def figure_dir(smoke: bool = False) -> Path:
    """``figures/`` for full runs (committed), ``runs/smoke/figures`` for SMOKE runs."""
    d = run_dir(smoke) / "figures" if smoke else repo_root() / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir(smoke: bool = False) -> Path:
    """``results/`` for full runs (committed), ``runs/smoke/results`` for SMOKE runs."""
    d = run_dir(smoke) / "results" if smoke else repo_root() / "results"
    d.mkdir(parents=True, exist_ok=True)
    return d


def knobs(smoke: bool, **params: Any) -> SimpleNamespace:
    """Resolve a notebook's parameters for full or SMOKE mode — the only place SMOKE scales anything.

    Each keyword is either a plain value (used in both modes) or a ``(full, smoke)`` pair / 2-list
    (papermill passes lists), e.g. ``knobs(SMOKE, STEPS=(3000, 4), LR=1e-3)``.
    """
    out = {}
    for k, v in params.items():
        if isinstance(v, (tuple, list)) and len(v) == 2 and not isinstance(v, str):
            out[k] = v[1] if smoke else v[0]
        else:
            out[k] = v
    return SimpleNamespace(**out)


def found_or_compute(path: str | os.PathLike, compute: Callable[[], Any], force: bool = False) -> Path:
    """Return ``path`` if it exists (a file or a non-empty folder), else call ``compute()`` which must
    create it. ``force=True`` (or ``$FORCE=1``) recomputes."""
    p = Path(path)
    force = force or os.environ.get("FORCE", "") not in ("", "0")
    exists = p.is_file() or (p.is_dir() and any(p.iterdir()))
    if force or not exists:
        compute()
        if not (p.is_file() or (p.is_dir() and any(p.iterdir()))):
            raise RuntimeError(f"found_or_compute: computing {p} did not create it")
    return p


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
