"""PixelLM's SAM-architecture pixel decoder (pixelllm.modeling.pixellm.sam_decoder): loaded from a SAM it
decodes scale 0 exactly as SAM's own mask decoder does with the fused state as the sparse prompt; its attention
maps are distributions over the grid; inside PixelLM the coarsest grid starts as SAM's own embedding."""
from __future__ import annotations

import pytest
import torch

from pixelllm.modeling.pixellm import SamPixelDecoder, build_pixellm
from pixelllm.modeling.sam import build_sam
from tests.conftest import make_test_model


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(3)
    return build_sam("tiny")


def test_loaded_decoder_reproduces_sams_single_mask_output(sam):
    torch.manual_seed(4)
    d = sam.prompt_encoder.embed_dim
    dec = SamPixelDecoder(d, num_scales=2, depth=2, mlp_dim=512, num_heads=4).load_sam(sam.mask_decoder, sam.prompt_encoder)
    g = sam.prompt_encoder.image_embedding_size[0]
    feats, h = torch.randn(1, d, g, g), torch.randn(1, d)
    with torch.no_grad():
        mine, attn = dec.decode_scale(0, h, feats)
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, g, g)
        ref, _ = sam.mask_decoder(image_embeddings=feats, image_pe=sam.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=h[:, None], dense_prompt_embeddings=dense,
                                  multimask_output=False)
    assert mine.shape == (1, 4 * g, 4 * g)
    assert torch.allclose(mine, ref[:, 0], atol=1e-4)
    assert attn.shape == (1, g, g) and torch.allclose(attn.sum((1, 2)), torch.ones(1), atol=1e-5)


def test_multiscale_output_and_shape_errors(sam):
    torch.manual_seed(5)
    dec = SamPixelDecoder(128, num_scales=2, out_size=64)
    h = torch.randn(3, 2, 128)
    out = dec(h, [torch.randn(3, 128, 8, 8), torch.randn(3, 128, 16, 16)])
    assert out.masks.shape == (3, 64, 64)
    assert [m.shape[-1] for m in out.scale_masks] == [32, 64] and [a.shape[-1] for a in out.attention] == [8, 16]
    assert torch.allclose(out.gamma, torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="h must be"):
        dec(torch.randn(3, 2, 64), [torch.randn(3, 128, 8, 8), torch.randn(3, 128, 16, 16)])
    with pytest.raises(ValueError, match="does not fit"):
        SamPixelDecoder(64, num_scales=1).load_sam(sam.mask_decoder, sam.prompt_encoder)


def test_pixellm_with_sam_decoder_loads_the_checkpoint_and_starts_from_sams_embedding(sam, tmp_path):
    llm = make_test_model(semantic_trainable=False)
    d = llm.image_encoder.sam_dim
    m = build_pixellm(llm, "tiny", decoder="sam", dim=d, out_size=64)
    ckpt = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), ckpt)
    m.load_sam_decoder(str(ckpt))
    assert torch.equal(m.decoder.mask_tokens.weight, sam.mask_decoder.mask_tokens.weight)
    images = torch.rand(2, 3, m.image_size, m.image_size)
    feats = m.frozen_image_features(images)
    sources = m.split_features(feats)
    assert torch.allclose(m.projections[0](sources[0]), torch.zeros(()), atol=1e-6)   # zero residual at start
    with pytest.raises(ValueError, match="prompt width"):
        build_pixellm(make_test_model(semantic_trainable=False), "tiny", decoder="sam", dim=d // 2)
    with pytest.raises(ValueError, match="not found"):
        m.load_sam_decoder(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="decoder must be"):
        build_pixellm(llm, "tiny", decoder="big")


def test_box_prompt_adds_two_box_tokens_and_changes_the_masks():
    from pixelllm.modeling.pixellm import PixelLMConfig, SEG_SLOT

    llm = make_test_model(semantic_trainable=False)
    d = llm.image_encoder.sam_dim
    torch.manual_seed(6)
    m = build_pixellm(llm, "tiny", decoder="sam", dim=d, out_size=64, box_prompt=True).eval()
    torch.manual_seed(1)
    batch = {"images": torch.rand(2, 3, 128, 128), "image_sizes": torch.tensor([[128, 128], [96, 128]]),
             "prompt_ids": torch.randint(2, 200, (2, 4)), "prompt_mask": torch.ones(2, 4, dtype=torch.bool),
             "target_ids": torch.tensor([[5, SEG_SLOT, 6, SEG_SLOT, 1], [7, 8, 1, 0, 0]]),
             "target_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool(),
             "masks": torch.rand(2, 2, 128, 128) > 0.6, "mask_valid": torch.tensor([[True, True], [True, False]])}
    seen = []
    hook = m.decoder.transformer.register_forward_hook(lambda _m, args, _o: seen.append(args[2].shape[1]))
    with_box = m.predict(batch).masks
    hook.remove()
    assert seen and all(t == 1 + m.decoder.mask_tokens.num_embeddings + 1 + 2 for t in seen)   # iou, masks, h, box
    m.config.box_prompt = False
    without = m.predict(batch).masks
    m.config.box_prompt = True
    assert with_box.shape == without.shape == (2, 2, 128, 128)
    assert not torch.allclose(with_box, without)
    with pytest.raises(ValueError, match="box_prompt needs"):
        PixelLMConfig(box_prompt=True)
