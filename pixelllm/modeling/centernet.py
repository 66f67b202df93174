"""Dense object captioning proposals: Simple Feature Pyramid + CenterNet head (PAPER_NOTES.md §3).

PixelLLM's dense captioning proposes boxes from the image features with a ViTDet **Simple Feature
Pyramid** and a **CenterNet** head; every proposal then goes through location-conditioned captioning.
During training, proposals that overlap a ground-truth region at IoU ≥ 0.6 become the caption prompts.

The release (``scenic/projects/pixel_llm/modeling/box_decoder.py``) uses the pyramid below with
CenterNet2 (LTRB regression with GIoU + cascade ROI heads). At our scale we use the one-stage
"Objects as Points" CenterNet (Zhou et al., 2019) on one pyramid level:

* heatmap Ŷ ∈ [0,1]^{K×H×W} (K = 1: class-agnostic objectness), one peak per object centre;
* size (w, h) and sub-cell offset (dx, dy), regressed at the centre cell, in **feature cells**.

Targets (CenterNet): an object with box (x0, y0, x1, y1) pixels of the S×S input frame, on a grid of
stride s, has centre c = ((x0 + x1) / 2s, (y0 + y1) / 2s) (cells), peak cell p = ⌊c⌋, offset c − p, size
((x1 − x0) / s, (y1 − y0) / s), and the heatmap Y = max over objects of

    Y_xy = exp(−((x − p_x)² + (y − p_y)²) / 2σ²)   for |x − p_x|, |y − p_y| ≤ r,    σ = (2r + 1) / 6

with the Gaussian radius r = ⌊min(r1, r2, r3)⌋ from the box size (h, w) in cells (rounded up) and
min_overlap o = 0.7 — CenterNet's ``gaussian_radius`` (CornerNet's three cases of a corner shift that
keeps IoU ≥ o; CenterNet's code divides every root by 2 rather than 2a, kept as is):

    r_i = (b_i + √(b_i² − 4 a_i c_i)) / 2,    (a1, b1, c1) = (1, h + w, w h (1 − o) / (1 + o))
                                              (a2, b2, c2) = (4, 2 (h + w), (1 − o) w h)
                                              (a3, b3, c3) = (4 o, −2 o (h + w), (o − 1) w h)

Loss: penalty-reduced pixel-wise focal loss (CornerNet/CenterNet, α = 2, β = 4), N = number of objects,

    L_k = −1/N Σ_xyc { (1 − Ŷ)^α log Ŷ                    if Y = 1
                       (1 − Y)^β Ŷ^α log(1 − Ŷ)            otherwise }

plus L1 on size (weight 0.1) and offset (weight 1) at the object centres.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torchvision.ops import batched_nms, box_iou


class SimpleFeaturePyramid(nn.Module):
    """ViTDet Simple Feature Pyramid (release ``SimpleFeaturePyramid`` without the p6/p7 top blocks).

    From one stride-s map B×in_dim×h×w, each scale factor f ∈ {4, 2, 1, 0.5} makes a level of stride s / f:
    4: deconv(in/2)-LN-GELU-deconv(in/4); 2: deconv(in/2); 1: identity; 0.5: 2×2 max-pool;
    then conv1×1 (no bias)-LN-conv3×3 (no bias)-LN to ``out_dim``. LN = channel LayerNorm (eps 1e-6).

    Returns a list of B×out_dim×(h·f)×(w·f) maps, in the order of ``scale_factors``.
    """

    def __init__(self, in_dim: int, out_dim: int = 256, scale_factors: Sequence[float] = (2.0, 1.0, 0.5)) -> None:
        super().__init__()
        self.scale_factors = tuple(float(f) for f in scale_factors)
        stages = []
        for f in self.scale_factors:
            if f == 4.0:
                layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2),
                                           LayerNorm2d(in_dim // 2), nn.GELU(),
                                           nn.ConvTranspose2d(in_dim // 2, in_dim // 4, 2, stride=2)]
                d = in_dim // 4
            elif f == 2.0:
                layers, d = [nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2)], in_dim // 2
            elif f == 1.0:
                layers, d = [], in_dim
            elif f == 0.5:
                layers, d = [nn.MaxPool2d(2, stride=2)], in_dim
            else:
                raise ValueError(f"SimpleFeaturePyramid: scale factor {f} not in (4, 2, 1, 0.5)")
            layers += [nn.Conv2d(d, out_dim, 1, bias=False), LayerNorm2d(out_dim),
                       nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False), LayerNorm2d(out_dim)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [stage(x) for stage in self.stages]


class CenterNetHead(nn.Module):
    """CenterNet head: three conv3×3-ReLU-conv1×1 branches on a B×dim×H×W map.

    Returns dict ``heatmap`` B×K×H×W logits (bias init −log((1 − π)/π), π = 0.1, i.e. −2.19 as CenterNet),
    ``size`` B×2×H×W (w, h) and ``offset`` B×2×H×W (dx, dy), both in feature cells. A list of maps gives a
    list of dicts (the head is shared across levels).
    """

    def __init__(self, dim: int, num_classes: int = 1, head_dim: int | None = None, prior_prob: float = 0.1) -> None:
        super().__init__()
        head_dim = head_dim or dim

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(dim, head_dim, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(head_dim, out, 1))

        self.heatmap, self.size, self.offset = branch(num_classes), branch(2), branch(2)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if isinstance(x, (list, tuple)):
            return [self.forward(level) for level in x]
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}


class CenterNetProposer(nn.Module):
    """Proposal network for dense captioning: a one-level Simple Feature Pyramid + CenterNet head.

    Args:
        in_dim: channels of the image feature grid (e.g. SAM ⊕ semantic features), stride ``in_stride`` px.
        in_stride: pixels of the input frame per feature cell (e.g. 16 for a p16 ViT).
        dim: pyramid / head width. scale_factor: pyramid scale (2 → stride in_stride / 2).
    ``forward(features B×in_dim×h×w)`` → the head's dict (maps of stride :attr:`stride`).
    """

    def __init__(self, in_dim: int, in_stride: int, dim: int = 128, scale_factor: float = 2.0,
                 num_classes: int = 1, head_dim: int | None = None) -> None:
        super().__init__()
        self.pyramid = SimpleFeaturePyramid(in_dim, dim, (scale_factor,))
        self.head = CenterNetHead(dim, num_classes, head_dim)
        self.stride = in_stride / scale_factor

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.pyramid(features)[0])


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's ``gaussian_radius`` (module docstring): box (height, width) in cells → radius in cells.
    Kept exactly as the reference code, including its known deviation from CornerNet's derivation."""
    a1, b1, c1 = 1.0, height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: torch.Tensor, center: tuple[int, int], radius: int) -> None:
    """In place: heatmap (H×W) = max(heatmap, Gaussian of σ = (2r + 1)/6 around center (x, y) cells,
    truncated to the (2r + 1)² square), as CenterNet's ``draw_umich_gaussian``."""
    h, w = heatmap.shape
    cx, cy = center
    sigma = (2 * radius + 1) / 6
    x0, x1 = max(0, cx - radius), min(w, cx + radius + 1)
    y0, y1 = max(0, cy - radius), min(h, cy + radius + 1)
    ys = torch.arange(y0, y1, dtype=heatmap.dtype, device=heatmap.device) - cy
    xs = torch.arange(x0, x1, dtype=heatmap.dtype, device=heatmap.device) - cx
    g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))
    g = torch.where(g < torch.finfo(g.dtype).eps, torch.zeros_like(g), g)  # CenterNet zeroes the far tail
    heatmap[y0:y1, x0:x1] = torch.maximum(heatmap[y0:y1, x0:x1], g)


def centernet_targets(gt_boxes: Sequence[torch.Tensor], feat_hw: tuple[int, int], stride: float,
                      gt_labels: Sequence[torch.Tensor] | None = None, num_classes: int = 1,
                      min_overlap: float = 0.7) -> dict[str, torch.Tensor | int]:
    """CenterNet training targets for one pyramid level.

    gt_boxes: B tensors N_i×4 (x0, y0, x1, y1) pixels of the input frame; gt_labels: B tensors N_i (class
    ids, default all 0); feat_hw: (H, W) of the level; stride: pixels per cell.

    Returns dict: ``heatmap`` B×K×H×W, ``size`` B×M×2 (w, h cells), ``offset`` B×M×2 (cells, in [0, 1)),
    ``index`` B×M long (flat y·W + x of the peak), ``mask`` B×M bool (real object), M = max N_i;
    ``num_skipped``: int, boxes dropped for zero/negative area after clipping to the frame.
    """
    h, w = feat_hw
    b = len(gt_boxes)
    m = max([len(x) for x in gt_boxes] + [1])
    device = gt_boxes[0].device if b else torch.device("cpu")
    heat = torch.zeros(b, num_classes, h, w, device=device)
    size = torch.zeros(b, m, 2, device=device)
    offset = torch.zeros(b, m, 2, device=device)
    index = torch.zeros(b, m, dtype=torch.long, device=device)
    mask = torch.zeros(b, m, dtype=torch.bool, device=device)
    skipped = 0
    for i, boxes in enumerate(gt_boxes):
        if boxes.numel() and (boxes.ndim != 2 or boxes.shape[-1] != 4):
            raise ValueError(f"centernet_targets: gt_boxes[{i}] must be N×4 (x0, y0, x1, y1), got {tuple(boxes.shape)}")
        labels = gt_labels[i] if gt_labels is not None else torch.zeros(len(boxes), dtype=torch.long)
        cells = boxes.detach().float().reshape(-1, 4) / stride
        # clip to the feature extent [0, W] × [0, H] (CenterNet clips to W − 1, which shrinks boxes that
        # touch the right/bottom border by one cell; [0, W] keeps the decode round trip exact)
        cells[:, 0::2] = cells[:, 0::2].clamp(0, w)
        cells[:, 1::2] = cells[:, 1::2].clamp(0, h)
        for j, (x0, y0, x1, y1) in enumerate(cells.tolist()):
            bw, bh = x1 - x0, y1 - y0
            if bw <= 0 or bh <= 0:
                skipped += 1
                continue
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            px, py = min(int(cx), w - 1), min(int(cy), h - 1)           # ⌊c⌋, inside the grid
            radius = max(0, int(gaussian_radius(math.ceil(bh), math.ceil(bw), min_overlap)))
            k = int(labels[j])
            if not 0 <= k < num_classes:
                raise ValueError(f"centernet_targets: gt_labels[{i}][{j}] = {k} not in [0, {num_classes})")
            draw_gaussian(heat[i, k], (px, py), radius)
            size[i, j] = torch.tensor([bw, bh], device=device)
            offset[i, j] = torch.tensor([cx - px, cy - py], device=device)
            index[i, j] = py * w + px
            mask[i, j] = True
    return {"heatmap": heat, "size": size, "offset": offset, "index": index, "mask": mask, "num_skipped": skipped}


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced focal loss (module docstring) of heatmap logits vs Gaussian targets, both B×K×H×W.
    Normalised by the number of peaks (target == 1), or 1 when there is none (as CenterNet)."""
    pos = target.eq(1).to(logits.dtype)
    p = torch.sigmoid(logits)
    # log σ(x) and log(1 − σ(x)) via logsigmoid: exact for saturated logits (CenterNet clamps p to 1e-4 instead)
    pos_loss = (1 - p) ** alpha * F.logsigmoid(logits) * pos
    neg_loss = (1 - target) ** beta * p ** alpha * F.logsigmoid(-logits) * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def _gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """maps B×C×H×W, index B×M (flat y·W + x) → B×M×C values at those cells."""
    b, c = maps.shape[:2]
    flat = maps.reshape(b, c, -1)                                              # B×C×HW
    return flat.gather(2, index.unsqueeze(1).expand(-1, c, -1)).transpose(1, 2)  # B×M×C


def centernet_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], size_weight: float = 0.1,
                   offset_weight: float = 1.0, alpha: float = 2.0, beta: float = 4.0) -> dict[str, torch.Tensor]:
    """outputs: :class:`CenterNetHead` dict; targets: :func:`centernet_targets` dict of the same level.
    Returns ``loss`` = heatmap + 0.1·size + 1·offset (CenterNet weights) and the three unweighted terms;
    L1 terms are mean absolute errors per coordinate over real objects."""
    hm = heatmap_focal_loss(outputs["heatmap"], targets["heatmap"], alpha, beta)
    mask = targets["mask"].unsqueeze(-1).to(outputs["size"].dtype)              # B×M×1
    denom = (mask.sum() * 2).clamp(min=1)
    size = ((_gather(outputs["size"], targets["index"]) - targets["size"]).abs() * mask).sum() / denom
    off = ((_gather(outputs["offset"], targets["index"]) - targets["offset"]).abs() * mask).sum() / denom
    return {"loss": hm + size_weight * size + offset_weight * off, "heatmap": hm, "size": size, "offset": off}


@torch.no_grad()
def decode_detections(outputs: dict[str, torch.Tensor], stride: float, k: int = 100, nms_iou: float = 0.5,
                      score_thr: float = 0.05, max_det: int = 100,
                      image_sizes: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """CenterNet decoding: 3×3 max-pool peak NMS → top-k peaks → boxes, then score threshold, class-aware
    ``torchvision.ops.batched_nms`` and ``max_det``.

    A peak at cell (x, y) with offset (dx, dy) and size (w, h) (cells) gives the box
    ((x + dx − w/2)·s, (y + dy − h/2)·s, (x + dx + w/2)·s, (y + dy + h/2)·s), pixels of the input frame.
    image_sizes: optional B×2 (h, w) after resize: boxes are clipped to that extent.
    Returns B dicts ``boxes`` N×4, ``scores`` N (sigmoid heatmap), ``labels`` N, sorted by score.
    """
    heat = torch.sigmoid(outputs["heatmap"])                                   # B×K×H×W
    b, nk, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)        # keep local maxima only
    scores, inds = peaks.reshape(b, -1).topk(min(k, nk * h * w), dim=1)        # B×k
    labels, cell = inds // (h * w), inds % (h * w)
    ys, xs = (cell // w).to(heat.dtype), (cell % w).to(heat.dtype)
    off = _gather(outputs["offset"], cell)                                     # B×k×2
    wh = _gather(outputs["size"], cell).clamp(min=0)                           # B×k×2
    cx, cy = xs + off[..., 0], ys + off[..., 1]
    boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2],
                        dim=-1) * stride                                       # B×k×4 pixels
    results = []
    for i in range(b):
        keep = scores[i] > score_thr
        bx, sc, lb = boxes[i][keep], scores[i][keep], labels[i][keep]
        if image_sizes is not None:
            ih, iw = (float(v) for v in image_sizes[i])
            bx = torch.stack([bx[:, 0].clamp(0, iw), bx[:, 1].clamp(0, ih), bx[:, 2].clamp(0, iw),
                              bx[:, 3].clamp(0, ih)], dim=1)
        order = batched_nms(bx, sc, lb, nms_iou)[:max_det]                     # sorted by score
        results.append({"boxes": bx[order], "scores": sc[order], "labels": lb[order]})
    return results


def match_proposals(proposals: torch.Tensor, gt_boxes: torch.Tensor,
                    thr: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Match proposals P×4 to ground truth M×4 (both (x0, y0, x1, y1) pixels): each proposal takes the
    ground-truth box of highest IoU (``torchvision.ops.box_iou``) and is kept if that IoU ≥ ``thr``
    (PAPER_NOTES.md §3: 0.6). Returns (proposal indices, gt indices), two long tensors of equal length, in
    proposal order; the matched proposals become prompt boxes captioned with their gt's caption."""
    empty = torch.zeros(0, dtype=torch.long, device=proposals.device)
    if len(proposals) == 0 or len(gt_boxes) == 0:
        return empty, empty.clone()
    best_iou, best_gt = box_iou(proposals, gt_boxes).max(dim=1)                # P, P
    keep = torch.nonzero(best_iou >= thr).squeeze(1)
    return keep, best_gt[keep]
