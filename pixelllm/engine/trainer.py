"""A plain training loop (nanoGPT ``train.py`` / minGPT ``Trainer``): no framework, everything visible.

One optimizer step =
  1. ``accum_steps`` micro-batches from a seeded, resumable, rank-sliced sampler;
  2. per micro-batch: forward (bf16 autocast on CUDA, fp32 on CPU) → :func:`pixelllm_loss` normalised by
     the *global* token / point counts of the whole step (all micro-batches, all ranks) → backward
     (DDP all-reduces gradients on the last micro-batch only). Hence N ranks × accumulation give exactly
     the gradient of one big batch;
  3. non-finite loss → :class:`NonFiniteLossError` before the weights change (the last good checkpoint
     stays the newest file);
  4. clip the global grad norm, AdamW step, LR = linear warm-up + cosine (:func:`lr_factor`);
  5. rank 0: tqdm bar, a JSONL record every ``log_interval`` steps, the eval hook every
     ``eval_interval`` steps, a checkpoint every ``ckpt_interval`` steps and at the end.

The model is one of two kinds:

* a **captioner** (PixelLLM): ``forward`` takes (a subset of) the batch-dict keys
  ``images, boxes, prompt_ids, prompt_mask, target_ids, target_mask, image_sizes`` and returns an object
  (or dict) with ``logits`` B×T×V and ``points`` B×T×4 (pixels of the resized input; may be None); the
  loop applies :func:`pixelllm_loss` normalised by the global token / point counts;
* a **task that computes its own loss** (class attribute ``computes_own_loss = True``: the dense
  captioner, the referring segmenter, the three pretrainings): ``forward(batch, features=None)`` returns a
  dict with ``loss`` (the mean over its micro-batch) and any further terms to log.

If the model offers ``frozen_image_features(images, image_sizes)`` and its forward accepts ``features=``,
the frozen features are cached per image id (PAPER_NOTES.md §8: 2× faster steps on CPU); each image is
encoded alone (:class:`FeatureCache`), so its features do not depend on which batch first brought it.

Resume (:meth:`Trainer.resume`) is exact: an interrupted run resumed from its checkpoint reaches
bit-identical weights, optimizer state and losses as the uninterrupted run of the same config on the same
device and thread count — with or without the feature cache (both runs encode every image alone; a run
with the cache and one without differ by float rounding, ~1e-7, as a batched and a single convolution do).

Faults (docs/BAD_INPUT.md, "Checkpoints, resume and the command line"): the config is validated when the
Trainer starts (:meth:`~pixelllm.configs.TrainConfig.validate`) and so are the training images (all
present); ``out_dir`` is locked while the Trainer writes (:class:`~pixelllm.engine.checkpoint.RunLock`) and
temp files of a killed writer are removed; resume compares the stored config and the ``init_from``
checkpoints' checksums (:meth:`Trainer.config_difference`); a torn last ``metrics.jsonl`` record is
dropped; a finished run is reported "already complete" and its ``final.json`` kept.
The loop runs ``config.steps`` optimizer steps; ``config.time_limit_s`` (0 = off) is only a safety net
that stops early with a warning and marks ``final.json`` with ``stopped_early``.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from pixelllm.engine import checkpoint as ckpt
from pixelllm.engine import distributed as dist_utils
from pixelllm.engine.builder import init_checksums
from pixelllm.data.datasets import find_missing_images
from pixelllm.engine.distributed import DistInfo
from pixelllm.data.datasets import enable_image_cache
from pixelllm.modeling.losses import POINT_TASKS, count_targets, pixelllm_loss
from pixelllm.utils import (ConfigMismatchError, atomic_write_bytes, config_difference, config_sidecar, strict_mode,
                            write_json)

FORWARD_KEYS = ("images", "boxes", "prompt_ids", "prompt_mask", "target_ids", "target_mask", "image_sizes")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stopped before the optimizer step (weights unchanged)."""


# ------------------------------------------------------------------------------------- LR schedule
def param_groups(named: list, cfg) -> list[dict]:
    """AdamW parameter groups: nanoGPT's split (weight decay on matrices, not on biases / norms /
    embeddings-as-vectors) × the config's ``lr_multipliers`` ({module-name prefix: factor}, first match;
    e.g. a newly initialised head learning faster than the pretrained parts). Each group's ``lr`` is
    ``cfg.lr × factor`` (the schedule scales every group alike); empty groups are left out."""
    mults = dict(getattr(cfg, "lr_multipliers", None) or {})
    unknown = [k for k in mults if not any(n.startswith(k) for n, _ in named)]
    if unknown:
        raise ValueError(f"lr_multipliers: no trainable parameter starts with {unknown}")
    groups: dict[tuple, list] = {}
    for n, p in named:
        factor = next((float(f) for k, f in mults.items() if n.startswith(k)), 1.0)
        groups.setdefault((factor, p.dim() >= 2), []).append(p)
    return [{"params": ps, "lr": cfg.lr * factor, "weight_decay": cfg.weight_decay if decay else 0.0}
            for (factor, decay), ps in groups.items()]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based):
    linear warm-up (step+1)/warmup for the first ``warmup_steps`` steps, then a half cosine from 1 down
    to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------- data
class ResumableSampler(Sampler):
    """``DistributedSampler`` (the epoch's permutation is seeded by seed + epoch and sliced per rank,
    tail dropped so every rank gets the same count) that can start ``start`` samples into the epoch.

    With ``num_replicas = 1`` it is a seeded shuffle; with N ranks the union of the ranks' k-th batches of
    size b equals the k-th batch of size N·b of the single-process run.

    With ``lengths`` (one target length per sample) and ``batch_size`` (the micro-batch of one rank), the
    epoch's order is length-grouped: transformers' ``get_length_grouped_indices`` (a seeded permutation cut
    into mega-batches of 50 batches, each sorted by length) cut into global batches of
    ``batch_size × num_replicas``, whose order is then shuffled (the last, partial one stays last). The
    shuffle is ours: the library's order runs from long to short inside each mega-batch, which in a task
    mixture means blocks of tens of batches of one task. Each rank then takes its strided share, so the
    union property above still holds.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 lengths: Optional[Sequence[int]] = None, batch_size: int = 1):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=True)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"ResumableSampler: {len(lengths)} lengths for {len(dataset)} samples")
        self.lengths = None if lengths is None else [int(n) for n in lengths]
        self.global_batch = batch_size * num_replicas
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.start = start

    def grouped_order(self) -> list[int]:
        """This epoch's length-grouped order of all samples (before the rank's share is taken)."""
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator().manual_seed(self.inner.seed + self.inner.epoch)
        idx = get_length_grouped_indices(self.lengths, self.global_batch, generator=g)
        full = len(idx) // self.global_batch
        batches = [idx[k * self.global_batch:(k + 1) * self.global_batch] for k in range(full)]
        order = torch.randperm(full, generator=g).tolist()
        return [i for k in order for i in batches[k]] + idx[full * self.global_batch:]

    def __iter__(self) -> Iterator[int]:
        if self.lengths is None:
            return iter(list(self.inner)[self.start:])
        inner = self.inner                          # the same drop_last arithmetic as DistributedSampler
        mine = self.grouped_order()[:inner.total_size][inner.rank:inner.total_size:inner.num_replicas]
        return iter(mine[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a batch dict moved to ``device`` (lists of strings stay)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class FeatureCache:
    """Frozen-encoder features per image id, computed once (``encode(images, image_sizes)`` → B×C×h×w).

    Each new image is encoded alone (a batch of one): a batched convolution may round differently from a
    single one (~1e-7), and which images share the batch that first brings an image depends on the data
    position — a resumed run would otherwise see features that differ from the uninterrupted run's."""

    def __init__(self, encode: Callable):
        self.encode = encode
        self.store: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        ids = [str(i) for i in batch["image_ids"]]
        todo = sorted({i for i in ids if i not in self.store})
        for i in todo:
            row = ids.index(i)
            sizes = batch["image_sizes"][row:row + 1] if "image_sizes" in batch else None
            self.store[i] = self.encode(batch["images"][row:row + 1], sizes)[0].detach()
        self.misses += len(todo)
        self.hits += len(ids) - len(todo)
        return torch.stack([self.store[i] for i in ids])


def _forward_arg_names(model: torch.nn.Module) -> Optional[set]:
    """Keyword names ``model.forward`` accepts (None = anything, it has ``**kwargs``)."""
    params = inspect.signature(ckpt.unwrap(model).forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def computes_own_loss(model: torch.nn.Module) -> bool:
    """True for a task model whose ``forward(batch, features=None)`` returns its loss dict."""
    return bool(getattr(ckpt.unwrap(model), "computes_own_loss", False))


def forward_keys(model: torch.nn.Module) -> tuple[str, ...]:
    """The batch-dict keys (of :data:`FORWARD_KEYS`) that a captioner's forward accepts."""
    names = _forward_arg_names(model)
    return tuple(k for k in FORWARD_KEYS if names is None or k in names)


def forward_batch(model: torch.nn.Module, batch: dict, features: Optional[torch.Tensor] = None,
                  keys: Optional[Sequence[str]] = None):
    """Call a captioner on the batch-dict keys its forward accepts (``keys``: :func:`forward_keys` of the
    model, computed once by the caller; None = inspect it now); returns (logits B×T×V, points B×T×4|None,
    cell_logits B×T×H×W|None — a pointer head's attention logits over the grid)."""
    keys = forward_keys(model) if keys is None else keys
    kw = {k: batch[k] for k in keys if k in batch}
    if features is not None:
        kw["features"] = features
    out = model(**kw)
    if isinstance(out, dict):
        return out["logits"], out.get("points"), out.get("cell_logits")
    return out.logits, getattr(out, "points", None), getattr(out, "cell_logits", None)


def frozen_feature_fn(model: torch.nn.Module) -> Optional[Callable]:
    """``encode(images, image_sizes) -> B×C×h×w`` for the model's frozen image branch
    (``model.frozen_image_features``), or None when the model has none to cache. The model's forward must
    accept ``features=``."""
    names = _forward_arg_names(model)
    if names is not None and "features" not in names:
        return None
    fn = getattr(model, "frozen_image_features", None)
    if fn is None or not getattr(model, "has_frozen_features", True):
        return None
    return fn


# ----------------------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``model`` on ``train_dataset`` following ``config`` (a :class:`~pixelllm.configs.TrainConfig`).

    Args:
        model: the module (already built and, for stage 2, initialised); frozen parts have
            ``requires_grad=False`` — only trainable parameters go to AdamW and into checkpoints.
        config: TrainConfig (uses batch_size, accum_steps, steps, lr, warmup_steps, min_lr_ratio,
            weight_decay, betas, grad_clip, amp, lambda_point, label_smoothing, giou_weight, seed,
            log/eval/ckpt intervals, keep_last, num_workers, cache_sam_features, cache_decoded, num_threads,
            augment).
        train_dataset / collate_fn: map-style dataset and the collate producing the batch dict.
        out_dir: checkpoints and ``metrics.jsonl`` (None = nothing written).
        eval_fn: optional hook ``eval_fn(model, step) -> dict`` run on rank 0 (model in eval mode,
            under no_grad); its numbers go to the log as ``eval/<name>``.
        dist_info: from :func:`pixelllm.engine.distributed.init_distributed` (default single process).
    """

    def __init__(self, model: torch.nn.Module, config, train_dataset: Dataset, collate_fn: Callable, *,
                 out_dir: str | os.PathLike | None = None, eval_fn: Optional[Callable] = None,
                 loss_fn: Callable = pixelllm_loss, dist_info: Optional[DistInfo] = None, progress: bool = True):
        cfg = self.cfg = config
        if hasattr(cfg, "validate"):
            cfg.validate()
        if getattr(cfg, "num_threads", 0) > 0:          # once, here, not per step
            torch.set_num_threads(cfg.num_threads)
        self.dist = dist_info or DistInfo(device=dist_utils.resolve_device(cfg.device))
        self.device = torch.device(self.dist.device)
        self.out_dir = Path(out_dir) if out_dir else None
        self.eval_fn, self.loss_fn, self.progress = eval_fn, loss_fn, progress
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} (global) is not divisible by world_size={self.dist.world_size}")
        self.local_batch = cfg.batch_size // self.dist.world_size

        # per-rank seeds for dropout etc. (model init happened before; DDP broadcasts rank 0's weights)
        seed = cfg.seed + self.dist.rank
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)

        self.model = model.to(self.device)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(param_groups(named, cfg), lr=cfg.lr, betas=tuple(cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                    min_ratio=cfg.min_lr_ratio))
        self.net = model
        if self.dist.enabled:
            self.net = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.ddp_find_unused)

        self.dataset, self.collate_fn = train_dataset, collate_fn
        self.decoded = enable_image_cache(train_dataset) if getattr(cfg, "cache_decoded", False) else None
        lengths = None
        if getattr(cfg, "group_by_length", False):
            from pixelllm.engine.datasets import sample_lengths
            lengths = sample_lengths(train_dataset)
        self.sampler = ResumableSampler(train_dataset, self.dist.world_size, self.dist.rank, shuffle=True, seed=cfg.seed,
                                        lengths=lengths, batch_size=self.local_batch)
        if len(self.sampler.inner) < self.local_batch:
            raise ValueError(f"{len(train_dataset)} training samples < one batch of {cfg.batch_size}")
        missing = find_missing_images(train_dataset) if self.dist.is_main else []
        if missing:
            raise FileNotFoundError(f"{len(missing)} training image(s) do not exist, e.g. "
                                    f"{', '.join(str(m) for m in missing[:3])} (found before training)")
        # a private generator: creating a DataLoader iterator must not consume the global RNG
        # (else a resumed run, which creates one mid-epoch, would draw different dropout masks)
        self.loader_gen = torch.Generator().manual_seed(cfg.seed + self.dist.rank)

        self.cache = None
        encode = frozen_feature_fn(model)
        if cfg.cache_sam_features and not cfg.augment and encode is not None:
            self.cache = FeatureCache(encode)

        self.own_loss = computes_own_loss(model)
        self.forward_keys = None if self.own_loss else forward_keys(model)
        self.stopped_early = False
        self.step = self.epoch = self.batch_in_epoch = 0
        self.history: list[dict] = []         # one record per optimizer step (all ranks)
        self.last_checkpoint: Optional[Path] = None
        self._t0 = time.time()
        self._eval_seconds = 0.0
        self._resumed_metrics: dict = {}
        self.init_checksums = init_checksums(cfg) if getattr(cfg, "init_from", "") else {}
        self._run_lock = ckpt.RunLock(self.out_dir) if (self.out_dir is not None and self.dist.is_main) else None
        self._cleaned = False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``out_dir``'s :class:`~pixelllm.engine.checkpoint.RunLock` (rank 0; re-entrant); on the
        first entry, remove the temp files a killed writer left. A trainer whose ``out_dir`` was set to None
        after construction (it writes nothing, e.g. a benchmark) holds no lock."""
        if self._run_lock is None or self.out_dir is None:
            yield
            return
        with self._run_lock:
            if not self._cleaned:
                self._cleaned = True
                gone = ckpt.remove_orphan_temp_files(self.out_dir)
                if gone:
                    print(f"[{self.cfg.stage}] {self.out_dir}: removed {len(gone)} temp file(s) left by a killed "
                          f"run: {', '.join(p.name for p in gone[:4])}")
            yield

    # ------------------------------------------------------------------------------ state / resume
    @property
    def log_path(self) -> Optional[Path]:
        return self.out_dir / "metrics.jsonl" if self.out_dir else None

    def save(self, metrics: Optional[dict] = None) -> Optional[Path]:
        """Checkpoint the full training state (collective: every rank must call it; rank 0 writes)."""
        rngs = dist_utils.all_gather_object(ckpt.rng_state())
        if not self.dist.is_main or self.out_dir is None:
            return None
        with self._locked():
            self.last_checkpoint = ckpt.save_checkpoint(
                self.out_dir, model=self.model, step=self.step, config_json=self.cfg.to_json(),
                optimizer=self.optimizer, scheduler=self.scheduler, epoch=self.epoch,
                batch_in_epoch=self.batch_in_epoch, rng=rngs, metrics=metrics, keep_last=self.cfg.keep_last,
                extra={"init_checksums": self.init_checksums})
        return self.last_checkpoint

    def config_difference(self, state: dict, ignore: tuple = ("steps", "stage")) -> dict:
        """``{key: (stored, current)}`` between the config stored in checkpoint ``state`` and this run's,
        volatile keys and ``ignore`` left out (by default another ``steps`` continues the same recipe: it
        is re-applied with a log line by :meth:`resume`). The pseudo-key ``"init_from checkpoints"``
        compares the checksums of the ``init_from`` checkpoints (:func:`~pixelllm.engine.builder.init_checksums`)
        when the checkpoint stored them: a stage initialised from a since-retrained stage differs."""
        stored = json.loads(state.get("config") or "{}")
        diff = config_difference(stored, json.loads(self.cfg.to_json())) if stored else {}
        diff = {k: v for k, v in diff.items() if k not in ignore}
        inits = state.get("init_checksums")
        if inits is not None and dict(inits) != self.init_checksums:
            short = lambda d: {k: v[:12] + "..." for k, v in d.items()}      # noqa: E731
            diff["init_from checkpoints"] = (short(dict(inits)), short(self.init_checksums))
        return diff

    @property
    def eval_seconds(self) -> float:
        """Seconds spent in the eval hook so far (training time excludes them)."""
        return self._eval_seconds

    def discard_mismatched_run(self, ignore: tuple = ("steps", "stage"), strict: Optional[bool] = None) -> dict:
        """Make ``out_dir`` resumable by this config. When its latest checkpoint was made by another config
        (:meth:`config_difference`, ``ignore`` left out; retrained ``init_from`` checkpoints included), that
        run's checkpoints (+ checksum sidecars), ``metrics.jsonl`` and ``final.json`` are **moved** to
        ``out_dir/superseded/<UTC time>/`` with a log line naming the differing keys (nothing is deleted),
        or, when ``strict`` (default: ``$PIXELLLM_STRICT``, as :func:`pixelllm.utils.found_or_compute`),
        :class:`ConfigMismatchError` lists them and nothing moves. A log with no checkpoint (a run killed
        before its first one) is removed. :meth:`resume` then starts from step 0. What a stage recomputed
        like a :func:`~pixelllm.utils.found_or_compute` artifact needs. Returns the difference ({} when
        nothing was moved)."""
        out = self.out_dir
        if out is None or not self.dist.is_main:
            return {}
        strict = strict_mode() if strict is None else strict
        with self._locked():
            if ckpt.latest_checkpoint(out) is None:
                for f in (Path(out) / "metrics.jsonl", Path(out) / "final.json"):
                    f.unlink(missing_ok=True)
                return {}
            with warnings.catch_warnings():      # a fallback is reported once, by resume()
                warnings.simplefilter("ignore", RuntimeWarning)
                state = ckpt.load_checkpoint(out)
            diff = self.config_difference(state, ignore=ignore)
            if not diff:
                return {}
            what = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
            if strict:
                raise ConfigMismatchError(f"{out}: checkpoint made by another config ({what}); unset "
                                          "PIXELLLM_STRICT to set that run aside and start afresh, or use another out_dir")
            dest = self._set_aside()
            print(f"[{self.cfg.stage}] {out}: checkpoint made by another config ({what}); that run moved to "
                  f"{dest}, starting afresh")
        return diff

    def _set_aside(self) -> Path:
        """Move the run in ``out_dir`` (checkpoints + sidecars, ``metrics.jsonl``, ``final.json`` + its config) to
        ``out_dir/superseded/<UTC time>/``; returns that folder. Call it holding the lock."""
        out = Path(self.out_dir)
        dest = out / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if dest.exists():
            dest = dest.with_name(f"{dest.name}_{os.getpid()}_{len(list(dest.parent.iterdir()))}")
        dest.mkdir(parents=True, exist_ok=True)
        ckpts = ckpt.list_checkpoints(out)
        for f in [*ckpts, *(ckpt.checksum_path(c) for c in ckpts), out / "metrics.jsonl", out / "final.json",
                  config_sidecar(out / "final.json")]:
            if f.is_file():
                os.replace(f, dest / f.name)
        return dest

    def resume_and_fit(self, resume: bool = True) -> "Trainer":
        """What every stage runner does: resume from ``out_dir`` when ``resume`` (a run made by another
        config is set aside, :meth:`resume` with ``discard_mismatch``), say so, train to ``config.steps``.
        Returns the trainer."""
        if resume and self.resume(discard_mismatch=True) and self.progress and self.dist.is_main:
            print(f"[{self.cfg.stage}] resumed from {self.last_checkpoint} at step {self.step}")
        self.fit()
        return self

    def resume(self, path: str | os.PathLike | None = None, discard_mismatch: bool = False) -> bool:
        """Restore model (trainable weights), optimizer, scheduler, RNG and data position from ``path``
        (file or folder; default ``out_dir``; a folder's corrupt newest checkpoint is passed over with a
        warning, :func:`~pixelllm.engine.checkpoint.load_checkpoint`). Returns False when there is nothing
        to resume.

        Per key of the stored config: volatile keys (:data:`pixelllm.utils.VOLATILE_CONFIG_KEYS`: where and
        how often things are written) are ignored; another ``steps`` is re-applied with a log line (the LR
        schedule follows the new count; fewer steps than the checkpoint has done is refused); any other
        difference — batch size, seed, lr, architecture, data, retrained ``init_from`` checkpoints — raises
        :class:`ConfigMismatchError` listing every differing key, before a weight is loaded, unless
        ``discard_mismatch`` (``out_dir`` only): then that run is set aside first
        (:meth:`discard_mismatched_run`) and training starts from step 0."""
        with self._locked():
            if discard_mismatch and path is None:
                self.discard_mismatched_run()
            path = path or self.out_dir
            if path is None or ckpt.latest_checkpoint(path) is None:
                return False
            state = ckpt.load_checkpoint(path, map_location=self.device)
            diff = self.config_difference(state)
            if diff:
                raise ConfigMismatchError(
                    f"resume: {state['path']} was trained with another config ("
                    + "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
                    + "); use another out_dir or start without resuming")
            stored_steps = json.loads(state.get("config") or "{}").get("steps", self.cfg.steps)
            if state["step"] > self.cfg.steps:
                raise ConfigMismatchError(f"resume: {state['path']} is at step {state['step']}, past steps="
                                          f"{self.cfg.steps}; ask for at least {state['step']} steps or use another out_dir")
            if stored_steps != self.cfg.steps and self.dist.is_main:
                print(f"[{self.cfg.stage}] resume: steps {stored_steps} -> {self.cfg.steps} re-applied (the LR "
                      f"schedule now runs to step {self.cfg.steps})")
            ckpt.load_trainable_state_dict(self.model, state["model"], source=state["path"])
            try:        # a checkpoint without a sidecar is unverified: damaged fields fail here, named
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.step, self.epoch, self.batch_in_epoch = (int(state["step"]), int(state["epoch"]),
                                                              int(state["batch_in_epoch"]))
                rngs = state["rng"]
                if len(rngs) == self.dist.world_size:
                    ckpt.set_rng_state(rngs[self.dist.rank])
                elif self.dist.is_main:
                    print(f"resume: checkpoint has RNG states of {len(rngs)} rank(s), running {self.dist.world_size}: "
                          "RNG not restored (data position is)")
            except Exception as e:  # noqa: BLE001 — any damaged field
                raise ckpt.CheckpointError(state["path"], f"its training state cannot be restored ({type(e).__name__}: "
                                           f"{(str(e).splitlines() or [''])[0][:200]}); delete it to resume from "
                                           "the previous checkpoint") from None
            self.last_checkpoint = Path(state["path"])
            self._resumed_metrics = dict(state.get("metrics") or {})   # the last step's record, for final.json
            if self.dist.is_main and self.log_path and self.log_path.exists():
                self._cut_log(self.step)
        return True

    def _cut_log(self, step: int) -> None:
        """Rewrite ``metrics.jsonl`` (atomically) without the records past ``step`` (the resumed run writes
        them again: no duplicates) and without unparsable lines — a torn last line of a killed run — which
        are dropped with a ``RuntimeWarning`` naming file and line."""
        keep, torn = [], []
        for lineno, line in enumerate(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                torn.append(lineno)
            elif not isinstance(rec.get("step", 0), (int, float)) or rec.get("step", 0) <= step:
                keep.append(line)
        if torn:
            warnings.warn(f"{self.log_path}: line(s) {torn} are not JSON records (a run killed mid-write); "
                          "dropped", RuntimeWarning, stacklevel=3)
        atomic_write_bytes(self.log_path, "".join(ln + "\n" for ln in keep).encode())

    def already_complete(self) -> bool:
        """True when this run is at ``config.steps`` and ``final.json`` records that step (not stopped early)."""
        final = self.out_dir / "final.json" if self.out_dir is not None else None
        if self.step < self.cfg.steps or final is None or not final.is_file():
            return False
        try:
            rec = json.loads(final.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(rec, dict) and rec.get("step") == self.step and not rec.get("stopped_early")

    # ------------------------------------------------------------------------------------- loop
    def _batches(self) -> Iterator[dict]:
        """Endless stream of local micro-batches; tracks (epoch, batch_in_epoch) for resuming."""
        while True:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.local_batch)
            loader = DataLoader(self.dataset, batch_size=self.local_batch, sampler=self.sampler,
                                collate_fn=self.collate_fn, drop_last=True, num_workers=self.cfg.num_workers,
                                generator=self.loader_gen, persistent_workers=False)
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _log(self, record: dict) -> None:
        if self.dist.is_main and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _over_time_limit(self) -> bool:
        """The safety net: training time (evaluation excluded) past ``config.time_limit_s`` (0 = never).
        The decision is broadcast from rank 0 so that all ranks stop at the same step."""
        limit = getattr(self.cfg, "time_limit_s", 0) or 0
        if limit <= 0:
            return False
        over = torch.tensor([float(time.time() - self._t0 - self._eval_seconds > limit)], device=self.device)
        if self.dist.enabled:
            torch.distributed.broadcast(over, src=0)
        return bool(over.item())

    def evaluate(self) -> dict:
        """Run the eval hook on rank 0 (eval mode, no grad); returns its metrics (empty on other ranks)."""
        if self.eval_fn is None or not self.dist.is_main:
            return {}
        t0 = time.time()
        try:
            return self._evaluate()
        finally:
            self._eval_seconds += time.time() - t0

    def _evaluate(self) -> dict:
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                res = self.eval_fn(self.model, self.step) or {}
        finally:
            self.model.train()
        rec = {"step": self.step, **{f"eval/{k}": float(v) for k, v in res.items() if isinstance(v, (int, float))}}
        self._log(rec)
        return res

    def fit(self, until: Optional[int] = None) -> list[dict]:
        """Train until ``config.steps`` optimizer steps are done (or stop early after step ``until``, e.g.
        to train in chunks; the LR schedule always follows ``config.steps``). Returns :attr:`history`.
        When the last step is reached, rank 0 writes ``out_dir/final.json`` (step, checkpoint, metrics); a run
        resumed at its last step whose ``final.json`` exists says "already complete" and writes nothing.
        ``out_dir`` stays locked meanwhile (:class:`~pixelllm.engine.checkpoint.RunLock`)."""
        with self._locked():
            if self.already_complete():
                if self.dist.is_main:
                    print(f"[{self.cfg.stage}] {self.out_dir}: already complete ({self.step}/{self.cfg.steps} "
                          "steps); final.json kept, nothing trained")
                return self.history
            if self.step == 0 and not self.history and self.dist.is_main and self.out_dir is not None:
                old = [f for f in (*ckpt.list_checkpoints(self.out_dir), self.log_path, self.out_dir / "final.json")
                       if f.is_file()]
                if old:          # training from step 0 over a run that was not resumed (e.g. --no-resume)
                    dest = self._set_aside()
                    print(f"[{self.cfg.stage}] {self.out_dir}: starting from step 0 over an earlier run (not "
                          f"resumed); its {len(old)} file(s) moved to {dest}")
            return self._fit(until)

    def _fit(self, until: Optional[int]) -> list[dict]:
        cfg, world = self.cfg, self.dist.world_size
        stop = cfg.steps if until is None else min(until, cfg.steps)
        self.net.train()
        batches = self._batches()
        point_tasks = POINT_TASKS
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.stage, dynamic_ncols=True, mininterval=1.0,
                   disable=not (self.dist.is_main and self.progress))
        window: list[dict] = []
        t_last, step_at_last = time.time(), self.step
        while self.step < stop:
            micro = [next(batches) for _ in range(cfg.accum_steps)]
            # global normalisers (tokens / points of the whole step on all ranks), ÷ world because DDP
            # averages the ranks' gradients
            if not self.own_loss:
                counts = torch.tensor([sum(count_targets(b, point_tasks)[i] for b in micro) for i in (0, 1)],
                                      dtype=torch.float64, device=self.device)
                dist_utils.all_reduce_sum(counts)
                n_tok, n_pt = (counts / world).tolist()
            terms: dict[str, float] = {}
            for i, b in enumerate(micro):
                b = to_device(b, self.device)
                last = i == len(micro) - 1
                sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.net.no_sync()
                with sync:
                    feats = self.cache(b) if self.cache is not None else None
                    if self.own_loss:
                        with self._autocast():
                            out = self.net(b) if feats is None else self.net(b, features=feats)
                        # the task's loss is a mean over its micro-batch: average the micro-batches
                        out = {k: v / cfg.accum_steps for k, v in out.items() if not k.startswith("n_")}
                    else:
                        with self._autocast():
                            logits, points, cells = forward_batch(self.net, b, feats, self.forward_keys)
                        out = self.loss_fn(logits, points, b, lambda_point=cfg.lambda_point,
                                           label_smoothing=cfg.label_smoothing, giou_weight=cfg.giou_weight,
                                           cell_logits=cells, cell_weight=cfg.cell_weight,
                                           num_tokens=n_tok, num_points=n_pt)
                    out["loss"].backward()
                for k, v in out.items():
                    if not k.startswith("n_"):
                        terms[k] = terms.get(k, 0.0) + float(torch.as_tensor(v).detach())
            names = sorted(terms)
            vals = torch.tensor([terms[k] for k in names], dtype=torch.float64, device=self.device)
            vals = (dist_utils.all_reduce_sum(vals) / world).tolist()  # global-batch averages
            terms = dict(zip(names, vals))
            if not all(math.isfinite(v) for v in vals):
                self.optimizer.zero_grad(set_to_none=True)
                msg = (f"non-finite loss at step {self.step + 1} ({', '.join(f'{k}={v}' for k, v in terms.items())}); "
                       f"stopped before the optimizer step. Last good checkpoint: "
                       f"{self.last_checkpoint or 'none written yet'}")
                self._log({"step": self.step + 1, "event": "non_finite_loss", "message": msg})
                bar.close()
                raise NonFiniteLossError(msg)
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
            else:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, float("inf")))
            lr = self.cfg.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)   # the base lr, whatever the group multipliers
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1

            rec = {"step": self.step, **terms, "lr": lr, "grad_norm": grad_norm, "epoch": self.epoch}
            self.history.append(rec)
            window.append(rec)
            bar.update(1)
            if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                dt = max(time.time() - t_last, 1e-9)
                sps = (self.step - step_at_last) * cfg.batch_size * cfg.accum_steps / dt
                mean = {k: sum(r[k] for r in window) / len(window) for k in terms}
                self._log({"step": self.step, **mean, "lr": lr, "grad_norm": grad_norm, "samples_per_s": sps,
                           "time": time.time() - self._t0, "epoch": self.epoch})
                bar.set_postfix(loss=f"{mean['loss']:.3f}", lr=f"{lr:.2e}", sps=f"{sps:.0f}")
                window, t_last, step_at_last = [], time.time(), self.step
            if cfg.eval_interval > 0 and self.step % cfg.eval_interval == 0 and self.step < cfg.steps:
                self.evaluate()
            over = self._over_time_limit()
            if (cfg.ckpt_interval > 0 and self.step % cfg.ckpt_interval == 0) or self.step == cfg.steps or over:
                self.save(metrics=rec)
            if over:
                self.stopped_early = True
                msg = (f"{cfg.stage}: time_limit_s={cfg.time_limit_s:g} reached after {self.step}/{cfg.steps} steps; "
                       "stopped early, so the results are NOT those of the recipe (which runs a fixed step count)")
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                self._log({"step": self.step, "event": "time_limit", "message": msg})
                break
        bar.close()
        if self.step == cfg.steps or self.stopped_early:
            final = self.evaluate() if self.eval_fn is not None else {}
            if self.dist.is_main and self.out_dir is not None:
                write_json(self.out_dir / "final.json", {
                    "step": self.step, "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                    "train": self.history[-1] if self.history else self._resumed_metrics,
                    "eval": {k: float(v) for k, v in final.items() if isinstance(v, (int, float))},
                    "stopped_early": self.stopped_early, "config": self.cfg.to_dict(),
                    "init_checksums": self.init_checksums})
        return self.history
