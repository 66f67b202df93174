"""DenseCap mAP (Johnson et al. 2016) exactly as the official Python port used by PixelLLM.

Follows ``DensecapEval`` in scenic/projects/pixel_llm/densecap_evaluator.py (itself a port of
jcjohnson/densecap ``eval/eval_utils.lua``), PAPER_NOTES.md §4:

1. per image, merge ground-truth boxes at IoU ≥ 0.7: repeatedly take the box with the most neighbours
   (itself included; ties → lowest index), replace the group by its mean box carrying all captions as
   references; boxes already merged are removed from further groups. npos = number of merged boxes.
2. per image, detections sorted by score (descending); each takes the ground truth with the highest
   IoU *even if used*; ``ok`` only if that IoU > 0 and the GT was unused (then it is marked used).
   Each detection becomes a record (IoU, caption, references of that GT).
3. METEOR of every record against its references, all records in one METEOR process.
4. all records sorted by score; for IoU t ∈ {0.3, 0.4, 0.5, 0.6, 0.7} and METEOR m ∈ {0, 0.05, …, 0.25}:
   TP if ok and IoU ≥ t and METEOR > m (strict), else FP; precision/recall by cumulative sums;
   AP = mean over r ∈ {0, 0.01, …, 0.99} of max precision at recall ≥ r.
5. mAP = mean of the 30 APs; mAP_detection = mean over t of the AP with m = −1 (any caption).

Boxes are (x0, y0, x1, y1) pixels (any frame, the same for detections and ground truth; the official
code evaluates in original-image pixels). Pure numpy; no torch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
MERGE_IOU = 0.7

MeteorFn = Callable[[Sequence[tuple[str, Sequence[str]]]], Sequence[float]]


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs IoU of N×4 and M×4 (x0, y0, x1, y1) boxes → N×M; union 0 → 0 (as the official
    ``box_iou``). numpy rather than torchvision to keep the evaluator a pure-numpy port of the official one."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clip(0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def merge_gt_boxes(boxes, captions: Sequence[str], iou_thr: float = MERGE_IOU) -> tuple[np.ndarray, list[list[str]]]:
    """Merge overlapping ground-truth boxes of one image (official ``merge_gt_boxes``).

    Args:
      boxes: N×4 (x0, y0, x1, y1).
      captions: N captions (newlines removed when merged).
      iou_thr: boxes with IoU ≥ thr are neighbours (a box is its own neighbour).
    Returns:
      (K×4 merged mean boxes, K lists of reference captions), in merge order. A zero-area box has
      IoU 0 even with itself, so (as in the official code) it is dropped.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(captions):
        raise ValueError(f"merge_gt_boxes: {len(boxes)} boxes but {len(captions)} captions")
    if len(boxes) == 0:
        return np.zeros((0, 4)), []
    ious = box_iou_np(boxes, boxes)
    new_boxes, new_caps = [], []
    while True:
        can_merge = ious >= iou_thr
        num = can_merge.sum(1)  # neighbours per box, itself included
        ind = int(np.argmax(num))  # the box with the most neighbours (first on ties)
        if num[ind] == 0:
            break
        group = np.flatnonzero(can_merge[ind])
        new_boxes.append(boxes[group].mean(0))
        new_caps.append([captions[k].replace("\n", "") for k in group])
        ious[group, :] = 0.0  # merged boxes leave the pool
        ious[:, group] = 0.0
    return np.stack(new_boxes) if new_boxes else np.zeros((0, 4)), new_caps


def _average_precision(tp: np.ndarray, npos: int) -> float:
    """AP = mean over r ∈ {0, .01, …, .99} of max precision at recall ≥ r (0 when none), records in
    score order; ``tp`` is the 0/1 vector, every other record is a false positive."""
    if len(tp) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    rec = ctp / npos
    prec = ctp / (ctp + cfp)
    return float(sum((prec * (rec >= t / 100.0)).max() for t in range(100)) / 100.0)


def _check_image(entry: dict, k: int, name: str, need_scores: bool) -> tuple:
    for key in ("image_id", "boxes", "captions") + (("scores",) if need_scores else ()):
        if key not in entry:
            raise ValueError(f"densecap_map: {name}[{k}] lacks field '{key}'")
    boxes = np.asarray(entry["boxes"], np.float64).reshape(-1, 4) if len(entry["boxes"]) else np.zeros((0, 4))
    caps = list(entry["captions"])
    if len(caps) != len(boxes):
        raise ValueError(f"densecap_map: {name}[{k}] (image {entry['image_id']}) has {len(boxes)} boxes but "
                         f"{len(caps)} captions")
    if any(not isinstance(c, str) for c in caps):
        raise ValueError(f"densecap_map: {name}[{k}] (image {entry['image_id']}): field 'captions' must be strings")
    scores = None
    if need_scores:
        scores = np.asarray(entry["scores"], np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"densecap_map: {name}[{k}] (image {entry['image_id']}) has {len(boxes)} boxes "
                             f"but {len(scores)} scores")
    return boxes, caps, scores


def densecap_map(detections: Sequence[dict], ground_truth: Sequence[dict], meteor_fn: MeteorFn | None = None,
                 merge_iou: float = MERGE_IOU) -> dict:
    """DenseCap mAP and mAP_detection (official DensecapEval).

    Args:
      detections: list of ``{"image_id", "boxes": N×4 (x0, y0, x1, y1), "scores": N, "captions": N str}``;
        several entries for one image are pooled; every image_id must appear in ``ground_truth``.
      ground_truth: list of ``{"image_id", "boxes": M×4, "captions": M str}``, one entry per image
        (images with no box still count: their detections are false positives).
      meteor_fn: ``pairs -> scores`` giving per-record METEOR of ``(candidate, [references])``; default
        :func:`pixelllm.eval.caption.meteor_scores` (one Java process). Inject a fake for Java-free tests.
      merge_iou: the ground-truth merge threshold (0.7).
    Returns:
      ``{"map", "map_detection", "ap_table": {"mAP_iou0.3_meteor0.00": AP, …, "mAP_detection_iou0.3": AP, …},
      "num_pos", "num_gt_before_merge", "num_detections"}``; mAPs in [0, 1] (×100 for the usual %).
    """
    gts: dict = {}
    n_before = 0
    for k, g in enumerate(ground_truth):
        boxes, caps, _ = _check_image(g, k, "ground_truth", need_scores=False)
        if g["image_id"] in gts:
            raise ValueError(f"densecap_map: ground_truth[{k}] repeats image_id {g['image_id']!r}")
        n_before += len(boxes)
        gts[g["image_id"]] = merge_gt_boxes(boxes, caps, merge_iou)
    npos = sum(len(b) for b, _ in gts.values())
    if npos == 0:
        raise ValueError("densecap_map: the ground truth has no (non-degenerate) box; recall is undefined")

    dts: dict = {i: ([], [], []) for i in gts}
    for k, d in enumerate(detections):
        boxes, caps, scores = _check_image(d, k, "detections", need_scores=True)
        if d["image_id"] not in gts:
            raise ValueError(f"densecap_map: detections[{k}] has image_id {d['image_id']!r} absent from ground_truth")
        acc = dts[d["image_id"]]
        acc[0].extend(boxes), acc[1].extend(scores.tolist()), acc[2].extend(caps)

    records = []  # (score, ok, iou, candidate, references)
    for image_id, (gt_boxes, gt_caps) in gts.items():
        d_boxes, d_scores, d_caps = dts[image_id]
        order = sorted(range(len(d_scores)), key=lambda j: -d_scores[j])  # stable: ties keep input order
        ious = box_iou_np(np.asarray(d_boxes).reshape(-1, 4), gt_boxes)
        used = np.zeros(len(gt_boxes), bool)
        for j in order:
            cand = d_caps[j]
            if len(gt_boxes):
                # Unlike COCO, the best-IoU GT is taken even if already used (then the detection is an FP).
                g = int(np.argmax(ious[j]))
                iou, refs = float(ious[j, g]), list(gt_caps[g])
                ok = iou > 0 and not used[g]
                if ok:
                    used[g] = True
                    if "" in refs:  # official ignore_empty_string: an empty GT caption matches anything
                        cand, refs = "EMPTY", ["EMPTY"]
            else:
                iou, refs, ok = -1.0, [], False  # nothing to match: a false positive everywhere
            records.append((d_scores[j], ok, iou, cand, refs))

    records.sort(key=lambda r: -r[0])  # stable, as the official sorted(..., key=-score)
    if meteor_fn is None:
        from pixelllm.eval.caption import meteor_scores as meteor_fn
    pairs = [(r[3], r[4]) for r in records]
    meteor = np.asarray(meteor_fn(pairs), np.float64) if pairs else np.zeros(0)
    if meteor.shape != (len(records),):
        raise ValueError(f"densecap_map: meteor_fn returned {meteor.shape} scores for {len(records)} records")
    ok = np.array([r[1] for r in records], bool)
    iou = np.array([r[2] for r in records], np.float64)
    has_refs = np.array([len(r[4]) > 0 for r in records], bool)

    table, aps, det_aps = {}, [], []
    for t in IOU_THRESHOLDS:
        for m in (-1.0,) + METEOR_THRESHOLDS:
            tp = (has_refs & ok & (iou >= t) & (meteor > m)).astype(np.float64)
            ap = _average_precision(tp, npos)
            if m < 0:
                table[f"mAP_detection_iou{t:.1f}"] = ap
                det_aps.append(ap)
            else:
                table[f"mAP_iou{t:.1f}_meteor{m:.2f}"] = ap
                aps.append(ap)
    return {"map": float(np.mean(aps)), "map_detection": float(np.mean(det_aps)), "ap_table": table,
            "num_pos": int(npos), "num_gt_before_merge": int(n_before), "num_detections": len(records)}
