"""Fine-tuning on your own data: stage 2 (captioning + per-word trace) continued on a folder converted by
``python -m data_prep.convert`` (notebook 11).

    python -m data_prep.convert --src my_folder --out runs/full/own_data/data
    python -m pixelllm.train --config own_data data_dir=runs/full/own_data/data

Initialised from the run's stage-2 checkpoint (``checkpoints/ln_trace``, made first when missing), same
model recipe (pointer head with its context layer and the read state, frozen semantic ViT, span targets),
same loss (label-smoothed CE + λ·L1 on the per-token
points, PAPER_NOTES.md §2); trained on the converted Localized Narratives only (``tasks={'trace': 1.0}``,
prompt "A long image caption:") with half stage 2's peak learning rate (5e-4), a smaller batch (16) and
320 steps. On notebook 11's 112 training images, 240 steps at 3e-4 left a new word half-learnt (a crescent
named "moon", four pieces, came out as "moooo..."); with the ring (two pieces), 240 steps at 5e-4 had it said
on 92 % of the test images with a ring (and on 3 of the 7 without one), 480 steps on the same 92 % (and 4 of
the 7). ``data_dir`` is required; the tokenizer, SAM, T5 and semantic ViT are the run's (a new word is spelt
with the tokenizer's existing pieces).
"""
from __future__ import annotations

from pixelllm.configs.ln_trace import get_config as get_ln_trace_config


def get_config(smoke: bool = False):
    import dataclasses

    base = get_ln_trace_config(smoke=False)
    cfg = dataclasses.replace(
        base,
        stage="own_data",
        init_from="ln_trace",                 # the run's stage-2 checkpoint
        data_dir="",                          # required: the folder data_prep.convert wrote
        ln_file="localized_narratives/own_{split}_localized_narratives.jsonl",   # convert --name own
        tasks={"trace": 1.0},
        prompts={"trace": "A long image caption:"},
        batch_size=16,
        steps=320,
        lr=5e-4,
        warmup_steps=20,
        log_interval=10,
        eval_interval=80,
        ckpt_interval=320,
        keep_last=1,
    )
    if smoke:
        cfg = cfg.smoke_variant(ckpt_interval=3, eval_interval=3)
    return cfg
