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

Faults (docs/BAD_INPUT.md, "Checkpoints, resume and the command line"):

* every checkpoint gets a checksum sidecar ``ckpt_{step:07d}.pt.sha256`` (``sha256sum`` format, so
  ``sha256sum -c`` checks it by hand), written atomically after the checkpoint and verified on load; a
  checkpoint without a sidecar (a crash between the two writes) loads unverified;
* every load error is a :class:`CheckpointError` naming the file; loading a *folder* falls back from an
  unreadable or corrupt newest checkpoint to the previous good one with a ``RuntimeWarning``;
* :class:`RunLock` — one writer per folder (``filelock`` on ``<out_dir>/.lock``; the holder's pid, host and
  start time in ``.lock.holder``), :func:`remove_orphan_temp_files` — temp files a killed writer left.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pixelllm.utils import atomic_write_bytes, write_json

FORMAT = "pixelllm-ckpt-v1"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.tmp\d+$")          # what atomic_torch_save / utils.atomic_write_bytes write first


class CheckpointError(ValueError):
    """A checkpoint that cannot be used — unreadable, truncated, failing its checksum, not a checkpoint of
    this format, or holding tensors of another shape than the model's. The message starts with the file."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class RunInUseError(RuntimeError):
    """Another process holds the :class:`RunLock` of the folder (the message names it)."""


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


def load_trainable_state_dict(model: torch.nn.Module, state: dict, strict: bool = True,
                              source: str | os.PathLike = "checkpoint") -> None:
    """Load a :func:`trainable_state_dict` into ``model``. Keys the model lacks always raise; with
    ``strict`` every trainable parameter of the model must be present. Tensors of another shape (a
    checkpoint of another architecture) raise one :class:`CheckpointError` naming ``source``, the count
    and the first three, instead of ``load_state_dict``'s message per tensor."""
    model = unwrap(model)
    own = model.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
           if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        shown = "; ".join(f"{k}: {a} in the checkpoint vs {b} in the model" for k, a, b in bad[:3])
        raise CheckpointError(source, f"{len(bad)} tensor(s) have another shape than the model's, i.e. it was "
                                      f"made by another architecture ({shown}{' ...' if len(bad) > 3 else ''})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise KeyError(f"{source}: checkpoint has weights the model lacks: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if strict:
        trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        lost = sorted(trainable & set(missing))
        if lost:
            raise KeyError(f"{source}: checkpoint misses trainable weights: {lost[:8]}{' ...' if len(lost) > 8 else ''}")


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


def checksum_path(path: str | os.PathLike) -> Path:
    """The checksum sidecar of checkpoint ``path``: ``<path>.sha256``."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checksum(path: str | os.PathLike) -> str:
    """Write the sidecar of ``path`` (``<hex>  <name>``, the ``sha256sum`` format) atomically; returns the hex."""
    digest = file_sha256(path)
    atomic_write_bytes(checksum_path(path), f"{digest}  {Path(path).name}\n".encode())
    return digest


def stored_checksum(path: str | os.PathLike) -> Optional[str]:
    """The hex digest recorded in the sidecar of ``path`` (None without a sidecar)."""
    side = checksum_path(path)
    if not side.is_file():
        return None
    text = side.read_text(errors="replace").split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise CheckpointError(side, "not a sha256 sidecar (expected '<64 hex digits>  <file name>')")
    return text[0]


def checkpoint_checksum(path: str | os.PathLike) -> str:
    """The SHA-256 of checkpoint ``path``: its sidecar's value when it has one, else computed."""
    return stored_checksum(path) or file_sha256(path)


def verify_checksum(path: str | os.PathLike) -> Optional[bool]:
    """True when ``path`` matches its sidecar, None when it has none; a mismatch raises :class:`CheckpointError`."""
    want = stored_checksum(path)
    if want is None:
        return None
    got = file_sha256(path)
    if got != want:
        raise CheckpointError(path, f"checksum mismatch (sha256 {got[:12]}... vs {want[:12]}... in "
                                    f"{checksum_path(path).name}): the file is corrupt")
    return True


def remove_orphan_temp_files(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files (``.<name>.tmp<pid>``) that a killed writer left in ``out_dir``; returns them.
    Call it only while holding the folder's :class:`RunLock` (no live writer then)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    doomed = sorted(p for p in d.iterdir() if p.is_file() and _TEMP.match(p.name))
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


class RunLock:
    """Exclusive, re-entrant lock of a run folder: ``with RunLock(out_dir): ...``.

    ``filelock.FileLock`` on ``<out_dir>/.lock`` (an OS lock: released when the process dies), taken without
    waiting; the holder writes ``{"pid", "host", "since"}`` to ``.lock.holder`` so that a second run fails
    with :class:`RunInUseError` naming it. Nested ``with`` blocks of one instance lock once."""

    def __init__(self, out_dir: str | os.PathLike):
        self.dir = Path(out_dir)
        self._lock = None
        self._depth = 0

    @property
    def holder_path(self) -> Path:
        return self.dir / ".lock.holder"

    def holder(self) -> str:
        """Who holds the lock, as text (from ``.lock.holder``; "unknown" when unreadable)."""
        try:
            h = json.loads(self.holder_path.read_text())
            return f"pid {h['pid']} on {h['host']}, since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __enter__(self) -> "RunLock":
        if self._depth == 0:
            import filelock

            self.dir.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(str(self.dir / ".lock"), timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise RunInUseError(f"{self.dir} is in use by another run ({self.holder()}); wait for it to "
                                    "finish, stop it, or give this run another out_dir") from None
            self._lock = lock
            write_json(self.holder_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._lock is not None:
            self.holder_path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None


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
        checksum_path(p).unlink(missing_ok=True)
    return doomed


def save_checkpoint(out_dir: str | os.PathLike, *, model: torch.nn.Module, step: int, config_json: str = "{}",
                    optimizer=None, scheduler=None, epoch: int = 0, batch_in_epoch: int = 0,
                    rng: Optional[list] = None, metrics: Optional[dict] = None, keep_last: int = 0,
                    extra: Optional[dict] = None) -> Path:
    """Write ``<out_dir>/ckpt_{step:07d}.pt`` atomically, then its checksum sidecar, then keep only the
    ``keep_last`` newest (0 = keep all). ``rng`` = list of per-rank :func:`rng_state` dicts (default: this
    process's); ``extra`` = further plain fields (e.g. ``init_checksums``)."""
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
        **(extra or {}),
    }
    target = checkpoint_path(out_dir, step)
    checksum_path(target).unlink(missing_ok=True)      # a stale sidecar must never vouch for the new file
    path = atomic_torch_save(obj, target)
    write_checksum(path)
    if keep_last > 0:
        prune_checkpoints(out_dir, keep_last)
    return path


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """One checkpoint file: checksum verified (when it has a sidecar), ``torch.load(weights_only=True)``,
    format checked. Every failure is a :class:`CheckpointError` naming the file."""
    p = Path(path)
    verify_checksum(p)
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:          # noqa: BLE001 — garbage makes the unpickler raise anything (struct.error, ...)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(p, f"cannot be read by torch.load(weights_only=True) ({type(e).__name__}: {first}); "
                                 "truncated, corrupt or not a checkpoint") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(p, f"not a {FORMAT} checkpoint (field 'format' = "
                                 f"{obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
    missing = [k for k in ("step", "model") if k not in obj]
    if missing:
        raise CheckpointError(p, f"{FORMAT} checkpoint without the field(s) {missing}")
    obj["path"] = str(p)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint: a file (:func:`read_checkpoint_file`), or a folder → its newest *usable*
    checkpoint: an unreadable or corrupt newer one is passed over with a ``RuntimeWarning`` naming it (the
    previous good one is returned). Raises :class:`FileNotFoundError` when there is none, and
    :class:`CheckpointError` listing every file when none is usable."""
    p = Path(path)
    if p.is_file():
        return read_checkpoint_file(p, map_location)
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise FileNotFoundError(f"no checkpoint at {path}")
    errors = []
    for c in reversed(ckpts):
        try:
            obj = read_checkpoint_file(c, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        for e in errors:
            warnings.warn(f"{e}; using the previous good checkpoint {c.name}", RuntimeWarning, stacklevel=2)
        return obj
    raise CheckpointError(p, f"none of its {len(ckpts)} checkpoint(s) is usable: " + " | ".join(errors))
