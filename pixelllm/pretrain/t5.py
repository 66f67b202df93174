"""A tiny T5, pretrained on the synthetic world's text with T5's span-corruption objective.

The paper's language model is an instruction-tuned **Flan-T5-XL**, loaded with
``T5ForConditionalGeneration.from_pretrained("google/flan-t5-xl")`` and kept frozen (LoRA on top). We
cannot download it, so we pretrain a small T5 on our own corpus and save it the same way
(``save_pretrained`` + the tokenizer in the same folder): the model code then loads
``T5ForConditionalGeneration.from_pretrained(local_dir)`` and ``AutoTokenizer.from_pretrained(local_dir)``
exactly as it would load Flan-T5.

Objective (Raffel et al. 2020, §3.1.4 "span corruption"): drop 15 % of the tokens of a text in spans of
mean length 3, replace each dropped span by a sentinel ``<extra_id_k>`` in the input; the target lists
every sentinel followed by the tokens it replaced, then EOS::

    input : the red circle <extra_id_0> of the blue <extra_id_1> .</s>
    target: <extra_id_0> is left <extra_id_1> square <extra_id_2></s>

Two more example kinds are mixed in (``get_config("t5_tiny")``: 25 % / 50 %):

* caption-style (T5's prefix-LM objective): input = ``"A long image caption: "`` + the first k tokens of a
  text, target = the rest, so the decoder also learns to *write* the world's sentences;
* reconstruction (BART-style denoising): input = ``"Fill in: "`` + the span-corrupted text, target = the
  whole original text. This is our stand-in for Flan-T5's instruction tuning: a decoder that must write
  what its input says. Measured without it (README, "What these numbers say"): the frozen LM under LoRA never
  learned to read PixelLLM's visual tokens — caption CE with shuffled images = CE with the right ones, and
  even ground-truth colour *words* fed as its input were not picked up (colour-word CE 1.80, chance 1.79,
  after 150 LoRA steps; 1.07 with reconstruction examples in the pretraining).

Training is the repo's one loop (:class:`pixelllm.engine.trainer.Trainer`) on :class:`T5PretrainTask`,
with the numbers of :func:`pixelllm.configs.prerequisites.get_t5_config`. The noise of each step is drawn
from a generator seeded by the global torch RNG, which the Trainer checkpoints: a resumed run is exact.
The model's widths are the tiny preset's (:func:`pixelllm.modeling.build.tiny_t5_config`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from pixelllm.modeling.build import tiny_t5_config
from pixelllm.modeling.language_model import load_t5
from pixelllm.pretrain.common import RecordedEval, checkpoint_dir, resume_and_fit, run_records
from pixelllm.utils import seed_everything, write_json

__all__ = ["tiny_t5_config", "load_t5", "random_spans_noise_mask", "span_corrupt", "SpanCorruptionExamples",
           "TokenizedTexts", "collate_token_ids", "T5PretrainTask", "t5_corpus", "evaluate_span_corruption",
           "span_corruption_examples", "save_t5", "t5_trainer", "pretrain_tiny_t5"]

CAPTION_PROMPT = "A long image caption: "
DENOISE_PROMPT = "Fill in: "
NUM_SENTINELS = 100  # <extra_id_0> .. <extra_id_99>, as in T5's vocabulary
IGNORE_INDEX = -100  # label value transformers' T5 loss ignores


# --------------------------------------------------------------------------------------------------
# Span corruption
# --------------------------------------------------------------------------------------------------

def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """Bool mask of ``length`` tokens, True = noise, laid out as alternating non-noise / noise spans.

    Port of ``t5.data.preprocessors.random_spans_noise_mask`` (the T5 / mesh-tensorflow code, not in any
    installed library): ``round(length·density)`` noise tokens (at least 1, at most length-1) split into
    ``round(noise/mean_span)`` spans (≥ 1); both the noise and the non-noise tokens are cut into that many
    segments at random, and the output alternates them starting with a non-noise segment — so, as in T5,
    it always ends with a noise span (on short texts with one span, the end of the text is predicted).
    """
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    num_nonnoise = length - num_noise
    num_spans = min(num_spans, num_noise, num_nonnoise)

    def segment_lengths(num_items: int, num_segments: int) -> np.ndarray:
        # random partition of num_items into num_segments non-empty segments
        cuts = np.sort(rng.choice(np.arange(1, num_items), size=num_segments - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [num_items]]))

    noise_lengths = segment_lengths(num_noise, num_spans)
    nonnoise_lengths = segment_lengths(num_nonnoise, num_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for keep, drop in zip(nonnoise_lengths, noise_lengths):
        pos += keep
        mask[pos: pos + drop] = True
        pos += drop
    return mask


def span_corrupt(token_ids: Sequence[int], noise_mask: np.ndarray, sentinel_ids: Sequence[int],
                 eos_id: int) -> tuple[list[int], list[int]]:
    """Apply a noise mask: (input ids, target ids), both ending with ``eos_id``.

    ``token_ids``: L ids without EOS; ``noise_mask``: L bools. Each maximal noise span k is replaced by
    ``sentinel_ids[k]`` in the input; the target is ``sentinel_k span_k ...`` plus a closing sentinel and
    EOS (as T5 does: the final sentinel marks "nothing more").
    """
    inputs: list[int] = []
    targets: list[int] = []
    k = 0
    prev_noise = False
    for tok, noise in zip(token_ids, noise_mask):
        if noise:
            if not prev_noise:
                if k >= len(sentinel_ids):
                    raise ValueError(f"more than {len(sentinel_ids)} noise spans; lengthen the sentinel list")
                inputs.append(sentinel_ids[k])
                targets.append(sentinel_ids[k])
                k += 1
            targets.append(int(tok))
        else:
            inputs.append(int(tok))
        prev_noise = bool(noise)
    targets.append(sentinel_ids[min(k, len(sentinel_ids) - 1)])
    return inputs + [eos_id], targets + [eos_id]


class SpanCorruptionExamples:
    """Turns texts into (input ids, target ids) pairs, fresh noise every call (T5 re-samples the noise).

    Args:
        tokenizer: a T5-style tokenizer (``<extra_id_k>`` sentinels, eos ``</s>``).
        max_tokens: texts longer than this (in tokens, EOS excluded) use a random window of that length.
        caption_fraction: probability of a caption-style (prefix-LM) example instead of span corruption.
        denoise_fraction: probability of a reconstruction example (BART-style denoising): input =
            ``"Fill in: "`` + the span-corrupted text, target = the **whole** original text. Unlike span
            corruption, most target tokens are *in the input*, so the decoder learns to read the encoder —
            the ability an instruction-tuned Flan-T5 brings and PixelLLM's frozen LM relies on.
    """

    def __init__(self, tokenizer, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                 max_tokens: int = 64, caption_fraction: float = 0.0, denoise_fraction: float = 0.0):
        if caption_fraction + denoise_fraction > 1:
            raise ValueError(f"caption_fraction + denoise_fraction must be ≤ 1, got {caption_fraction} + {denoise_fraction}")
        self.tokenizer = tokenizer
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        self.max_tokens = max_tokens
        self.caption_fraction = caption_fraction
        self.denoise_fraction = denoise_fraction
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        sentinels = [f"<extra_id_{k}>" for k in range(NUM_SENTINELS)]
        ids = tokenizer.convert_tokens_to_ids(sentinels)
        missing = [s for s, i in zip(sentinels, ids) if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"tokenizer lacks the T5 sentinels {missing[:3]}...: train it with "
                             "pixelllm.data.tokenizer.train_tokenizer (adds <extra_id_0..99>)")
        self.sentinel_ids = ids
        self.prompt_ids = tokenizer(CAPTION_PROMPT, add_special_tokens=False)["input_ids"]
        self.denoise_ids = tokenizer(DENOISE_PROMPT, add_special_tokens=False)["input_ids"]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids without special tokens (EOS is added per example)."""
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def example(self, ids: Sequence[int], rng: np.random.Generator) -> tuple[list[int], list[int]] | None:
        """One (input, target) pair from one text's ids; ``None`` for texts of < 2 tokens."""
        if len(ids) < 2:
            return None
        if len(ids) > self.max_tokens:
            start = int(rng.integers(0, len(ids) - self.max_tokens + 1))
            ids = ids[start: start + self.max_tokens]
        u = rng.random() if (self.caption_fraction > 0 or self.denoise_fraction > 0) else 1.0
        if u < self.caption_fraction:
            k = int(rng.integers(0, len(ids) // 2 + 1))  # prefix length, 0 = write the whole caption
            return list(self.prompt_ids) + list(ids[:k]) + [self.eos_id], list(ids[k:]) + [self.eos_id]
        mask = random_spans_noise_mask(len(ids), rng, self.noise_density, self.mean_noise_span_length)
        inputs, targets = span_corrupt(ids, mask, self.sentinel_ids, self.eos_id)
        if u < self.caption_fraction + self.denoise_fraction:
            return list(self.denoise_ids) + inputs, [int(t) for t in ids] + [self.eos_id]
        return inputs, targets

    def collate(self, pairs: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Pad to the longest: ``input_ids`` / ``attention_mask`` B×Lin, ``labels`` B×Lout (pad → -100)."""
        b = len(pairs)
        lin = max(len(p[0]) for p in pairs)
        lout = max(len(p[1]) for p in pairs)
        input_ids = torch.full((b, lin), self.pad_id, dtype=torch.long)
        labels = torch.full((b, lout), IGNORE_INDEX, dtype=torch.long)
        for i, (inp, tgt) in enumerate(pairs):
            input_ids[i, : len(inp)] = torch.tensor(inp)
            labels[i, : len(tgt)] = torch.tensor(tgt)
        return {"input_ids": input_ids, "attention_mask": input_ids != self.pad_id, "labels": labels}


# --------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------

class TokenizedTexts(torch.utils.data.Dataset):
    """Map-style dataset of token-id lists (texts of ≥ 2 tokens; EOS is added per example)."""

    def __init__(self, texts: Sequence[str], tokenizer):
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        self.ids = [list(x) for x in ids if len(x) >= 2]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> list[int]:
        return self.ids[i]


def collate_token_ids(items: list[list[int]]) -> dict[str, list[list[int]]]:
    """``{"token_ids": [ids, ...]}``: the noise is drawn in the step (:class:`T5PretrainTask`)."""
    return {"token_ids": list(items)}


class T5PretrainTask(torch.nn.Module):
    """A ``T5ForConditionalGeneration`` trained on :class:`SpanCorruptionExamples`, as a task for the Trainer
    (``computes_own_loss``): ``forward(batch)`` turns ``batch["token_ids"]`` into (input, target) pairs with
    a ``numpy`` generator seeded from the global torch RNG (fresh noise every step, checkpointed with the
    run), pads them and returns ``{"loss"}``, transformers' mean CE per target token."""

    computes_own_loss = True

    def __init__(self, t5: T5ForConditionalGeneration, examples: SpanCorruptionExamples):
        super().__init__()
        self.t5 = t5
        self.examples = examples

    def forward(self, batch: dict[str, Any], features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        pairs = [self.examples.example(ids, rng) for ids in batch["token_ids"]]
        tensors = {k: v.to(self.t5.device) for k, v in self.examples.collate(pairs).items()}
        return {"loss": self.t5(**tensors).loss}

def t5_corpus(data_root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(train texts, validation texts) for pretraining, from ``pixelllm.data.tokenizer.corpus_texts``.

    ``corpus_texts`` mixes every split, so the captions and narratives of the held-out images
    (``captions/captions_{val,test}.json``, ``localized_narratives/*_{val,test}_*.jsonl``) are removed from
    the training texts: the val-split ones become the validation set, the test-split ones are used by
    nobody — the T5 never reads a sentence written about a test image. Duplicates are kept in training
    (frequency matters) but a text in any held-out file never appears in training.
    """
    from pixelllm.data.coco import load_coco_captions
    from pixelllm.data.errors import SkipCounter
    from pixelllm.data.localized_narratives import iter_localized_narratives, localized_narratives_files
    from pixelllm.data.tokenizer import corpus_texts

    root = Path(data_root)
    quiet = SkipCounter("t5 corpus")
    held: dict[str, list[str]] = {"val": [], "test": []}
    for split in held:
        cap = root / "captions" / f"captions_{split}.json"
        if cap.exists():
            held[split] += [c for r in load_coco_captions(cap, skips=quiet) for c in r["captions"]]
        for p in localized_narratives_files(root / "localized_narratives", f"*_{split}_*.jsonl"):
            held[split] += [n.caption for n in iter_localized_narratives(p)]
    excluded = {t.strip() for texts in held.values() for t in texts}
    train = [t for t in corpus_texts(root) if t.strip() not in excluded]
    val = list(dict.fromkeys(t.strip() for t in held["val"] if t.strip()))
    if not train:
        raise ValueError(f"{root}: no training text found (expected captions/ and localized_narratives/)")
    return train, val


@torch.no_grad()
def evaluate_span_corruption(model: T5ForConditionalGeneration, tokenizer, texts: Sequence[str],
                             seed: int = 0, batch_size: int = 128, max_tokens: int = 64) -> dict[str, float]:
    """Teacher-forced span-corruption loss (mean CE per target token) and token accuracy (argmax ==
    target) on ``texts``, with a fixed noise (``seed``) so successive evaluations are comparable."""
    ex = SpanCorruptionExamples(tokenizer, max_tokens=max_tokens)
    rng = np.random.default_rng(seed)
    pairs = [p for p in (ex.example(ids, rng) for ids in ex.tokenize(texts)) if p is not None]
    if not pairs:
        raise ValueError("evaluate_span_corruption: no text has ≥ 2 tokens")
    was_training = model.training
    model.eval()
    total_loss, total_correct, total_tokens = 0.0, 0, 0
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(model.device) for k, v in ex.collate(pairs[i: i + batch_size]).items()}
        logits = model(**batch).logits.float()  # B×Lout×V
        labels = batch["labels"]
        valid = labels != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits[valid], labels[valid], reduction="sum")
        total_loss += loss.item()
        total_correct += (logits.argmax(-1)[valid] == labels[valid]).sum().item()
        total_tokens += int(valid.sum())
    model.train(was_training)
    return {"loss": total_loss / total_tokens, "token_accuracy": total_correct / total_tokens,
            "n_texts": len(pairs), "n_tokens": total_tokens}


@torch.no_grad()
def span_corruption_examples(model: T5ForConditionalGeneration, tokenizer, texts: Sequence[str], n: int = 5,
                             seed: int = 0, max_new_tokens: int = 32) -> list[dict[str, str]]:
    """``n`` corrupted texts with the target and the model's greedy prediction, as strings (sentinels
    kept), for display: ``[{"input", "target", "prediction"}]``."""
    ex = SpanCorruptionExamples(tokenizer)
    rng = np.random.default_rng(seed)
    out = []
    was_training = model.training
    model.eval()
    for ids in ex.tokenize(texts):
        pair = ex.example(ids, rng)
        if pair is None:
            continue
        inp, tgt = pair
        gen = model.generate(input_ids=torch.tensor([inp], device=model.device),
                             attention_mask=torch.ones(1, len(inp), dtype=torch.bool, device=model.device),
                             max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
        dec = lambda t: tokenizer.decode(t, skip_special_tokens=False).replace("<pad>", "").strip()  # noqa: E731
        out.append({"input": dec(inp), "target": dec(tgt), "prediction": dec(gen[0].tolist())})
        if len(out) == n:
            break
    model.train(was_training)
    return out


def save_t5(model: T5ForConditionalGeneration, tokenizer, out_dir: str | os.PathLike,
            extra: dict | None = None) -> Path:
    """``save_pretrained`` model + tokenizer into ``out_dir`` atomically (written to a sibling temp
    folder, then renamed), plus ``pretrain.json`` with ``extra`` (history, metrics) when given."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        write_json(tmp / "pretrain.json", extra)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def t5_trainer(cfg, train_texts: Sequence[str], tokenizer, val_texts: Sequence[str] = (),
               out_dir: str | os.PathLike | None = None, progress: bool = True):
    """The Trainer of the tiny-T5 pretraining: ``tiny_t5_config(len(tokenizer), **cfg.t5_overrides)``
    seeded by ``cfg.seed``, wrapped in :class:`T5PretrainTask` (the mixture of ``cfg.caption_fraction`` /
    ``cfg.denoise_fraction``, texts cut to ``cfg.max_tokens``) on ``train_texts`` (the first
    ``cfg.max_samples`` when > 0). Its eval hook (a :class:`~pixelllm.pretrain.common.RecordedEval`) scores
    span corruption on the first ``cfg.n_val`` of ``val_texts`` (none: no hook). Checkpoints go to
    ``out_dir`` (None: none)."""
    from pixelllm.engine.trainer import Trainer

    seed_everything(cfg.seed)
    t5 = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer), **cfg.t5_overrides))
    ex = SpanCorruptionExamples(tokenizer, max_tokens=cfg.max_tokens, caption_fraction=cfg.caption_fraction,
                                denoise_fraction=cfg.denoise_fraction)
    train = TokenizedTexts(list(train_texts)[: cfg.max_samples or None], tokenizer)
    if len(train) == 0:
        raise ValueError("pretrain_tiny_t5: no training text has ≥ 2 tokens")
    val = list(val_texts)[: cfg.n_val]

    def evaluate(model: T5PretrainTask, step: int) -> dict[str, float]:
        return evaluate_span_corruption(model.t5, tokenizer, val, seed=cfg.seed, max_tokens=cfg.max_tokens)

    hook = RecordedEval(evaluate) if val else None
    return Trainer(T5PretrainTask(t5, ex), cfg, train, collate_token_ids, out_dir=out_dir, eval_fn=hook,
                   progress=progress)


def pretrain_tiny_t5(cfg, train_texts: Sequence[str], val_texts: Sequence[str], tokenizer,
                     out_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain the tiny T5 from scratch with the config ``cfg``
    (:class:`~pixelllm.configs.prerequisites.T5PretrainConfig`, ``get_config("t5_tiny")``): span corruption +
    ``cfg.caption_fraction`` prefix-LM + ``cfg.denoise_fraction`` reconstruction examples, through the
    Trainer (:func:`t5_trainer`): ``cfg.steps`` AdamW steps, warm-up + cosine, gradient clipping
    (PAPER_NOTES.md §8: lr 1e-3, clip 1.0 was stable); checkpoints in ``<out_dir>_checkpoints`` beside the
    folder (or ``cfg.out_dir``), resumed exactly when the run was interrupted.

    Saves model + tokenizer into ``out_dir`` (``save_pretrained``, atomic) with ``pretrain.json`` (history,
    validation, T5 config, objective, training config). Returns ``{"model", "history": [{"step", "loss",
    "lr", "grad_norm"}], "val": [{"step", "loss", "token_accuracy", ...}] (every ``cfg.eval_interval`` steps
    and at the end), "final_val", "steps_done", "seconds" (training, evaluation excluded; of this call when
    it resumed), "stopped_early", "resumed_at": the step it resumed from | None}``.
    """
    ckpt_dir = checkpoint_dir(out_dir, cfg) if out_dir is not None else None
    trainer = t5_trainer(cfg, train_texts, tokenizer, val_texts, ckpt_dir, progress)
    run = resume_and_fit(trainer)
    model = trainer.model.t5.eval()
    history, val_hist = run_records(trainer)
    hook = trainer.eval_fn
    final = {k: v for k, v in hook.results[-1].items() if k != "step"} if hook is not None and hook.results else {}
    result = {"history": history, "val": val_hist, "final_val": final, "steps_done": trainer.step,
              "seconds": run["seconds"], "stopped_early": trainer.stopped_early, "resumed_at": run["resumed_at"]}
    if out_dir is not None:
        save_t5(model, tokenizer, out_dir, extra={**result, "config": model.config.to_dict(),
                                                 "objective": {"noise_density": 0.15, "mean_noise_span_length": 3,
                                                               "caption_fraction": cfg.caption_fraction,
                                                               "denoise_fraction": cfg.denoise_fraction},
                                                 "train": cfg.to_dict(), "checkpoints": str(ckpt_dir)})
    return {"model": model, **result}
