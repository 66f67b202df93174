"""The paper preset (SAM ViT-H + EVA02-L @ 384 px + Flan-T5-XL, LoRA r 32) builds on the meta device —
no weights, no memory — with the published component sizes."""
from __future__ import annotations

import pytest
import torch

from pixelllm.modeling.build import PRESETS, build_pixelllm, parameter_report

# Published / reference sizes (parameters)
SAM_VIT_H_ENCODER = 632e6     # SAM ViT-H image encoder (637 M at 1024 px; positional tables shrink at 384)
EVA02_L = 300e6               # EVA02-L (timm eva02_large_patch14_clip_224 at 384 px: 303.8 M)
FLAN_T5_XL = 2.85e9           # google/flan-t5-xl


@pytest.fixture(scope="module")
def paper():
    return build_pixelllm("paper")  # no checkpoints → meta device


def test_builds_on_meta(paper):
    assert all(p.device.type == "meta" for p in paper.parameters())
    assert paper.image_size == 384 and paper.image_encoder.grid_sizes == [24, 27]     # 384/16, 384/14
    assert paper.image_encoder.out_size == 27 and paper.image_encoder.out_channels == 256 + 1024
    t5 = paper.language_model.t5
    assert t5.config.d_model == 2048 and t5.config.num_layers == 24 and t5.config.vocab_size == 32128
    # Flan-T5: untied output embedding, no d_model^-0.5 scaling
    assert t5.lm_head.weight is not t5.shared.weight and not t5.config.scale_decoder_outputs
    assert paper.prompt_extractor.num_queries == 32 and len(paper.prompt_extractor.transformer.layers) == 2


def test_parameter_counts(paper):
    rep = parameter_report(paper)
    for k, v in rep.items():
        print(f"{k:18s} total {v['total'] / 1e6:10.1f} M   trainable {v['trainable'] / 1e6:8.1f} M")
    assert rep["sam_image_encoder"]["total"] == pytest.approx(SAM_VIT_H_ENCODER, rel=0.02)
    assert rep["semantic_encoder"]["total"] == pytest.approx(EVA02_L, rel=0.02)
    assert rep["t5_base"]["total"] == pytest.approx(FLAN_T5_XL, rel=0.02)
    # LoRA r=32 on q and v of the 24+24 self-attentions: 48 layers × 2 × 32 × (2048 + 2048)
    assert rep["lora"]["total"] == 48 * 2 * 32 * (2048 + 2048)
    frac = rep["all"]["trainable"] / rep["all"]["total"]
    print(f"trainable fraction {frac:.3%}")
    # trainable = EVA02-L + extractor + head + LoRA; frozen SAM, prompt encoder and T5 base
    assert rep["all"]["trainable"] == (rep["semantic_encoder"]["total"] + rep["prompt_extractor"]["total"]
                                       + rep["trace_head"]["total"] + rep["lora"]["total"])
    assert 0.05 < frac < 0.12


def test_release_options_on_meta():
    m = build_pixelllm("paper", extractor_depth=6, extractor_dim=512, lora_targets="release", lora_scale=2.0)
    rep = parameter_report(m)
    # + decoder cross-attention q, v: 72 adapted layers × 2
    assert rep["lora"]["total"] == 72 * 2 * 32 * (2048 + 2048)
    assert len(m.prompt_extractor.transformer.layers) == 6


def test_presets_are_registered():
    assert set(PRESETS) == {"tiny", "small", "paper"}
    with torch.device("meta"):
        small = build_pixelllm("small", device="meta")
    assert small.image_size == 256 and small.language_model.d_model == 512
