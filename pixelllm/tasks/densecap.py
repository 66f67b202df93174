"""Downstream task 4 — dense object captioning (PAPER_NOTES.md §3, paper Fig. 4 right).

PixelLLM turns into a dense captioner by adding a proposal network on its image features and
captioning every proposal with location-conditioned captioning::

    F        = V(I)                                   image features, B×C×H×W (stride S / H)
    Ŷ, ŵh, ô = CenterNet(SimpleFeaturePyramid(F))     proposals (boxes, objectness scores)
    b_k      = proposals matched to ground truth at IoU ≥ 0.6 (training) / all kept proposals (inference)
    w^k_i   ~ L([E(P(b_k), F) ; "an object of"], w^k_<i)

trained end to end: L = λ_det · L_CenterNet + λ_cap · CE(captions of the matched prompts). The image
features F are computed once per image and shared by the proposer and every prompt of that image, so
the caption loss and the detection loss both reach the trainable image encoder.

Training prompts follow the official recipe (PAPER_NOTES.md §3: proposals matched to ground truth at
IoU ≥ 0.6 become prompt boxes, captioned with their ground truth's phrase). As detectron2's ROI heads
do by default (``proposal_append_gt``; GRiT, which the release builds on, keeps it), the ground-truth
boxes are appended to the proposals before matching, so captions are learned from the first step
while the proposer is still random.

Frames: ``boxes`` fed to the model are (x0, y0, x1, y1) pixels of the resized S×S input;
:meth:`DenseCaptioner.predict` also returns them in **original-image pixels** (divided by the resize
scale S / max(h, w)), the frame the DenseCap evaluation uses.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pixelllm.data.datasets import DEFAULT_PROMPTS, ResizePad, xywh_to_xyxy
from pixelllm.data.errors import SkipCounter

REGION_PROMPT = DEFAULT_PROMPTS["region_caption"]          # "an object of"


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

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        r = self.records[i]
        path = self.image_root / r["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"DenseCapDataset: image file not found: {path} (image_id {r['image_id']})")
        with Image.open(path) as im:
            img = im.convert("RGB")
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


def to_original_frame(boxes: torch.Tensor, orig_size: Sequence[int], image_size: int) -> torch.Tensor:
    """N×4 boxes in pixels of the resized S×S input → pixels of the original h×w image (÷ S / max(h, w))."""
    h, w = (int(v) for v in orig_size)
    return boxes / (image_size / max(h, w))


def _pad(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists → (ids N×T long, mask N×T bool)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


# ------------------------------------------------------------------------------------------------ model
class DenseCaptioner(nn.Module):
    """PixelLLM + a CenterNet proposer, trained end to end (module docstring).

    Args:
        pixelllm: a :class:`~pixelllm.modeling.pixelllm.PixelLLM` (its image encoder features feed both parts).
        proposer: :class:`~pixelllm.modeling.centernet.CenterNetProposer` on those features
            (``in_dim`` = image-encoder channels, ``in_stride`` = S / grid side).
        tokenizer: encodes the prompt, decodes the captions.
        prompt: the text prompt ("an object of", PAPER_NOTES.md §3).
        match_iou: a proposal becomes a training prompt if its best IoU with ground truth is ≥ this (0.6).
        append_gt: add the ground-truth boxes to the proposals before matching (detectron2 default).
        max_prompts_per_image: cap on captioned prompts per image and step (random subset; 0 = all).
        det_weight / caption_weight: λ_det, λ_cap. label_smoothing: ε of the caption CE.
        train_topk: CenterNet peaks decoded per image during training.
        score_thr, nms_iou, max_det: inference decoding (:func:`decode_detections`).
    """

    def __init__(self, pixelllm: nn.Module, proposer: nn.Module, tokenizer, prompt: str = REGION_PROMPT,
                 match_iou: float = 0.6, append_gt: bool = True, max_prompts_per_image: int = 8,
                 det_weight: float = 1.0, caption_weight: float = 1.0, label_smoothing: float = 0.1,
                 train_topk: int = 50, score_thr: float = 0.05, nms_iou: float = 0.5, max_det: int = 20):
        super().__init__()
        self.pixelllm, self.proposer, self.tokenizer = pixelllm, proposer, tokenizer
        self.prompt = prompt
        ids = list(tokenizer(prompt)["input_ids"])                           # ends with EOS
        self.register_buffer("prompt_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.match_iou, self.append_gt, self.max_prompts_per_image = match_iou, append_gt, max_prompts_per_image
        self.det_weight, self.caption_weight, self.label_smoothing = det_weight, caption_weight, label_smoothing
        self.train_topk, self.score_thr, self.nms_iou, self.max_det = train_topk, score_thr, nms_iou, max_det

    @property
    def image_size(self) -> int:
        return self.pixelllm.image_size

    def frozen_image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen SAM grid (cacheable per image id), B×C_sam×h×w."""
        return self.pixelllm.image_encoder.frozen_sam_features(images, image_sizes)

    # --- pieces ---------------------------------------------------------------------------------------
    def select_prompts(self, proposals: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training prompts of one image: proposals P×4 (plus the ground truth when ``append_gt``) matched to
        ``gt_boxes`` M×4 at IoU ≥ ``match_iou`` (:func:`match_proposals`), both pixels of the input frame.
        Returns (prompt boxes K×4, index of each one's ground-truth box K)."""
        from pixelllm.modeling.centernet import match_proposals

        cand = torch.cat([proposals.reshape(-1, 4), gt_boxes.reshape(-1, 4)]) if self.append_gt else proposals
        keep, gt_idx = match_proposals(cand, gt_boxes.reshape(-1, 4).to(cand), self.match_iou)
        return cand[keep], gt_idx

    def encode_prompts(self, features: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor,
                       image_sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 encoder inputs for K prompts sharing per-image features: features B×C×H×W, rows K (image of each
        prompt), boxes K×4 pixels → (inputs_embeds K×(N+P)×D, attention mask K×(N+P)). Same computation as
        ``PixelLLM.visual_tokens`` + ``encoder_inputs``, without re-encoding the image per prompt."""
        m = self.pixelllm
        sizes = image_sizes[rows] if image_sizes is not None else None
        prompt = m.prompt_encoder(boxes, batch_size=len(rows), image_sizes=sizes)   # K×2×P_dim
        visual = m.prompt_extractor(features[rows], prompt)                          # K×N×D
        prompt_ids = self.prompt_ids.unsqueeze(0).expand(len(rows), -1)             # K×P
        return m.encoder_inputs(visual, prompt_ids, torch.ones_like(prompt_ids, dtype=torch.bool))

    # --- training -------------------------------------------------------------------------------------
    def forward(self, batch: dict, sam_features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Losses of one :func:`densecap_collate` batch: ``loss`` = det_weight · ``det`` + caption_weight · ``ce``,
        the CenterNet terms (``heatmap``, ``size``, ``offset``) and ``n_prompts`` (captioned prompts).
        ``sam_features``: cached frozen-SAM grids B×C×h×w (optional)."""
        from pixelllm.engine.losses import label_smoothed_cross_entropy, text_valid_mask
        from pixelllm.modeling.centernet import centernet_loss, centernet_targets, decode_detections

        images, sizes = batch["images"], batch.get("image_sizes")
        gt_boxes = [g.to(images.device).float() for g in batch["gt_boxes"]]
        features = self.pixelllm.image_encoder(images, sizes, sam_features)           # B×C×H×W
        out = self.proposer(features)
        targets = centernet_targets(gt_boxes, tuple(out["heatmap"].shape[-2:]), self.proposer.stride)
        det = centernet_loss(out, targets)

        proposals = decode_detections({k: v.detach() for k, v in out.items()}, self.proposer.stride,
                                      k=self.train_topk, nms_iou=self.nms_iou, score_thr=self.score_thr,
                                      max_det=self.train_topk, image_sizes=sizes)
        rows, boxes, tgts = [], [], []
        for i, (prop, gt) in enumerate(zip(proposals, gt_boxes)):
            pb, gi = self.select_prompts(prop["boxes"], gt)
            if self.max_prompts_per_image and len(pb) > self.max_prompts_per_image:
                pick = torch.randperm(len(pb), device=pb.device)[: self.max_prompts_per_image]
                pb, gi = pb[pick], gi[pick]
            rows += [i] * len(pb)
            boxes.append(pb)
            tgts += [batch["gt_target_ids"][i][int(g)] for g in gi]
        losses = {"det": det["loss"], "heatmap": det["heatmap"].detach(), "size": det["size"].detach(),
                  "offset": det["offset"].detach(), "n_prompts": torch.tensor(len(rows))}
        if rows:
            rows_t = torch.tensor(rows, device=images.device)
            embeds, mask = self.encode_prompts(features, rows_t, torch.cat(boxes), sizes)
            target_ids, target_mask = _pad(tgts, self.pixelllm.language_model.pad_token_id)
            target_ids, target_mask = target_ids.to(images.device), target_mask.to(images.device)
            lm = self.pixelllm.language_model
            logits, _hidden = lm(embeds, mask, lm.shift_right(target_ids))                # K×T×V
            valid = text_valid_mask(target_ids, target_mask, lm.eos_token_id)
            ce_tok = label_smoothed_cross_entropy(logits, target_ids, self.label_smoothing)
            ce = (ce_tok * valid).sum() / valid.sum().clamp(min=1)
        else:
            ce = features.sum() * 0.0                                                     # keeps the graph
        losses["ce"] = ce
        losses["loss"] = self.det_weight * det["loss"] + self.caption_weight * ce
        return losses

    # --- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None,
                orig_sizes: torch.Tensor | None = None, sam_features: torch.Tensor | None = None,
                max_new_tokens: int = 16, num_beams: int = 1, chunk: int = 64) -> list[dict[str, Any]]:
        """Dense captions of B images (3×S×S in [0, 1], resized + padded as the datasets do).

        image_sizes: B×2 (h, w) after resize (default: the full S×S frame); orig_sizes: B×2 original (h, w)
        (default: = image_sizes). Returns one dict per image: ``boxes`` N×4 (x0, y0, x1, y1) **original
        pixels**, ``boxes_input`` N×4 pixels of the resized input, ``scores`` N (objectness, descending),
        ``captions`` N strings.
        """
        from pixelllm.modeling.centernet import decode_detections

        was = self.training
        self.eval()
        try:
            b, s = images.shape[0], self.image_size
            if image_sizes is None:
                image_sizes = torch.full((b, 2), s, dtype=torch.long, device=images.device)
            orig_sizes = image_sizes if orig_sizes is None else orig_sizes
            features = self.pixelllm.image_encoder(images, image_sizes, sam_features)
            dets = decode_detections(self.proposer(features), self.proposer.stride, k=max(self.max_det, 1) * 2,
                                     nms_iou=self.nms_iou, score_thr=self.score_thr, max_det=self.max_det,
                                     image_sizes=image_sizes)
            rows = torch.cat([torch.full((len(d["boxes"]),), i, dtype=torch.long) for i, d in enumerate(dets)])
            boxes = torch.cat([d["boxes"] for d in dets]) if len(rows) else torch.zeros(0, 4)
            texts: list[str] = []
            lm = self.pixelllm.language_model
            for k in range(0, len(rows), chunk):
                r = rows[k:k + chunk].to(images.device)
                embeds, mask = self.encode_prompts(features, r, boxes[k:k + chunk], image_sizes)
                gen = lm.generate(embeds, mask, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                  num_return_sequences=1, return_dict_in_generate=True,
                                  pad_token_id=lm.pad_token_id, eos_token_id=lm.eos_token_id,
                                  decoder_start_token_id=lm.t5.config.decoder_start_token_id)
                tokens = gen.sequences[:, 1:]
                for row, n in zip(tokens.tolist(), self.pixelllm._lengths(tokens).tolist()):
                    texts.append(self.tokenizer.decode(row[:n], skip_special_tokens=True).strip())
            out, start = [], 0
            for i, d in enumerate(dets):
                n = len(d["boxes"])
                bx = d["boxes"].cpu()
                out.append({"boxes": to_original_frame(bx, orig_sizes[i].tolist(), s), "boxes_input": bx,
                            "scores": d["scores"].cpu(), "captions": texts[start:start + n]})
                start += n
            return out
        finally:
            self.train(was)


def build_dense_captioner(pixelllm: nn.Module, tokenizer, dim: int = 128, scale_factor: float = 2.0,
                          **kwargs: Any) -> DenseCaptioner:
    """A :class:`DenseCaptioner` whose CenterNet proposer sits on ``pixelllm``'s feature grid
    (in_dim = image-encoder channels, in_stride = S / grid side; pyramid ``scale_factor`` 2 → stride / 2)."""
    from pixelllm.modeling.centernet import CenterNetProposer

    enc = pixelllm.image_encoder
    proposer = CenterNetProposer(enc.out_channels, in_stride=enc.image_size / enc.out_size, dim=dim,
                                 scale_factor=scale_factor)
    return DenseCaptioner(pixelllm, proposer.to(next(pixelllm.parameters()).device), tokenizer, **kwargs)


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

    ids = {d["image_id"] for d in detections}
    gt = [g for g in ground_truth if g["image_id"] in ids]
    return densecap_map(detections, gt, meteor_fn=meteor_fn)


# ------------------------------------------------------------------------------------------- training
def train_densecap(captioner: DenseCaptioner, dataset, cfg, out_dir: str | os.PathLike | None = None,
                   progress: bool = True, resume: bool = True) -> list[dict]:
    """A plain end-to-end training loop (nanoGPT style) for :class:`DenseCaptioner`.

    The engine's :class:`~pixelllm.engine.trainer.Trainer` is built around ``logits`` + per-token targets;
    dense captioning has a variable number of captioned prompts per image and its own loss, so the loop is
    written out here with the engine's pieces: :func:`lr_factor` (warm-up + cosine), the frozen-SAM
    :class:`FeatureCache`, AdamW on the trainable parameters, global-norm clipping, self-describing
    checkpoints (:func:`save_checkpoint`, resumable), ``metrics.jsonl`` and ``final.json`` in ``out_dir``.
    Uses cfg: batch_size, steps, lr, warmup_steps, min_lr_ratio, weight_decay, betas, grad_clip, seed,
    log_interval, ckpt_interval, keep_last, cache_sam_features. Returns the per-step history.
    """
    from functools import partial

    from tqdm.auto import tqdm

    from pixelllm.engine import checkpoint as ckpt
    from pixelllm.engine.trainer import FeatureCache, NonFiniteLossError, lr_factor
    from pixelllm.utils import write_json

    device = next(captioner.parameters()).device
    torch.manual_seed(cfg.seed)
    params = [p for p in captioner.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, warmup_steps=cfg.warmup_steps,
                                                           total_steps=cfg.steps, min_ratio=cfg.min_lr_ratio))
    out = Path(out_dir) if out_dir else None
    step = 0
    if out is not None and resume and ckpt.latest_checkpoint(out) is not None:
        state = ckpt.load_checkpoint(out, map_location=device)
        ckpt.load_trainable_state_dict(captioner, state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        print(f"densecap: resumed from {state['path']} at step {step}")
    sam = captioner.pixelllm.image_encoder.sam_encoder
    cache = None
    if cfg.cache_sam_features and sam is not None and not any(p.requires_grad for p in sam.parameters()):
        cache = FeatureCache(captioner.frozen_image_features)
    if len(dataset) < cfg.batch_size:
        raise ValueError(f"train_densecap: {len(dataset)} images < one batch of {cfg.batch_size}")
    gen = torch.Generator().manual_seed(cfg.seed + step)

    def batches():
        while True:
            loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                                 collate_fn=densecap_collate, generator=gen)
            yield from loader

    history: list[dict] = []
    stream = batches()
    captioner.train()
    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.stage, disable=not progress, mininterval=1.0)
    while step < cfg.steps:
        b = next(stream)
        b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
        feats = cache(b) if cache is not None else None
        losses = captioner(b, sam_features=feats)
        if not torch.isfinite(losses["loss"]):
            raise NonFiniteLossError(f"densecap: non-finite loss at step {step + 1}: "
                                     f"{ {k: float(v.detach()) for k, v in losses.items()} }")
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        step += 1
        rec = {"step": step, **{k: float(v.detach()) for k, v in losses.items()}, "lr": lr, "grad_norm": grad_norm,
               "time": time.time() - t0}
        history.append(rec)
        bar.update(1)
        if step % cfg.log_interval == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{rec['loss']:.3f}", det=f"{rec['det']:.3f}", ce=f"{rec['ce']:.3f}")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
        if out is not None and ((cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0) or step == cfg.steps):
            ckpt.save_checkpoint(out, model=captioner, step=step, config_json=cfg.to_json(), optimizer=opt,
                                 scheduler=sched, metrics=rec, keep_last=cfg.keep_last)
    bar.close()
    if out is not None and step == cfg.steps:
        write_json(out / "final.json", {"step": step, "checkpoint": str(ckpt.latest_checkpoint(out)),
                                        "train": history[-1] if history else {}, "config": cfg.to_dict()})
    return history


def build_densecap_model(cfg, paths, tokenizer, device: str = "cpu") -> DenseCaptioner:
    """PixelLLM (the existing ``cfg.init_from`` checkpoints loaded in order — ln_trace, then loc_caption;
    none → the pretrained parts only) wrapped in a :class:`DenseCaptioner` with the config's proposer and
    matching knobs. ``cfg.train_image_encoder`` False freezes the semantic ViT (SAM is always frozen)."""
    from pixelllm.tasks.region_caption import build_task_model

    model = build_task_model(cfg, paths, tokenizer, device=device)
    if not cfg.train_image_encoder:
        model.image_encoder.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    return build_dense_captioner(model, tokenizer, dim=cfg.proposer_dim, scale_factor=cfg.proposer_scale,
                                 prompt=cfg.prompts.get("region_caption", REGION_PROMPT), match_iou=cfg.match_iou,
                                 append_gt=cfg.append_gt, max_prompts_per_image=cfg.max_prompts_per_image,
                                 det_weight=cfg.det_weight, caption_weight=cfg.caption_weight,
                                 label_smoothing=cfg.label_smoothing, train_topk=cfg.train_topk,
                                 score_thr=cfg.score_thr, nms_iou=cfg.nms_iou, max_det=cfg.max_det)


def run_densecap_training(cfg, progress: bool = True) -> DenseCaptioner:
    """Prerequisites found or computed, model built, trained into ``<run>/checkpoints/<stage>``."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    paths = ensure_prerequisites(cfg, progress=progress)
    tok = load_tokenizer(paths.tokenizer)
    captioner = build_densecap_model(cfg, paths, tok)
    train = load_densecap_dataset(paths.data, "train", tok, captioner.image_size, cfg.max_target_len)
    if cfg.max_samples:
        train = torch.utils.data.Subset(train, range(min(cfg.max_samples, len(train))))
    train_densecap(captioner, train, cfg, out_dir=paths.out, progress=progress)
    return captioner


def load_densecap(cfg, device: str = "cpu"):
    """(captioner, tokenizer, paths): built as for training (``init_from`` checkpoints), then the trained
    weights of ``<run>/checkpoints/<stage>`` (latest) on top."""
    from pixelllm.data.tokenizer import load_tokenizer
    from pixelllm.engine import checkpoint as ckpt
    from pixelllm.engine.paths import resolve_paths

    paths = resolve_paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    captioner = build_densecap_model(cfg, paths, tok, device=device)
    state = ckpt.load_checkpoint(paths.out, map_location=device)
    ckpt.load_trainable_state_dict(captioner, state["model"])
    return captioner.eval(), tok, paths


# ------------------------------------------------------------------------------------- report / figures
#: Published VG DenseCap mAP (PAPER_NOTES.md §5, T5-XL row), percent.
PAPER_MAP = 17.5


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
    feats = captioner.pixelllm.image_encoder(images, sizes)
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
