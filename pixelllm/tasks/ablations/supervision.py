"""How an ablation arm supervises the per-word points of stage 2 (the Table 4 analogue): dense per-word
utterance boxes (the paper), one box per narrative on every word, or no point target at all."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

#: ``AblationConfig.loc_supervision`` values, in the order of the Table 4 analogue's rows
MODES = ("dense", "box", "none")


def narrative_box_targets(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Box-only supervision: every valid token gets the **same** box — the union (min x0, min y0, max x1,
    max y1) of the narrative's per-token boxes, i.e. the bounding box of all its utterance traces.

    points: T×4 (x0, y0, x1, y1), any frame (pixels of the resized input in the datasets);
    valid: T bool. Returns T×4, invalid rows unchanged. Same tokens, same loss weight as dense
    supervision: only how finely the location is given changes."""
    out = points.clone()
    if bool(valid.any()):
        p = points[valid]                                                      # V×4
        box = torch.stack([p[:, 0].min(), p[:, 1].min(), p[:, 2].max(), p[:, 3].max()])
        out[valid] = box
    return out


class SupervisionView(Dataset):
    """An LN trace dataset whose *training* point targets follow ``mode``:
    ``"dense"`` (per-word utterance boxes, unchanged), ``"box"`` (:func:`narrative_box_targets`) or
    ``"none"`` (``point_valid`` all False: a caption-only stage 2). ``trace_samples`` (the evaluation
    ground truth) are never touched."""

    def __init__(self, dataset: Dataset, mode: str = "dense"):
        if mode not in MODES:
            raise ValueError(f"SupervisionView: mode must be 'dense', 'box' or 'none', got {mode!r}")
        self.dataset, self.mode = dataset, mode

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.dataset[i])
        if self.mode == "box":
            s["points"] = narrative_box_targets(s["points"], s["point_valid"])
        elif self.mode == "none":
            s["point_valid"] = torch.zeros_like(s["point_valid"])
        return s
