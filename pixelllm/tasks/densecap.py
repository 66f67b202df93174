"""Downstream task 4 — dense object captioning (PAPER_NOTES.md §3, paper Fig. 4 right): the data, the
captioner of a config, its training and its evaluation.

The model is :class:`pixelllm.modeling.dense_captioner.DenseCaptioner` (PixelLLM + a CenterNet proposer,
detection + caption losses end to end). It computes its own loss, so the engine's one
:class:`~pixelllm.engine.trainer.Trainer` trains it (frozen features cached per image id, exact resume).

* :class:`DenseCapDataset` / :func:`densecap_collate` / :func:`load_densecap_dataset` — one sample per VG
  image with all its regions;
* :func:`build_densecap` — the captioner of a :class:`~pixelllm.configs.densecap.DenseCapConfig`: the
  PixelLLM of :func:`pixelllm.engine.builder.build_model` (its ``init_from`` checkpoints loaded in order),
  the config's proposer, and, to reload a trained stage, that stage checkpoint's trainable weights on top;
* :func:`run_densecap_training` — prerequisites found or made, then the Trainer into ``<run>/checkpoints/<stage>``;
* :func:`predict_dataset` / :func:`evaluate_densecap` — DenseCap mAP / mAP_detection on the VG test split.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pixelllm.data.datasets import ResizePad, xywh_to_xyxy
from pixelllm.data.errors import SkipCounter
from pixelllm.modeling.dense_captioner import REGION_PROMPT, DenseCaptioner


# ------------------------------------------------------------------------------------------------- data
class DenseCapDataset(torch.utils.data.Dataset):
    """One sample per image with all its regions (dense captioning).

    Args:
        records: per-image VG records (:func:`pixelllm.data.visual_genome.load_visual_genome`): ``image_id``,
            ``file_name``, ``width``, ``height``, ``regions`` [{``region_id``, ``phrase``, ``bbox`` [x, y, w, h]}]
            in original pixels.
        image_root: folder of the images. tokenizer: encodes phrases (ends with EOS).
        image_size: S. max_target_len: phrase tokens kept (EOS included).

    Sample: ``images`` 3×S×S, ``image_sizes`` (h, w) after resize, ``orig_sizes`` (h, w), ``image_ids`` str,
    ``gt_boxes`` N×4 (x0, y0, x1, y1) pixels of the resized input, ``gt_captions`` N phrases,
    ``gt_target_ids`` N lists of token ids (EOS last).

    Bad input (counted in :attr:`skips`, reported once): regions with an empty phrase, zero-size boxes or
    boxes outside the image are skipped, boxes partly outside are clipped; images left without any
    region are skipped.
    """

    def __init__(self, records: Sequence[dict], image_root: str | os.PathLike, tokenizer, image_size: int,
                 max_target_len: int = 24):
        from pixelllm.data.visual_genome import clip_box_xywh

        self.image_root, self.tokenizer = Path(image_root), tokenizer
        self.transform, self.max_target_len = ResizePad(image_size), max_target_len
        self.skips = SkipCounter(type(self).__name__)
        self.records = []
        for r in records:
            regions = []
            for g in r.get("regions", []):
                phrase = str(g.get("phrase", "")).strip()
                if not phrase:
                    self.skips.add("skipped: empty phrase", detail=f"region {g.get('region_id')}")
                    continue
                box = clip_box_xywh(*g["bbox"], r["width"], r["height"], self.skips,
                                    detail=f"region {g.get('region_id')}")
                if box is not None:
                    regions.append({**g, "phrase": phrase, "bbox": box})
            if not regions:
                self.skips.add("skipped: image without regions", detail=f"image {r.get('image_id')}")
                continue
            self.records.append({**r, "regions": regions})
        self.skips.report()

    def __len__(self) -> int:
        return len(self.records)

    def _ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if not ids or ids[-1] != eos:
            ids.append(eos)
        return ids[: self.max_target_len - 1] + [eos] if len(ids) > self.max_target_len else ids

    def image_path(self, r: dict) -> Path:
        """``image_root / file_name`` (an absolute or ``..`` file name raises DataFormatError)."""
        from pixelllm.data.images import image_file

        return image_file(self.image_root, r["file_name"], f"DenseCapDataset record image_id {r.get('image_id')!r}")

    def missing_images(self, indices: Sequence[int] | None = None) -> list[Path]:
        """The image files of the dataset (or of samples ``indices``) that do not exist, each once."""
        recs = self.records if indices is None else [self.records[i] for i in indices]
        return [p for p in dict.fromkeys(self.image_path(r) for r in recs) if not p.is_file()]

    def __getitem__(self, i: int) -> dict[str, Any]:
        from pixelllm.data.images import open_image

        r = self.records[i]
        img = open_image(self.image_path(r), (r.get("height"), r.get("width")),
                         what=f"DenseCapDataset, image_id {r.get('image_id')!r}")
        h, w = img.height, img.width
        _, nh, nw = self.transform.geometry(h, w)
        boxes = self.transform.boxes([xywh_to_xyxy(g["bbox"]) for g in r["regions"]], h, w)   # N×4 resized
        return {"images": self.transform.image(img), "image_sizes": torch.tensor([nh, nw]),
                "orig_sizes": torch.tensor([h, w]), "image_ids": str(r["image_id"]), "gt_boxes": boxes,
                "gt_captions": [g["phrase"] for g in r["regions"]],
                "gt_target_ids": [self._ids(g["phrase"]) for g in r["regions"]]}

    def ground_truth(self) -> list[dict]:
        """DenseCap ground truth per image: ``{"image_id", "boxes": N×4 (x0, y0, x1, y1) original pixels,
        "captions"}`` (the input of :func:`pixelllm.eval.densecap.densecap_map`)."""
        return [{"image_id": str(r["image_id"]), "boxes": [xywh_to_xyxy(g["bbox"]) for g in r["regions"]],
                 "captions": [g["phrase"] for g in r["regions"]]} for r in self.records]


def densecap_collate(samples: Sequence[dict]) -> dict[str, Any]:
    """Stack images and sizes (B×3×S×S, B×2); keep per-image lists for ``gt_boxes`` (B tensors N_i×4),
    ``gt_captions`` and ``gt_target_ids``."""
    if not samples:
        raise ValueError("densecap_collate: empty list of samples")
    return {"images": torch.stack([s["images"] for s in samples]),
            "image_sizes": torch.stack([s["image_sizes"] for s in samples]).long(),
            "orig_sizes": torch.stack([s["orig_sizes"] for s in samples]).long(),
            "image_ids": [s["image_ids"] for s in samples],
            "gt_boxes": [s["gt_boxes"].reshape(-1, 4).float() for s in samples],
            "gt_captions": [list(s["gt_captions"]) for s in samples],
            "gt_target_ids": [list(s["gt_target_ids"]) for s in samples]}


def load_densecap_dataset(data_root: str | os.PathLike, split: str, tokenizer, image_size: int,
                          max_target_len: int = 24) -> DenseCapDataset:
    """VG region descriptions of one DenseCap split under ``data_root`` (ARCHITECTURE layout)."""
    from pixelllm.data.visual_genome import load_visual_genome

    root = Path(data_root)
    recs = load_visual_genome(root / "vg" / "region_descriptions.json", root / "vg" / "image_data.json",
                              splits=root / "vg" / "densecap_splits.json", split=split)
    return DenseCapDataset(recs, root / "images", tokenizer, image_size, max_target_len)




# -------------------------------------------------------------------------------------- model of a config
def build_densecap(cfg, tokenizer=None, device: str = "cpu", checkpoint: str | os.PathLike | None = None,
                   verbose: bool = True) -> DenseCaptioner:
    """The :class:`DenseCaptioner` of ``cfg``: :func:`~pixelllm.engine.builder.build_model` (the existing
    ``init_from`` checkpoints loaded in order — ln_trace, then loc_caption; none → the pretrained parts only)
    with the semantic ViT frozen when ``cfg.train_image_encoder`` is False (SAM is always frozen), wrapped
    with the config's proposer (seeded by ``cfg.seed``) and matching / decoding knobs.

    ``checkpoint`` (a file, or a folder → its latest, e.g. ``<run>/checkpoints/densecap``) reloads a trained
    stage: its trainable weights (proposer + the captioner's trainable parts) go on top, so the parts the
    stage froze keep their ``init_from`` weights. ``tokenizer`` defaults to the run's."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.builder import build_model
    from pixelllm.engine.checkpoint import load_checkpoint, load_trainable_state_dict
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.modeling.dense_captioner import build_dense_captioner

    paths = resolve_paths(cfg)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(paths.tokenizer)
    model = build_model(cfg, paths, tokenizer, device=device, verbose=verbose)
    if not cfg.train_image_encoder:
        model.image_encoder.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    captioner = build_dense_captioner(
        model, tokenizer, dim=cfg.proposer_dim, scale_factor=cfg.proposer_scale,
        prompt=cfg.prompts.get("region_caption", REGION_PROMPT), match_iou=cfg.match_iou, append_gt=cfg.append_gt,
        max_prompts_per_image=cfg.max_prompts_per_image, det_weight=cfg.det_weight,
        caption_weight=cfg.caption_weight, label_smoothing=cfg.label_smoothing, train_topk=cfg.train_topk,
        score_thr=cfg.score_thr, nms_iou=cfg.nms_iou, max_det=cfg.max_det)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location=device)
        load_trainable_state_dict(captioner, state["model"], source=state["path"])
        captioner.eval()
    return captioner


def densecap_train_dataset(cfg, tokenizer, image_size: int):
    """The VG train split of ``cfg``'s run (first ``cfg.max_samples`` images when set)."""
    from pixelllm.engine.paths import resolve_paths

    train = load_densecap_dataset(resolve_paths(cfg).data, "train", tokenizer, image_size, cfg.max_target_len)
    return torch.utils.data.Subset(train, range(min(cfg.max_samples, len(train)))) if cfg.max_samples else train


# ------------------------------------------------------------------------------------------- training
def run_densecap_training(cfg, progress: bool = True, resume: bool = True):
    """Prerequisites found or made, the captioner of :func:`build_densecap`, trained by the engine's
    :class:`~pixelllm.engine.trainer.Trainer` into ``<run>/checkpoints/<stage>`` (checkpoints,
    ``metrics.jsonl``, ``final.json``), resuming that folder when it has a checkpoint. Returns the trainer
    (``.model`` = the captioner, ``.history``)."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine.trainer import Trainer
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    paths = ensure_prerequisites(cfg, progress=progress)
    tok = load_tokenizer(paths.tokenizer)
    captioner = build_densecap(cfg, tok)
    train = densecap_train_dataset(cfg, tok, captioner.image_size)
    trainer = Trainer(captioner, cfg, train, densecap_collate, out_dir=paths.out, progress=progress)
    return trainer.resume_and_fit(resume)


# ----------------------------------------------------------------------------------------------- eval
def predict_dataset(captioner: DenseCaptioner, dataset: DenseCapDataset, batch_size: int = 8,
                    max_new_tokens: int = 16, limit: int | None = None, device: str = "cpu",
                    progress: bool = True) -> list[dict]:
    """Dense captions for every image of ``dataset``: the DenseCap detection entries
    ``{"image_id", "boxes" (original pixels, list), "scores", "captions"}``."""
    from tqdm.auto import tqdm

    n = min(len(dataset), limit) if limit else len(dataset)
    out = []
    for s in tqdm(range(0, n, batch_size), desc="dense captions", disable=not progress):
        batch = densecap_collate([dataset[i] for i in range(s, min(n, s + batch_size))])
        res = captioner.predict(batch["images"].to(device), batch["image_sizes"].to(device),
                                batch["orig_sizes"], max_new_tokens=max_new_tokens)
        for iid, r in zip(batch["image_ids"], res):
            out.append({"image_id": iid, "boxes": r["boxes"].tolist(), "scores": r["scores"].tolist(),
                        "captions": r["captions"]})
    return out


def evaluate_densecap(detections: Sequence[dict], ground_truth: Sequence[dict],
                      meteor_fn: Callable | None = None) -> dict:
    """DenseCap mAP / mAP_detection (:func:`pixelllm.eval.densecap.densecap_map`) of ``detections`` against
    ``ground_truth`` restricted to the images that were predicted (so a ``limit`` evaluates a prefix).
    ``meteor_fn(pairs) -> scores`` replaces METEOR (Java) in tests."""
    from pixelllm.eval.densecap import densecap_map

    if not detections:
        raise ValueError("evaluate_densecap: no image was predicted (empty split?); nothing to score")
    ids = {d["image_id"] for d in detections}
    gt = [g for g in ground_truth if g["image_id"] in ids]
    return densecap_map(detections, gt, meteor_fn=meteor_fn)


# ------------------------------------------------------------------------------------------- figures
@torch.no_grad()
def matching_example(captioner: DenseCaptioner, sample: dict, match_iou: float | None = None) -> dict[str, Any]:
    """How training prompts are chosen on one :class:`DenseCapDataset` sample: the decoded proposals and which
    of them match a ground-truth box at IoU ≥ ``match_iou`` (default the captioner's). Returns the keyword
    arguments of :func:`pixelllm.viz.figure_matching`: ``image`` h×w×3 (resized input, padding cropped),
    ``gt_boxes`` M×4, ``proposals`` P×4 (pixels of the resized input), ``matched`` P bool, ``match_iou``."""
    from pixelllm.modeling.centernet import decode_detections, match_proposals

    thr = captioner.match_iou if match_iou is None else match_iou
    images = sample["images"][None].to(next(captioner.parameters()).device)
    sizes = sample["image_sizes"][None].to(images.device)
    feats = captioner.pixelllm.image_features(images, sizes)
    dets = decode_detections(captioner.proposer(feats), captioner.proposer.stride, k=captioner.train_topk,
                             nms_iou=captioner.nms_iou, score_thr=captioner.score_thr,
                             max_det=captioner.train_topk, image_sizes=sizes)[0]
    props, gt = dets["boxes"].cpu(), sample["gt_boxes"]
    keep, _ = match_proposals(props, gt, thr)
    matched = torch.zeros(len(props), dtype=torch.bool)
    matched[keep] = True
    h, w = sample["image_sizes"].tolist()
    return {"image": sample["images"][:, :h, :w].permute(1, 2, 0).numpy(), "gt_boxes": gt.numpy(),
            "proposals": props.numpy(), "matched": matched.numpy(), "match_iou": thr}
