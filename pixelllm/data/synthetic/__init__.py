"""A deterministic synthetic world written in the REAL dataset formats (PAPER_NOTES.md §6).

Each scene is a textured background with 1–6 coloured shapes (vocabulary in :mod:`pixelllm.data.vocab`),
possibly partly occluding each other. For every scene the generator writes (layout of
``docs/ARCHITECTURE.md`` "Synthetic data folder layout")::

    images/{image_id:012d}.jpg                        JPEG q95, RGB, S×S (default 128)
    scenes.json                                       ground-truth scene graph (for tests and eval)
    captions/captions_{split}.json                    COCO captions: 5 short captions per image
    coco/instances_{split}.json                       COCO instances: visible-part RLE masks, bbox xywh
    localized_narratives/synthetic_{split}_localized_narratives.jsonl   official LN schema
    localized_narratives/synthetic_{split}_localized_narratives.pointing.jsonl
                                                      per utterance: annotation id under the pointer or null
    refcoco/refs(unc).p, refcoco/instances.json       refer API format, splits train/val/testA/testB
    vg/region_descriptions.json, vg/image_data.json, vg/densecap_splits.json
    stats.json                                        counts returned by :func:`generate`

Coordinate frames: everything in pixels of the original S×S image (x right, y down, origin top-left),
except Localized Narratives traces which are normalised to [0, 1] by the image size (and may lie
outside it, as in the real data). A pixel (row i, column j) covers [j, j+1)×[i, i+1); its centre is
(j + 0.5, i + 0.5). Boxes are ``[x, y, w, h]`` of the *visible* mask (``pycocotools.mask.toBbox``).

Determinism: scene ``image_id`` draws everything from ``np.random.default_rng([seed, image_id])``, so
the output is byte-identical for a given seed whatever the number of workers or the chunking; all
sequential ids (captions, refs, sentences, VG regions) are assigned after merging, in image-id order.

Learnability by construction: narrative object words are spoken while the simulated mouse hovers over
that object; position phrases are computed from where the object actually is (image thirds); every
referring expression is checked with :func:`resolve_expression` to pick out exactly one object.

Modules, each layered on the ones before it:

    constants   tunable numbers and fixed label sets (oddity rate, trace band, splits, ...)
    scene       scene objects, shape masks, occlusion, sampling and rendering
    language    positions, relations, descriptors, the referring-expression grammar
    text        captions, region phrases, Localized Narratives with mouse traces
    annotate    one image -> all its annotations; the per-chunk worker
    card        the markdown dataset card
    world       split assignment, chunked generation, writing the files, :func:`generate`

Every public name is re-exported here, so ``from pixelllm.data.synthetic import generate`` and
``synthetic.shape_mask(...)`` keep working.
"""
from __future__ import annotations

from pixelllm.data.synthetic.constants import (DEFAULT_ODDITY_RATE, EXPRESSION_CLASSES, MIN_VISIBLE_FRACTION,
                                               N_OBJECTS_P, NEXT_TO_MAX_GAP, RELATION_MIN_OFFSET, SPLITS,
                                               TRACE_BAND)
from pixelllm.data.synthetic.scene import (Scene, SceneObject, bbox_of, render_scene, sample_scene, shape_mask,
                                           visible_masks)
from pixelllm.data.synthetic.language import (Descriptor, ParsedExpression, landmark_names, parse_expression,
                                              position_of, position_phrase, referring_expressions,
                                              relation_holds, resolve_expression)
from pixelllm.data.synthetic.text import captions_for_scene, narrative_for_scene, region_phrases_for_object
from pixelllm.data.synthetic.card import write_dataset_card
from pixelllm.data.synthetic.world import (add_pointing_sidecars, assign_splits, check_split_sizes, clear_world,
                                           generate, prepare_world_dir, split_sizes)

__all__ = [
    # constants
    "DEFAULT_ODDITY_RATE", "EXPRESSION_CLASSES", "MIN_VISIBLE_FRACTION", "N_OBJECTS_P", "NEXT_TO_MAX_GAP",
    "RELATION_MIN_OFFSET", "SPLITS", "TRACE_BAND",
    # scene
    "Scene", "SceneObject", "bbox_of", "render_scene", "sample_scene", "shape_mask", "visible_masks",
    # language
    "Descriptor", "ParsedExpression", "landmark_names", "parse_expression", "position_of", "position_phrase",
    "referring_expressions", "relation_holds", "resolve_expression",
    # text
    "captions_for_scene", "narrative_for_scene", "region_phrases_for_object",
    # card, world
    "write_dataset_card", "add_pointing_sidecars", "assign_splits", "generate", "check_split_sizes", "clear_world",
    "prepare_world_dir", "split_sizes",
]
