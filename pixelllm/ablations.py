"""Ablations (notebook 08): train and evaluate one arm, cache its result, aggregate seeds, check trends.

An *arm* (:mod:`pixelllm.configs.ablations`) is a short stage-2 run on Localized Narratives from the
shared stage-1 checkpoint (``<run>/checkpoints/pretrain``) that differs from the baseline in one field:

=================  ===============================================================================
table              arms (rows)
=================  ===============================================================================
loc_supervision    none (caption-only stage 2) · box (one box per narrative) · dense (per word, paper)
lm                 {tiny, large} T5 × {frozen, lora, full}
encoder            sam_only · semantic_only · both
point_target       center · box (utterance-box corners, release)
=================  ===============================================================================

Pipeline of one arm and seed (:func:`run_arm`):

1. build the model (``pixelllm.train.build_model``, seeded), then copy every stage-1 weight whose name
   and shape fit (:func:`load_matching`; arms whose architecture differs keep fresh weights where it does);
2. stage 2 with the plain :class:`~pixelllm.engine.trainer.Trainer` on LN train narratives whose point
   targets are viewed through :class:`SupervisionView` (dense / box / none); the image encoder is frozen
   (:class:`FrozenEncoderView`), so its feature grid is computed once per image and **shared by every arm**
   of the process (same frozen weights → same features);
3. evaluation, identical for every arm: teacher-forced test CE and ``point_l1`` (normalised L1 to the
   closest ground-truth trace sample, PAPER_NOTES.md §2.6) on test narratives; free-running LN captions scored
   with METEOR / CIDEr-D; for Table 4 arms two downstream fine-tunes from the stage-2 weights — referring
   localization (P@0.5, IoU > 0.5, original pixels) and location-conditioned captioning (METEOR / CIDEr-D).

Results are cached as ``<run>/ablations/<arm>/<seed>.json`` (:func:`arm_result`: found → load, else run);
:func:`build_report` aggregates seeds (mean ± sample std) per table and derives ``trend_reproduced`` flags
against the paper's findings (PAPER_NOTES.md §5).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pixelllm.configs.ablations import (ARMS, LARGE_T5, PAPER_FINDINGS, TABLES, AblationConfig, get_arm_config)

#: metrics shown per table (all others stay in the JSON). Higher is better except these:
TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "loc_supervision": ("refer_P@0.5", "loc_CIDEr-D", "loc_METEOR", "point_l1"),
    "lm": ("test_ce", "point_l1", "CIDEr-D", "METEOR"),
    "encoder": ("point_l1", "test_ce", "CIDEr-D"),
    "point_target": ("point_l1", "test_ce"),
}
LOWER_IS_BETTER = ("test_ce", "point_l1", "centre_l1")


# ----------------------------------------------------------------------------------- supervision views
def narrative_box_targets(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Box-only supervision: every valid token gets the **same** box — the union (min x0, min y0, max x1,
    max y1) of the narrative's per-token boxes, i.e. the bounding box of all its utterance traces.

    points: T×4 (x0, y0, x1, y1), any frame (pixels of the resized input in the datasets);
    valid: T bool. Returns T×4, invalid rows unchanged. Same tokens, same loss weight as dense
    supervision: only how finely the location is given changes."""
    out = points.clone()
    if bool(valid.any()):
        p = points[valid]                                                      # V×4
        box = torch.stack([p[:, 0].min(), p[:, 1].min(), p[:, 2].max(), p[:, 3].max()])
        out[valid] = box
    return out


class SupervisionView(Dataset):
    """An LN trace dataset whose *training* point targets follow ``mode``:
    ``"dense"`` (per-word utterance boxes, unchanged), ``"box"`` (:func:`narrative_box_targets`) or
    ``"none"`` (``point_valid`` all False: a caption-only stage 2). ``trace_samples`` (the evaluation
    ground truth) are never touched."""

    def __init__(self, dataset: Dataset, mode: str = "dense"):
        if mode not in ("dense", "box", "none"):
            raise ValueError(f"SupervisionView: mode must be 'dense', 'box' or 'none', got {mode!r}")
        self.dataset, self.mode = dataset, mode

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.dataset[i])
        if self.mode == "box":
            s["points"] = narrative_box_targets(s["points"], s["point_valid"])
        elif self.mode == "none":
            s["point_valid"] = torch.zeros_like(s["point_valid"])
        return s


# ---------------------------------------------------------------------------------- frozen-encoder view
class FrozenEncoderView(nn.Module):
    """Training view of a PixelLLM whose whole image encoder (frozen SAM + semantic ViT) is frozen: the
    Trainer caches the full feature grid per image (``frozen_image_features``) and passes it back as
    ``sam_features``; a step runs only E(P(b), F) → T5 → trace head.

    Holds the *same* submodules under the *same* names as the PixelLLM (training the view trains the
    model; state dicts are interchangeable). Outputs equal ``PixelLLM.forward`` (tested)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name in ("image_encoder", "prompt_encoder", "prompt_extractor", "language_model", "trace_head"):
            setattr(self, name, getattr(model, name))
        object.__setattr__(self, "_model", model)               # not a submodule: names stay the same
        self.image_encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenEncoderView":
        super().train(mode)
        self.image_encoder.eval()                                # frozen: no dropout / drop-path
        return self

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """images B×3×S×S in [0, 1] → the full (SAM ⊕ semantic) grid B×C×H×W, cacheable per image id."""
        return self.image_encoder(images, image_sizes)

    def forward(self, images, boxes, prompt_ids, prompt_mask, target_ids, target_mask=None, image_sizes=None,
                sam_features=None) -> dict:
        """Teacher forcing as ``PixelLLM.forward``; ``sam_features`` = the cached full grid (B×C×H×W).
        Returns ``{"logits": B×T×V, "points": B×T×4 pixels of the S×S input}``."""
        features = sam_features if sam_features is not None else self.frozen_image_features(images, image_sizes)
        prompt = self.prompt_encoder(boxes, batch_size=images.shape[0], image_sizes=image_sizes)   # B×2×P
        visual = self.prompt_extractor(features, prompt)                                           # B×N×D
        embeds, mask = self._model.encoder_inputs(visual, prompt_ids, prompt_mask)
        logits, hidden = self.language_model(embeds, mask, self.language_model.shift_right(target_ids))
        points = self.trace_head(hidden, self._model.frame_hw, features)                           # B×T×4
        return {"logits": logits, "points": points}


#: full feature grids per (run folder, encoder_mode, stage-1 checkpoint) → {image_id: C×H×W}; every arm
#: of a process with the same frozen encoder reuses them.
_FEATURE_STORES: dict[tuple, dict] = {}


def shared_feature_store(key: tuple) -> dict:
    return _FEATURE_STORES.setdefault(key, {})


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], skip_prefixes: Sequence[str] = ()) -> dict:
    """Copy every tensor of ``state`` whose name exists in ``model`` with the same shape (and does not
    start with one of ``skip_prefixes``). Hand-written because ``load_state_dict(strict=False)`` still
    fails on shape mismatches, which arms with another encoder / LM legitimately have.
    Returns ``{"loaded": n, "skipped": [names]}``."""
    own = model.state_dict()
    keep, skipped = {}, []
    for k, v in state.items():
        if k in own and own[k].shape == v.shape and not k.startswith(tuple(skip_prefixes)):
            keep[k] = v
        else:
            skipped.append(k)
    model.load_state_dict(keep, strict=False)
    return {"loaded": len(keep), "skipped": skipped}


# ---------------------------------------------------------------------------------------- prerequisites
def ensure_stage1(cfg: AblationConfig, progress: bool = False) -> Path:
    """The shared stage-1 checkpoint (``<run>/checkpoints/pretrain``): found → reuse, else train it with
    notebook 03's config (and the run's prerequisites through ``ensure_prerequisites``). Returns the file."""
    from pixelllm.configs import get_config
    from pixelllm.engine.checkpoint import latest_checkpoint
    from pixelllm.pretrain.prerequisites import ensure_prerequisites
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.tasks.captioning import run_training
    from pixelllm.utils import found_or_compute

    pre = get_config("pretrain", smoke=cfg.smoke, overrides={"run_dir": cfg.run_dir, "data_dir": cfg.data_dir,
                                                             "tokenizer_dir": cfg.tokenizer_dir})
    ensure_prerequisites(pre, progress=progress)
    out = resolve_paths(pre).out
    if latest_checkpoint(out) is None:
        found_or_compute(out / "final.json", lambda: run_training(pre, eval_fn=None, progress=progress))
    return latest_checkpoint(out)


def ensure_large_t5(cfg: AblationConfig, paths, progress: bool = False) -> Path:
    """The larger LM (:data:`LARGE_T5`) pretrained **the same way** as the run's tiny T5: the ``t5_tiny``
    config (same corpus, objective mixture, steps, batch, lr, seed) with ``t5_overrides=LARGE_T5``
    → ``<run>/t5_large``. Found (made by that config) → reuse."""
    from pixelllm.pretrain.prerequisites import ensure_t5

    return ensure_t5(cfg, progress, out=paths.run / "t5_large", t5_overrides=LARGE_T5)


def arm_paths(cfg: AblationConfig):
    """``pixelllm.train.resolve_paths`` with the arm's LM folder (``<run>/t5_large`` for ``lm_size="large"``)."""
    from pixelllm.engine.paths import resolve_paths

    paths = resolve_paths(cfg)
    if cfg.lm_size == "large":
        paths = dataclasses.replace(paths, t5=paths.run / "t5_large")
    return paths


def build_arm_model(cfg: AblationConfig, paths, tokenizer, stage1: Path | None) -> tuple[nn.Module, dict]:
    """``build_model`` (seeded by ``cfg.seed``, the run's frozen SAM and the arm's T5), then the stage-1
    weights that fit (:func:`load_matching`; the LM's are skipped when ``cfg.init_lm`` is False)."""
    from pixelllm.engine.checkpoint import load_checkpoint
    from pixelllm.engine.builder import build_model

    model = build_model(dataclasses.replace(cfg, init_from=""), paths, tokenizer)
    info = {"loaded": 0, "skipped": [], "from": None}
    if stage1 is not None:
        info = {**load_matching(model, load_checkpoint(stage1)["model"],
                                () if cfg.init_lm else ("language_model.",)), "from": str(stage1)}
    return model, info


def _trainer(net: nn.Module, cfg, dataset, store: dict, progress: bool):
    """A Trainer writing nothing (``out_dir=None``) whose frozen-feature cache is ``store`` (shared)."""
    from pixelllm.data.datasets import collate
    from pixelllm.engine.trainer import Trainer

    tr = Trainer(net, cfg, dataset, collate, out_dir=None, progress=progress)
    if tr.cache is not None:
        tr.cache.store = store
    return tr


# ------------------------------------------------------------------------------------------- evaluation
def evaluate_stage2(model: nn.Module, cfg: AblationConfig, paths, tokenizer, meteor=None) -> dict:
    """Arm-independent stage-2 metrics on the LN **test** split: ``test_ce`` and ``point_l1`` / ``centre_l1``
    (teacher forced, first ``cfg.eval_samples`` narratives) and ``METEOR`` / ``CIDEr-D`` of free-running
    captions of the first ``cfg.caption_images`` test images (references: that image's narratives).
    CIDEr-D's IDF comes from this small synthetic set: compare arms with each other, not with the paper."""
    from torch.utils.data import Subset

    from pixelllm.eval.caption import caption_metrics
    from pixelllm.engine.evaluate import generate_captions, teacher_forced_eval
    from pixelllm.engine.datasets import task_dataset

    test = task_dataset("trace", "test", cfg, paths, tokenizer, model.image_size, return_trace_samples=True,
                        point_target=cfg.point_target)
    tf = teacher_forced_eval(model, Subset(test, range(min(cfg.eval_samples, len(test)))), batch_size=32, cfg=cfg)
    out = {"test_ce": tf["ce"], "point_l1": tf.get("point_l1", float("nan")), "centre_l1": tf.get("centre_l1", float("nan"))}
    gen = generate_captions(model, test, tokenizer, prompt=cfg.prompts["trace"], limit=cfg.caption_images,
                            max_new_tokens=cfg.max_new_tokens, progress=False)
    refs: dict[str, list[str]] = {}
    for n in test.narratives:
        refs.setdefault(str(n.image_id), []).append(n.caption)
    cm = caption_metrics({g["image_id"]: g["text"] for g in gen}, refs, metrics=("METEOR", "CIDEr-D"), meteor=meteor)
    out.update({"METEOR": cm["METEOR"], "CIDEr-D": cm["CIDEr-D"], "caption_example": gen[0]["text"] if gen else ""})
    return out


def downstream_referring(state: Mapping[str, torch.Tensor], cfg: AblationConfig, paths, tokenizer, store: dict,
                         progress: bool = False) -> dict:
    """Referring localization from the stage-2 weights ``state``: notebook 05's config (centre-size box at
    EOS, L1 + GIoU) fine-tuned ``cfg.refer_steps`` steps (image encoder frozen, as in stage 2), then
    P@0.5 on the first ``cfg.refer_eval`` val expressions."""
    from pixelllm.configs.refcoco import get_config as refcoco_config
    from pixelllm.tasks.referring import evaluate_referring, refexp_datasets
    from pixelllm.engine.builder import build_model

    base = refcoco_config(cfg.smoke)
    rcfg = dataclasses.replace(base, steps=cfg.refer_steps, batch_size=cfg.downstream_batch, seed=cfg.seed,
                               warmup_steps=max(1, cfg.refer_steps // 10), max_samples=cfg.max_samples,
                               model_overrides={**cfg.model_overrides, **base.model_overrides}, init_from="",
                               run_dir=cfg.run_dir, data_dir=cfg.data_dir, tokenizer_dir=cfg.tokenizer_dir,
                               ckpt_interval=0, log_interval=max(1, cfg.refer_steps // 5))
    model = build_model(rcfg, paths, tokenizer)
    load_matching(model, state)
    sets = refexp_datasets(paths.data, tokenizer, model.image_size, ("train", "val"), prompt=rcfg.prompts["refer"],
                           max_target_len=rcfg.max_target_len,
                           max_samples={"train": rcfg.max_samples or None, "val": cfg.refer_eval})
    _trainer(FrozenEncoderView(model), rcfg, sets["train"], store, progress).fit()
    res = evaluate_referring(model, {"val": sets["val"]}, progress=False)
    return {"refer_P@0.5": res["val"]["P@0.5"], "refer_n": res["val"]["n"]}


def downstream_loc_caption(state: Mapping[str, torch.Tensor], cfg: AblationConfig, paths, tokenizer, store: dict,
                           meteor=None, progress: bool = False) -> dict:
    """Location-conditioned captioning from the stage-2 weights ``state``: notebook 06's config on VG
    regions (image encoder frozen, caption CE only) for ``cfg.loccap_steps`` steps, then METEOR / CIDEr-D
    of the first ``cfg.loccap_eval`` VG test regions."""
    from pixelllm.configs.loc_caption import get_config as loccap_config
    from pixelllm.tasks import region_caption as rc
    from pixelllm.engine.builder import build_model

    base = loccap_config(cfg.smoke)
    lcfg = dataclasses.replace(base, steps=cfg.loccap_steps, batch_size=cfg.downstream_batch, seed=cfg.seed,
                               warmup_steps=max(1, cfg.loccap_steps // 10), max_samples=cfg.max_samples,
                               model_overrides=dict(cfg.model_overrides), init_from="", datasets={"vg": 1.0},
                               run_dir=cfg.run_dir, data_dir=cfg.data_dir, tokenizer_dir=cfg.tokenizer_dir,
                               ckpt_interval=0, log_interval=max(1, cfg.loccap_steps // 5))
    model = build_model(lcfg, paths, tokenizer)
    load_matching(model, state)
    train = rc.loc_caption_train_dataset(lcfg, paths, tokenizer, model.image_size)
    _trainer(rc.freeze_for_loc_caption(model, lcfg.train_image_encoder), lcfg, train, store, progress).fit()
    test = rc.eval_datasets(lcfg, paths, tokenizer, model.image_size)
    ev = rc.evaluate_loc_caption(model, test, tokenizer, prompt=lcfg.prompts["region_caption"], batch_size=32,
                                 max_new_tokens=lcfg.max_new_tokens, limit=cfg.loccap_eval or None, progress=False,
                                 meteor_fn=meteor)
    m = ev["metrics"]["vg"]
    return {"loc_METEOR": m["METEOR"], "loc_CIDEr-D": m["CIDEr-D"], "loc_n": m.get("num_items")}


# ------------------------------------------------------------------------------------------ one arm
def run_arm(cfg: AblationConfig, meteor=None, progress: bool = False) -> dict:
    """Train and evaluate one arm and seed (prerequisites and the stage-1 checkpoint found or made).
    Returns ``{"arm", "seed", "config", "metrics": {name: float}, "init", "train", "seconds"}``."""
    from torch.utils.data import Subset

    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.datasets import task_dataset

    t0 = time.time()
    stage1 = ensure_stage1(cfg, progress)
    paths = arm_paths(cfg)
    if cfg.lm_size == "large":
        ensure_large_t5(cfg, paths, progress)
    tok = load_tokenizer(paths.tokenizer)
    model, init = build_arm_model(cfg, paths, tok, stage1)
    mode = model.image_encoder.mode
    store = shared_feature_store((str(paths.run), mode, str(stage1)))

    train = task_dataset("trace", "train", cfg, paths, tok, model.image_size, point_target=cfg.point_target)
    if cfg.max_samples:
        train = Subset(train, range(min(cfg.max_samples, len(train))))
    tr = _trainer(FrozenEncoderView(model), cfg, SupervisionView(train, cfg.loc_supervision), store, progress)
    tr.fit()
    t_train = time.time() - t0
    model.eval()
    metrics = evaluate_stage2(model, cfg, paths, tok, meteor)
    if cfg.downstream:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics.update(downstream_referring(state, cfg, paths, tok, store, progress))
        metrics.update(downstream_loc_caption(state, cfg, paths, tok, store, meteor, progress))
    last = tr.history[-1] if tr.history else {}
    return {"arm": cfg.arm, "seed": cfg.seed, "config": _jsonable(cfg.to_dict()), "metrics": metrics,
            "init": {"from": init["from"], "loaded": init["loaded"], "skipped": init["skipped"]},
            "train": {"steps": tr.step, "last": {k: v for k, v in last.items() if isinstance(v, (int, float))},
                      "seconds": round(t_train, 1)},
            "seconds": round(time.time() - t0, 1)}


def _jsonable(obj: Any) -> Any:
    """JSON round trip (tuples → lists) so stored and requested configs compare equal."""
    return json.loads(json.dumps(obj))


def result_path(cfg: AblationConfig) -> Path:
    """``<run>/ablations/<arm>/<seed>.json``."""
    from pixelllm.engine.paths import resolve_paths

    return resolve_paths(cfg).run / "ablations" / cfg.arm / f"{cfg.seed}.json"


def arm_result(cfg: AblationConfig, compute: Callable[[AblationConfig], dict] | None = None,
               force: bool = False, **kw) -> dict:
    """Found → load, else run: the result JSON of one arm and seed. A stored result whose config differs
    from ``cfg`` (e.g. other step counts) is recomputed, not silently reused. ``compute`` defaults to
    :func:`run_arm` (``kw`` are passed to it)."""
    from pixelllm.utils import found_or_compute, write_json

    path = result_path(cfg)
    want = _jsonable(cfg.to_dict())
    if path.is_file() and not force:
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); delete it to recompute") from None
        if stored.get("config") == want:
            return stored
        diff = sorted(k for k in set(want) | set(stored.get("config", {})) if stored.get("config", {}).get(k) != want.get(k))
        print(f"[ablations] {path}: stored config differs in {diff}; recomputing")
        force = True
    compute = compute or run_arm
    found_or_compute(path, lambda: write_json(path, compute(cfg, **kw)), force=force)
    return json.loads(path.read_text())


def run_ablations(arms: Iterable[str] | None = None, seeds: Sequence[int] = (0, 1), smoke: bool = False,
                  overrides: Mapping[str, Any] | None = None, seeds_per_arm: Mapping[str, Sequence[int]] | None = None,
                  progress: bool = True, compute: Callable | None = None) -> dict[str, list[dict]]:
    """Every (arm, seed) through :func:`arm_result` with a tqdm bar; one METEOR process serves them all.
    ``overrides`` apply to every arm alike (step budget, batch, eval sizes); ``seeds_per_arm`` replaces
    ``seeds`` for some arms. Returns ``{arm: [result per seed]}``."""
    from tqdm.auto import tqdm

    arms = list(arms or ARMS)
    jobs = [(a, s) for a in arms for s in (seeds_per_arm or {}).get(a, seeds)]
    cfgs = [get_arm_config(a, smoke=smoke, seed=s, overrides=dict(overrides or {})) for a, s in jobs]
    out: dict[str, list[dict]] = {a: [] for a in arms}
    meteor = None
    try:
        bar = tqdm(cfgs, desc="ablation arms", disable=not progress)
        for cfg in bar:
            bar.set_postfix(arm=cfg.arm, seed=cfg.seed)
            if compute is None and meteor is None and not (result_path(cfg).is_file()):
                from pixelllm.eval.caption import Meteor
                meteor = Meteor()
            kw = {} if compute is not None else {"meteor": meteor}
            out[cfg.arm].append(arm_result(cfg, compute=compute, **kw))
    finally:
        if meteor is not None:
            meteor.close()
    return out


# ------------------------------------------------------------------------------------- aggregation
def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per metric over the seeds of one arm: ``{metric: {"mean", "std", "seeds": [value per seed],
    "seed_ids": [...]}}``. ``std`` is the sample standard deviation (ddof 1; 0 for one seed). Non-numeric
    metrics are left out; NaN values are dropped (and counted in ``n_nan``)."""
    rows = sorted(results, key=lambda r: r.get("seed", 0))
    names = sorted({k for r in rows for k, v in r["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {}
    for k in names:
        vals = [(r.get("seed"), float(r["metrics"][k])) for r in rows if k in r["metrics"]]
        good = [(s, v) for s, v in vals if math.isfinite(v)]
        xs = np.array([v for _, v in good])
        out[k] = {"mean": float(xs.mean()) if len(xs) else float("nan"),
                  "std": float(xs.std(ddof=1)) if len(xs) > 1 else 0.0,
                  "seeds": [v for _, v in good], "seed_ids": [s for s, _ in good]}
        if len(good) < len(vals):
            out[k]["n_nan"] = len(vals) - len(good)
    return out


def _mean(table: Mapping[str, Mapping], row: str, metric: str) -> float | None:
    m = table.get(row, {}).get(metric)
    return None if m is None or not math.isfinite(m["mean"]) else m["mean"]


def _winner_flag(table: Mapping[str, Mapping], metric: str, winner: str, others: Sequence[str], what: str) -> dict:
    """Is ``winner`` better than every row of ``others`` on ``metric`` (means; lower is better for
    :data:`LOWER_IS_BETTER`)? ``separated``: every gap exceeds the sum of the two stds (None when a row has
    fewer than two seeds)."""
    lower = metric in LOWER_IS_BETTER
    rel = "<" if lower else ">"
    comp = f"{what}: mean {metric} of {winner} {rel} " + " and ".join(others)
    vals = {r: _mean(table, r, metric) for r in (winner, *others)}
    if any(v is None for v in vals.values()):
        return {"value": None, "comparison": comp + " (rows missing)", "values": vals}
    better = all((vals[winner] < vals[o]) if lower else (vals[winner] > vals[o]) for o in others)
    sep = None                                                  # undecidable from a single seed
    if all(len(table[r][metric].get("seeds", [])) > 1 for r in (winner, *others)):
        sep = bool(all(abs(vals[winner] - vals[o]) > table[winner][metric]["std"] + table[o][metric]["std"]
                       for o in others))
    return {"value": bool(better), "comparison": comp, "values": vals, "separated": sep}


def trend_flags(tables: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict]:
    """The paper's trends checked on our aggregated tables (``{table: {row: {metric: {mean, std}}}}``).
    Each flag: ``{"value": bool | None (rows missing), "comparison": str, "values": {row: mean},
    "separated": bool | None}``."""
    t4, t5 = tables.get("loc_supervision", {}), tables.get("lm", {})
    enc, pt = tables.get("encoder", {}), tables.get("point_target", {})
    flags = {
        "loc_supervision/dense_best_refer": _winner_flag(t4, "refer_P@0.5", "dense", ("box", "none"), "Table 4"),
        "loc_supervision/dense_best_loc_caption": _winner_flag(t4, "loc_CIDEr-D", "dense", ("box", "none"), "Table 4"),
        "encoder/both_best_point_l1": _winner_flag(enc, "point_l1", "both", ("sam_only", "semantic_only"), "encoders"),
        "encoder/both_best_caption": _winner_flag(enc, "CIDEr-D", "both", ("sam_only", "semantic_only"), "encoders"),
        "point_target/box_beats_center_point_l1": _winner_flag(pt, "point_l1", "box", ("center",), "point target"),
    }
    for size in ("tiny", "large"):
        flags[f"lm/lora_beats_frozen_{size}"] = _winner_flag(t5, "test_ce", f"{size}/lora", (f"{size}/frozen",), "Table 5")
    flags["lm/larger_lm_helps_ce"] = _winner_flag(t5, "test_ce", "large/lora", ("tiny/lora",), "Table 5")
    flags["lm/larger_lm_helps_caption"] = _winner_flag(t5, "CIDEr-D", "large/lora", ("tiny/lora",), "Table 5")
    return flags


def build_report(results: Mapping[str, Sequence[Mapping]], tables: Mapping[str, Mapping[str, str]] = TABLES) -> dict:
    """``{table: {row: {metric: {"mean", "std", "seeds"}}}, ..., "trend_reproduced": {flag: {...}},
    "paper_findings": {...}}`` from ``{arm: [result per seed]}`` (rows whose arm has no result are left out)."""
    agg = {arm: aggregate(rs) for arm, rs in results.items() if rs}
    report: dict[str, Any] = {t: {row: agg[arm] for row, arm in rows.items() if arm in agg} for t, rows in tables.items()}
    report["trend_reproduced"] = trend_flags({t: report[t] for t in tables})
    report["paper_findings"] = dict(PAPER_FINDINGS)
    return report


def format_table(report: Mapping[str, Any], table: str, metrics: Sequence[str] | None = None) -> str:
    """Plain-text table ``row | metric mean ± std (n seeds)`` with the paper's finding and our flags below."""
    rows = report.get(table, {})
    metrics = list(metrics or TABLE_METRICS.get(table, ()))
    width = max([len(r) for r in rows] + [8])
    lines = [f"{'arm':{width}s} | " + " | ".join(f"{m:>20s}" for m in metrics)]
    for row, ms in rows.items():
        cells = []
        for m in metrics:
            v = ms.get(m)
            cells.append(f"{v['mean']:9.4f} ± {v['std']:.4f} ({len(v['seeds'])})" if v else f"{'—':>20s}")
        lines.append(f"{row:{width}s} | " + " | ".join(f"{c:>20s}" for c in cells))
    lines.append(f"paper: {PAPER_FINDINGS.get(table, '')}")
    for name, f in report.get("trend_reproduced", {}).items():
        if name.startswith(table + "/"):
            sep = "" if f.get("separated") is None else f" (separated by > 1 std: {f['separated']})"
            lines.append(f"ours:  {f['comparison']} → {f['value']}{sep}")
    return "\n".join(lines)


def figure_table(report: Mapping[str, Any], table: str, metrics: Sequence[str] | None = None, title: str = ""):
    """Bar chart per metric: mean over seeds, error bar = std, each seed as a dot. Returns a
    ``matplotlib.figure.Figure`` (not registered with pyplot)."""
    from matplotlib.figure import Figure

    rows = report.get(table, {})
    metrics = [m for m in (metrics or TABLE_METRICS.get(table, ())) if any(m in v for v in rows.values())]
    fig = Figure(figsize=(3.2 * max(1, len(metrics)), 3.2))
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False)
    names = list(rows)
    x = np.arange(len(names))
    for ax, m in zip(axes[0], metrics):
        means = [rows[r][m]["mean"] if m in rows[r] else np.nan for r in names]
        stds = [rows[r][m]["std"] if m in rows[r] else 0.0 for r in names]
        ax.bar(x, means, yerr=stds, capsize=4, color="#8fb3d9", edgecolor="#34495e")
        for i, r in enumerate(names):
            pts = rows[r].get(m, {}).get("seeds", [])
            ax.scatter([i] * len(pts), pts, color="#c0392b", s=12, zorder=3)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(m + (" (lower better)" if m in LOWER_IS_BETTER else ""), fontsize=9)
    fig.suptitle(title or f"ablation: {table}", fontsize=10)
    fig.tight_layout()
    return fig
