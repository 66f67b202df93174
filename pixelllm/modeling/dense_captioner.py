"""The dense captioner: PixelLLM + a CenterNet proposer (PAPER_NOTES.md §3, paper Fig. 4 right).

PixelLLM turns into a dense captioner by adding a proposal network on its image features and
captioning every proposal with location-conditioned captioning::

    F        = V(I)                                   image features, B×C×H×W (stride S / H)
    Ŷ, ŵh, ô = CenterNet(SimpleFeaturePyramid(F))     proposals (boxes, objectness scores)
    b_k      = proposals matched to ground truth at IoU ≥ 0.6 (training) / all kept proposals (inference)
    w^k_i   ~ L([E(P(b_k), F) ; "an object of"], w^k_<i)

trained end to end: L = λ_det · L_CenterNet + λ_cap · CE(captions of the matched prompts). The grid F is
computed once per image (:meth:`PixelLLM.image_features`) and shared by the proposer and every prompt of
that image (:meth:`PixelLLM.prompt_tokens` on its rows), so the caption loss and the detection loss both
reach the trainable image encoder.

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

from typing import Any, Sequence

import torch
from torch import nn

from pixelllm.data.datasets import DEFAULT_PROMPTS
from pixelllm.utils import eval_mode

REGION_PROMPT = DEFAULT_PROMPTS["region_caption"]          # "an object of"


def to_original_frame(boxes: torch.Tensor, orig_size: Sequence[int], image_size: int) -> torch.Tensor:
    """N×4 boxes in pixels of the resized S×S input → pixels of the original h×w image (÷ S / max(h, w))."""
    h, w = (int(v) for v in orig_size)
    return boxes / (image_size / max(h, w))


def pad_token_ids(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists → (ids N×T long, mask N×T bool)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


class DenseCaptioner(nn.Module):
    """PixelLLM + a CenterNet proposer, trained end to end (module docstring).

    A task that computes its own loss (``computes_own_loss``): the engine's Trainer calls
    ``forward(batch, features=None)`` on :func:`pixelllm.tasks.densecap.densecap_collate` batches and caches
    :meth:`frozen_image_features` per image id.

    Args:
        pixelllm: a :class:`~pixelllm.modeling.pixelllm.PixelLLM` (its image features feed both parts).
        proposer: :class:`~pixelllm.modeling.centernet.CenterNetProposer` on those features
            (``in_dim`` = image-encoder channels, ``in_stride`` = S / grid side).
        tokenizer: encodes the prompt, decodes the captions.
        prompt: the text prompt ("an object of", PAPER_NOTES.md §3).
        match_iou: a proposal becomes a training prompt if its best IoU with ground truth is ≥ this (0.6).
        append_gt: add the ground-truth boxes to the proposals before matching (detectron2 default).
        max_prompts_per_image: cap on captioned prompts per image and step (a random subset drawn from the
            global torch RNG, which the Trainer checkpoints; 0 = all).
        det_weight / caption_weight: λ_det, λ_cap. label_smoothing: ε of the caption CE.
        train_topk: CenterNet peaks decoded per image during training.
        score_thr, nms_iou, max_det: inference decoding (:func:`decode_detections`).
    """

    computes_own_loss = True

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

    @property
    def has_frozen_features(self) -> bool:
        return self.pixelllm.has_frozen_features

    def frozen_image_features(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """The PixelLLM's cacheable frozen features (:meth:`PixelLLM.frozen_image_features`): the whole grid
        when its image encoder is frozen, else the frozen SAM grid."""
        return self.pixelllm.frozen_image_features(images, image_sizes)

    # --- pieces ---------------------------------------------------------------------------------------
    def select_prompts(self, proposals: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training prompts of one image: proposals P×4 (plus the ground truth when ``append_gt``) matched to
        ``gt_boxes`` M×4 at IoU ≥ ``match_iou`` (:func:`match_proposals`), both pixels of the input frame.
        Returns (prompt boxes K×4, index of each one's ground-truth box K)."""
        from pixelllm.modeling.centernet import match_proposals

        cand = torch.cat([proposals.reshape(-1, 4), gt_boxes.reshape(-1, 4)]) if self.append_gt else proposals
        keep, gt_idx = match_proposals(cand, gt_boxes.reshape(-1, 4).to(cand), self.match_iou)
        return cand[keep], gt_idx

    def prompt_inputs(self, grid: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor,
                      image_sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 encoder inputs of K prompts on the images' shared grid B×C×H×W: ``rows`` K (image of each
        prompt), ``boxes`` K×4 pixels → :meth:`PixelLLM.prompt_tokens` on ``grid[rows]`` then
        :meth:`PixelLLM.encoder_inputs` with the text prompt → (inputs_embeds K×(N+P)×D, mask K×(N+P))."""
        m = self.pixelllm
        visual = m.prompt_tokens(grid[rows], boxes, image_sizes[rows] if image_sizes is not None else None)
        prompt_ids = self.prompt_ids.unsqueeze(0).expand(len(rows), -1)             # K×P
        return m.encoder_inputs(visual, prompt_ids, torch.ones_like(prompt_ids, dtype=torch.bool))

    # --- training -------------------------------------------------------------------------------------
    def forward(self, batch: dict, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Losses of one ``densecap_collate`` batch: ``loss`` = det_weight · ``det`` + caption_weight · ``ce``,
        the CenterNet terms (``heatmap``, ``size``, ``offset``) and ``prompts`` (captioned prompts in the
        batch). ``features``: :meth:`frozen_image_features` of these images (optional, e.g. cached)."""
        from pixelllm.modeling.losses import label_smoothed_cross_entropy, text_valid_mask
        from pixelllm.modeling.centernet import centernet_loss, centernet_targets, decode_detections

        images, sizes = batch["images"], batch.get("image_sizes")
        gt_boxes = [g.to(images.device).float() for g in batch["gt_boxes"]]
        grid = self.pixelllm.image_features(images, sizes, features)                  # B×C×H×W
        out = self.proposer(grid)
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
                  "offset": det["offset"].detach(), "prompts": torch.tensor(float(len(rows)))}
        if rows:
            embeds, mask = self.prompt_inputs(grid, torch.tensor(rows, device=images.device), torch.cat(boxes), sizes)
            lm = self.pixelllm.language_model
            target_ids, target_mask = (t.to(images.device) for t in pad_token_ids(tgts, lm.pad_token_id))
            logits, _hidden = lm(embeds, mask, lm.shift_right(target_ids))                # K×T×V
            valid = text_valid_mask(target_ids, target_mask, lm.eos_token_id)
            ce_tok = label_smoothed_cross_entropy(logits, target_ids, self.label_smoothing)
            ce = (ce_tok * valid).sum() / valid.sum().clamp(min=1)
        else:
            ce = grid.sum() * 0.0                                                          # keeps the graph
        losses["ce"] = ce
        losses["loss"] = self.det_weight * det["loss"] + self.caption_weight * ce
        return losses

    # --- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None,
                orig_sizes: torch.Tensor | None = None, features: torch.Tensor | None = None,
                max_new_tokens: int = 16, num_beams: int = 1, chunk: int = 64) -> list[dict[str, Any]]:
        """Dense captions of B images (3×S×S in [0, 1], resized + padded as the datasets do).

        image_sizes: B×2 (h, w) after resize (default: the full S×S frame); orig_sizes: B×2 original (h, w)
        (default: = image_sizes); features: :meth:`frozen_image_features` of the images (optional).
        Returns one dict per image: ``boxes`` N×4 (x0, y0, x1, y1) **original pixels**, ``boxes_input`` N×4
        pixels of the resized input, ``scores`` N (objectness, descending), ``captions`` N strings.
        """
        from pixelllm.modeling.centernet import decode_detections

        with eval_mode(self):
            b, s = images.shape[0], self.image_size
            if image_sizes is None:
                image_sizes = torch.full((b, 2), s, dtype=torch.long, device=images.device)
            orig_sizes = image_sizes if orig_sizes is None else orig_sizes
            grid = self.pixelllm.image_features(images, image_sizes, features)
            dets = decode_detections(self.proposer(grid), self.proposer.stride, k=max(self.max_det, 1) * 2,
                                     nms_iou=self.nms_iou, score_thr=self.score_thr, max_det=self.max_det,
                                     image_sizes=image_sizes)
            rows = torch.cat([torch.full((len(d["boxes"]),), i, dtype=torch.long) for i, d in enumerate(dets)])
            boxes = torch.cat([d["boxes"] for d in dets]) if len(rows) else torch.zeros(0, 4)
            texts: list[str] = []
            lm = self.pixelllm.language_model
            for k in range(0, len(rows), chunk):
                embeds, mask = self.prompt_inputs(grid, rows[k:k + chunk].to(images.device), boxes[k:k + chunk],
                                                  image_sizes)
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


def build_dense_captioner(pixelllm: nn.Module, tokenizer, dim: int = 128, scale_factor: float = 2.0,
                          **kwargs: Any) -> DenseCaptioner:
    """A :class:`DenseCaptioner` whose CenterNet proposer sits on ``pixelllm``'s feature grid
    (in_dim = image-encoder channels, in_stride = S / grid side; pyramid ``scale_factor`` 2 → stride / 2)."""
    from pixelllm.modeling.centernet import CenterNetProposer

    enc = pixelllm.image_encoder
    proposer = CenterNetProposer(enc.out_channels, in_stride=enc.image_size / enc.out_size, dim=dim,
                                 scale_factor=scale_factor)
    return DenseCaptioner(pixelllm, proposer.to(next(pixelllm.parameters()).device), tokenizer, **kwargs)


__all__ = ["DenseCaptioner", "build_dense_captioner", "pad_token_ids", "to_original_frame", "REGION_PROMPT"]
