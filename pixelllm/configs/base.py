"""The shared training config: one typed dataclass (nanoGPT ``GPTConfig`` / peft ``LoraConfig`` style).

Experiment configs (``pretrain.py``, ``ln_trace.py``) are functions ``get_config(smoke=False)`` returning a
:class:`TrainConfig`; the CLI applies ``key=value`` overrides with :func:`apply_overrides`. A config is
stored inside every checkpoint as JSON (:meth:`TrainConfig.to_json`), so checkpoints describe themselves.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    # --- what is trained --------------------------------------------------------------------------
    stage: str = field(default="train", metadata={"help": "name of the stage; checkpoints go to <run>/checkpoints/<stage>"})
    preset: str = field(default="tiny", metadata={"help": "build_pixelllm preset: tiny | small | paper"})
    smoke: bool = field(default=False, metadata={"help": "SMOKE run: tiny data, a few steps, artifacts under runs/smoke"})
    model_overrides: dict = field(default_factory=dict, metadata={"help": "extra keyword arguments for build_pixelllm"})
    init_from: str = field(default="", metadata={"help": "checkpoint file or folder (latest) whose trainable weights initialise the model"})
    # --- data ---------------------------------------------------------------------------------------
    run_dir: str = field(default="", metadata={"help": "run folder (default pixelllm.utils.run_dir(smoke))"})
    data_dir: str = field(default="", metadata={"help": "synthetic world folder (default <run>/data)"})
    ln_file: str = field(default="localized_narratives/synthetic_{split}_localized_narratives.jsonl",
                         metadata={"help": "LN JSONL per split, relative to data_dir (real: e.g. coco_{split}_localized_narratives.jsonl)"})
    captions_file: str = field(default="captions/captions_{split}.json",
                               metadata={"help": "COCO-captions JSON per split, relative to data_dir (real: annotations/captions_{split}2017.json)"})
    image_dir: str = field(default="images", metadata={"help": "image folder relative to data_dir; files {image_id:012d}.jpg (COCO naming)"})
    tokenizer_dir: str = field(default="", metadata={"help": "tokenizer folder (default <run>/tokenizer)"})
    sam_checkpoint: str = field(default="", metadata={"help": "SAM-format state_dict (default <run>/sam_tiny/sam_tiny.pth when it exists)"})
    t5_dir: str = field(default="", metadata={"help": "T5 save_pretrained folder (default <run>/t5_tiny when it exists)"})
    out_dir: str = field(default="", metadata={"help": "checkpoints + metrics.jsonl (default <run>/checkpoints/<stage>)"})
    tasks: dict = field(default_factory=lambda: {"caption": 1.0},
                        metadata={"help": "training mixture {task: weight}; task in caption | trace | refer | region_caption"})
    prompts: dict = field(default_factory=lambda: {"caption": "A short image caption:"},
                          metadata={"help": "text prompt per task (the LM's encoder context)"})
    image_size: int = field(default=0, metadata={"help": "S: images resized (longest side) and padded to S×S; 0 = the preset's"})
    max_target_len: int = field(default=64, metadata={"help": "target tokens per sample (EOS included), longer ones are cut"})
    ln_alignment: str = field(default="official", metadata={"help": "LN token ↔ utterance alignment: official (utterances spread over the tokens kept after max_target_len; narratives without a valid utterance kept, every token → utterance 0) | full_caption (align the whole caption, then cut; such narratives dropped) | span (each token → the utterance its characters come from; not in the paper); PAPER_NOTES.md §2.7"})
    max_samples: int = field(default=0, metadata={"help": "use only the first N training samples per task (0 = all)"})
    augment: bool = field(default=False, metadata={"help": "random augmentation (disables the frozen-feature cache)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers"})
    # --- optimisation ------------------------------------------------------------------------------
    batch_size: int = field(default=32, metadata={"help": "GLOBAL micro-batch (all ranks together); per rank = batch_size / world_size"})
    accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step (effective batch = batch_size × accum_steps)"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    lr_multipliers: dict = field(default_factory=dict, metadata={"help": "{parameter-name prefix: factor} times lr, e.g. {'trace_head.': 5.0} for a newly initialised head"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "cosine floor as a fraction of lr"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (official trace config: 0)"})
    betas: tuple = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm (0 = no clipping)"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (CPU always runs fp32)"})
    time_limit_s: float = field(default=0.0, metadata={"help": "safety net: stop with a warning after this many seconds of training (0 = never; the recipe of record runs its fixed step count)"})
    # --- loss ---------------------------------------------------------------------------------------
    lambda_point: float = field(default=0.1, metadata={"help": "λ of the L1 point term, pixels of the resized input (paper 0.1)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "ε, spread as ε/(V−1) on wrong tokens (official)"})
    giou_weight: float = field(default=0.0, metadata={"help": "GIoU weight on boxes of box tasks (refer); 0 = L1 only"})
    cell_weight: float = field(default=0.0, metadata={"help": "weight of a cross entropy on a pointer head's attention over the grid, target = the cell holding the target box centre (0 = the paper's L1 only; PAPER_NOTES.md §9)"})
    word_weights: dict = field(default_factory=dict, metadata={"help": "caption CE weight per word {word: w} (every token the tokenizer makes of ' word'; {} = the paper's unweighted CE), e.g. the shape nouns x5"})
    # --- loop ----------------------------------------------------------------------------------------
    seed: int = field(default=0, metadata={"help": "seeds model init, dropout and the data order"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    cache_decoded: bool = field(default=True, metadata={"help": "keep what is decoded per training sample once: the resized image as uint8 (pixelllm.data.datasets.DecodedImages) and the LN token-trace alignment; identical numbers, no JPEG decoding or trace interpolation after the first epoch"})
    num_threads: int = field(default=0, metadata={"help": "torch intra-op threads, set once when the Trainer starts (0 = leave torch's setting)"})
    group_by_length: bool = field(default=False, metadata={"help": "batch samples of similar target length together (transformers' length-grouped indices, batch order then shuffled): less padding in the LM, the same samples per epoch"})
    cache_sam_features: bool = field(default=True, metadata={"help": "cache frozen-SAM features per image id (when frozen and no augmentation)"})
    log_interval: int = field(default=10, metadata={"help": "steps between metrics.jsonl records"})
    eval_interval: int = field(default=0, metadata={"help": "steps between eval-hook calls (0 = only at the end)"})
    ckpt_interval: int = field(default=500, metadata={"help": "steps between checkpoints (the last step is always saved)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept in out_dir"})
    ddp_find_unused: bool = field(default=False, metadata={"help": "DistributedDataParallel(find_unused_parameters=...)"})

    # ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (JSON lists back to tuples); unknown keys are an error."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise KeyError(f"TrainConfig: unknown field(s) {unknown}")
        kw = {k: (tuple(v) if isinstance(names[k].default, tuple) and isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> "TrainConfig":
        return cls.from_dict(json.loads(s))

    def smoke_variant(self, *, batch_size: int = 4, steps: int = 3, warmup_steps: int = 1, max_samples: int = 16,
                      log_interval: int = 1, ckpt_interval: int | None = None, **changes: Any) -> "TrainConfig":
        """A copy sized for a SMOKE run (same code path, seconds of compute): ``smoke=True``, a small batch,
        a few steps on a few samples, a record every step; ``ckpt_interval=None`` keeps the current one.
        ``changes`` sets further fields the same way (e.g. a subclass's evaluation sizes)."""
        if ckpt_interval is not None:
            changes["ckpt_interval"] = ckpt_interval
        return dataclasses.replace(self, smoke=True, batch_size=batch_size, steps=steps, warmup_steps=warmup_steps,
                                   max_samples=max_samples, log_interval=log_interval, **changes)

    def problems(self) -> list[str]:
        """Every out-of-range field as ``"name=value: what is allowed"`` ([] when the config is valid)."""
        out: list[str] = []

        def need(name: str, ok: bool, rule: str) -> None:
            if not ok:
                out.append(f"{name}={getattr(self, name)!r}: {rule}")

        def finite(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        for name in ("steps", "batch_size", "accum_steps", "log_interval", "max_target_len"):
            need(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1, "must be an integer >= 1")
        for name in ("max_samples", "warmup_steps", "eval_interval", "ckpt_interval", "keep_last", "num_workers",
                     "num_threads", "image_size"):
            need(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                 "must be an integer >= 0" + (" (0 = all)" if name == "max_samples" else ""))
        need("lr", finite(self.lr) and self.lr > 0, "must be a finite number > 0")
        for name in ("weight_decay", "grad_clip", "lambda_point", "giou_weight", "cell_weight", "time_limit_s"):
            need(name, finite(getattr(self, name)) and getattr(self, name) >= 0, "must be a finite number >= 0")
        need("min_lr_ratio", finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]")
        need("label_smoothing", finite(self.label_smoothing) and 0 <= self.label_smoothing < 1, "must be in [0, 1)")
        need("betas", len(self.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in self.betas),
             "must be two numbers in [0, 1)")
        weights = self.tasks if isinstance(self.tasks, dict) else {}
        need("tasks", isinstance(self.tasks, dict) and all(finite(w) and w >= 0 for w in weights.values())
             and (not weights or sum(weights.values()) > 0), "must map task names to finite weights >= 0, not all 0")
        ww = self.word_weights if isinstance(self.word_weights, dict) else {None: None}
        need("word_weights", all(isinstance(k, str) and k.strip() and finite(w) and w >= 0 for k, w in ww.items()),
             "must map words to finite weights >= 0")
        mults = self.lr_multipliers if isinstance(self.lr_multipliers, dict) else {None: None}
        need("lr_multipliers", all(finite(f) and f > 0 for f in mults.values()), "factors must be finite numbers > 0")
        return out

    def validate(self) -> "TrainConfig":
        """Raise one ``ValueError`` listing every out-of-range field (:meth:`problems`); else return self.
        The Trainer calls it when it starts and the command line before anything runs."""
        bad = self.problems()
        if bad:
            raise ValueError(f"invalid config {self.stage!r}: " + "; ".join(bad))
        return self

    def help(self) -> str:
        """One line per field: name, current value, help text."""
        return "\n".join(f"{f.name:20s} = {getattr(self, f.name)!r:32s} {f.metadata.get('help', '')}"
                         for f in dataclasses.fields(self))


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parse the right-hand side of ``key=value`` to the type of the field's current value."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"override {key}={text!r}: expected a boolean")
    if isinstance(current, str):
        return text
    if isinstance(current, float):
        try:
            return float(text)            # also "inf" / "nan", which TrainConfig.validate then names
        except ValueError:
            pass
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"override {key}={text!r}: not a Python literal of type {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(current):
        raise ValueError(f"override {key}={text!r}: expected {type(current).__name__}, got {type(value).__name__}")
    return value


def apply_overrides(cfg, overrides: list[str] | dict):
    """Return a copy of ``cfg`` with ``["lr=3e-4", "tasks={'trace': 2, 'caption': 1}"]`` (or a dict) applied.
    Values are parsed as Python literals and type-checked against the field; unknown keys raise."""
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for o in overrides:
            if "=" not in o:
                raise ValueError(f"override {o!r}: expected key=value")
            k, v = o.split("=", 1)
            items.append((k.strip(), v))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for k, v in items:
        if k not in names:
            raise KeyError(f"unknown config key {k!r}; known: {', '.join(sorted(names))}")
        changes[k] = _parse_value(v, getattr(cfg, k), k) if isinstance(v, str) else v
    return dataclasses.replace(cfg, **changes)
