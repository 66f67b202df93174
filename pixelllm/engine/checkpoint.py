"""Self-describing, atomically written, resumable checkpoints.

One checkpoint = one ``torch.save`` file ``<out_dir>/ckpt_{step:07d}.pt`` holding only plain containers and
tensors, so it loads with ``torch.load(weights_only=True)`` (no pickle of user classes):

    format          "pixelllm-ckpt-v1"
    config          the TrainConfig as a JSON string (the checkpoint describes itself)
    step            optimizer steps done
    epoch, batch_in_epoch   data position: batches of the current epoch already consumed (seeded sampler)
    model           trainable parameters + persistent buffers (frozen weights come from their own files)
    optimizer       optimizer.state_dict()
    scheduler       lr_scheduler.state_dict()
    rng             list (one per rank) of {"python", "numpy", "torch", "cuda"} states
    metrics         last logged metrics (for humans)

Writes go to a temp file in the same folder, then ``os.replace`` — a crash never leaves a partial
checkpoint under the final name. Only the last ``keep_last`` checkpoints are kept.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

FORMAT = "pixelllm-ckpt-v1"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


# ----------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """This process's RNG states as weights_only-loadable containers."""
    bitgen, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),                                   # (version, tuple of ints, None)
        "numpy": {"bit_generator": bitgen, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (python tuples may come back as lists: converted)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- model
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def trainable_state_dict(model: torch.nn.Module) -> dict:
    """state_dict without the frozen parameters (requires_grad False), i.e. trainable weights + buffers."""
    model = unwrap(model)
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state_dict(model: torch.nn.Module, state: dict, strict: bool = True) -> None:
    """Load a :func:`trainable_state_dict` into ``model``. Keys the model lacks always raise; with
    ``strict`` every trainable parameter of the model must be present."""
    model = unwrap(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise KeyError(f"checkpoint has weights the model lacks: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if strict:
        trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        lost = sorted(trainable & set(missing))
        if lost:
            raise KeyError(f"checkpoint misses trainable weights: {lost[:8]}{' ...' if len(lost) > 8 else ''}")


# ------------------------------------------------------------------------------------------- files
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file next to ``path``, fsync, then ``os.replace``. On any error the temp
    file is removed and the previous file at ``path`` (if any) is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"ckpt_{step:07d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``out_dir`` sorted by step (temp files ignored)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(path: str | os.PathLike) -> Optional[Path]:
    """``path`` itself if it is a file, else the highest-step checkpoint in the folder (None if none)."""
    p = Path(path)
    if p.is_file():
        return p
    ckpts = list_checkpoints(p)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints; returns the deleted paths."""
    ckpts = list_checkpoints(out_dir)
    doomed = ckpts[:-keep_last] if keep_last > 0 else []
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def save_checkpoint(out_dir: str | os.PathLike, *, model: torch.nn.Module, step: int, config_json: str = "{}",
                    optimizer=None, scheduler=None, epoch: int = 0, batch_in_epoch: int = 0,
                    rng: Optional[list] = None, metrics: Optional[dict] = None, keep_last: int = 0) -> Path:
    """Write ``<out_dir>/ckpt_{step:07d}.pt`` atomically, then keep only the ``keep_last`` newest
    (0 = keep all). ``rng`` = list of per-rank :func:`rng_state` dicts (default: this process's)."""
    obj = {
        "format": FORMAT,
        "config": config_json,
        "step": int(step),
        "epoch": int(epoch),
        "batch_in_epoch": int(batch_in_epoch),
        "model": trainable_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "rng": rng if rng is not None else [rng_state()],
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
    }
    path = atomic_torch_save(obj, checkpoint_path(out_dir, step))
    if keep_last > 0:
        prune_checkpoints(out_dir, keep_last)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint (file, or folder → latest) with ``torch.load(weights_only=True)``."""
    p = latest_checkpoint(path)
    if p is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    obj = torch.load(p, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{p}: not a {FORMAT} checkpoint (field 'format' = {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
    obj["path"] = str(p)
    return obj
