"""Referring data: the RefExp datasets of a config and in-order evaluation batches; the bad-input checks
and :func:`refexp_datasets` live in :mod:`pixelllm.data.refexp`.

Bad input: records from files with an empty expression (or one that tokenises to nothing), a zero-size
box or a box outside its image are skipped and counted (:func:`check_refexp_records`, reported once);
evaluators refuse such records passed directly (:func:`require_clean_records` raises ``ValueError``
naming the sample).
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import torch

from pixelllm.configs.refcoco import REFER_PROMPT
from pixelllm.data.refexp import refexp_datasets, require_clean_records

def training_datasets(cfg, data_dir: str | os.PathLike, tokenizer: Any, image_size: int,
                      return_masks: bool = False) -> dict:
    """``{"train", "val"}`` RefExp datasets of a referring config: its prompt and target length, the first
    ``cfg.max_samples`` training expressions (0 = all) and the first ``cfg.eval_samples`` val ones (no
    ``"val"`` when 0)."""
    splits = ("train", "val") if cfg.eval_samples > 0 else ("train",)
    return refexp_datasets(data_dir, tokenizer, image_size, splits,
                           prompt=cfg.prompts.get("refer", REFER_PROMPT), return_masks=return_masks,
                           max_target_len=cfg.max_target_len,
                           max_samples={"train": cfg.max_samples or None, "val": cfg.eval_samples})


# ------------------------------------------------------------------------------------------- batches
def dataset_records(dataset) -> tuple[Any, list[int]]:
    """(dataset with ``records``, indices into it) for a RefExpDataset or a ``Subset`` of one."""
    from torch.utils.data import Subset

    idx = None
    while isinstance(dataset, Subset):
        inner = list(dataset.indices)
        idx = inner if idx is None else [inner[i] for i in idx]
        dataset = dataset.dataset
    if not hasattr(dataset, "records"):
        raise TypeError(f"expected a RefExpDataset (or a Subset of one), got {type(dataset).__name__}")
    return dataset, list(range(len(dataset))) if idx is None else idx


def ordered_batches(dataset, batch_size: int, limit: int | None = None) -> Iterator[tuple[dict, list]]:
    """Yield (batch dict, records) over ``dataset`` in order (first ``limit`` samples)."""
    from pixelllm.data.datasets import collate

    base, idx = dataset_records(dataset)
    if limit is not None:
        idx = idx[:limit]
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        yield collate([base[i] for i in chunk]), [base.records[i] for i in chunk]


def by_split(datasets) -> dict:
    """``{split: dataset}``: a mapping as it is, one dataset grouped by its records' ``split``."""
    from torch.utils.data import Subset

    if isinstance(datasets, Mapping):
        return dict(datasets)
    base, idx = dataset_records(datasets)
    groups: dict[str, list[int]] = {}
    for i in idx:
        groups.setdefault(base.records[i]["split"], []).append(i)
    return {s: Subset(base, ix) for s, ix in groups.items()}


def eval_batches(datasets, batch_size: int, max_per_split: int | None, device, progress: bool, where: str,
                 desc: str) -> Iterator[tuple[str, dict, list]]:
    """Yield ``(split, batch on device, records)`` over the first ``max_per_split`` samples of each split of
    ``datasets`` (:func:`by_split`), in order; a split's records are checked (:func:`require_clean_records`,
    named ``where[split]``) before its first batch; one progress bar ``desc split`` per split. No split, or a
    split with no sample to score, raises ``ValueError`` (never an empty or perfect score)."""
    from tqdm.auto import tqdm

    splits = by_split(datasets)
    if not splits:
        raise ValueError(f"{where}: no split to evaluate (empty dataset)")
    for split, ds in splits.items():
        base, idx = dataset_records(ds)
        n = len(idx) if max_per_split is None else min(len(idx), max_per_split)
        if n == 0:       # a score over nothing would read as a result (P@0.5 or IoU of an empty set)
            raise ValueError(f"{where}[{split}]: empty split ({len(idx)} expressions, max_per_split="
                             f"{max_per_split}); nothing to score")
        require_clean_records([base.records[i] for i in idx[:n]], None, f"{where}[{split}]")
        bar = tqdm(total=n, desc=f"{desc} {split}", disable=not progress, leave=False)
        for batch, recs in ordered_batches(ds, batch_size, n):
            yield split, {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}, recs
            bar.update(len(recs))
        bar.close()


def gt_boxes_original(records: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Ground-truth boxes N×4 (x0, y0, x1, y1) in original-image pixels (float64) from the records' xywh."""
    b = torch.tensor([[float(v) for v in r["bbox"]] for r in records], dtype=torch.float64)   # N×4 xywh
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)                                    # xyxy
