"""PixelLM's segmentation codebook C_seg = {c_n^l}: L scales × N tokens (PAPER_NOTES.md §10; PixelLM paper
§3.2; release ``train_ds.py``, ``model/PixelLM.py``).

The release adds ``[SEG0] … [SEG{L·N−1}]`` to the LLaMA tokenizer and resizes the embedding table
(``resize_token_embeddings``), training the new rows. Here the codebook tokens are likewise **new token
ids appended after the T5 vocabulary** (ids V … V+L·N−1, scale-major: id V + l·N + n is c_n^l, l = 0 the
coarsest scale, the release's ``view(K, L, N, d)`` order), but their input and output embeddings live in
this module rather than in rows added to T5's frozen tables: the base vocabulary stays bit-identical and
frozen (LoRA leaves ``shared``/``lm_head`` untouched), and only the L·N new rows train — what the release
gets by making the resized tables trainable.

* :meth:`SegCodebook.embed` — ids B×T (base or codebook) → B×T×D decoder input embeddings;
* :meth:`SegCodebook.logits` — decoder states B×T×D + base logits B×T×V → B×T×(V+L·N), so the LM is
  trained (text CE) to *emit* the codebook group after each target, as in the release;
* :func:`insert_groups` — an answer's token ids with one group of L·N codebook ids per target.

Multiple targets: the release writes one full group per target ("… A [SEG0]…[SEG5], B [SEG0]…[SEG5]
and C [SEG0]…[SEG5].", ``utils/multi_reason_seg_dataset.py``), masks in the order the groups appear.
"""
from __future__ import annotations

import torch
from torch import nn


class SegCodebook(nn.Module):
    """Args: ``num_scales`` L, ``tokens_per_scale`` N, ``d_model`` D of the LM, ``base_vocab`` V."""

    def __init__(self, num_scales: int, tokens_per_scale: int, d_model: int, base_vocab: int,
                 init_std: float = 1.0) -> None:
        super().__init__()
        if num_scales < 1 or tokens_per_scale < 1:
            raise ValueError(f"SegCodebook: L and N must be ≥ 1, got L={num_scales}, N={tokens_per_scale}")
        self.num_scales, self.tokens_per_scale, self.base_vocab = num_scales, tokens_per_scale, base_vocab
        self.embedding = nn.Parameter(torch.randn(num_scales * tokens_per_scale, d_model) * init_std)
        self.output = nn.Linear(d_model, num_scales * tokens_per_scale, bias=False)

    @property
    def group_size(self) -> int:
        """L·N tokens per target."""
        return self.num_scales * self.tokens_per_scale

    def group_ids(self, device: torch.device | None = None) -> torch.Tensor:
        """The L·N codebook ids of one group (long), scale-major."""
        return torch.arange(self.base_vocab, self.base_vocab + self.group_size, device=device)

    def is_codebook(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.base_vocab

    def embed(self, ids: torch.Tensor, base_embedding: nn.Embedding) -> torch.Tensor:
        """ids B×T (base ids < V, codebook ids V … V+L·N−1) → B×T×D."""
        if (ids >= self.base_vocab + self.group_size).any() or (ids < 0).any():
            raise ValueError(f"SegCodebook: ids must lie in [0, {self.base_vocab + self.group_size})")
        cb = self.is_codebook(ids)
        out = base_embedding(ids.clamp(max=self.base_vocab - 1))
        if cb.any():
            rows = self.embedding.to(out.dtype)[(ids - self.base_vocab).clamp(min=0)]   # B×T×D
            out = torch.where(cb.unsqueeze(-1), rows, out)
        return out

    def logits(self, hidden: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
        """B×T×D states, B×T×V base logits → B×T×(V+L·N)."""
        return torch.cat([base_logits, self.output(hidden)], dim=-1)


#: a target's place in an answer before the codebook ids are known: ``insert_groups`` puts a group there
SEG_SLOT = -1


def insert_groups(target_ids: torch.Tensor, target_mask: torch.Tensor, num_targets: torch.Tensor,
                  group: torch.Tensor, eos_id: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An answer's ids with one group of L·N codebook ids (``group``) per target → (ids, mask) B×T'.

    A row that holds :data:`SEG_SLOT` markers (the release's ``{seg}`` after each target phrase) gets a
    group in place of each marker; their count must equal ``num_targets[b]``. A row without markers gets
    ``num_targets[b]`` groups before its EOS (its last valid token), e.g. "<expression> [group] EOS"."""
    rows = []
    for b, (ids, m, k) in enumerate(zip(target_ids, target_mask.bool(), num_targets.tolist())):
        valid = ids[m]
        if len(valid) == 0 or int(valid[-1]) != eos_id:
            raise ValueError(f"insert_groups: row {b} must end with EOS (id {eos_id}); got {valid.tolist()}")
        slots = valid == SEG_SLOT
        if slots.any():
            if int(slots.sum()) != int(k):
                raise ValueError(f"insert_groups: row {b} has {int(slots.sum())} target slots for {k} targets")
            pieces, start = [], 0
            for j in torch.nonzero(slots).flatten().tolist():
                pieces += [valid[start:j], group.to(ids)]
                start = j + 1
            rows.append(torch.cat(pieces + [valid[start:]]))
        else:
            rows.append(torch.cat([valid[:-1], group.to(ids).repeat(int(k)), valid[-1:]]))
    t = max(len(r) for r in rows)
    out = torch.full((len(rows), t), pad_id, dtype=target_ids.dtype, device=target_ids.device)
    mask = torch.zeros(len(rows), t, dtype=torch.bool, device=target_ids.device)
    for i, r in enumerate(rows):
        out[i, :len(r)], mask[i, :len(r)] = r, True
    return out, mask


__all__ = ["SEG_SLOT", "SegCodebook", "insert_groups"]
