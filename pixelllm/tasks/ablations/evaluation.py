"""Evaluation of an ablation arm, identical for every arm.

* :func:`evaluate_stage2` — teacher-forced test CE and ``point_l1`` (normalised L1 to the closest
  ground-truth trace sample, PAPER_NOTES.md §2.6) on LN test narratives; free-running LN captions scored
  with METEOR / CIDEr-D;
* the two downstream fine-tunes of the Table 4 arms, from the stage-2 weights, through the task modules:
  referring localization (:func:`downstream_referring`: notebook 05's ``refcoco`` config, P@0.5 with
  IoU > 0.5 in original pixels) and location-conditioned captioning (:func:`downstream_loc_caption`:
  notebook 06's ``loc_caption`` config on VG, METEOR / CIDEr-D). Both keep the image encoder frozen, as in
  stage 2, so the Trainer caches its full grid (in the arm's shared store), and write nothing.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from pixelllm.configs.ablations import AblationConfig
from pixelllm.tasks.ablations.arms import use_feature_store


def evaluate_stage2(model: nn.Module, cfg: AblationConfig, paths, tokenizer, meteor=None) -> dict:
    """Arm-independent stage-2 metrics on the LN **test** split: ``test_ce`` and ``point_l1`` / ``centre_l1``
    (teacher forced, first ``cfg.eval_samples`` narratives) and ``METEOR`` / ``CIDEr-D`` of free-running
    captions of the first ``cfg.caption_images`` test images (references: that image's narratives).
    CIDEr-D's IDF comes from this small synthetic set: compare arms with each other, not with the paper."""
    from torch.utils.data import Subset

    from pixelllm.engine.datasets import task_dataset
    from pixelllm.engine.evaluate import generate_captions, teacher_forced_eval
    from pixelllm.eval.caption import caption_metrics

    test = task_dataset("trace", "test", cfg, paths, tokenizer, model.image_size, return_trace_samples=True,
                        point_target=cfg.point_target)
    tf = teacher_forced_eval(model, Subset(test, range(min(cfg.eval_samples, len(test)))), batch_size=32, cfg=cfg)
    out = {"test_ce": tf["ce"], "point_l1": tf.get("point_l1", float("nan")),
           "centre_l1": tf.get("centre_l1", float("nan"))}
    gen = generate_captions(model, test, tokenizer, prompt=cfg.prompts["trace"], limit=cfg.caption_images,
                            max_new_tokens=cfg.max_new_tokens, progress=False)
    refs: dict[str, list[str]] = {}
    for n in test.narratives:
        refs.setdefault(str(n.image_id), []).append(n.caption)
    cm = caption_metrics({g["image_id"]: g["text"] for g in gen}, refs, metrics=("METEOR", "CIDEr-D"), meteor=meteor)
    out.update({"METEOR": cm["METEOR"], "CIDEr-D": cm["CIDEr-D"], "caption_example": gen[0]["text"] if gen else ""})
    return out


def downstream_config(name: str, cfg: AblationConfig, steps: int, **changes):
    """The config of record ``name`` (``refcoco`` | ``loc_caption``) in the arm's SMOKE mode and run folder,
    shortened for a downstream fine-tune of the arm: ``steps`` steps (warm-up a tenth), the arm's
    ``downstream_batch``, seed and ``max_samples``, a log record every fifth of the run, no intermediate
    checkpoint; ``changes`` on top."""
    from pixelllm.configs import get_config

    return get_config(name, smoke=cfg.smoke, overrides={
        "steps": steps, "batch_size": cfg.downstream_batch, "seed": cfg.seed, "warmup_steps": max(1, steps // 10),
        "max_samples": cfg.max_samples, "run_dir": cfg.run_dir, "data_dir": cfg.data_dir,
        "tokenizer_dir": cfg.tokenizer_dir, "ckpt_interval": 0, "log_interval": max(1, steps // 5), **changes})


def stage2_model(dcfg, state: Mapping[str, torch.Tensor], paths, tokenizer) -> nn.Module:
    """The PixelLLM of downstream config ``dcfg`` (``build_model``, no ``init_from``), the stage-2 weights
    ``state`` that fit loaded over it (``load_matching``)."""
    from pixelllm.engine.builder import build_model, load_matching

    model = build_model(dcfg, paths, tokenizer, init=False)
    load_matching(model, state)
    return model


def downstream_referring_config(cfg: AblationConfig):
    """The referring config of an arm: notebook 05's (head, frozen encoder, loss) with the arm's
    ``model_overrides`` on top, shortened by :func:`downstream_config`. The box is read from the decoder state
    the arm's own stage 2 reads points from — the paper's emitting state unless the arm names another — not
    the record's, whose stage 2 reads the next state (PAPER_NOTES.md §9)."""
    from pixelllm.configs.refcoco import get_config as refcoco_config

    overrides = {**refcoco_config(cfg.smoke).model_overrides, "point_state": "emit", **cfg.model_overrides}
    return downstream_config("refcoco", cfg, cfg.refer_steps, model_overrides=overrides, eval_samples=0)


def downstream_referring(state: Mapping[str, torch.Tensor], cfg: AblationConfig, paths, tokenizer,
                         store: dict | None = None, progress: bool = False) -> dict:
    """Referring localization from the stage-2 weights ``state``: notebook 05's config (centre-size box at
    EOS, L1 + GIoU) fine-tuned ``cfg.refer_steps`` steps by ``referring_trainer`` (image encoder frozen, as
    in stage 2), then P@0.5 on the first ``cfg.refer_eval`` val expressions."""
    from pixelllm.tasks.referring import evaluate_referring, referring_trainer, refexp_datasets

    rcfg = downstream_referring_config(cfg)
    model = stage2_model(rcfg, state, paths, tokenizer)
    model.image_encoder.requires_grad_(False)
    use_feature_store(referring_trainer(rcfg, model, tokenizer, progress=progress, write=False), store).fit()
    val = refexp_datasets(paths.data, tokenizer, model.image_size, ("val",), prompt=rcfg.prompts["refer"],
                          max_target_len=rcfg.max_target_len, max_samples={"val": cfg.refer_eval})["val"]
    res = evaluate_referring(model, {"val": val}, progress=False)
    return {"refer_P@0.5": res["val"]["P@0.5"], "refer_n": res["val"]["n"]}


def downstream_loc_caption(state: Mapping[str, torch.Tensor], cfg: AblationConfig, paths, tokenizer,
                           store: dict | None = None, meteor=None, progress: bool = False) -> dict:
    """Location-conditioned captioning from the stage-2 weights ``state``: notebook 06's config on VG
    regions (image encoder frozen, caption CE only) fine-tuned ``cfg.loccap_steps`` steps by
    ``loc_caption_trainer``, then METEOR / CIDEr-D of the first ``cfg.loccap_eval`` VG test regions."""
    from pixelllm.tasks import region_caption as rc

    lcfg = downstream_config("loc_caption", cfg, cfg.loccap_steps, model_overrides=dict(cfg.model_overrides),
                             datasets={"vg": 1.0}, train_image_encoder=False)
    model = stage2_model(lcfg, state, paths, tokenizer)
    use_feature_store(rc.loc_caption_trainer(lcfg, model, tokenizer, paths, progress=progress, write=False),
                      store).fit()
    test = rc.eval_datasets(lcfg, paths, tokenizer, model.image_size)
    ev = rc.evaluate_loc_caption(model, test, tokenizer, batch_size=32,
                                 max_new_tokens=lcfg.max_new_tokens, limit=cfg.loccap_eval or None, progress=False,
                                 meteor_fn=meteor)
    m = ev["metrics"]["vg"]
    return {"loc_METEOR": m["METEOR"], "loc_CIDEr-D": m["CIDEr-D"], "loc_n": m.get("num_items")}
