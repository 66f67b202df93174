"""Ablations (notebook 08): train and evaluate one arm, cache its result, aggregate seeds, check trends.

An *arm* (:mod:`pixelllm.configs.ablations`) is a short stage-2 run on Localized Narratives from the
shared stage-1 checkpoint (``<run>/checkpoints/pretrain``) that differs from the baseline in one field:

=================  ===============================================================================
table              arms (rows)
=================  ===============================================================================
loc_supervision    none (caption-only stage 2) · box (one box per narrative) · dense (per word, paper)
lm                 {tiny, large} T5 × {frozen, lora, full}
encoder            sam_only · semantic_only · both
point_target       center · box (utterance-box corners, release)
=================  ===============================================================================

Pipeline of one arm and seed (:func:`run_arm`), one module per step:

1. :mod:`.arms` — the stage-1 checkpoint of record (notebook 03's config) and, for the Table 5 arms, the
   larger T5 (the ``t5_tiny`` config's fixed steps), found or made; the model from the engine's
   ``build_model`` (seeded), then every stage-1 weight whose name and shape fit (``load_matching``); the
   image encoder frozen, so the Trainer caches ``PixelLLM.frozen_image_features`` — the full feature
   grid — per image and **every arm** of the process with the same frozen encoder shares that cache;
2. :mod:`.supervision` — stage 2 trains on LN train narratives whose point targets are dense / box / none;
3. :mod:`.evaluation` — identical for every arm: teacher-forced test CE and ``point_l1`` (PAPER_NOTES.md
   §2.6), free-running LN captions scored with METEOR / CIDEr-D; for Table 4 arms two downstream fine-tunes
   from the stage-2 weights through the task modules — referring localization (P@0.5, IoU > 0.5, original
   pixels) and location-conditioned captioning (METEOR / CIDEr-D);
4. :mod:`.runner` — results cached as ``<run>/ablations/<arm>/<seed>.json`` (:func:`arm_result`: found with
   the same config → load, else run), every arm and seed (:func:`run_ablations`);
5. :mod:`.report` — seeds aggregated (mean ± sample std) per table, ``trend_reproduced`` flags against the
   paper's findings (PAPER_NOTES.md §5), text tables and bar charts.
"""
from __future__ import annotations

from pixelllm.tasks.ablations.arms import (arm_paths, arm_trainer, build_arm_model, ensure_large_t5, ensure_stage1,
                                           feature_store_key, shared_feature_store, use_feature_store)
from pixelllm.tasks.ablations.evaluation import (downstream_config, downstream_loc_caption, downstream_referring,
                                                 evaluate_stage2, stage2_model)
from pixelllm.tasks.ablations.report import (LOWER_IS_BETTER, TABLE_METRICS, aggregate, build_report, figure_table,
                                             format_table, trend_flags)
from pixelllm.tasks.ablations.runner import arm_result, jsonable, result_path, run_ablations, run_arm
from pixelllm.tasks.ablations.supervision import SupervisionView, narrative_box_targets

__all__ = ["LOWER_IS_BETTER", "TABLE_METRICS", "SupervisionView", "aggregate", "arm_paths", "arm_result",
           "arm_trainer", "build_arm_model", "build_report", "downstream_config", "downstream_loc_caption",
           "downstream_referring", "ensure_large_t5", "ensure_stage1", "evaluate_stage2", "feature_store_key",
           "figure_table", "format_table", "jsonable", "narrative_box_targets", "result_path", "run_ablations",
           "run_arm", "shared_feature_store", "stage2_model", "trend_flags", "use_feature_store"]
