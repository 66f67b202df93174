"""Training and evaluation datasets of a config: one task's dataset on a split, and the weighted task
mixture of a stage (``tasks={"trace": 2, "caption": 1}``)."""
from __future__ import annotations


class MixtureDataset:
    """Tasks mixed by weight, deterministically. The first task is the reference: one epoch = each of its
    samples once; task k contributes round(w_k / w_0 · n_0) slots per epoch, slot j → its sample
    perm_k[j mod n_k] (a fixed seeded permutation, so smaller sets repeat and larger ones are sub-sampled
    evenly). The trainer's sampler shuffles the slots.

    Args:
        datasets: {task: Dataset}; weights: {task: weight > 0}.
    """

    def __init__(self, datasets: dict, weights: dict, seed: int = 0):
        import numpy as np

        if set(datasets) != set(weights):
            raise ValueError(f"MixtureDataset: datasets {sorted(datasets)} vs weights {sorted(weights)}")
        bad = [k for k, w in weights.items() if not w > 0]
        if bad:
            raise ValueError(f"MixtureDataset: weights must be > 0, got {[(k, weights[k]) for k in bad]}")
        empty = [k for k, d in datasets.items() if len(d) == 0]
        if empty:
            raise ValueError(f"MixtureDataset: empty dataset(s) {empty}")
        self.datasets = datasets
        ref = next(iter(datasets))
        n0, w0 = len(datasets[ref]), weights[ref]
        rng = np.random.default_rng(seed)
        self.index: list[tuple[str, int]] = []
        for k, d in datasets.items():
            slots = max(1, round(weights[k] / w0 * n0))
            perm = rng.permutation(len(d))
            self.index += [(k, int(perm[j % len(d)])) for j in range(slots)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        k, j = self.index[i]
        return self.datasets[k][j]


def sample_lengths(dataset) -> list[int]:
    """Target tokens of every sample of a training dataset (``target_length`` of the task datasets, through
    ``Subset``, ``ConcatDataset`` and :class:`MixtureDataset`), no image loaded: what the length-grouped
    sampler (``group_by_length``) batches by."""
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(dataset, Subset):
        inner = sample_lengths(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, MixtureDataset):
        per = {k: sample_lengths(d) for k, d in dataset.datasets.items()}
        return [per[k][j] for k, j in dataset.index]
    if isinstance(dataset, ConcatDataset):
        return [n for d in dataset.datasets for n in sample_lengths(d)]
    if hasattr(dataset, "target_length"):
        return [int(dataset.target_length(i)) for i in range(len(dataset))]
    raise TypeError(f"sample_lengths: {type(dataset).__name__} has no target_length(i); "
                    "set group_by_length=False for it")


#: target tokens of a referring sample (expression + EOS) when mixed into another stage
REFER_MAX_TARGET_LEN = 16


def task_dataset(task: str, split: str, cfg, paths, tokenizer, image_size: int, **kw):
    """One task's dataset on a split of the synthetic world (real-format files)."""
    from pixelllm.configs.refcoco import REFER_PROMPT
    from pixelllm.data.datasets import DEFAULT_PROMPTS, CaptionDataset, LNTraceDataset

    images = paths.data / cfg.image_dir
    prompt = cfg.prompts.get(task, DEFAULT_PROMPTS.get(task))
    if task == "caption":
        return CaptionDataset(paths.data / cfg.captions_file.format(split=split), images, tokenizer, image_size,
                              prompt=prompt, max_target_len=cfg.max_target_len, **kw)
    if task == "trace":
        ln = paths.data / cfg.ln_file.format(split=split)
        return LNTraceDataset(ln, images, tokenizer, image_size, prompt=prompt, max_target_len=cfg.max_target_len,
                              alignment=cfg.ln_alignment, **kw)
    if task == "refer":   # referring boxes (RefCOCO train split), e.g. mixed into stage 2 as box supervision
        from pixelllm.data.refexp import refexp_datasets

        return refexp_datasets(paths.data, tokenizer, image_size, (split,), prompt=prompt or REFER_PROMPT,
                               max_target_len=min(cfg.max_target_len, REFER_MAX_TARGET_LEN), **kw)[split]
    raise ValueError(f"task {task!r}: training mixtures wire 'caption', 'trace' and 'refer'; "
                     "use the dataset classes of pixelllm.data.datasets directly for the others")


def build_train_dataset(cfg, paths, tokenizer, image_size: int):
    """The config's task mixture on the train split (``max_samples`` caps each task)."""
    from torch.utils.data import Subset

    parts = {}
    for task in cfg.tasks:
        d = task_dataset(task, "train", cfg, paths, tokenizer, image_size)
        if cfg.max_samples:
            d = Subset(d, range(min(cfg.max_samples, len(d))))
        parts[task] = d
    return parts[next(iter(parts))] if len(parts) == 1 else MixtureDataset(parts, cfg.tasks, seed=cfg.seed)


