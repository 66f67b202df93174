"""PixelLLM's components, one file each, composed by injection (segment-anything ``modeling/`` style).

Light on purpose: nothing heavy is imported until an attribute is used
(``from pixelllm.modeling import build_pixelllm`` imports torch, transformers, timm, segment-anything).
"""
from __future__ import annotations

from pixelllm._lazy import lazy_module_getattr

_LAZY = {
    "build_pixelllm": "pixelllm.modeling.build",
    "PixelLLMConfig": "pixelllm.modeling.build",
    "PRESETS": "pixelllm.modeling.build",
    "parameter_report": "pixelllm.modeling.build",
    "load_pretrained": "pixelllm.modeling.build",
    "build_semantic_encoder": "pixelllm.modeling.build",
    "tiny_t5_config": "pixelllm.modeling.build",
    "PixelLLM": "pixelllm.modeling.pixelllm",
    "PixelLLMOutput": "pixelllm.modeling.pixelllm",
    "ImageEncoder": "pixelllm.modeling.image_encoder",
    "BoxPromptEncoder": "pixelllm.modeling.prompt_encoder",
    "PromptFeatureExtractor": "pixelllm.modeling.prompt_extractor",
    "LanguageModel": "pixelllm.modeling.language_model",
    "load_t5": "pixelllm.modeling.language_model",
    "TraceHead": "pixelllm.modeling.trace_head",
    "SpatialTraceHead": "pixelllm.modeling.trace_head",
    "build_sam": "pixelllm.modeling.sam",
    "ReferringSegmenter": "pixelllm.modeling.referring",
    "build_mask_head": "pixelllm.modeling.referring",
    "referring_forward": "pixelllm.modeling.referring",
    "DenseCaptioner": "pixelllm.modeling.dense_captioner",
    "build_dense_captioner": "pixelllm.modeling.dense_captioner",
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
