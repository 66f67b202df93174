"""Torch Datasets for the four PixelLLM tasks, the resize/pad transform and the batch collate.

Every dataset returns one sample dict; :func:`collate` turns a list of them into the batch dict of
ARCHITECTURE.md::

    images        B×3×S×S float [0,1]   resized so the longest side is S, zero-padded bottom/right
    image_sizes   B×2 long (h, w) after resize, before padding      orig_sizes  B×2 long (h, w) original
    image_ids     list[str]                                          task        list[str]
    boxes         B×4 float prompt box (x0, y0, x1, y1), pixels of the resized input; (0, 0, w, h) if none
    prompt_ids    B×P long (pad 0, ends with EOS)                    prompt_mask B×P bool
    target_ids    B×T long (pad 0, EOS = 1 at the end)               target_mask B×T bool
    points        B×T×4 float per-token (x0, y0, x1, y1), pixels of the resized input
    point_valid   B×T bool
    trace_samples B×T×16×2 float, normalised [0,1] (LN only, ``return_trace_samples=True``)
    masks         B×S×S bool, resized + padded frame (RefExpDataset, ``return_masks=True``)
    meta          list[dict] (the source record: expression, ids, original box …)

Tasks: ``"caption"`` (COCO captions, no point targets), ``"trace"`` (Localized Narratives, one box per
token from the official alignment, EOS has none), ``"refer"`` (RefCOCO: prompt "where is <expr>",
target = the expression; only the EOS position is valid and carries the box corners), ``"region_caption"``
(prompt box = the region, target = its phrase, no point targets).

Horizontal flip is available (``hflip_prob``) but **off by default**: captions, narratives and
expressions say "left"/"right" ("the circle left of the star"), so a flipped image contradicts its text.
Swapping the words is not a fix for LN either: it changes the tokenisation the trace alignment was
computed for. Use flip only for text without laterality.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pixelllm.data.errors import SkipCounter
from pixelllm.data.images import image_file, open_image

#: Default text prompts (the LM's context after the visual tokens). PAPER_NOTES.md §1/§3.
DEFAULT_PROMPTS = {
    "caption": "A short image caption:",
    "trace": "A long image caption:",
    "refer": "where is {expr}",
    "region_caption": "an object of",
}
#: Default target templates for referring localization: the expression itself (official
#: ``DecodeRefCocoAnnotations``: text tokens = the expression, context = "where is " + expression).
DEFAULT_REFER_TARGET = "{expr}"


# ----------------------------------------------------------------------------------------- transform
@dataclass
class ResizePad:
    """Resize an image so that its longest side is ``size`` and pad it bottom/right with zeros to
    ``size × size``; move points, boxes and masks consistently (optionally after a horizontal flip).

    Coordinate frames: *original* = pixels of the file (x right, y down, origin top-left);
    *resized* = pixels of the model input (same orientation). A pixel coordinate maps by the scale
    ``s = size / max(h, w)``; a normalised coordinate u ∈ [0, 1] maps to ``u · w'`` (w' = resized width).
    Flip (applied in the resized frame, before padding): x → w' − x; boxes (x0, y0, x1, y1) →
    (w' − x1, y0, w' − x0, y1) so they stay top-left / bottom-right.
    """
    size: int

    def geometry(self, h: int, w: int) -> tuple[float, int, int]:
        """(scale, h', w') for an h×w original; max(h', w') == size."""
        scale = self.size / max(h, w)
        nh = min(self.size, max(1, int(round(h * scale))))
        nw = min(self.size, max(1, int(round(w * scale))))
        return scale, nh, nw

    def image(self, img, flip: bool = False) -> torch.Tensor:
        """PIL image (any mode) → 3×S×S float32 in [0, 1], content in the top-left h'×w'
        (= :meth:`pad` of :meth:`resized`)."""
        return self.pad(self.resized(img), flip)

    def resized(self, img) -> torch.Tensor:
        """PIL image (any mode) → its resized content, 3×h'×w' uint8 (what :class:`DecodedImages` keeps)."""
        from PIL import Image

        img = img.convert("RGB")
        _, nh, nw = self.geometry(img.height, img.width)
        if (nh, nw) != (img.height, img.width):
            img = img.resize((nw, nh), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def pad(self, content: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """3×h'×w' uint8 resized content → 3×S×S float32 in [0, 1] (÷255), optionally flipped, zero-padded
        bottom/right."""
        x = content.float() / 255.0
        if flip:
            x = x.flip(-1)
        out = torch.zeros(3, self.size, self.size)
        out[:, : x.shape[1], : x.shape[2]] = x
        return out

    def mask(self, m: np.ndarray, flip: bool = False) -> torch.Tensor:
        """H×W mask (original frame) → S×S bool (nearest-neighbour resize, zero padding)."""
        from PIL import Image

        h, w = m.shape
        _, nh, nw = self.geometry(h, w)
        im = Image.fromarray((np.asarray(m) > 0).astype(np.uint8) * 255)
        if (nh, nw) != (h, w):
            im = im.resize((nw, nh), Image.NEAREST)
        x = torch.from_numpy(np.asarray(im) > 127)
        if flip:
            x = x.flip(-1)
        out = torch.zeros(self.size, self.size, dtype=torch.bool)
        out[:nh, :nw] = x
        return out

    def boxes(self, xyxy, h: int, w: int, flip: bool = False) -> torch.Tensor:
        """(..., 4) boxes or corner pairs (x0, y0, x1, y1) in original pixels → resized pixels."""
        scale, _, nw = self.geometry(h, w)
        b = torch.as_tensor(xyxy, dtype=torch.float32) * scale
        if flip:
            b = torch.stack([nw - b[..., 2], b[..., 1], nw - b[..., 0], b[..., 3]], dim=-1)
        return b

    def points(self, xy, h: int, w: int, flip: bool = False) -> torch.Tensor:
        """(..., 2) points (x, y) in original pixels → resized pixels."""
        scale, _, nw = self.geometry(h, w)
        p = torch.as_tensor(xy, dtype=torch.float32) * scale
        if flip:
            p = torch.stack([nw - p[..., 0], p[..., 1]], dim=-1)
        return p


def xywh_to_xyxy(b: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y + h]


# ----------------------------------------------------------------------------------- decoded images
class DecodedImages:
    """Each image file decoded and resized once, kept as uint8 3×h'×w' with its original (h, w), keyed by
    (path, S). A training run reads every image once per epoch; keeping the decoded uint8 content
    (3·S² bytes, 48 KiB at S = 128) replaces the JPEG decode + resize of every later epoch. The float
    image is rebuilt by :meth:`ResizePad.pad` exactly as :meth:`ResizePad.image` makes it, so the
    numbers are identical. One store can serve several datasets on the same images (a task mixture).
    Datasets with it also keep their other decoded per-sample work (:class:`LNTraceDataset`: the
    token↔trace alignment).
    With DataLoader workers (``num_workers`` > 0) each worker fills its own copy."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, int], tuple[torch.Tensor, int, int]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.store)

    def get(self, path: Path, transform: ResizePad, load: Callable[[], Any]) -> tuple[torch.Tensor, int, int]:
        """(uint8 3×h'×w' content, original h, original w) of ``path`` at ``transform.size``; ``load()``
        returns the PIL image on a miss."""
        key = (str(path), transform.size)
        hit = self.store.get(key)
        if hit is None:
            img = load()
            hit = self.store[key] = (transform.resized(img), img.height, img.width)
            self.misses += 1
        else:
            self.hits += 1
        return hit


def enable_image_cache(dataset, store: DecodedImages | None = None) -> DecodedImages:
    """Give every task dataset inside ``dataset`` (itself, a ``Subset``'s ``.dataset``, a mixture's
    ``.datasets``, a view's ``.dataset``) — and any other dataset with a ``decoded`` attribute — one shared
    :class:`DecodedImages` store; returns the store. Datasets that decode images their own way are left as
    they are."""
    store = store if store is not None else DecodedImages()
    seen: set[int] = set()

    def walk(d) -> None:
        if d is None or id(d) in seen:
            return
        seen.add(id(d))
        if isinstance(d, _TaskDataset) or hasattr(d, "decoded"):        # hasattr: e.g. MuseDataset
            d.decoded = store
        inner = getattr(d, "datasets", None)
        for child in (inner.values() if isinstance(inner, dict) else inner or ()):
            walk(child)
        walk(getattr(d, "dataset", None))

    walk(dataset)
    return store


def find_missing_images(dataset) -> list[Path]:
    """The image files that ``dataset`` will read and that do not exist, each once — a check to run before
    training or evaluation, so a missing image is found up front and not at step N.

    ``dataset`` is a task dataset (anything with ``missing_images(indices=None)``), a
    ``torch.utils.data.Subset`` of one (only its samples are checked), a mixture (``.datasets``, a dict or
    list) or a view (``.dataset``), nested in any way; a dataset of another kind contributes nothing."""
    from torch.utils.data import Subset

    out: list[Path] = []

    def walk(d, indices) -> None:
        if d is None:
            return
        if isinstance(d, Subset):
            sub = list(d.indices)
            walk(d.dataset, sub if indices is None else [sub[i] for i in indices])
            return
        if hasattr(d, "missing_images"):
            out.extend(d.missing_images(indices))
            return
        inner = getattr(d, "datasets", None)
        for child in (inner.values() if isinstance(inner, dict) else inner or ()):
            walk(child, None)
        walk(getattr(d, "dataset", None), indices)

    walk(dataset, None)
    return list(dict.fromkeys(out))


def require_images(dataset, where: str = "dataset", show: int = 5) -> None:
    """Raise ``FileNotFoundError`` naming how many image files of ``dataset`` are missing and the first
    ``show`` of them (:func:`find_missing_images`); return quietly when all exist."""
    missing = find_missing_images(dataset)
    if missing:
        more = f" (and {len(missing) - show} more)" if len(missing) > show else ""
        raise FileNotFoundError(f"{where}: {len(missing)} image file(s) missing, e.g. "
                                f"{', '.join(str(p) for p in missing[:show])}{more}")


# --------------------------------------------------------------------------------------------- base
class _TaskDataset(Dataset):
    """Shared machinery: image loading, tokenisation with EOS, whole-image boxes, flips."""

    task = ""

    def __init__(self, image_root: str | os.PathLike, tokenizer, image_size: int = 384,
                 max_prompt_len: int = 32, max_target_len: int = 64, hflip_prob: float = 0.0,
                 image_path_fn: Callable[[dict], str | os.PathLike] | None = None):
        self.image_root = Path(image_root)
        self.tokenizer = tokenizer
        self.transform = ResizePad(image_size)
        self.max_prompt_len = max_prompt_len
        self.max_target_len = max_target_len
        self.hflip_prob = hflip_prob
        self.image_path_fn = image_path_fn
        self.skips = SkipCounter(type(self).__name__)
        self.decoded: DecodedImages | None = None      # set by enable_image_cache
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_id = 1 if eos is None else int(eos)

    # --- images
    def image_path(self, rec: dict) -> Path:
        """The image file of record ``rec``: ``image_path_fn(rec)`` when given, else ``image_root /
        file_name`` (a ``file_name`` that is absolute or climbs out with ``..`` raises DataFormatError)."""
        if self.image_path_fn is not None:
            return Path(self.image_path_fn(rec))
        return image_file(self.image_root, rec["file_name"], f"{type(self).__name__} record image_id "
                                                             f"{rec.get('image_id')!r}")

    def _load_image(self, rec: dict):
        """The RGB PIL image of ``rec`` (:func:`pixelllm.data.images.open_image`: missing → FileNotFoundError,
        corrupt / truncated / too large / not the declared ``width`` × ``height`` → DataFormatError, each
        naming the file)."""
        return open_image(self.image_path(rec), (rec.get("height"), rec.get("width")),
                          what=f"image_id {rec.get('image_id')!r}, {type(self).__name__}, image root {self.image_root}")

    def _image(self, rec: dict, flip: bool) -> tuple[torch.Tensor, int, int]:
        """(3×S×S float image in [0, 1], original h, original w) of ``rec``: decoded from its file, or the
        uint8 content kept in :attr:`decoded` (:func:`enable_image_cache`) padded back — identical values."""
        if self.decoded is None:
            img = self._load_image(rec)
            return self.transform.image(img, flip), img.height, img.width
        content, h, w = self.decoded.get(self.image_path(rec), self.transform, lambda: self._load_image(rec))
        return self.transform.pad(content, flip), h, w

    def missing_images(self, indices: Sequence[int] | None = None) -> list[Path]:
        """Every image path of the dataset (or of samples ``indices``) that does not exist, each once, in
        sample order — check before a long run (:func:`find_missing_images` for wrapped datasets)."""
        seen, out = set(), []
        recs = self._image_records() if indices is None else [self.image_record(i) for i in indices]
        for rec in recs:
            p = self.image_path(rec)
            if p not in seen:
                seen.add(p)
                if not p.is_file():
                    out.append(p)
        return out

    def _image_records(self):
        raise NotImplementedError

    def image_record(self, i: int) -> dict:
        """The record (``image_id``, ``file_name``, …) whose image sample ``i`` shows."""
        raise NotImplementedError

    def _flip(self) -> bool:
        return self.hflip_prob > 0 and bool(torch.rand(()) < self.hflip_prob)

    # --- text
    def _ids(self, text: str, max_len: int | None) -> list[int]:
        """Token ids of ``text`` ending with EOS; truncated to ``max_len`` keeping the EOS."""
        ids = list(self.tokenizer(text)["input_ids"])
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        if max_len is not None and len(ids) > max_len:
            ids = ids[: max_len - 1] + [self.eos_id]
        return ids

    def _base(self, rec: dict, image: torch.Tensor, h: int, w: int, prompt: str) -> dict[str, Any]:
        """The keys every task shares; ``image`` = :meth:`_image`'s 3×S×S tensor of an h×w original."""
        _, nh, nw = self.transform.geometry(h, w)
        return {
            "images": image,
            "image_sizes": torch.tensor([nh, nw]),
            "orig_sizes": torch.tensor([h, w]),
            "image_ids": str(rec["image_id"]),
            "boxes": torch.tensor([0.0, 0.0, float(nw), float(nh)]),
            "prompt_ids": torch.tensor(self._ids(prompt, self.max_prompt_len)),
            "task": self.task,
        }

    def _no_points(self, target_ids: list[int]) -> dict[str, torch.Tensor]:
        t = len(target_ids)
        return {"target_ids": torch.tensor(target_ids), "points": torch.zeros(t, 4),
                "point_valid": torch.zeros(t, dtype=torch.bool)}


# ------------------------------------------------------------------------------------------ caption
class CaptionDataset(_TaskDataset):
    """COCO captions, one sample per (image, caption) pair; task "caption", no point targets.

    Args:
        captions: a COCO captions JSON path or the records of :func:`pixelllm.data.coco.load_coco_captions`.
        image_root: folder of the images (``image_root / file_name``).
        tokenizer: a ``transformers`` tokenizer whose encoding ends with EOS (ours does).
        prompt: LM text prompt (default "A short image caption:").
    """
    task = "caption"

    def __init__(self, captions, image_root, tokenizer, image_size: int = 384,
                 prompt: str = DEFAULT_PROMPTS["caption"], **kw):
        super().__init__(image_root, tokenizer, image_size, **kw)
        if isinstance(captions, (str, os.PathLike)):
            from pixelllm.data.coco import load_coco_captions
            captions = load_coco_captions(captions)
        self.records = captions
        self.items = [(r, c) for r in captions for c in r["captions"]]
        self.prompt = prompt

    def _image_records(self):
        return self.records

    def image_record(self, i: int) -> dict:
        return self.items[i][0]

    def __len__(self) -> int:
        return len(self.items)

    def target_length(self, i: int) -> int:
        """Target tokens of sample ``i`` (EOS included), the image not loaded."""
        return len(self._ids(self.items[i][1], self.max_target_len))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec, cap = self.items[i]
        flip = self._flip()
        image, h, w = self._image(rec, flip)
        s = self._base(rec, image, h, w, self.prompt)
        s.update(self._no_points(self._ids(cap, self.max_target_len)))
        s["meta"] = {"caption": cap}
        return s


# -------------------------------------------------------------------------------------------- trace
class LNTraceDataset(_TaskDataset):
    """Localized Narratives with per-token trace targets (task "trace").

    The caption is tokenised (EOS appended) and cut to ``max_target_len`` (EOS kept last); its kept
    non-EOS tokens get targets from :func:`pixelllm.data.localized_narratives.align_tokens_to_trace`
    (normalised [0, 1], clipped). As in the official pipeline the normalised corners are rounded to
    integer pixels of the original image (``round(u · W)``) and then moved into the resized frame. EOS and
    pad carry no target. Narratives the official code skips (≤ 1 trace point) or without any utterance
    are dropped and counted.

    ``alignment`` (PAPER_NOTES.md §2.4, §2.7): ``"official"`` spreads all utterances over the tokens kept
    after truncation (M = min(n, max_target_len − 1)) and keeps a narrative without a valid utterance
    (every token → utterance 0, counted as a note); ``"full_caption"`` aligns the whole caption and then
    cuts, so the later utterances lose their tokens, and drops narratives without a valid utterance.

    Args:
        narratives: an LN ``.jsonl`` path or a list of :class:`Narrative`.
        point_target: "box" (two corners, paper) or "center".
        return_trace_samples: also return ``trace_samples`` T×16×2 (normalised, for ``point_l1``).
        alignment: "official" (default), "full_caption" or "span" (a fast tokenizer's character offsets).
    """
    task = "trace"

    def __init__(self, narratives, image_root, tokenizer, image_size: int = 384,
                 prompt: str = DEFAULT_PROMPTS["trace"], point_target: str = "box",
                 return_trace_samples: bool = False, num_samples: int = 16, max_target_len: int = 128,
                 alignment: str = "official", **kw):
        super().__init__(image_root, tokenizer, image_size, max_target_len=max_target_len, **kw)
        from pixelllm.data.localized_narratives import (
            check_alignment, load_localized_narratives, unusable_reason, utterance_char_spans, utterance_traces,
        )

        self.alignment = check_alignment(alignment)
        if isinstance(narratives, (str, os.PathLike)):
            narratives = load_localized_narratives(narratives, require_trace=True, skips=self.skips,
                                                   alignment=alignment)
        else:
            kept = []
            for n in narratives:
                reason = unusable_reason(n, alignment)
                if reason:
                    self.skips.add(reason, detail=n.source)
                else:
                    kept.append(n)
            narratives = kept
        if alignment == "official":
            for n in narratives:
                if not utterance_traces(n, num_samples).valid.any():
                    self.skips.add("kept: no valid utterance (every token → utterance 0, as official)",
                                   detail=n.source)
        if alignment == "span":
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError("LNTraceDataset: the 'span' alignment needs a fast tokenizer (character offsets)")
            for n in narratives:
                if utterance_char_spans(n.caption, [u.utterance for u in n.timed_caption]) is None:
                    self.skips.add("kept: utterances not found in order in the caption (relative-position "
                                   "alignment used)", detail=n.source)
        self.skips.report()
        self.narratives = narratives
        self.prompt, self.point_target = prompt, point_target
        self.return_trace_samples, self.num_samples = return_trace_samples, num_samples
        #: narrative index → (token ids, alignment), kept when the decoded cache is on (enable_image_cache):
        #: the alignment interpolates every utterance's trace, most of a sample's CPU time
        self.aligned: dict[int, tuple[list[int], Any]] = {}

    def _image_records(self):
        return [self._rec(n) for n in self.narratives]

    def image_record(self, i: int) -> dict:
        return self._rec(self.narratives[i])

    @staticmethod
    def _rec(n) -> dict:
        return {"image_id": n.image_id, "file_name": n.coco_file_name}

    def __len__(self) -> int:
        return len(self.narratives)

    def token_utterances(self, i: int) -> np.ndarray:
        """Utterance index (into ``narratives[i].timed_caption``) of each target token of sample ``i``, the
        image not loaded: T ints (T = ``len(self[i]["target_ids"])``, truncation included), −1 for the EOS
        and for tokens without a valid utterance."""
        ids, al = self._alignment(i)
        t = min(len(ids), self.max_target_len)
        return np.concatenate([al.utterance_index[: t - 1], [-1]]).astype(np.int64)

    def target_length(self, i: int) -> int:
        """Target tokens of sample ``i`` (EOS included, truncation applied), the image not loaded."""
        return min(len(self._ids(self.narratives[i].caption, None)), self.max_target_len)

    def _alignment(self, i: int) -> tuple[list[int], Any]:
        """(full caption ids + EOS, :class:`AlignedTrace` of its M kept tokens) of narrative ``i``; kept in
        :attr:`aligned` when the decoded cache is on (:func:`enable_image_cache`)."""
        from pixelllm.data.localized_narratives import align_tokens_to_trace, caption_token_offsets, num_aligned_tokens

        hit = self.aligned.get(i) if self.decoded is not None else None
        if hit is None:
            n = self.narratives[i]
            ids = self._ids(n.caption, None)                               # full caption + EOS
            m = num_aligned_tokens(len(ids) - 1, self.max_target_len, self.alignment)
            offsets = None
            if self.alignment == "span":
                offsets = caption_token_offsets(self.tokenizer, n.caption)
                if len(offsets) != m:
                    raise RuntimeError(f"{n.source}: {len(offsets)} token offsets for {m} caption tokens")
            hit = (ids, align_tokens_to_trace(n, m, self.num_samples, self.point_target, self.alignment, offsets))
            if self.decoded is not None:
                self.aligned[i] = hit
        return list(hit[0]), hit[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = self.narratives[i]
        rec = self._rec(n)
        flip = self._flip()
        image, h, w = self._image(rec, flip)
        s = self._base(rec, image, h, w, self.prompt)
        ids, al = self._alignment(i)
        corners = np.round(al.points * [w, h, w, h])                       # official: integer original pixels
        pts = self.transform.boxes(corners, h, w, flip)                    # M×4, resized frame
        valid = torch.from_numpy(al.valid)
        samples = torch.from_numpy(al.samples).float()                     # M×S×2 normalised
        if flip:
            samples = torch.stack([1 - samples[..., 0], samples[..., 1]], -1)
        t = min(len(ids), self.max_target_len)                             # truncate, keep EOS last
        ids = ids[: t - 1] + [self.eos_id]
        s["target_ids"] = torch.tensor(ids)
        s["points"] = torch.cat([pts[: t - 1], torch.zeros(1, 4)])         # EOS: no target
        s["point_valid"] = torch.cat([valid[: t - 1], torch.zeros(1, dtype=torch.bool)])
        if self.return_trace_samples:
            s["trace_samples"] = torch.cat([samples[: t - 1], torch.zeros(1, self.num_samples, 2)])
        s["meta"] = {"caption": n.caption, "source": n.source}
        return s


# -------------------------------------------------------------------------------------------- refer
class RefExpDataset(_TaskDataset):
    """Referring localization (task "refer"): whole-image prompt box, text prompt "where is <expr>",
    target = the expression followed by EOS; only the EOS position is valid and carries the target box
    corners (x0, y0, x1, y1) in the resized frame.

    Args:
        refer: a :class:`pixelllm.data.refcoco.RefCOCO`, or a list of its per-expression records
            (also :func:`load_mdetr_refexp` records).
        split: keep this split only ("train", "val", "testA", "testB", "test"); ``None`` = all.
        prompt / target: templates with ``{expr}``; ``target=""`` makes the EOS the only target token.
        return_masks: also return the ground-truth mask (``masks`` S×S bool, decoded with pycocotools).
    """
    task = "refer"

    def __init__(self, refer, image_root, tokenizer, split: str | None = None, image_size: int = 384,
                 prompt: str = DEFAULT_PROMPTS["refer"], target: str = DEFAULT_REFER_TARGET,
                 return_masks: bool = False, **kw):
        super().__init__(image_root, tokenizer, image_size, **kw)
        records = refer.expressions(split) if hasattr(refer, "expressions") else \
            [r for r in refer if split is None or r["split"] == split]
        self.records = records
        self.prompt, self.target, self.return_masks = prompt, target, return_masks

    def _image_records(self):
        return self.records

    def image_record(self, i: int) -> dict:
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def target_length(self, i: int) -> int:
        """Target tokens of sample ``i`` (EOS included), the image not loaded."""
        expr = self.records[i]["expression"]
        return len(self._ids(self.target.format(expr=expr), self.max_target_len)) if self.target else 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        flip = self._flip()
        image, h, w = self._image(rec, flip)
        expr = rec["expression"]
        s = self._base(rec, image, h, w, self.prompt.format(expr=expr))
        ids = self._ids(self.target.format(expr=expr), self.max_target_len) if self.target else [self.eos_id]
        s.update(self._no_points(ids))
        s["points"][-1] = self.transform.boxes(xywh_to_xyxy(rec["bbox"]), h, w, flip)   # EOS ← box
        s["point_valid"][-1] = True
        if self.return_masks:
            from pixelllm.data.coco import decode_segmentation

            seg = rec.get("segmentation")
            m = decode_segmentation(seg, h, w, field=f"ref {rec.get('ref_id')} annotation {rec.get('ann_id')}"
                                                     ".segmentation") if seg else np.zeros((h, w), np.uint8)
            s["masks"] = self.transform.mask(m, flip)
        s["meta"] = {k: rec.get(k) for k in ("ref_id", "ann_id", "sent_id", "expression", "bbox", "split")}
        return s


# ----------------------------------------------------------------------------------- region caption
class RegionCaptionDataset(_TaskDataset):
    """Location-conditioned captioning (task "region_caption"): prompt box = the region (resized
    frame), text prompt "an object of", target = the region's phrase; no point targets.

    Args:
        records: Visual Genome per-image records (:func:`load_visual_genome` / :func:`load_vg_coco_style`,
            with ``regions``) — one sample per region — or refer per-expression records (with
            ``expression``) — one sample per expression.
    """
    task = "region_caption"

    def __init__(self, records, image_root, tokenizer, image_size: int = 384,
                 prompt: str = DEFAULT_PROMPTS["region_caption"], **kw):
        super().__init__(image_root, tokenizer, image_size, **kw)
        if hasattr(records, "expressions"):
            records = records.expressions()
        self.items: list[tuple[dict, list[float], str, Any]] = []
        for r in records:
            if "regions" in r:
                self.items += [(r, g["bbox"], g["phrase"], g["region_id"]) for g in r["regions"]]
            else:
                self.items.append((r, r["bbox"], r["expression"], r.get("ref_id")))
        self.prompt = prompt

    def _image_records(self):
        return [it[0] for it in self.items]

    def image_record(self, i: int) -> dict:
        return self.items[i][0]

    def __len__(self) -> int:
        return len(self.items)

    def target_length(self, i: int) -> int:
        """Target tokens of sample ``i`` (EOS included), the image not loaded."""
        return len(self._ids(self.items[i][2], self.max_target_len))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec, bbox, phrase, rid = self.items[i]
        flip = self._flip()
        image, h, w = self._image(rec, flip)
        s = self._base(rec, image, h, w, self.prompt)
        s["boxes"] = self.transform.boxes(xywh_to_xyxy(bbox), h, w, flip)
        s.update(self._no_points(self._ids(phrase, self.max_target_len)))
        s["meta"] = {"region_id": rid, "phrase": phrase, "bbox": list(bbox)}
        return s


# ------------------------------------------------------------------------------------------ collate
def collate(samples: Sequence[dict], pad_id: int = 0) -> dict[str, Any]:
    """Stack a list of sample dicts into the ARCHITECTURE.md batch dict.

    ``prompt_ids`` / ``target_ids`` are right-padded with ``pad_id`` (masks mark real tokens);
    ``points`` / ``trace_samples`` are zero-padded and ``point_valid`` False on padding. Optional keys
    (``trace_samples``, ``masks``) are present when any sample has them (zeros for the others), so
    tasks can be mixed in one batch.
    """
    if not samples:
        raise ValueError("collate: empty list of samples")
    b = len(samples)
    out: dict[str, Any] = {
        "images": torch.stack([s["images"] for s in samples]),
        "image_sizes": torch.stack([s["image_sizes"] for s in samples]).long(),
        "orig_sizes": torch.stack([s["orig_sizes"] for s in samples]).long(),
        "image_ids": [s["image_ids"] for s in samples],
        "boxes": torch.stack([s["boxes"] for s in samples]).float(),
        "task": [s["task"] for s in samples],
    }
    for key in ("prompt", "target"):
        seqs = [s[f"{key}_ids"] for s in samples]
        n = max(len(x) for x in seqs)
        ids = torch.full((b, n), pad_id, dtype=torch.long)
        mask = torch.zeros(b, n, dtype=torch.bool)
        for i, x in enumerate(seqs):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = True
        out[f"{key}_ids"], out[f"{key}_mask"] = ids, mask
    t = out["target_ids"].shape[1]
    out["points"] = torch.zeros(b, t, 4)
    out["point_valid"] = torch.zeros(b, t, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s["target_ids"])
        out["points"][i, :n] = s["points"]
        out["point_valid"][i, :n] = s["point_valid"]
    with_ts = [s for s in samples if "trace_samples" in s]
    if with_ts:
        k = with_ts[0]["trace_samples"].shape[1]
        out["trace_samples"] = torch.zeros(b, t, k, 2)
        for i, s in enumerate(samples):
            if "trace_samples" in s:
                out["trace_samples"][i, : len(s["trace_samples"])] = s["trace_samples"]
    with_masks = [s for s in samples if "masks" in s]
    if with_masks:
        out["masks"] = torch.zeros(b, *with_masks[0]["masks"].shape, dtype=torch.bool)
        for i, s in enumerate(samples):
            if "masks" in s:
                out["masks"][i] = s["masks"]
    if any("meta" in s for s in samples):
        out["meta"] = [s.get("meta", {}) for s in samples]
    return out
