"""Stage 2 — Localized-Narratives captioning + per-word trace localization, trained jointly.

Initialised from stage 1 (``<run>/checkpoints/pretrain``). Loss = label-smoothed CE + λ·L1 on the two
per-token points (λ = 0.1, pixels of the resized input). Prompt "A long image caption:" as the official
trace config; like the release, short COCO-style captions can be mixed in (captions : LN = 1 : 2) —
set ``tasks={'trace': 1.0}`` for the paper's LN-only stage.

Maximum target length 128 (EOS included), the release's ``max_text_tokens`` of the trace configs
(``configs/t5/pixel_llm_t5_trace.py``). With the official alignment (``ln_alignment="official"``) a
narrative longer than the limit has all its utterances spread over the kept tokens, so a short limit
misplaces targets rather than dropping them. On the synthetic LN train split (1,600 captions, this
repo's tokenizer) captions have 9–87 tokens (median 42, 95th percentile 72): a limit of 64 would cut
14.4 % of them and move 78 % of their kept tokens to another utterance (1.9 utterances, 0.094 box-corner
L1 on average); 128 cuts none, at ~21 % more padded target tokens per batch (PAPER_NOTES.md §2.7).

Tiny-preset grounding recipe (deviations from the paper, chosen in the grounding lab,
``docs/GROUNDING_LAB.md``; PAPER_NOTES.md §9):

* ``head="pointer"``: the per-word location is read by a pointer head (the decoder state attends over the
  patch grid: centre = soft-argmax + a sub-cell offset, size = a small MLP) instead of the paper's MLP on
  the state alone. The paper's head is ``model_overrides={'head': 'mlp'}``.
* ``semantic_trainable=False``: the stage-1 semantic ViT stays frozen, so the whole image feature grid is
  computed once per image and cached (the paper keeps EVA02 trainable). Per step this learned as well as
  a trainable ViT in the lab and costs a fraction of it, so the same CPU time buys twice the steps.
* ``lr_multipliers={"trace_head.": 5.0}``: the newly initialised head learns at 5x the rate of the
  pretrained parts (lab rows ``pointer_head_lr5`` / ``sem_long_lr5``: pointing accuracy 0.31 -> 0.37 and
  referring P@0.5 0.28 -> 0.37 at the same budget).

The semantic ViT under it is pretrained 2,400 steps (``get_semantic_config``): its per-patch shape accuracy
rises from 0.48 (800 steps) to 0.81, and with it referring P@0.5 (lab row ``sem_long``).

Three pointing levers on top, adopted together (lab row ``sem_long_lr5_context_span_read``: teacher-forced
pointing accuracy 0.39 -> 0.61 on val at the lab's 300 steps, 2 seeds; PAPER_NOTES.md §2.4, §9):

* ``ln_alignment="span"``: each token's target is the trace of the utterance its characters were spoken in,
  not the utterance at the same relative position (the paper's rule, which gives 18 % of on-object words
  another object's trace on this data). Narratives whose utterances are not found in the caption fall back
  to relative position, counted in the dataset's report.
* ``point_state="read"``: word i's point is read from the decoder state that has read w_i, not the one that
  predicts it; the logits are unchanged.
* ``pointer_context=1``: one causal self-attention layer over the decoder states inside the pointer head, so
  "in" in "a red star in the corner" can take its object from the states of "red star".

The test metrics of notebook 04 are computed against the paper's targets (``ln_alignment="official"``)
whatever this stage trains on.
"""
from __future__ import annotations

from pixelllm.configs.base import TrainConfig


def get_config(smoke: bool = False) -> TrainConfig:
    cfg = TrainConfig(
        stage="ln_trace",
        preset="tiny",
        smoke=smoke,
        init_from="pretrain",   # a stage name under <run>/checkpoints, or a checkpoint path
        model_overrides={"head": "pointer", "semantic_trainable": False,   # tiny-preset recipe (docstring)
                         "pointer_context": 1, "point_state": "read"},
        ln_alignment="span",    # each token's target from the utterance it was spoken in (docstring)
        tasks={"trace": 2.0, "caption": 1.0},
        prompts={"trace": "A long image caption:", "caption": "A short image caption:"},
        image_size=0,           # 0 = the preset's input size
        max_target_len=128,     # the release's max_text_tokens; no synthetic narrative is cut (module docstring)
        batch_size=32,
        steps=1200,
        lr=1e-3,
        lr_multipliers={"trace_head.": 5.0},   # the new head learns at 5x (docstring)
        warmup_steps=100,
        weight_decay=0.0,
        grad_clip=1.0,
        lambda_point=0.1,
        label_smoothing=0.1,
        log_interval=10,
        eval_interval=300,      # teacher-forced val point_l1 four times during the run
        ckpt_interval=400,
        keep_last=2,
    )
    if smoke:
        cfg = cfg.smoke_variant(ckpt_interval=2, eval_interval=1)
    return cfg
