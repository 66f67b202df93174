"""Train PixelLLM from a config: ``python -m pixelllm.train --config ln_trace --preset tiny [--smoke] [k=v ...]``.

Data parallel on N processes (gloo on CPU, nccl on GPU; rank 0 logs and checkpoints)::

    torchrun --nproc_per_node 2 -m pixelllm.train --config pretrain --smoke

What it does, in order (each step is a function the notebooks call too):
  1. :func:`resolve_paths` — the run folder and its artifacts (data, tokenizer, tiny SAM, tiny T5, semantic
     encoder, checkpoints);
  2. :func:`ensure_prerequisites` — found → reuse, else build them (synthetic world, tokenizer, SAM / T5 /
     semantic-encoder pretraining), exactly what notebooks 01/02 do, so any stage can run on its own;
  3. :func:`build_model` — ``build_pixelllm(preset, sam_checkpoint, t5, tokenizer, semantic_checkpoint)``,
     initialised from the previous stage (``init_from``);
  4. :func:`build_train_dataset` — the task mixture (``tasks={"trace": 2, "caption": 1}``) of the real
     dataset readers, with the config's prompts;
  5. :class:`~pixelllm.engine.trainer.Trainer` — resumes from ``out_dir`` if a checkpoint is there.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pixelllm.configs import CONFIGS, TrainConfig, get_config

# -------------------------------------------------------------------------------------- paths / prereqs

@dataclass
class Paths:
    run: Path
    data: Path
    tokenizer: Path
    sam: Path
    t5: Path
    semantic: Path       # pretrained semantic ViT (our EVA02 stand-in), safetensors
    out: Path
    checkpoints: Path


def resolve_paths(cfg: TrainConfig) -> Paths:
    """Where everything of this config lives (config fields win over the run-folder defaults)."""
    from pixelllm.utils import run_dir

    run = Path(cfg.run_dir) if cfg.run_dir else run_dir(cfg.smoke)
    ck = run / "checkpoints"
    return Paths(run=run, data=Path(cfg.data_dir) if cfg.data_dir else run / "data",
                 tokenizer=Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else run / "tokenizer",
                 sam=Path(cfg.sam_checkpoint) if cfg.sam_checkpoint else run / "sam_tiny" / "sam_tiny.pth",
                 t5=Path(cfg.t5_dir) if cfg.t5_dir else run / "t5_tiny",
                 semantic=Path(cfg.model_overrides["semantic_checkpoint"])
                 if cfg.model_overrides.get("semantic_checkpoint") else run / "semantic_tiny" / "semantic_tiny.safetensors",
                 out=Path(cfg.out_dir) if cfg.out_dir else ck / cfg.stage, checkpoints=ck)


def ensure_prerequisites(cfg: TrainConfig, progress: bool = True) -> Paths:
    """found → reuse, else compute: synthetic world, tokenizer, tiny SAM (box→mask pretraining), tiny T5
    (span corruption + reconstruction), semantic ViT (per-patch colour/category pretraining, the EVA02
    stand-in; only for presets without a ``semantic_timm`` model — a timm EVA02 comes with its own
    weights via ``model_overrides={"semantic_checkpoint": ...}``). Explicit paths in the config must
    exist (never silently recomputed elsewhere). The numbers are the prerequisite configs
    (``get_config("data" | "tokenizer" | "sam_tiny" | "t5_tiny" | "semantic_tiny", smoke=cfg.smoke)``), those
    of notebooks 01/02, so the artifacts are the same whichever makes them first; a pretrained part is
    reused only when the config stored beside it matches."""
    from pixelllm.utils import found_or_compute

    p = resolve_paths(cfg)
    data_cfg, tok_cfg = get_config("data", smoke=cfg.smoke), get_config("tokenizer", smoke=cfg.smoke)
    sam_cfg, t5_cfg = get_config("sam_tiny", smoke=cfg.smoke), get_config("t5_tiny", smoke=cfg.smoke)
    sem_cfg = get_config("semantic_tiny", smoke=cfg.smoke, overrides={"preset": cfg.preset, "image_size": cfg.image_size})
    for field, path in (("data_dir", p.data), ("tokenizer_dir", p.tokenizer), ("sam_checkpoint", p.sam), ("t5_dir", p.t5)):
        if getattr(cfg, field) and not path.exists():
            raise FileNotFoundError(f"config field {field}={getattr(cfg, field)!r}: {path} does not exist")

    def data():
        from pixelllm.data.synthetic import generate
        generate(p.data, n_scenes=data_cfg.n_scenes, image_size=data_cfg.image_size, seed=data_cfg.seed,
                 progress=progress)

    def tokenizer():
        from pixelllm.data.tokenizer import corpus_texts, train_tokenizer
        train_tokenizer(corpus_texts(p.data), p.tokenizer, vocab_size=tok_cfg.vocab_size)

    def sam():
        from pixelllm.pretrain.sam import train_tiny_sam
        train_tiny_sam(sam_cfg, p.data, p.sam, progress=progress)

    def t5():
        from pixelllm.data.tokenizer import load_tokenizer
        from pixelllm.pretrain.t5 import pretrain_tiny_t5, t5_corpus
        train_texts, val_texts = t5_corpus(p.data)
        pretrain_tiny_t5(t5_cfg, train_texts, val_texts, load_tokenizer(p.tokenizer), p.t5, progress=progress)

    def semantic():
        from pixelllm.pretrain.semantic import pretrain_semantic_encoder
        pretrain_semantic_encoder(sem_cfg, p.data, p.semantic, progress=progress)

    if cfg.model_overrides.get("semantic_checkpoint") and not p.semantic.exists():
        raise FileNotFoundError(f"model_overrides semantic_checkpoint: {p.semantic} does not exist")
    found_or_compute(p.data / "stats.json", data)
    found_or_compute(p.tokenizer, tokenizer)
    if not cfg.sam_checkpoint:                       # an explicit checkpoint is used as it is
        found_or_compute(p.sam, sam, config=sam_cfg)
    if not cfg.t5_dir:
        found_or_compute(p.t5, t5, config=t5_cfg)
    if _pretrains_semantic(cfg) and not cfg.model_overrides.get("semantic_checkpoint"):
        found_or_compute(p.semantic, semantic, config=sem_cfg)
    return p


def _pretrains_semantic(cfg: TrainConfig) -> bool:
    """Our semantic-encoder pretraining applies to the presets whose semantic ViT is our small Eva (no timm
    model name) and whose encoder mode uses it."""
    from pixelllm.modeling.build import PRESETS

    merged = {**dataclasses.asdict(PRESETS[cfg.preset]), **cfg.model_overrides} if cfg.preset in PRESETS else {}
    return bool(merged) and not merged.get("semantic_timm") and merged.get("encoder_mode", "both") != "sam_only"


# ------------------------------------------------------------------------------------------ model
def resolve_init(cfg: TrainConfig, paths: Paths) -> Optional[Path]:
    """``init_from`` as a checkpoint path: an existing file/folder, else a stage name under
    ``<run>/checkpoints``. Empty → None. A name that resolves to nothing raises."""
    from pixelllm.engine.checkpoint import latest_checkpoint

    if not cfg.init_from:
        return None
    for cand in (Path(cfg.init_from), paths.checkpoints / cfg.init_from):
        if cand.exists():
            found = latest_checkpoint(cand)
            if found is not None:
                return found
    raise FileNotFoundError(f"init_from={cfg.init_from!r}: no checkpoint at {cfg.init_from} nor under "
                            f"{paths.checkpoints / cfg.init_from} (train that stage first)")


def build_model(cfg: TrainConfig, paths: Paths, tokenizer=None, device: str = "cpu"):
    """``build_pixelllm(cfg.preset, ...)`` with the run's frozen SAM and T5 (when present), seeded by
    ``cfg.seed``; then the trainable weights of ``init_from`` (stage 1 → stage 2)."""
    from pixelllm.engine.checkpoint import load_checkpoint, load_trainable_state_dict
    from pixelllm.modeling.build import build_pixelllm
    from pixelllm.utils import seed_everything

    seed_everything(cfg.seed)
    kw = dict(cfg.model_overrides)
    if cfg.image_size:
        kw["image_size"] = cfg.image_size
    if "semantic_checkpoint" not in kw and paths.semantic.is_file() and _pretrains_semantic(cfg):
        kw["semantic_checkpoint"] = str(paths.semantic)
    model = build_pixelllm(cfg.preset, sam_checkpoint=paths.sam if paths.sam.is_file() else None,
                           t5=paths.t5 if (paths.t5 / "config.json").is_file() else None,
                           tokenizer=tokenizer, **kw)
    init = resolve_init(cfg, paths)
    if init is not None:
        state = load_checkpoint(init)
        load_trainable_state_dict(model, state["model"], strict=False)
        print(f"initialised trainable weights from {init} (step {state['step']})")
    return model.to(device)


def load_trained_model(cfg: TrainConfig, tokenizer=None, device: str = "cpu"):
    """The model of a finished (or interrupted) stage: built as in training, trainable weights from the
    newest checkpoint in the stage's ``out_dir``; returned in eval mode."""
    import dataclasses

    paths = resolve_paths(cfg)
    model = build_model(dataclasses.replace(cfg, init_from=str(paths.out)), paths, tokenizer, device)
    return model.eval()


# ------------------------------------------------------------------------------------------- data
class MixtureDataset:
    """Tasks mixed by weight, deterministically. The first task is the reference: one epoch = each of its
    samples once; task k contributes round(w_k / w_0 · n_0) slots per epoch, slot j → its sample
    perm_k[j mod n_k] (a fixed seeded permutation, so smaller sets repeat and larger ones are sub-sampled
    evenly). The trainer's sampler shuffles the slots.

    Args:
        datasets: {task: Dataset}; weights: {task: weight > 0}.
    """

    def __init__(self, datasets: dict, weights: dict, seed: int = 0):
        import numpy as np

        if set(datasets) != set(weights):
            raise ValueError(f"MixtureDataset: datasets {sorted(datasets)} vs weights {sorted(weights)}")
        bad = [k for k, w in weights.items() if not w > 0]
        if bad:
            raise ValueError(f"MixtureDataset: weights must be > 0, got {[(k, weights[k]) for k in bad]}")
        empty = [k for k, d in datasets.items() if len(d) == 0]
        if empty:
            raise ValueError(f"MixtureDataset: empty dataset(s) {empty}")
        self.datasets = datasets
        ref = next(iter(datasets))
        n0, w0 = len(datasets[ref]), weights[ref]
        rng = np.random.default_rng(seed)
        self.index: list[tuple[str, int]] = []
        for k, d in datasets.items():
            slots = max(1, round(weights[k] / w0 * n0))
            perm = rng.permutation(len(d))
            self.index += [(k, int(perm[j % len(d)])) for j in range(slots)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        k, j = self.index[i]
        return self.datasets[k][j]


def task_dataset(task: str, split: str, cfg: TrainConfig, paths: Paths, tokenizer, image_size: int, **kw):
    """One task's dataset on a split of the synthetic world (real-format files)."""
    from pixelllm.data.datasets import DEFAULT_PROMPTS, CaptionDataset, LNTraceDataset

    images = paths.data / cfg.image_dir
    prompt = cfg.prompts.get(task, DEFAULT_PROMPTS.get(task))
    if task == "caption":
        return CaptionDataset(paths.data / cfg.captions_file.format(split=split), images, tokenizer, image_size,
                              prompt=prompt, max_target_len=cfg.max_target_len, **kw)
    if task == "trace":
        ln = paths.data / cfg.ln_file.format(split=split)
        return LNTraceDataset(ln, images, tokenizer, image_size, prompt=prompt, max_target_len=cfg.max_target_len, **kw)
    raise ValueError(f"task {task!r}: the training CLI wires 'caption' and 'trace' (stages 1 and 2); "
                     "use the dataset classes of pixelllm.data.datasets directly for the others")


def build_train_dataset(cfg: TrainConfig, paths: Paths, tokenizer, image_size: int):
    """The config's task mixture on the train split (``max_samples`` caps each task)."""
    from torch.utils.data import Subset

    parts = {}
    for task in cfg.tasks:
        d = task_dataset(task, "train", cfg, paths, tokenizer, image_size)
        if cfg.max_samples:
            d = Subset(d, range(min(cfg.max_samples, len(d))))
        parts[task] = d
    return parts[next(iter(parts))] if len(parts) == 1 else MixtureDataset(parts, cfg.tasks, seed=cfg.seed)


# ------------------------------------------------------------------------------------------- eval
def teacher_forced_eval(model, dataset, batch_size: int = 32, device: str = "cpu", max_batches: int | None = None,
                        cfg: TrainConfig | None = None) -> dict:
    """Teacher-forced metrics on ``dataset`` (collate batches): the loss terms (``ce``, ``point_l1_px``)
    and, when the batches carry ``trace_samples``, the trace metric ``point_l1`` (normalised, closest
    ground-truth sample, PAPER_NOTES.md §2.6) with the image-centre baseline on the same tokens.

    Returns also per-sample lists ``pred`` / ``targets`` (T×4 corners) / ``valid`` (T) / ``samples``
    (T×16×2), all normalised [0, 1], for baselines and plots."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from pixelllm.data.datasets import collate
    from pixelllm.engine.losses import pixelllm_loss
    from pixelllm.engine.trainer import forward_batch, to_device
    from pixelllm.eval.trace import centre_points, normalize_points, point_l1

    cfg = cfg or TrainConfig()
    was = model.training
    model.eval()
    sums = {"ce": 0.0, "point_l1_px": 0.0}
    n_tok = n_pt = 0
    preds, valids, samples, targets = [], [], [], []
    with torch.no_grad():
        for k, b in enumerate(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)):
            if max_batches is not None and k >= max_batches:
                break
            b = to_device(b, torch.device(device))
            logits, points = forward_batch(model, b)
            out = pixelllm_loss(logits, points, b, lambda_point=cfg.lambda_point, label_smoothing=cfg.label_smoothing)
            sums["ce"] += float(out["ce"]) * int(out["n_tokens"])
            n_tok += int(out["n_tokens"])
            if "n_points" in out:
                sums["point_l1_px"] += float(out["point_l1"]) * int(out["n_points"])
                n_pt += int(out["n_points"])
            if "trace_samples" in b:
                pn = normalize_points(points.float().cpu(), b["image_sizes"].cpu())       # B×T×4 in [0,1]
                gn = normalize_points(b["points"].float().cpu(), b["image_sizes"].cpu())  # ground-truth corners
                for i in range(len(pn)):
                    t = int(b["target_mask"][i].sum())
                    preds.append(pn[i, :t])
                    valids.append(b["point_valid"][i, :t].cpu().numpy())
                    samples.append(b["trace_samples"][i, :t].cpu().numpy())
                    targets.append(gn[i, :t])
    model.train(was)
    res = {"ce": sums["ce"] / max(n_tok, 1), "point_l1_px": sums["point_l1_px"] / max(n_pt, 1) if n_pt else float("nan")}
    if preds:
        P, Vd, S_ = np.concatenate(preds), np.concatenate(valids), np.concatenate(samples)
        res["point_l1"] = point_l1(P, S_, Vd)
        res["centre_l1"] = point_l1(centre_points(Vd.shape), S_, Vd)
        res.update(pred=preds, valid=valids, samples=samples, targets=targets)
    return res


def generate_captions(model, dataset, tokenizer, prompt: str, batch_size: int = 32, max_new_tokens: int = 48,
                      num_beams: int = 1, device: str = "cpu", limit: int | None = None,
                      progress: bool = True) -> list[dict]:
    """Free-running captions (+ per-word points) for the distinct images of ``dataset`` (a task dataset
    whose samples carry ``image_ids``). Returns one dict per image: ``image_id``, ``text``, ``tokens``,
    ``points`` (T×4 pixels of the resized input), ``image_size`` (h, w after resize)."""
    import torch
    from tqdm.auto import tqdm

    seen, idx = set(), []
    for i in range(len(dataset)):                                     # first sample of each image
        iid = _image_id_of(dataset, i)
        if iid not in seen:
            seen.add(iid)
            idx.append(i)
        if limit is not None and len(idx) >= limit:
            break
    out = []
    was = model.training
    model.eval()
    for s in tqdm(range(0, len(idx), batch_size), desc="captioning", disable=not progress):
        items = [dataset[i] for i in idx[s:s + batch_size]]
        images = torch.stack([it["images"] for it in items]).to(device)
        sizes = torch.stack([it["image_sizes"] for it in items]).to(device)
        boxes = torch.stack([it["boxes"] for it in items]).to(device)
        res = model.caption(images, boxes, prompt=prompt, tokenizer=tokenizer, num_beams=num_beams,
                            max_new_tokens=max_new_tokens, image_sizes=sizes)
        for it, r in zip(items, res):
            out.append({"image_id": it["image_ids"], "image_size": it["image_sizes"].tolist(), **r})
    model.train(was)
    return out


def _image_id_of(dataset, i: int) -> str:
    """Image id of sample ``i`` without loading the image when the dataset exposes its records."""
    if hasattr(dataset, "narratives"):
        return str(dataset.narratives[i].image_id)
    if hasattr(dataset, "items") and isinstance(dataset.items[i], tuple):
        return str(dataset.items[i][0]["image_id"])
    return str(dataset[i]["image_ids"])


def make_eval_fn(cfg: TrainConfig, paths: Paths, tokenizer, image_size: int, device: str = "cpu",
                 n_samples: int = 64) -> Callable:
    """The training eval hook: teacher-forced metrics on the first ``n_samples`` val samples of the
    config's first task (trace → also the normalised ``point_l1``)."""
    from torch.utils.data import Subset

    task = next(iter(cfg.tasks))
    kw = {"return_trace_samples": True} if task == "trace" else {}
    val = task_dataset(task, "val", cfg, paths, tokenizer, image_size, **kw)
    val = Subset(val, range(min(n_samples, len(val))))

    def eval_fn(model, step):
        res = teacher_forced_eval(model, val, batch_size=32, device=device, cfg=cfg)
        return {f"val_{k}": v for k, v in res.items() if isinstance(v, float) and math.isfinite(v)}

    return eval_fn


# ---------------------------------------------------------------------------------------- training
def run_training(cfg: TrainConfig, eval_fn: Callable | str | None = "default", resume: bool = True,
                 progress: bool = True, dist_info=None):
    """Everything from a config to a trained model (resuming ``out_dir`` when it has a checkpoint).
    Returns the :class:`Trainer` (``.model``, ``.history``, ``.last_checkpoint``)."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.data.datasets import collate
    from pixelllm.engine import distributed
    from pixelllm.engine.trainer import Trainer

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
    trainer = Trainer(model, cfg, train, collate, out_dir=paths.out, eval_fn=eval_fn, dist_info=info,
                      progress=progress)
    if resume and trainer.resume():
        if info.is_main:
            print(f"resumed from {trainer.last_checkpoint} at step {trainer.step}")
    trainer.fit()
    return trainer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, choices=CONFIGS)
    ap.add_argument("--preset", default=None, help="build_pixelllm preset (tiny | small | paper)")
    ap.add_argument("--smoke", action="store_true", help="the config's SMOKE variant (runs/smoke)")
    ap.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in out_dir")
    ap.add_argument("--no-eval", action="store_true", help="skip the eval hook")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value (Python literals)")
    args = ap.parse_args(argv)
    cfg = get_config(args.config, smoke=args.smoke, preset=args.preset, overrides=args.overrides)
    if args.print_config:
        print(cfg.help())
        return 0
    from pixelllm.engine import distributed
    from pixelllm.engine.trainer import NonFiniteLossError

    info = distributed.init_distributed(cfg.device)
    try:
        tr = run_training(cfg, eval_fn=None if args.no_eval else "default", resume=not args.no_resume, dist_info=info)
        if info.is_main:
            last = tr.history[-1] if tr.history else {}
            print(f"done: step {tr.step}, loss {last.get('loss', float('nan')):.4f}, checkpoint {tr.last_checkpoint}")
    except NonFiniteLossError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
