"""The prompt feature extractor's box-reading options (roi_tokens, box_key_embedding, sam_key_pe)."""
from __future__ import annotations

import pytest
import torch

from pixelllm.modeling.prompt_extractor import PromptFeatureExtractor, box_coverage


def small_extractor(**kw) -> PromptFeatureExtractor:
    torch.manual_seed(0)
    return PromptFeatureExtractor(16, 32, 24, dim=32, depth=1, num_heads=2, mlp_dim=32, num_queries=4, **kw).eval()


def test_box_coverage_is_the_covered_fraction_of_each_cell():
    cov = box_coverage(torch.tensor([[0.0, 0.0, 24.0, 16.0], [64.0, 64.0, 128.0, 128.0]]), (8, 8), (128, 128))
    assert cov.shape == (2, 8, 8)
    assert cov[0, 0, 0] == 1.0 and cov[0, 0, 1] == 0.5 and cov[0].sum() == pytest.approx(1.5)
    assert cov[1, 4:, 4:].min() == 1.0 and cov[1].sum() == pytest.approx(16.0)


def test_roi_tokens_are_appended_and_read_only_the_box():
    e = small_extractor(roi_tokens=2)
    assert e.num_tokens == 8
    grid, prompt = torch.randn(1, 16, 8, 8), torch.randn(1, 2, 32)
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])                    # the top-left 2×2 cells of 128 px
    out = e(grid, prompt, box, (128, 128))
    assert out.shape == (1, 8, 24)
    changed = grid.clone()
    changed[:, :, 4:, 4:] += 5.0                                     # far from the box
    roi_before, roi_after = out[0, 4:], e(changed, prompt, box, (128, 128))[0, 4:]
    assert torch.allclose(roi_before, roi_after, atol=1e-5)          # ROI tokens see only the box's cells
    moved = e(grid, prompt, box + 64.0, (128, 128))[0, 4:]
    assert (moved - roi_before).abs().max() > 1e-2


def test_the_plain_path_is_unchanged_and_the_options_need_boxes():
    plain = small_extractor()
    grid, prompt = torch.randn(2, 16, 8, 8), torch.randn(2, 2, 32)
    assert plain(grid, prompt).shape == (2, 4, 24) and not plain.needs_boxes
    for kw in (dict(roi_tokens=1), dict(box_key_embedding=True), dict(sam_key_pe=True)):
        with pytest.raises(ValueError, match="need"):
            small_extractor(**kw)(grid, prompt)


def test_sam_key_pe_uses_the_given_encoding():
    e = small_extractor(sam_key_pe=True)
    grid, prompt, box = torch.randn(1, 16, 8, 8), torch.randn(1, 2, 32), torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    a = e(grid, prompt, box, (128, 128), torch.zeros(32, 8, 8))
    b = e(grid, prompt, box, (128, 128), torch.randn(32, 8, 8))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="key_pe"):
        e(grid, prompt, box, (128, 128), torch.zeros(32, 4, 4))


def test_pixelllm_passes_the_box_and_the_prompt_encoders_pe():
    from tests.conftest import make_test_model

    m = make_test_model(roi_tokens=2, sam_key_pe=True)
    pe = m.prompt_encoder.dense_pe((8, 8))
    assert pe.shape == (m.prompt_encoder.embed_dim, 8, 8)
    imgs = torch.rand(2, 3, m.image_size, m.image_size)
    with torch.no_grad():
        v, _ = m.visual_tokens(imgs, torch.tensor([[0.0, 0.0, 40.0, 40.0], [60.0, 60.0, 120.0, 120.0]]))
        whole, _ = m.visual_tokens(imgs, None)
    assert v.shape[1] == m.prompt_extractor.num_queries + 4
    assert (v - whole).abs().mean() > 1e-3
