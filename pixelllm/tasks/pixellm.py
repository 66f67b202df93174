"""PixelLM beside PixelLLM (notebook 09, PAPER_NOTES.md §10): the ``pixellm`` stage, its evaluation, and the
side-by-side measurements against PixelLLM's SAM path (:mod:`pixelllm.tasks.referring`).

* :func:`build_pixellm_model` — a :class:`~pixelllm.modeling.pixellm.PixelLM` around the PixelLLM of the
  config's ``init_from`` checkpoint (stage 2), seeded;
* :func:`pixellm_trainer` / :func:`train_pixellm` — the engine ``Trainer`` on RefCOCO train masks (one
  target) mixed with multi-target questions; :func:`load_pixellm` loads a finished stage back;
* :func:`ensure_pixellm_stages` — notebook 09's stages (:func:`pixellm_plan`: the recipe of record and the
  ablation arms), found or trained, several at a time (``python -m pixelllm.train --config pixellm --ablations``);
* :func:`pixellm_collate` — the repo's collate plus ``masks`` B×K×S×S and ``mask_valid`` B×K;
* :func:`evaluate_pixellm_refseg` — cIoU / gIoU in original-image pixels, exactly as
  :func:`~pixelllm.tasks.referring.evaluate_refseg` scores the SAM path;
* :func:`compare_latency` — median milliseconds per image of both paths, batch 1, alternating image by image.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch


# ------------------------------------------------------------------------------------------- batches
def pixellm_collate(samples: Sequence[dict]) -> dict[str, Any]:
    """The repo's :func:`~pixelllm.data.datasets.collate` of ``samples`` (their ``masks`` set aside) plus
    ``masks`` B×K×S×S bool (K = the most targets in the batch; a sample's ``masks`` is S×S for one target or
    k×S×S) and ``mask_valid`` B×K bool."""
    from pixelllm.data.datasets import collate

    masks = []
    for i, s in enumerate(samples):
        if "masks" not in s:
            raise KeyError(f"pixellm_collate: sample {i} has no 'masks'")
        m = s["masks"]
        masks.append(m.unsqueeze(0) if m.ndim == 2 else m)
    out = collate([{k: v for k, v in s.items() if k != "masks"} for s in samples])
    k = max(len(m) for m in masks)
    side = masks[0].shape[-2:]
    out["masks"] = torch.zeros(len(samples), k, *side, dtype=torch.bool)
    out["mask_valid"] = torch.zeros(len(samples), k, dtype=torch.bool)
    for i, m in enumerate(masks):
        out["masks"][i, :len(m)] = m.bool()
        out["mask_valid"][i, :len(m)] = True
    return out


def training_sets(cfg, data_dir: str | os.PathLike, tokenizer: Any, image_size: int) -> dict:
    """``{"train": mixture, "val": RefExp val}``: RefCOCO train with masks (task ``refer``) and, when
    ``cfg.tasks`` weighs ``muse`` > 0, the multi-target training questions (:func:`muse_training_set`)."""
    from torch.utils.data import ConcatDataset

    from pixelllm.tasks.referring.data import training_datasets

    sets = training_datasets(cfg, data_dir, tokenizer, image_size, return_masks=True)
    parts = [sets["train"]] if cfg.tasks.get("refer", 0) > 0 else []
    if cfg.tasks.get("muse", 0) > 0:
        parts.append(muse_training_set(cfg, data_dir, tokenizer, image_size))
    if not parts:
        raise ValueError(f"{cfg.stage}: tasks={cfg.tasks} trains nothing (weigh 'refer' and/or 'muse' > 0)")
    out = {"train": parts[0] if len(parts) == 1 else ConcatDataset(parts)}
    if "val" in sets:
        out["val"] = sets["val"]
    return out


class MuseSamples(torch.utils.data.Dataset):
    """:class:`~pixelllm.data.muse.MuseDataset` questions as repo-collate samples (task ``muse``): prompt =
    the question (+ EOS), target = ``text_answer`` tokenised piece by piece with a
    :data:`~pixelllm.modeling.pixellm.codebook.SEG_SLOT` after each target phrase (where the model puts a
    codebook group, as the release writes ``[SEG…]`` there) + EOS; ``masks`` K×S×S; whole-image prompt box;
    no point targets. ``meta`` keeps the question id, texts and the targets' phrases."""

    task = "muse"

    def __init__(self, muse, tokenizer, max_prompt_len: int = 32, max_target_len: int = 64) -> None:
        from pixelllm.data.muse import SEG_PLACEHOLDER
        from pixelllm.modeling.pixellm.codebook import SEG_SLOT

        self.muse, self.tokenizer = muse, tokenizer
        self.records = muse.records
        self.max_prompt_len, self.max_target_len = max_prompt_len, max_target_len
        self._slot, self._placeholder = SEG_SLOT, SEG_PLACEHOLDER
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_id = 1 if eos is None else int(eos)

    def __len__(self) -> int:
        return len(self.muse)

    def target_ids(self, text_answer: str) -> torch.Tensor:
        """``text_answer`` ("A {seg}, B {seg} and C {seg}") → ids with a slot per ``{seg}``, + EOS."""
        ids: list[int] = []
        pieces = text_answer.split(self._placeholder)
        for j, piece in enumerate(pieces):
            if piece.strip():
                ids += self.tokenizer(piece.strip(), add_special_tokens=False)["input_ids"]
            if j < len(pieces) - 1:
                ids.append(self._slot)
        if len(ids) + 1 > self.max_target_len:
            raise ValueError(f"MuseSamples: answer {text_answer!r} needs {len(ids) + 1} tokens > max_target_len "
                             f"{self.max_target_len}")
        return torch.tensor(ids + [self.eos_id], dtype=torch.long)

    def __getitem__(self, i: int) -> dict:
        item, rec = self.muse[i], self.records[i]
        _, nh, nw = self.muse.transform.geometry(rec["height"], rec["width"])
        prompt = self.tokenizer(item["question"], truncation=True, max_length=self.max_prompt_len)["input_ids"]
        target = self.target_ids(item["text_answer"])
        t = len(target)
        return {"images": item["image"], "image_sizes": torch.tensor([nh, nw]),
                "orig_sizes": torch.tensor([rec["height"], rec["width"]]), "image_ids": item["image_id"],
                "boxes": torch.tensor([0.0, 0.0, float(nw), float(nh)]), "task": self.task,
                "prompt_ids": torch.tensor(prompt, dtype=torch.long), "target_ids": target,
                "points": torch.zeros(t, 4), "point_valid": torch.zeros(t, dtype=torch.bool),
                "masks": item["masks"],
                "meta": {"id": item["id"], "question": item["question"], "answer": item["answer"],
                         "phrases": [a["rephrased_name"] for a in rec["answers"]], "template": item["template"]}}


def muse_samples(cfg, data_dir, tokenizer, image_size: int, split: str, limit: int = 0) -> MuseSamples:
    """:class:`MuseSamples` of ``<data_dir>/<cfg.muse_file>`` for ``split`` (first ``limit`` questions, 0 = all)."""
    from pathlib import Path

    from torch.utils.data import Subset

    from pixelllm.data.muse import MuseDataset

    path = Path(data_dir) / cfg.muse_file.format(split=split)
    ds = MuseSamples(MuseDataset(data_dir, split, tokenizer, image_size, max_targets=cfg.max_targets, path=path),
                     tokenizer, max_target_len=max(cfg.max_target_len, 48))
    return Subset(ds, range(min(limit, len(ds)))) if limit else ds


def muse_training_set(cfg, data_dir, tokenizer, image_size: int):
    """The multi-target training questions (first ``cfg.muse_samples``; 0 = all)."""
    return muse_samples(cfg, data_dir, tokenizer, image_size, "train", cfg.muse_samples)


def ensure_comparison_stages(smoke: bool, progress: bool = False) -> dict:
    """The stages notebook 09 builds on, each found (made by its config of record) or made with the same
    ``found_or_compute(out / "final.json", …, config=stage_config(cfg))`` as notebooks 04–05: ``pretrain`` → ``ln_trace``
    (PixelLM's starting point) → ``refcoco`` → ``refseg`` (the SAM path). Returns ``{stage: out_dir}``."""
    from pixelllm.configs import get_config
    from pixelllm.engine.builder import stage_config
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.pretrain.prerequisites import ensure_prerequisites
    from pixelllm.tasks.captioning import run_training
    from pixelllm.tasks.referring import finetune_referring, train_mask_adapter
    from pixelllm.utils import found_or_compute

    makers = {"pretrain": lambda c: run_training(c, eval_fn=None, progress=progress),
              "ln_trace": lambda c: run_training(c, progress=progress),
              "refcoco": lambda c: finetune_referring(c, progress=progress),
              "refseg": lambda c: train_mask_adapter(c, progress=progress)}
    out = {}
    for name, make in makers.items():
        c = get_config(name, smoke=smoke)
        if name == "pretrain":
            ensure_prerequisites(c, progress=progress)
        d = resolve_paths(c).out
        found_or_compute(d / "final.json", lambda c=c, make=make: make(c), config=stage_config(c))
        out[name] = d
    return out


def pixellm_plan(smoke: bool) -> dict:
    """Notebook 09's PixelLM stages, ``{stage: config}``: the recipe of record (:func:`pixelllm.configs.pixellm.get_config`)
    first, then every ablation arm at every seed (:func:`~pixelllm.configs.pixellm.ablation_config`)."""
    from pixelllm.configs.pixellm import ABLATION_ARMS, ABLATION_SEEDS, ablation_config, get_config

    cfgs = [get_config(smoke)] + [ablation_config(a, s, smoke) for a in ABLATION_ARMS for s in ABLATION_SEEDS]
    return {c.stage: c for c in cfgs}


def _make_stage(cfg, threads: int) -> str:
    """One stage of :func:`ensure_pixellm_stages`, found or trained (in a worker process when ``jobs`` > 1)."""
    from pixelllm.engine.builder import stage_config
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.utils import found_or_compute

    if threads:
        torch.set_num_threads(threads)
    out = resolve_paths(cfg).out
    t0 = time.time()
    found_or_compute(out / "final.json", lambda: train_pixellm(cfg, progress=False), config=stage_config(cfg))
    return f"{cfg.stage}: {(time.time() - t0) / 60:.1f} min in this call, {training_minutes(out / 'metrics.jsonl')} min of training"


def ensure_pixellm_stages(smoke: bool, jobs: int = 1, progress: bool = True) -> dict:
    """Find or train every stage of :func:`pixellm_plan` (after the stages they start from,
    :func:`ensure_comparison_stages`); returns ``{stage: out_dir}``.

    ``jobs`` > 1 trains that many stages at a time, each in its own process with ``cpu_count // jobs`` torch
    threads (``make reproduce`` uses 2 on a 2-core CPU: the recipe on one core, the arms on the other). Each
    stage runs a fixed number of steps from its own seed, so ``jobs`` changes the minutes, not the recipe."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp

    from pixelllm.engine.paths import resolve_paths

    ensure_comparison_stages(smoke, progress=progress)
    plan = pixellm_plan(smoke)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0      # 0: leave torch's setting
    with (ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) if jobs > 1 else contextlib.nullcontext()) as pool:
        lines = (pool.map if pool else map)(_make_stage, plan.values(), [threads] * len(plan))
        for line in lines:
            if progress:
                print(line, flush=True)
    return {name: resolve_paths(cfg).out for name, cfg in plan.items()}


# ------------------------------------------------------------------------------------------- model
def build_pixellm_model(cfg, tokenizer=None, device: str = "cpu"):
    """PixelLM of a ``pixellm`` config: the PixelLLM of ``cfg.init_from`` (one checkpoint, which must exist)
    rebuilt by :func:`~pixelllm.engine.builder.load_stage_model`, then the PixelLM parts of
    ``cfg.pixellm_preset`` + ``cfg.pixellm_overrides`` initialised from ``cfg.seed`` (a ``decoder='sam'``
    pixel decoder then loaded from the run's SAM checkpoint, ``resolve_paths(cfg).sam``)."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import load_stage_model, resolve_inits
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.modeling.pixellm import build_pixellm
    from pixelllm.utils import seed_everything

    paths = resolve_paths(cfg)
    inits = resolve_inits(cfg, paths, required=True)
    if len(inits) != 1:
        raise ValueError(f"{cfg.stage}: init_from={cfg.init_from!r} must name one checkpoint, found {len(inits)}")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(paths.tokenizer)
    base, _ = load_stage_model(inits[0], tokenizer, device=device)
    seed_everything(cfg.seed)
    model = build_pixellm(base, cfg.pixellm_preset, **cfg.pixellm_overrides)
    if model.config.decoder == "sam":                  # the pixel decoder starts as the pretrained SAM decoder
        model.load_sam_decoder(str(paths.sam))
    return model.to(device)


def load_pixellm(checkpoint: str | os.PathLike, tokenizer=None, device: str = "cpu"):
    """A trained ``pixellm`` stage from its checkpoint (file, or folder → latest) → (model in eval mode, config)."""
    from pixelllm.engine.builder import checkpoint_config
    from pixelllm.engine.checkpoint import load_trainable_state_dict

    cfg, state = checkpoint_config(checkpoint)
    model = build_pixellm_model(cfg, tokenizer, device=device)
    load_trainable_state_dict(model, state["model"])
    return model.eval(), cfg


# ---------------------------------------------------------------------------------------- training
def pixellm_trainer(cfg, model, tokenizer, progress: bool = True, write: bool = True):
    """The engine ``Trainer`` of a ``pixellm`` config: :func:`training_sets`, :func:`pixellm_collate`, the
    frozen features cached per image, an eval hook scoring val cIoU on ``cfg.eval_samples`` expressions."""
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.engine.trainer import Trainer
    from pixelllm.tasks.referring.localization import val_metric_hook

    paths = resolve_paths(cfg)
    sets = training_sets(cfg, paths.data, tokenizer, model.image_size)
    return Trainer(model, cfg, sets["train"], pixellm_collate, out_dir=paths.out if write else None,
                   progress=progress, eval_fn=val_metric_hook(sets.get("val"), evaluate_pixellm_refseg, "cIoU"))


def train_pixellm(cfg, progress: bool = True, resume: bool = True):
    """Make stage ``cfg.stage`` (:func:`pixelllm.configs.pixellm.get_config`): prerequisites found or made,
    the model built (:func:`build_pixellm_model`), resumed from ``out_dir`` when ``resume``, trained to
    ``cfg.steps``. Returns the Trainer (``.model`` is the PixelLM); it loads back with :func:`load_pixellm`."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    paths = ensure_prerequisites(cfg, progress=progress)
    tokenizer = load_tokenizer(paths.tokenizer)
    trainer = pixellm_trainer(cfg, build_pixellm_model(cfg, tokenizer), tokenizer, progress=progress)
    return trainer.resume_and_fit(resume)


# --------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_pixellm_refseg(model, datasets, batch_size: int = 16, max_per_split: int | None = None,
                            progress: bool = True, return_predictions: bool = False):
    """Single-target referring segmentation: the mask of the one codebook group after the expression,
    cIoU (ΣI/ΣU) and gIoU (mean IoU) per split in original-image pixels — the numbers
    :func:`~pixelllm.tasks.referring.evaluate_refseg` gives the SAM path. ``datasets``: ``{split:
    RefExpDataset}`` (``return_masks`` not needed). Returns ``{split: {"cIoU", "gIoU", "n"}, "all": …}``
    (+ rows ``split, ref_id, expression, iou, mask_rle`` with ``return_predictions``)."""
    from pycocotools import mask as mask_utils

    from pixelllm.data.coco import decode_segmentation
    from pixelllm.eval.masks import mask_iou, refseg_metrics
    from pixelllm.modeling.mask_head import postprocess_masks
    from pixelllm.tasks.referring.data import eval_batches

    was = model.training
    model.eval()
    preds, gts, splits, rows = [], [], [], []
    try:
        for split, batch, recs in eval_batches(datasets, batch_size, max_per_split, model.device, progress,
                                               "evaluate_pixellm_refseg", "pixellm"):
            ones = torch.ones(len(recs), dtype=torch.long, device=model.device)
            out = model.predict(batch, num_targets=ones)
            full = postprocess_masks(out.masks[:, :1], model.image_size, batch["image_sizes"], batch["orig_sizes"])
            for m, r in zip(full, recs):
                preds.append(mask_utils.encode(np.asfortranarray((m[0] > 0).cpu().numpy().astype(np.uint8))))
                seg = r.get("segmentation")
                g = decode_segmentation(seg, r["height"], r["width"]) if seg else np.zeros((r["height"], r["width"]), np.uint8)
                gts.append(mask_utils.encode(np.asfortranarray(g)))
            splits += [split] * len(recs)
            rows += recs
    finally:
        model.train(was)
    if not preds:
        return ({}, []) if return_predictions else {}
    metrics = refseg_metrics(preds, gts, splits)
    if not return_predictions:
        return metrics
    out_rows = [{"split": s, "ref_id": r.get("ref_id"), "expression": r["expression"], "iou": mask_iou(p, g),
                 "mask_rle": p} for s, r, p, g in zip(splits, rows, preds, gts)]
    return metrics, out_rows


def _muse_base(dataset):
    """(:class:`MuseSamples`, indices) for a MuseSamples or a ``Subset`` of one."""
    from torch.utils.data import Subset

    idx = None
    while isinstance(dataset, Subset):
        inner = list(dataset.indices)
        idx = inner if idx is None else [inner[i] for i in idx]
        dataset = dataset.dataset
    if not isinstance(dataset, MuseSamples):
        raise TypeError(f"expected MuseSamples (or a Subset of it), got {type(dataset).__name__}")
    return dataset, list(range(len(dataset))) if idx is None else idx


def _original_masks(logits: torch.Tensor, image_size: int, image_size_hw, orig_hw) -> np.ndarray:
    """K×S×S logits on the input frame → K×H0×W0 bool masks in original-image pixels."""
    from pixelllm.modeling.mask_head import postprocess_masks

    full = postprocess_masks(logits.unsqueeze(0), image_size, [image_size_hw], [orig_hw])[0]
    return (full > 0).cpu().numpy()


@torch.no_grad()
def predict_multi_pixellm(model, dataset, batch_size: int = 8, limit: int | None = None,
                          progress: bool = True) -> list[dict]:
    """PixelLM on multi-target questions (:class:`MuseSamples`): one mask per codebook group of the reference
    answer → ``[{"id", "template", "num_targets", "pred_masks" K×H0×W0 bool, "gt_masks"}]`` in
    original-image pixels (the input of :func:`pixelllm.eval.multi_mask.evaluate_multi_target`)."""
    from tqdm.auto import tqdm

    from pixelllm.data.muse import target_masks_np

    base, idx = _muse_base(dataset)
    idx = idx[:limit] if limit else idx
    was = model.training
    model.eval()
    out = []
    try:
        for s in tqdm(range(0, len(idx), batch_size), desc="pixellm multi", disable=not progress, leave=False):
            chunk = idx[s:s + batch_size]
            batch = batch_to(pixellm_collate([base[i] for i in chunk]), model.device)
            pred = model.predict(batch)
            for j, i in enumerate(chunk):
                rec = base.records[i]
                k = int(batch["mask_valid"][j].sum())
                out.append({"id": rec["id"], "template": rec.get("template", ""), "num_targets": k,
                            "pred_masks": _original_masks(pred.masks[j, :k], model.image_size,
                                                          batch["image_sizes"][j].tolist(), batch["orig_sizes"][j].tolist()),
                            "gt_masks": target_masks_np(rec)})
    finally:
        model.train(was)
    return out


@torch.no_grad()
def predict_multi_sam_path(segmenter, dataset, tokenizer, prompt: str | None = None, limit: int | None = None,
                           progress: bool = True) -> list[dict]:
    """PixelLLM's SAM path on multi-target questions: one referring pass per target phrase of the reference
    answer ("where is <phrase>" → EOS box → SAM decoder + adapter), so one box and one mask per named
    target; same output as :func:`predict_multi_pixellm`."""
    from tqdm.auto import tqdm

    from pixelllm.configs.refcoco import REFER_PROMPT
    from pixelllm.data.muse import target_masks_np

    prompt = prompt or REFER_PROMPT
    base, idx = _muse_base(dataset)
    idx = idx[:limit] if limit else idx
    dev = segmenter.device
    eos = base.eos_id
    out = []
    for i in tqdm(idx, desc="sam path multi", disable=not progress, leave=False):
        sample, rec = base[i], base.records[i]
        phrases = [a["rephrased_name"] for a in rec["answers"]]
        k = len(phrases)
        p = tokenizer([prompt.format(expr=x) for x in phrases], padding=True, return_tensors="pt")
        t = [tokenizer(x, add_special_tokens=False)["input_ids"] + [eos] for x in phrases]
        tmax = max(len(x) for x in t)
        tids = torch.zeros(k, tmax, dtype=torch.long)
        tmask = torch.zeros(k, tmax, dtype=torch.bool)
        for j, x in enumerate(t):
            tids[j, :len(x)], tmask[j, :len(x)] = torch.tensor(x), True
        batch = {"images": sample["images"].unsqueeze(0).expand(k, -1, -1, -1), "image_sizes":
                 sample["image_sizes"].unsqueeze(0).expand(k, -1), "boxes": sample["boxes"].unsqueeze(0).expand(k, -1),
                 "prompt_ids": p["input_ids"], "prompt_mask": p["attention_mask"].bool(),
                 "target_ids": tids, "target_mask": tmask}
        pred = segmenter.predict(batch_to(batch, dev))
        hw = sample["image_sizes"].tolist()
        out.append({"id": rec["id"], "template": rec.get("template", ""), "num_targets": k,
                    "pred_masks": _original_masks(pred["masks"][:, 0], segmenter.model.image_size, hw,
                                                  sample["orig_sizes"].tolist()),
                    "gt_masks": target_masks_np(rec)})
    return out


# --------------------------------------------------------------------------------------- measurements
def trainable_and_total(modules: Iterable[torch.nn.Module]) -> dict[str, int]:
    """``{"trainable", "total"}`` parameter counts over ``modules`` (each parameter counted once)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p
    return {"trainable": sum(p.numel() for p in seen.values() if p.requires_grad),
            "total": sum(p.numel() for p in seen.values())}


def multi_target_metrics(results: Sequence[dict]) -> dict:
    """:func:`~pixelllm.eval.multi_mask.evaluate_multi_target` of ``results`` plus ``"2-4"``: the same
    numbers over the questions with 2 to 4 targets (the multi-target goal of notebook 09)."""
    from pixelllm.eval.multi_mask import evaluate_multi_target

    out = evaluate_multi_target(results)
    multi = [r for r in results if 2 <= len(r["gt_masks"]) <= 4]
    if multi:
        m = evaluate_multi_target(multi)
        out["2-4"] = {k: m[k] for k in ("giou", "ciou", "n", "count_accuracy")}
    return out


def cached_evaluation(path: str | os.PathLike, config: Mapping[str, Any], compute: Callable[[], dict]) -> dict:
    """``compute()`` (a JSON-able dict of metrics) stored at ``path`` with ``config`` beside it
    (:func:`~pixelllm.utils.found_or_compute`): found and made by the same config → read back, else
    computed. Lets a notebook re-run reuse the scores of stages that did not change."""
    import json
    from pathlib import Path

    from pixelllm.utils import found_or_compute, write_json

    p = Path(path)
    found_or_compute(p, lambda: write_json(p, compute()), config=dict(config))
    return json.loads(p.read_text())


def evaluate_stage(checkpoint_dir: str | os.PathLike, tokenizer, refer_sets, muse, per_split: int, muse_limit: int,
                   folder: str | os.PathLike) -> dict:
    """A trained ``pixellm`` stage scored on single-target referring segmentation
    (:func:`evaluate_pixellm_refseg`, first ``per_split`` expressions per split) and on multi-target
    questions (:func:`multi_target_metrics` of :func:`predict_multi_pixellm`, first ``muse_limit``), cached
    in ``folder/<stage>_eval.json`` under the stage's stored config and the evaluation sizes →
    ``{"single", "multi", "train_minutes"}``."""
    from pathlib import Path

    from pixelllm.engine.builder import checkpoint_config

    d = Path(checkpoint_dir)
    cfg, _ = checkpoint_config(d)

    def compute() -> dict:
        model, _ = load_pixellm(d, tokenizer)
        return {"single": evaluate_pixellm_refseg(model, refer_sets, max_per_split=per_split, progress=False),
                "multi": multi_target_metrics(predict_multi_pixellm(model, muse, limit=muse_limit, progress=False)),
                "train_minutes": training_minutes(d / "metrics.jsonl")}

    return cached_evaluation(Path(folder) / f"{cfg.stage}_eval.json",
                             {"stage": cfg.to_dict(), "checkpoint": _checkpoint_identity(d), "per_split": per_split,
                              "muse_limit": muse_limit}, compute)


def evaluate_sam_path(refseg_dir: str | os.PathLike, tokenizer, refer_sets, muse, per_split: int, muse_limit: int,
                      folder: str | os.PathLike) -> dict:
    """The SAM path (a finished ``refseg`` stage) scored like :func:`evaluate_stage`: single-target
    :func:`~pixelllm.tasks.referring.evaluate_refseg`, multi-target :func:`predict_multi_sam_path`, cached in
    ``folder/sam_path_eval.json`` → ``{"single", "multi"}``."""
    from pathlib import Path

    from pixelllm.engine.builder import checkpoint_config
    from pixelllm.tasks.referring import evaluate_refseg, load_refseg

    d = Path(refseg_dir)
    cfg, _ = checkpoint_config(d)

    def compute() -> dict:
        seg, _ = load_refseg(d, tokenizer)
        return {"single": evaluate_refseg(seg, refer_sets, max_per_split=per_split, progress=False),
                "multi": multi_target_metrics(predict_multi_sam_path(seg, muse, tokenizer, limit=muse_limit,
                                                                     progress=False))}

    return cached_evaluation(Path(folder) / "sam_path_eval.json",
                             {"refseg": cfg.to_dict(), "checkpoint": _checkpoint_identity(d), "per_split": per_split,
                              "muse_limit": muse_limit}, compute)


def _checkpoint_identity(checkpoint_dir: str | os.PathLike) -> dict[str, str]:
    """:func:`~pixelllm.engine.builder.checkpoint_checksums` of the newest checkpoint in ``checkpoint_dir``: a
    cached evaluation of a stage retrained since (same config, other weights) is recomputed, not read back."""
    from pixelllm.engine.builder import checkpoint_checksums
    from pixelllm.engine.checkpoint import latest_checkpoint

    p = latest_checkpoint(checkpoint_dir)
    if p is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint to evaluate")
    return checkpoint_checksums([p])


def parameters_added(model, segmenter) -> dict[str, dict[str, int]]:
    """Parameters each mask path adds to the language model (PixelLLM's image encoder, extractor and T5 are
    shared): PixelLM — codebook, fusion, projections, pixel decoder (all trainable); the SAM path — SAM's
    prompt encoder and mask decoder (frozen) and the gated adapter (trainable). ``{"pixellm", "sam_path"}``
    → ``{"trainable", "total"}``; ``"pixellm_finetuned"``: LoRA + extractor, which PixelLM also tunes."""
    pix = trainable_and_total(model.added_modules().values())
    sam = trainable_and_total([segmenter.mask_head])
    tuned = sum(p.numel() for n, p in model.llm.named_parameters() if p.requires_grad)
    return {"pixellm": pix, "sam_path": sam, "pixellm_finetuned": {"trainable": tuned, "total": tuned}}


def training_minutes(metrics_jsonl: str | os.PathLike) -> float | None:
    """Minutes of training in a stage's ``metrics.jsonl`` (the ``time`` of its last record), None without one."""
    import json
    from pathlib import Path

    p = Path(metrics_jsonl)
    if not p.is_file():
        return None
    times = [json.loads(line).get("time") for line in p.read_text().splitlines() if line.strip()]
    times = [t for t in times if isinstance(t, (int, float))]
    return round(times[-1] / 60.0, 2) if times else None


@torch.no_grad()
def compare_latency(model, segmenter, dataset, n: int = 20, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per image, batch 1, everything from pixels (no cached features), on the first
    ``n`` samples of a RefExp dataset, with the current thread count: ``{"pixellm", "sam_path"}``.

    The two paths alternate image by image (after ``warmup`` untimed images each), so that a change in the
    load of a shared machine falls on both medians instead of on whichever path ran second."""
    from pixelllm.data.datasets import collate

    batches = [batch_to(collate([dataset[i]]), model.device) for i in range(min(n, len(dataset)))]
    ones = torch.ones(1, dtype=torch.long, device=model.device)
    model.eval()
    segmenter.eval()
    paths = {"pixellm": lambda b: model.predict(b, num_targets=ones), "sam_path": lambda b: segmenter.predict(b)}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i, b in enumerate(batches[:warmup] + batches):
        for name, predict in (paths.items() if i % 2 == 0 else reversed(paths.items())):
            t0 = time.perf_counter()
            predict(b)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return {k: float(np.median(v)) for k, v in times.items()}


def batch_to(batch: Mapping[str, Any], device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


__all__ = ["MuseSamples", "batch_to", "build_pixellm_model", "cached_evaluation", "evaluate_sam_path", "evaluate_stage", "compare_latency", "ensure_comparison_stages", "ensure_pixellm_stages",
           "evaluate_pixellm_refseg", "load_pixellm", "multi_target_metrics", "muse_samples",
           "muse_training_set", "parameters_added", "pixellm_plan", "pixellm_collate", "pixellm_trainer", "predict_multi_pixellm",
           "predict_multi_sam_path", "train_pixellm", "trainable_and_total", "training_minutes", "training_sets"]
