"""RefCOCO-style referring expressions as training/evaluation datasets, with the bad-input checks.

Records from files with an empty expression (or one that tokenises to nothing), a zero-size box or a
box outside its image are skipped and counted (:func:`check_refexp_records`, reported once); evaluators
refuse such records passed directly (:func:`require_clean_records` raises ``ValueError`` naming the
sample).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pixelllm.configs.refcoco import REFER_PROMPT
from pixelllm.data.errors import SkipCounter

SPLITS = ("train", "val", "testA", "testB")
EVAL_SPLITS = ("val", "testA", "testB")
#: a ground-truth box may stick out of its image by this many pixels (rounding) before it is "outside"
BOX_TOLERANCE_PX = 1.0


# ------------------------------------------------------------------------------------------ bad input
def expression_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without EOS / pad (what the expression contributes)."""
    specials = {getattr(tokenizer, "eos_token_id", 1), getattr(tokenizer, "pad_token_id", 0)}
    return [i for i in tokenizer(text)["input_ids"] if i not in specials]


def refexp_problem(rec: Mapping[str, Any], tokenizer: Any = None, need_mask: bool = False) -> str | None:
    """Why a per-expression record (``pixelllm.data.refcoco`` format: ``expression``, ``bbox`` [x, y, w, h]
    original pixels, ``width``, ``height``) is unusable, or None. Reasons: "empty expression",
    "expression with no tokens", "zero-size box", "box outside the image", and with ``need_mask``
    "no segmentation" (an all-zero target mask would be a wrong label)."""
    expr = str(rec.get("expression", "")).strip()
    if not expr:
        return "empty expression"
    if tokenizer is not None and not expression_token_ids(tokenizer, expr):
        return "expression with no tokens"
    x, y, w, h = (float(v) for v in rec["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return "zero-size box"
    W, H, tol = float(rec["width"]), float(rec["height"]), BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
        return "box outside the image"
    if need_mask and not rec.get("segmentation"):
        return "no segmentation"
    return None


def check_refexp_records(records: Iterable[Mapping[str, Any]], tokenizer: Any = None,
                         skips: SkipCounter | None = None, source: str = "refer", need_mask: bool = False) -> list[dict]:
    """Keep the usable records (:func:`refexp_problem`, ``need_mask`` for segmentation); the others are
    counted by reason in ``skips`` (a new :class:`SkipCounter` named ``source`` when None, reported once at
    the end)."""
    own = skips is None
    skips = skips if skips is not None else SkipCounter(source)
    kept = []
    for r in records:
        why = refexp_problem(r, tokenizer, need_mask)
        if why is None:
            kept.append(dict(r))
        else:
            skips.add(f"skipped: {why}", detail=f"ref {r.get('ref_id')} sent {r.get('sent_id')} {r.get('expression')!r}")
    if own:
        skips.report()
    return kept


def require_clean_records(records: Sequence[Mapping[str, Any]], tokenizer: Any, where: str) -> None:
    """Raise ``ValueError`` (naming the first offenders) when any record is unusable — evaluators refuse
    to score a sample whose ground truth is broken instead of silently counting it wrong."""
    bad = [(k, r, refexp_problem(r, tokenizer)) for k, r in enumerate(records)]
    bad = [(k, r, why) for k, r, why in bad if why]
    if bad:
        ex = "; ".join(f"[{k}] ref {r.get('ref_id')} {r.get('expression')!r}: {why}" for k, r, why in bad[:3])
        raise ValueError(f"{where}: {len(bad)} unusable record(s) (clean them with check_refexp_records): {ex}")


# ---------------------------------------------------------------------------------------------- data
def refexp_datasets(data_dir: str | os.PathLike, tokenizer: Any, image_size: int,
                    splits: Sequence[str] = SPLITS, prompt: str = REFER_PROMPT, return_masks: bool = False,
                    max_target_len: int = 16, dataset: str = "refcoco", split_by: str = "unc",
                    max_samples: int | Mapping[str, int] | None = None) -> dict:
    """{split: :class:`~pixelllm.data.datasets.RefExpDataset`} of the refer-format files under
    ``data_dir/<dataset>/`` (images in ``data_dir/images``), unusable records skipped and counted.

    Samples: whole-image prompt box, prompt "where is <expr>", target = expression + EOS whose point
    target is the box (resized frame); ``masks`` S×S bool with ``return_masks``. ``max_samples`` keeps
    the first N records of each split (an int, or a per-split dict)."""
    from pixelllm.data.datasets import RefExpDataset
    from pixelllm.data.refcoco import RefCOCO

    data_dir = Path(data_dir)
    refer = RefCOCO(data_dir, dataset, split_by)
    skips = SkipCounter(f"referring {dataset}({split_by})")
    out = {}
    for split in splits:
        recs = check_refexp_records(refer.expressions(split), tokenizer, skips, need_mask=return_masks)
        cap = max_samples.get(split) if isinstance(max_samples, Mapping) else max_samples
        if cap:
            recs = recs[:cap]
        out[split] = RefExpDataset(recs, data_dir / "images", tokenizer, image_size=image_size, prompt=prompt,
                                   target="{expr}", return_masks=return_masks, max_target_len=max_target_len)
    skips.report()
    return out
