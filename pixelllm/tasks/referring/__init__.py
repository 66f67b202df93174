"""Referring localization and referring segmentation with PixelLLM (PAPER_NOTES.md §3, paper Fig. 3/4).

The same model that captions and points at every word does both tasks; nothing about the architecture
changes, only what is read out:

* **Referring localization** (stage ``refcoco``). Location prompt = the whole image (0, 0, w, h); LM
  context = [f_l ; "where is <expr>"]; target = the expression followed by EOS. The decoder state that
  emits EOS, h_EOS = L⁻(f_l, expr), goes through the trace head, and its two points are the box corners::

      b̂ = TraceHead(h_EOS) = (x0, y0, x1, y1)      pixels of the S×S input frame

  Trained with the paper's loss (CE + λ·L1 at the EOS position, λ = 0.1, pixels) plus an optional GIoU
  term; the head's ``center_size`` parametrisation (sigmoid centre + size) is what trained well at CPU
  scale (PAPER_NOTES.md §8), the paper's raw ``corners`` is the other option. Scored by P@0.5 (IoU
  strictly > 0.5) in **original-image pixels**.
* **Referring segmentation** (stage ``refseg``). b̂ (detached) → SAM's frozen prompt encoder → SAM's
  frozen mask decoder on the frozen SAM image embedding, with the release's gated mask adapter letting the
  visual tokens f_l and the decoder states of the expression steer the box tokens; the multimask output
  with the best predicted IoU is kept. Only the adapter trains (focal×20 + dice + IoU regression).
  Scored by cIoU = ΣI/ΣU, gIoU = mean IoU and box P@0.5 of the mask's tight box, per split.

One job per module:

* :mod:`pixelllm.modeling.referring` — the EOS read-out (:func:`referring_forward`) and the
  :class:`ReferringSegmenter` model (it computes its own loss);
* :mod:`.data` — bad-input checks, the RefExp datasets of a config, in-order evaluation batches;
* :mod:`.localization` — box read-out modes, P@0.5 evaluation, prediction for free-form expressions,
  the ``refcoco`` fine-tuning (:func:`finetune_referring`);
* :mod:`.segmentation` — the segmenter of a ``refseg`` config, its training (:func:`train_mask_adapter`),
  loading (:func:`load_refseg`), evaluation and qualitative examples.

Both stages are trained by the engine's ``Trainer`` from their configs of record
(:mod:`pixelllm.configs.refcoco`); a finished ``refcoco`` stage loads with
:func:`pixelllm.engine.builder.load_stage_model`, a ``refseg`` one with :func:`load_refseg`.

Frames: boxes/points are (x0, y0, x1, y1) pixels of the resized, bottom/right zero-padded S×S input
unless a name says ``orig``; metrics are computed in original-image pixels (``boxes_to_original``,
``postprocess_masks``).
"""
from __future__ import annotations

from pixelllm.configs.refcoco import REFER_PROMPT
from pixelllm.modeling.referring import (ReferringOutput, ReferringSegmenter, build_mask_head, clip_boxes_per_image,
                                         eos_positions, referring_forward)
from pixelllm.data.refexp import (BOX_TOLERANCE_PX, EVAL_SPLITS, SPLITS, check_refexp_records, refexp_datasets,
                                  refexp_problem)
from pixelllm.tasks.referring.data import training_datasets
from pixelllm.tasks.referring.localization import (evaluate_referring, finetune_referring, predict_boxes,
                                                   predict_referring, referring_batch, referring_trainer)
from pixelllm.tasks.referring.segmentation import (build_refseg_model, evaluate_refseg, load_refseg,
                                                   qualitative_examples, refseg_trainer, segment_batch,
                                                   train_mask_adapter)

__all__ = ["BOX_TOLERANCE_PX", "EVAL_SPLITS", "REFER_PROMPT", "SPLITS", "ReferringOutput", "ReferringSegmenter",
           "build_mask_head", "build_refseg_model", "check_refexp_records", "clip_boxes_per_image", "eos_positions",
           "evaluate_referring", "evaluate_refseg", "finetune_referring", "load_refseg", "predict_boxes",
           "predict_referring", "qualitative_examples", "referring_batch", "refexp_datasets", "refexp_problem", "referring_forward",
           "referring_trainer", "refseg_trainer", "segment_batch", "train_mask_adapter", "training_datasets"]
