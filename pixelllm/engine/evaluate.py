"""Evaluation of a captioner: teacher-forced loss terms and the trace metric, free-running captions, and
the Trainer's default eval hook."""
from __future__ import annotations

import math
from typing import Callable

from pixelllm.configs.base import TrainConfig


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
    from pixelllm.modeling.losses import pixelllm_loss
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


def make_eval_fn(cfg, paths, tokenizer, image_size: int, device: str = "cpu",
                 n_samples: int = 64) -> Callable:
    """The training eval hook: teacher-forced metrics on the first ``n_samples`` val samples of the
    config's first task (trace → also the normalised ``point_l1``)."""
    from torch.utils.data import Subset

    task = next(iter(cfg.tasks))
    kw = {"return_trace_samples": True} if task == "trace" else {}
    from pixelllm.engine.datasets import task_dataset

    val = task_dataset(task, "val", cfg, paths, tokenizer, image_size, **kw)
    val = Subset(val, range(min(n_samples, len(val))))

    def eval_fn(model, step):
        res = teacher_forced_eval(model, val, batch_size=32, device=device, cfg=cfg)
        return {f"val_{k}": v for k, v in res.items() if isinstance(v, float) and math.isfinite(v)}

    return eval_fn


