"""Downstream task 3 — location-conditioned captioning (PAPER_NOTES.md §3).

PixelLLM captions *a given region*: the ground-truth box b is the location prompt (SAM prompt
encoder → 2 corner tokens → prompt feature extractor E), the text prompt is "an object of", and the
target is the region's phrase::

    f_l = E(P(b), V(I))               b = the ground-truth box, (x0, y0, x1, y1) pixels of the S×S input
    w_i ~ L([f_l ; "an object of"], w_<i)

The per-token points are ignored: the samples carry no point target (``point_valid`` all False), so the
loss of :func:`pixelllm.modeling.losses.pixelllm_loss` is the label-smoothed caption CE alone.

Data (the synthetic world, real formats): Visual Genome region descriptions (DenseCap splits; one
sample per region) and refer-format RefCOCOg-style expressions (one sample per expression; the paper's
RefCOCOg column). Evaluation captions each distinct (image, box) once and scores it against every
phrase of that box — for RefCOCO-style data all sentences of a ref — with METEOR, CIDEr-D, BLEU-4 and
ROUGE-L (PTB-tokenised, pycocoevalcap scorers, offline; :func:`pixelllm.eval.caption.caption_metrics`).

Training (:func:`train_loc_caption`; its Trainer: :func:`loc_caption_trainer`): the PixelLLM itself, built
by the engine's ``build_model`` and trained by its one ``Trainer``; with ``train_image_encoder=False`` the
whole image encoder is frozen, so the Trainer caches its feature grid per image id and a step runs only the
prompt extractor and T5 + LoRA.

Bad input: refer boxes partly outside the image are clipped, zero-size / outside ones skipped (VG boxes
are cleaned by the VG reader the same way); images without any region are skipped; all counted and
reported once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from pixelllm.data.datasets import DEFAULT_PROMPTS
from pixelllm.data.errors import SkipCounter

REGION_PROMPT = DEFAULT_PROMPTS["region_caption"]          # "an object of" (PAPER_NOTES.md §3)
#: split evaluated per dataset: VG → the DenseCap test split; RefCOCOg → its val split (the paper's column)
EVAL_SPLITS = {"vg": "test", "refcocog": "val"}


def source_prompt(cfg, name: str) -> str:
    """The text prompt of region-caption source ``name`` (vg | refcocog): ``prompts["region_caption:<name>"]``
    when the config has one, else ``prompts["region_caption"]`` (default "an object of"). A prompt per source
    tells the captioner which style to write: VG phrases name colour and shape ("big yellow square"),
    referring expressions often only what tells the object apart ("the square above the purple square")."""
    prompts = getattr(cfg, "prompts", None) or {}
    return prompts.get(f"region_caption:{name}") or prompts.get("region_caption", REGION_PROMPT)


# ------------------------------------------------------------------------------------------------ data
def clean_refer_records(records: Sequence[dict], skips: SkipCounter) -> list[dict]:
    """Refer per-expression records with their ``bbox`` (x, y, w, h, original pixels) clipped to the image;
    zero-size boxes and boxes outside the image are dropped. Both are counted in ``skips``."""
    from pixelllm.data.visual_genome import clip_box_xywh

    out = []
    for r in records:
        box = clip_box_xywh(*r["bbox"], r["width"], r["height"], skips,
                            detail=f"ref {r.get('ref_id')} sentence {r.get('sent_id')}")
        if box is not None:
            out.append({**r, "bbox": box})
    return out


def load_region_records(data_root: str | os.PathLike, name: str, split: str | None,
                        refer_dataset: str = "refcoco", refer_split_by: str = "unc",
                        skips: SkipCounter | None = None) -> list[dict]:
    """Records of one location-conditioned captioning source under ``data_root`` (ARCHITECTURE layout).

    name: "vg" → :func:`load_visual_genome` per-image records (``regions``) of the DenseCap ``split``;
    "refcocog" → refer per-expression records (``expression``, ``bbox``) of ``split`` read from
    ``<data_root>/<refer_dataset>/refs(<refer_split_by>).p`` (the synthetic world has one refer set,
    "refcoco"/"unc"; real RefCOCOg is "refcocog"/"umd").
    """
    from pixelllm.data.refcoco import RefCOCO
    from pixelllm.data.visual_genome import load_visual_genome

    root = Path(data_root)
    own = skips is None
    skips = skips if skips is not None else SkipCounter(f"region captions {name}/{split}")
    if name == "vg":
        recs = load_visual_genome(root / "vg" / "region_descriptions.json", root / "vg" / "image_data.json",
                                  splits=root / "vg" / "densecap_splits.json", split=split, skips=skips)
    elif name == "refcocog":
        recs = clean_refer_records(RefCOCO(root, refer_dataset, refer_split_by).expressions(split), skips)
    else:
        raise ValueError(f"load_region_records: unknown source {name!r}; use 'vg' or 'refcocog'")
    if own:
        skips.report()
    return recs


def region_caption_dataset(data_root: str | os.PathLike, name: str, split: str | None, tokenizer,
                           image_size: int, prompt: str = REGION_PROMPT, max_target_len: int = 32,
                           refer_dataset: str = "refcoco", refer_split_by: str = "unc"):
    """A :class:`~pixelllm.data.datasets.RegionCaptionDataset` (task "region_caption") on one source/split:
    samples carry ``boxes`` = the region (resized frame), ``prompt_ids`` = ``prompt``, ``target_ids`` = phrase."""
    from pixelllm.data.datasets import RegionCaptionDataset

    recs = load_region_records(data_root, name, split, refer_dataset, refer_split_by)
    if not recs:
        raise ValueError(f"region_caption_dataset: no usable {name} records in split {split!r} under {data_root}")
    return RegionCaptionDataset(recs, Path(data_root) / "images", tokenizer, image_size, prompt=prompt,
                                max_target_len=max_target_len)


def region_items(dataset) -> list[dict]:
    """Distinct (image, box) pairs of a RegionCaptionDataset, each with all phrases of that box as references.

    Returns dicts ``key`` ("<image_id>:<x>,<y>,<w>,<h>"), ``index`` (first sample of the pair),
    ``image_id``, ``bbox`` ([x, y, w, h] original pixels), ``references`` (list[str]), in sample order."""
    items: dict[str, dict] = {}
    for i, (rec, bbox, phrase, _rid) in enumerate(dataset.items):
        key = f"{rec['image_id']}:" + ",".join(f"{float(v):g}" for v in bbox)
        if key not in items:
            items[key] = {"key": key, "index": i, "image_id": rec["image_id"], "bbox": list(bbox), "references": []}
        items[key]["references"].append(phrase)
    return list(items.values())


# ------------------------------------------------------------------------------------------- inference
def caption_regions(model, dataset, tokenizer, prompt: str | None = None, batch_size: int = 32,
                    max_new_tokens: int = 16, num_beams: int = 1, limit: int | None = None,
                    device: str = "cpu", progress: bool = True) -> list[dict]:
    """Caption every distinct (image, box) of ``dataset`` with the box as the location prompt and the text
    ``prompt`` (None: the dataset's own, i.e. its source's training prompt).

    Returns dicts of :func:`region_items` plus ``text`` (the generated caption) and ``box_input``
    ((x0, y0, x1, y1) pixels of the resized S×S input, what the model saw).
    """
    import torch
    from tqdm.auto import tqdm

    items = region_items(dataset)[:limit] if limit else region_items(dataset)
    if prompt is None:
        base = dataset
        while hasattr(base, "dataset") and not hasattr(base, "prompt"):             # through Subset
            base = base.dataset
        prompt = getattr(base, "prompt", REGION_PROMPT)
    was = model.training
    model.eval()
    out = []
    try:
        for s in tqdm(range(0, len(items), batch_size), desc="region captions", disable=not progress):
            chunk = items[s:s + batch_size]
            samples = [dataset[it["index"]] for it in chunk]
            images = torch.stack([x["images"] for x in samples]).to(device)
            sizes = torch.stack([x["image_sizes"] for x in samples]).to(device)
            boxes = torch.stack([x["boxes"] for x in samples]).to(device)        # B×4 resized frame
            res = model.caption(images, boxes, prompt=prompt, tokenizer=tokenizer, num_beams=num_beams,
                                max_new_tokens=max_new_tokens, image_sizes=sizes)
            for it, x, r in zip(chunk, samples, res):
                out.append({**it, "text": r["text"], "box_input": x["boxes"].tolist()})
    finally:
        model.train(was)
    return out


def score_region_captions(results: Sequence[dict], metrics: Sequence[str] | None = None, meteor=None) -> dict:
    """Caption metrics of :func:`caption_regions` results (one prediction per box, its phrases as
    references): ``{"METEOR", "CIDEr-D", "BLEU-4", "ROUGE-L", "num_items", ...}``, fractions (×100 = %)."""
    from pixelllm.eval.caption import DEFAULT_METRICS, caption_metrics

    preds = {r["key"]: r["text"] for r in results}
    refs = {r["key"]: r["references"] for r in results}
    return caption_metrics(preds, refs, metrics=tuple(metrics or DEFAULT_METRICS), meteor=meteor)


def evaluate_loc_caption(model, datasets: dict, tokenizer, prompt: str | None = None, batch_size: int = 32,
                         max_new_tokens: int = 16, num_beams: int = 1, limit: int | None = None,
                         device: str = "cpu", progress: bool = True, meteor_fn=None) -> dict:
    """Per-dataset metrics ``{name: {metric: value, "num_items": n}}`` and the predictions
    (``{"predictions": {name: [...]}}``); ``prompt`` None = each dataset's own (:func:`caption_regions`). One METEOR Java process serves every dataset; ``meteor_fn``
    (an object with ``compute(pairs) -> (corpus, per_item)``) replaces it, e.g. in Java-free tests."""
    from pixelllm.eval.caption import Meteor

    results = {n: caption_regions(model, d, tokenizer, prompt, batch_size, max_new_tokens, num_beams, limit,
                                  device, progress) for n, d in datasets.items()}
    metrics: dict[str, Any] = {}
    if meteor_fn is not None:
        for n, r in results.items():
            metrics[n] = score_region_captions(r, meteor=meteor_fn)
    else:
        with Meteor() as m:
            for n, r in results.items():
                metrics[n] = score_region_captions(r, meteor=m)
    return {"metrics": metrics, "predictions": results}


def scene_objects(scenes_path: str | os.PathLike) -> dict[int, list[dict]]:
    """{image_id: objects} of the synthetic world's ``scenes.json`` (each object: ``id``, ``shape``,
    ``color``, ``size``, ``bbox`` [x, y, w, h] original pixels)."""
    from pixelllm.data.errors import DataFormatError, read_json, require

    p = Path(scenes_path)
    if not p.is_file():
        raise FileNotFoundError(f"scene_objects: {p} not found (the synthetic world's ground truth)")
    out: dict[int, list[dict]] = {}
    for i, im in enumerate(require(read_json(p), "images", list, p, None)):
        iid = require(im, "image_id", int, p, None, f"images[{i}].")
        if iid in out:
            raise DataFormatError(p, None, f"images[{i}].image_id", f"duplicate image id {iid}")
        out[iid] = list(require(im, "objects", list, p, None, f"images[{i}].", optional=True, default=[]))
    return out


def region_attribute_targets(results: Sequence[dict], objects: dict[int, list[dict]], min_iou: float = 0.5,
                             skips: SkipCounter | None = None) -> list[tuple[str, str] | None]:
    """(colour, shape) of the object each region of ``results`` (dicts with ``image_id`` and ``bbox``
    [x, y, w, h]) covers: the image's object of highest box IoU (``torchvision.ops.box_iou``), None when
    that IoU is below ``min_iou`` or the image is unknown (counted in ``skips``)."""
    import torch
    from torchvision.ops import box_convert, box_iou

    out: list[tuple[str, str] | None] = []
    for r in results:
        objs = objects.get(int(r["image_id"]))
        if not objs:
            if skips is not None:
                skips.add("image without scene objects", detail=f"image {r['image_id']}")
            out.append(None)
            continue
        a = box_convert(torch.tensor([r["bbox"]], dtype=torch.float32), "xywh", "xyxy")
        b = box_convert(torch.tensor([o["bbox"] for o in objs], dtype=torch.float32), "xywh", "xyxy")
        iou = box_iou(a, b)[0]
        j = int(iou.argmax())
        if float(iou[j]) < min_iou:
            if skips is not None:
                skips.add(f"region box matches no object (IoU < {min_iou})", detail=str(r.get("key", r["image_id"])))
            out.append(None)
            continue
        out.append((objs[j]["color"], objs[j]["shape"]))
    return out


def score_region_attributes(results: Sequence[dict], objects: dict[int, list[dict]], min_iou: float = 0.5
                            ) -> dict:
    """region_attribute_accuracy of :func:`caption_regions` results against the synthetic world's objects
    (:func:`pixelllm.eval.region_attributes.region_attribute_accuracy`), with its chance baselines
    ``chance_box_blind`` (name a random object of the same image) and ``chance_majority`` (always the most
    frequent colour + shape), and ``num_skipped`` (regions matching no object)."""
    from pixelllm.data.vocab import COLORS, SHAPES
    from pixelllm.eval.region_attributes import box_blind_chance, majority_chance, region_attribute_accuracy

    skips = SkipCounter("region attribute targets")
    targets = region_attribute_targets(results, objects, min_iou, skips)
    keep = [i for i, t in enumerate(targets) if t is not None]
    skips.report()
    tg = [targets[i] for i in keep]
    ids = [int(results[i]["image_id"]) for i in keep]
    out = region_attribute_accuracy([results[i]["text"] for i in keep], tg, list(COLORS), SHAPES)
    per_image = {i: [(o["color"], o["shape"]) for o in objects[i]] for i in set(ids)}
    out["chance_box_blind"] = box_blind_chance(tg, ids, per_image)
    out["chance_majority"] = majority_chance(tg)
    out["num_skipped"] = len(targets) - len(keep)
    return out


# -------------------------------------------------------------------------------------------- training
def freeze_for_loc_caption(model, train_image_encoder: bool):
    """``model`` (a PixelLLM) set up for this task: the trace head frozen (the task ignores the point
    outputs) and, unless ``train_image_encoder``, the whole image encoder too (SAM and the semantic ViT) —
    then :meth:`PixelLLM.frozen_image_features` is the whole grid, which the Trainer caches per image id, and
    a step runs only E(P(b), F) → T5. A CPU-budget choice; the paper keeps EVA02 trainable. Returns ``model``."""
    model.trace_head.requires_grad_(False)
    if not train_image_encoder:
        model.image_encoder.requires_grad_(False)
    return model


def loc_caption_train_dataset(cfg, paths, tokenizer, image_size: int):
    """The config's mixture ``cfg.datasets`` ({"vg": w, "refcocog": w}) of region-caption datasets on the
    train split (``max_samples`` caps each), mixed by :class:`pixelllm.engine.datasets.MixtureDataset`."""
    from torch.utils.data import Subset

    from pixelllm.engine.datasets import MixtureDataset

    parts = {}
    for name in cfg.datasets:
        d = region_caption_dataset(paths.data, name, "train", tokenizer, image_size,
                                   prompt=source_prompt(cfg, name),
                                   max_target_len=cfg.max_target_len, refer_dataset=cfg.refer_dataset,
                                   refer_split_by=cfg.refer_split_by)
        parts[name] = Subset(d, range(min(cfg.max_samples, len(d)))) if cfg.max_samples else d
    return parts[next(iter(parts))] if len(parts) == 1 else MixtureDataset(parts, cfg.datasets, seed=cfg.seed)


def eval_datasets(cfg, paths, tokenizer, image_size: int) -> dict:
    """{name: RegionCaptionDataset} on each dataset's evaluation split (``cfg.eval_splits``)."""
    return {name: region_caption_dataset(paths.data, name, cfg.eval_splits.get(name, EVAL_SPLITS.get(name)),
                                         tokenizer, image_size,
                                         prompt=source_prompt(cfg, name),
                                         max_target_len=cfg.max_target_len, refer_dataset=cfg.refer_dataset,
                                         refer_split_by=cfg.refer_split_by)
            for name in cfg.datasets}


def loc_caption_trainer(cfg, model, tokenizer, paths=None, progress: bool = True, write: bool = True):
    """The engine ``Trainer`` of a location-conditioned captioning config for ``model`` (a PixelLLM, e.g.
    ``build_model(cfg, paths, tokenizer)``), set up by :func:`freeze_for_loc_caption`: the config's train
    mixture (:func:`loc_caption_train_dataset`), checkpoints in the config's ``out_dir`` (nothing written
    when ``write`` is False)."""
    from pixelllm.data.datasets import collate
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.engine.trainer import Trainer
    from pixelllm.modeling.losses import loss_for_config

    paths = paths or resolve_paths(cfg)
    model = freeze_for_loc_caption(model, cfg.train_image_encoder)
    train = loc_caption_train_dataset(cfg, paths, tokenizer, model.image_size)
    return Trainer(model, cfg, train, collate, out_dir=paths.out if write else None, progress=progress,
                   loss_fn=loss_for_config(cfg, tokenizer))


def train_loc_caption(cfg, progress: bool = True, resume: bool = True):
    """Fine-tune PixelLLM for location-conditioned captioning with the engine's :class:`Trainer` (caption
    CE only): the model of :func:`~pixelllm.engine.builder.build_model` (``init_from`` checkpoints loaded in
    order) set up by :func:`freeze_for_loc_caption`. Prerequisites (data, tokenizer, tiny SAM, tiny T5) are
    found or made as in notebooks 01/02; checkpoints, ``metrics.jsonl`` and ``final.json`` go to
    ``<run>/checkpoints/<stage>``, whose checkpoint is resumed. Reload the result with
    :func:`~pixelllm.engine.builder.load_stage_model`. Returns the trainer (``.model``, ``.history``)."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import build_model
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    paths = ensure_prerequisites(cfg, progress=progress)
    tok = load_tokenizer(paths.tokenizer)
    trainer = loc_caption_trainer(cfg, build_model(cfg, paths, tok), tok, paths, progress=progress)
    return trainer.resume_and_fit(resume)


# ------------------------------------------------------------------------------------- report / figures
def metric_table(metrics: dict, paper: dict) -> list[dict]:
    """Rows ``{"dataset", "source" (ours | paper), "METEOR", "CIDEr-D", "BLEU-4", "ROUGE-L", "items"}`` in
    percent (our fractions × 100) — ours next to the published row of the same dataset (``paper``:
    ``{dataset: {metric: percent}}``, e.g. PAPER_NOTES.md §5)."""
    rows = []
    for name, m in metrics.items():
        rows.append({"dataset": name, "source": "ours", **{k: 100 * m[k] for k in ("METEOR", "CIDEr-D", "BLEU-4", "ROUGE-L")
                                                          if k in m}, "items": m.get("num_items")})
        if name in paper:
            rows.append({"dataset": name, "source": "paper (T5-XL)", **paper[name]})
    return rows


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Plain-text table (numbers with one decimal, missing cells "–")."""
    cells = [[(f"{r[c]:.1f}" if isinstance(r.get(c), float) else ("–" if r.get(c) is None else str(r[c])))
              for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))   # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(x) for x in cells])
