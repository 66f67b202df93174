"""Small helpers shared by the package, the notebooks and the benchmarks.

* :func:`repo_root` / :func:`run_dir` / :func:`figure_dir` / :func:`results_dir` — where artifacts live.
  Full runs write into ``runs/full`` (data, checkpoints), ``figures/`` and ``results/``;
  SMOKE runs write everything under ``runs/smoke`` so that CI never overwrites the committed figures.
* :func:`knobs` — the one place where SMOKE scales a notebook's parameters.
* :func:`found_or_compute` — "found → load, else compute" for artifacts shared between notebooks; an
  artifact is reused only when the config stored beside it matches the requested one.
"""
from __future__ import annotations

import contextlib
import dataclasses
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


#: config fields that say where or how often things are written, not what is computed: ignored when a
#: stored artifact's config is compared with the requested one.
VOLATILE_CONFIG_KEYS = frozenset({
    "run_dir", "data_dir", "out_dir", "tokenizer_dir", "sam_checkpoint", "t5_dir", "device", "num_workers",
    "log_interval", "eval_interval", "ckpt_interval", "keep_last", "time_limit_s", "progress",
    "eval_batch_size", "ddp_find_unused", "cache_decoded", "num_threads"})


class ConfigMismatchError(RuntimeError):
    """A stored artifact was made by another config than the one requested (strict mode)."""


def config_sidecar(path: str | os.PathLike) -> Path:
    """Where the config that produced artifact ``path`` is stored: ``<path>.config.json`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".config.json")


def _config_dict(config: Any) -> dict:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, sort_keys=True, default=str))   # tuples → lists, as stored


#: config fields that only change what one task trains on: compared only when one of the two configs has
#: that task in its ``tasks`` mixture (a captioning or SAM pretraining is the same recipe whatever the LN
#: token alignment is).
TASK_CONFIG_KEYS = {"ln_alignment": "trace", "ln_file": "trace"}


#: config fields added after artifacts were made, with the value that reproduces what was done before they
#: existed: an artifact whose stored config lacks the field matches a config holding that value.
NEUTRAL_NEW_KEYS = {"lr_multipliers": {}, "group_by_length": False, "cell_weight": 0.0, "word_weights": {}}


#: recorded facts (not config fields) compared only when the stored side has them: an artifact made before
#: they were recorded is taken as matching. ``init_checksums``: the SHA-256 of the ``init_from``
#: checkpoints a stage started from (``pixelllm.engine.builder.stage_config``).
RECORDED_KEYS = frozenset({"init_checksums"})


def config_difference(stored: dict, wanted: dict) -> dict:
    """``{key: (stored, wanted)}`` for every compared key whose value differs (volatile keys ignored,
    :data:`TASK_CONFIG_KEYS` ignored when neither config trains their task, a missing
    :data:`NEUTRAL_NEW_KEYS` field equal to its neutral value, :data:`RECORDED_KEYS` only when stored)."""
    keys = (set(stored) | set(wanted)) - VOLATILE_CONFIG_KEYS - (RECORDED_KEYS - set(stored))
    tasks = set(stored.get("tasks") or {}) | set(wanted.get("tasks") or {})
    keys -= {k for k, task in TASK_CONFIG_KEYS.items() if task not in tasks}
    keys -= {k for k, neutral in NEUTRAL_NEW_KEYS.items()
             if (k not in stored and wanted.get(k) == neutral) or (k not in wanted and stored.get(k) == neutral)}
    missing = object()
    return {k: (stored.get(k, "<absent>"), wanted.get(k, "<absent>")) for k in sorted(keys)
            if stored.get(k, missing) != wanted.get(k, missing)}


def strict_mode() -> bool:
    """``$PIXELLLM_STRICT`` is set (not "" or "0"): an artifact or a checkpoint folder made by another
    config is refused (:class:`ConfigMismatchError`) instead of being recomputed or set aside."""
    return os.environ.get("PIXELLLM_STRICT", "") not in ("", "0")


def _exists(p: Path) -> bool:
    return p.is_file() or (p.is_dir() and any(p.iterdir()))


def found_or_compute(path: str | os.PathLike, compute: Callable[[], Any], force: bool = False,
                     config: Any = None, strict: bool | None = None) -> Path:
    """Return ``path`` if it exists (a file or a non-empty folder) **and was made by ``config``**, else call
    ``compute()``, which must create it.

    ``config`` (a config dataclass or dict) describes how the artifact is made; it is written beside the
    artifact (:func:`config_sidecar`) after computing and compared on reuse, ignoring
    :data:`VOLATILE_CONFIG_KEYS`. An artifact made by another config (or of unknown origin) is recomputed,
    or, with ``strict=True`` / ``$PIXELLLM_STRICT=1``, :class:`ConfigMismatchError` names the difference.
    ``force=True`` (or ``$FORCE=1``) always recomputes."""
    p = Path(path)
    force = force or os.environ.get("FORCE", "") not in ("", "0")
    strict = strict_mode() if strict is None else strict
    wanted = _config_dict(config) if config is not None else None
    reuse = _exists(p) and not force
    if reuse and wanted is not None:
        side = config_sidecar(p)
        stored = json.loads(side.read_text()) if side.is_file() else None
        diff = config_difference(stored, wanted) if stored is not None else {"<config>": ("unknown", "given")}
        if diff:
            msg = (f"{p} was made by another config: "
                   + "; ".join(f"{k}: stored {a!r} vs wanted {b!r}" for k, (a, b) in diff.items()))
            if strict:
                raise ConfigMismatchError(msg + " (unset PIXELLLM_STRICT to recompute it)")
            print(msg + " -> recomputing")
            reuse = False
    if not reuse:
        compute()
        if not _exists(p):
            raise RuntimeError(f"found_or_compute: computing {p} did not create it")
        if wanted is not None:
            write_json(config_sidecar(p), wanted)
    return p


def preset_config(preset: Any, presets: dict[str, T], overrides: dict, who: str) -> T:
    """A preset's config dataclass with ``overrides`` (field → value) applied: ``preset`` is a name of
    ``presets`` or a config instance itself; an unknown name raises ``KeyError`` naming ``who`` and the
    known ones (the builders of PixelLLM and PixelLM)."""
    if isinstance(preset, str):
        if preset not in presets:
            raise KeyError(f"{who}: unknown preset {preset!r}; known: {sorted(presets)}")
        preset = presets[preset]
    return dataclasses.replace(preset, **overrides)


@contextlib.contextmanager
def eval_mode(module: Any):
    """Run a block with ``module`` in eval mode, then give it back the mode it had. A module already in eval
    mode is left alone: ``Module.train()`` walks every submodule, and for a PixelLLM on a CPU that walk takes
    about as long as a batch-1 forward pass."""
    was = module.training
    if was:
        module.eval()
    try:
        yield module
    finally:
        if was:
            module.train(True)


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
