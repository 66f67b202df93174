"""PixelLLM components: parity with segment-anything / transformers / peft, hand-computed heads,
coordinate frames, the default whole-image box and where gradients flow."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pixelllm.modeling.build import build_pixelllm, parameter_report
from pixelllm.modeling.image_encoder import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageEncoder, normalize_images
from pixelllm.modeling.language_model import LanguageModel
from pixelllm.modeling.prompt_encoder import BoxPromptEncoder
from pixelllm.modeling.sam import build_sam
from pixelllm.modeling.trace_head import PointerHead, SpatialTraceHead, TraceHead, grid_centres
from conftest import make_test_model

# Small widths everywhere (big_vision `_make_test_model(**overrides)` style); tiny SAM as is.


def make_model(**overrides):
    return make_test_model(**{"vocab_size": 300, **overrides})


def make_batch(b=2, s=128, p=5, t=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, s, s, generator=g)
    prompt_ids = torch.randint(3, 300, (b, p), generator=g)
    prompt_ids[:, -1] = 1
    target_ids = torch.randint(3, 300, (b, t), generator=g)
    target_ids[:, -1] = 1
    return images, prompt_ids, target_ids


@pytest.fixture(scope="module")
def model():
    return make_model()


# --- image encoder ---------------------------------------------------------------------------------------
def test_normalisation_hand_computed():
    img = torch.full((1, 3, 4, 4), 0.5)
    sizes = torch.tensor([[2, 3]])                                   # h=2, w=3 valid, rest padding
    x = normalize_images(img, IMAGENET_MEAN, IMAGENET_STD, sizes)
    expect = (0.5 - 123.675 / 255) / (58.395 / 255)                  # red channel
    assert x[0, 0, 0, 0].item() == pytest.approx(expect, rel=1e-6)
    assert x[0, :, :2, :3].ne(0).all() and x[0, :, 2:, :].eq(0).all() and x[0, :, :, 3:].eq(0).all()
    y = normalize_images(img, CLIP_MEAN, CLIP_STD)
    assert y[0, 2, 3, 3].item() == pytest.approx((0.5 - 0.40821073) / 0.27577711, rel=1e-6)


def test_sam_wrapper_equals_segment_anything():
    """Our frozen SAM branch == segment_anything's Sam.preprocess (normalise, pad) + ImageEncoderViT."""
    torch.manual_seed(0)
    sam = build_sam("tiny")
    enc = ImageEncoder(sam.image_encoder, None, mode="sam_only")
    images = torch.zeros(2, 3, 128, 128)
    content = torch.rand(2, 3, 96, 128)                              # a 4:3 image resized to 128×96, padded
    images[:, :, :96] = content
    sizes = torch.tensor([[96, 128], [96, 128]])
    ours = enc.frozen_sam_features(images, sizes)
    with torch.no_grad():
        ref = sam.image_encoder(sam.preprocess(content * 255.0))     # Sam.preprocess pads after normalising
    assert ours.shape == (2, 128, 8, 8)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in enc.sam_encoder.parameters())
    enc.train()
    assert not enc.sam_encoder.training                              # frozen branch stays in eval mode


def test_grids_resized_bicubic_and_concatenated():
    from timm.models.eva import Eva

    torch.manual_seed(0)
    sam = build_sam("tiny")
    sem = Eva(img_size=128, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)  # 16×16 grid
    enc = ImageEncoder(sam.image_encoder, sem)
    assert enc.grid_sizes == [8, 16] and enc.out_size == 16 and enc.out_channels == 128 + 32
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = enc(images)
        sam_f = enc.frozen_sam_features(images)
        sem_f = enc.semantic_features(images)
    torch.testing.assert_close(out[:, :128], F.interpolate(sam_f, size=(16, 16), mode="bicubic", align_corners=False))
    torch.testing.assert_close(out[:, 128:], sem_f)
    # cached SAM features give the same grid
    torch.testing.assert_close(enc(images, sam_features=sam_f), out)


@pytest.mark.parametrize("mode,channels", [("sam_only", 128), ("semantic_only", 64), ("both", 192)])
def test_encoder_modes(mode, channels):
    m = make_model(encoder_mode=mode)
    assert m.image_encoder.out_channels == channels
    images, prompt_ids, target_ids = make_batch()
    out = m(images, None, prompt_ids, None, target_ids)
    assert out.logits.shape == (2, 7, 300)


# --- prompt encoder ----------------------------------------------------------------------------------------
def test_whole_image_default_box(model):
    pe = model.prompt_encoder
    assert isinstance(pe, BoxPromptEncoder)
    whole = pe(torch.tensor([[0.0, 0.0, 128.0, 128.0]] * 2))
    torch.testing.assert_close(pe(None, batch_size=2), whole)
    sizes = torch.tensor([[96, 128], [128, 64]])                      # (h, w) after resize
    explicit = pe(torch.tensor([[0.0, 0.0, 128.0, 96.0], [0.0, 0.0, 64.0, 128.0]]))
    torch.testing.assert_close(pe(None, batch_size=2, image_sizes=sizes), explicit)
    # same as SAM's own prompt encoder on the same box
    ref, _ = pe.sam_prompt_encoder(points=None, boxes=torch.tensor([[10.0, 20.0, 50.0, 90.0]]), masks=None)
    torch.testing.assert_close(pe(torch.tensor([[10.0, 20.0, 50.0, 90.0]])), ref)
    assert whole.shape == (2, 2, pe.embed_dim)


def test_model_default_box_is_whole_image(model):
    images, prompt_ids, target_ids = make_batch()
    with torch.no_grad():
        a = model(images, None, prompt_ids, None, target_ids)
        b = model(images, torch.tensor([[0.0, 0.0, 128.0, 128.0]] * 2), prompt_ids, None, target_ids)
        c = model(images, torch.tensor([[10.0, 10.0, 40.0, 40.0]] * 2), prompt_ids, None, target_ids)
    torch.testing.assert_close(a.logits, b.logits)
    assert not torch.allclose(a.logits, c.logits)                      # the box prompt matters


# --- language model ------------------------------------------------------------------------------------------
def _tiny_t5(**kw):
    from transformers import T5ForConditionalGeneration

    from pixelllm.pretrain.t5 import tiny_t5_config

    torch.manual_seed(0)
    return T5ForConditionalGeneration(tiny_t5_config(300, d_model=64, d_kv=16, num_heads=4, d_ff=128, **kw)).eval()


@pytest.mark.parametrize("targets,n_adapted", [("paper", 8), ("release", 12)])
def test_fresh_lora_equals_base(targets, n_adapted):
    base = _tiny_t5()
    ref = copy.deepcopy(base)
    lm = LanguageModel(base, mode="lora", lora_rank=4, lora_scale=2.0, lora_targets=targets).eval()
    # paper: q, v of 2 enc + 2 dec self-attentions; release adds the 2 decoder cross-attentions
    assert sum(1 for n, _ in lm.named_modules() if n.endswith((".q", ".v")) and hasattr(_, "lora_A")) == n_adapted
    emb = torch.randn(2, 6, 64)
    mask = torch.ones(2, 6, dtype=torch.long)
    dec = torch.randint(0, 300, (2, 5))
    logits, hidden = lm(emb, mask, dec)
    with torch.no_grad():
        out = ref(inputs_embeds=emb, attention_mask=mask, decoder_input_ids=dec, output_hidden_states=True)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, out.decoder_hidden_states[-1], atol=1e-5, rtol=1e-5)
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(torch.count_nonzero(p) == 0 for n, p in lm.named_parameters() if "lora_B" in n)  # B zero-init


@pytest.mark.parametrize("tie", [True, False])
def test_logits_scaling_follows_hf(tie):
    """PAPER_NOTES.md §8: d_model^-0.5 before lm_head exactly when HF applies it; hidden = state before it."""
    base = _tiny_t5(tie_word_embeddings=tie)
    assert base.config.scale_decoder_outputs is tie
    lm = LanguageModel(base, mode="frozen")
    emb = torch.randn(1, 4, 64)
    mask = torch.ones(1, 4, dtype=torch.long)
    dec = torch.randint(0, 300, (1, 3))
    logits, hidden = lm(emb, mask, dec)
    ref = base(inputs_embeds=emb, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    scale = 64 ** -0.5 if tie else 1.0
    torch.testing.assert_close(logits, base.lm_head(hidden * scale), atol=1e-5, rtol=1e-5)


# --- trace heads ---------------------------------------------------------------------------------------------
def _constant_head(bias, parametrization):
    head = TraceHead(8, 8, num_layers=2, parametrization=parametrization)
    last = head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))
    return head


def test_trace_head_corners_hand_computed():
    head = _constant_head([-1.0, 0.0, 1.0, 0.5], "corners")
    pts = head(torch.randn(2, 3, 8), frame_hw=(100, 200))              # h=100, w=200
    # x = (out+1)/2·w, y = (out+1)/2·h
    torch.testing.assert_close(pts, torch.tensor([0.0, 50.0, 200.0, 75.0]).expand(2, 3, 4))


def test_trace_head_center_size_hand_computed():
    head = _constant_head([0.0, 0.0, 0.0, 0.0], "center_size")
    pts = head(torch.randn(1, 2, 8), frame_hw=(100, 200))
    # sigmoid(0)=0.5: centre (100, 50), size (100, 50) → (50, 25, 150, 75)
    torch.testing.assert_close(pts, torch.tensor([50.0, 25.0, 150.0, 75.0]).expand(1, 2, 4))


def test_spatial_head_uniform_attention_is_frame_centre():
    head = SpatialTraceHead(8, 6, attn_dim=4)
    with torch.no_grad():
        head.query.weight.zero_()
        head.query.bias.zero_()
    pts = head(torch.randn(2, 3, 8), (128, 64), image_features=torch.randn(2, 6, 4, 4))
    torch.testing.assert_close(pts, torch.tensor([32.0, 64.0, 32.0, 64.0]).expand(2, 3, 4))
    # peaked attention on patch (row 1, col 2) of a 4×4 grid over 128×64 → centre x=(2.5)·16, y=(1.5)·32
    feats = torch.zeros(1, 6, 4, 4)
    feats[0, 0, 1, 2] = 50.0                                          # LayerNorm-ed key stands out
    with torch.no_grad():
        head.key[1].weight.copy_(torch.eye(4, 6) * 10)
        head.key[1].bias.zero_()
        head.query.bias.copy_(torch.ones(8) * 10)
    pts = head(torch.zeros(1, 1, 8), (128, 64), image_features=feats)
    assert pts[0, 0, :2].tolist() == pytest.approx([40.0, 48.0], abs=0.5)


def test_grid_centres_row_major_pixels():
    c = grid_centres((2, 4), (128, 64), torch.zeros(()))            # 2 rows × 4 cols over h=128, w=64
    assert c.tolist() == [[8.0, 32.0], [24.0, 32.0], [40.0, 32.0], [56.0, 32.0],
                          [8.0, 96.0], [24.0, 96.0], [40.0, 96.0], [56.0, 96.0]]


def _peaked_pointer(dim=4, cells=(4, 4)):
    """A PointerHead whose attention picks the cell whose feature is e_0 (identity projections, no position
    code, τ tiny) and whose refinement is zero: offset 0, size = half the frame."""
    head = PointerHead(dim, dim, attn_dim=dim, hidden_dim=8, num_freqs=2)
    with torch.no_grad():
        for lin in (head.query, head.key, head.value):
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
        head.pos.weight.zero_()
        head.pos.bias.zero_()
        head.log_temperature.fill_(5.0)
        head.refine[-1].weight.zero_()
        head.refine[-1].bias.zero_()
    return head


def test_pointer_head_points_at_the_matching_cell():
    head = _peaked_pointer()
    feats = torch.zeros(1, 4, 4, 4)
    feats[0, 0, 1, 2] = 10.0                                          # row 1, col 2 carries e_0
    hidden = torch.tensor([[[10.0, 0.0, 0.0, 0.0]]])
    pts = head(hidden, (128, 64), image_features=feats)              # cells 16 px wide, 32 px high
    # centre (2.5·16, 1.5·32) = (40, 48); size sigmoid(0)·(w, h) = (32, 64)
    torch.testing.assert_close(pts[0, 0], torch.tensor([24.0, 16.0, 56.0, 80.0]), atol=1e-3, rtol=0)


def test_pointer_head_offset_stays_inside_the_cell():
    head = _peaked_pointer()
    with torch.no_grad():
        head.refine[-1].bias.copy_(torch.tensor([100.0, -100.0, 0.0, 0.0]))   # tanh → ±1: half a cell
    feats = torch.zeros(1, 4, 4, 4)
    feats[0, 0, 1, 2] = 10.0
    pts = head(torch.tensor([[[10.0, 0.0, 0.0, 0.0]]]), (128, 64), image_features=feats)
    centre = (pts[0, 0, :2] + pts[0, 0, 2:]) / 2
    torch.testing.assert_close(centre, torch.tensor([40.0 + 8.0, 48.0 - 16.0]), atol=1e-3, rtol=0)


def test_pointer_head_learns_to_find_a_described_cell():
    """Each image has one cell whose feature matches the query vector; a few hundred Adam steps on the L1
    of the centre must bring the error far below the uniform-attention (frame-centre) error."""
    torch.manual_seed(0)
    head = PointerHead(16, 16, attn_dim=32, hidden_dim=32)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)

    def batch(n=64):
        feats = torch.randn(n, 16, 8, 8) * 0.3
        idx = torch.randint(0, 64, (n,))
        query = torch.randn(n, 16)
        feats.flatten(2)[torch.arange(n), :, idx] = query                    # the described cell
        target = grid_centres((8, 8), (128, 128), feats)[idx]               # n×2
        return query[:, None], feats, target

    def err(h, f, t):
        p = head(h, (128, 128), image_features=f)[:, 0]
        return ((p[:, :2] + p[:, 2:]) / 2 - t).abs().mean()

    q, f, t = batch(256)
    with torch.no_grad():
        before = float(err(q, f, t))
    for _ in range(300):
        loss = err(*batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(err(q, f, t))
    assert before > 25 and after < 6, (before, after)


def test_pointer_head_model_trains_every_head_parameter():
    m = make_model(head="pointer")
    images, prompt_ids, target_ids = make_batch()
    out = m(images, None, prompt_ids, None, target_ids)
    assert out.points.shape == (*target_ids.shape, 4)
    out.points.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trace_head.parameters())


# --- full model ------------------------------------------------------------------------------------------------
def test_forward_shapes_and_frames(model):
    images, prompt_ids, target_ids = make_batch(b=3)
    out = model(images, torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 3), prompt_ids, prompt_ids > 0, target_ids,
                target_ids > 0, image_sizes=torch.tensor([[128, 128]] * 3))
    assert out.logits.shape == (3, 7, 300) and out.points.shape == (3, 7, 4) and out.hidden.shape == (3, 7, 64)
    # points are pixels of the 128×128 frame: recompute from the hidden state by the head's formula
    raw = model.trace_head.mlp(out.hidden)
    torch.testing.assert_close(out.points, (raw + 1) / 2 * 128)
    # teacher forcing: logits at t depend only on target tokens < t
    changed = target_ids.clone()
    changed[:, 4] = 7
    out2 = model(images, None, prompt_ids, None, changed)
    out1 = model(images, None, prompt_ids, None, target_ids)
    torch.testing.assert_close(out1.logits[:, :5], out2.logits[:, :5])
    assert not torch.allclose(out1.logits[:, 5:], out2.logits[:, 5:])


def test_padded_prompt_tokens_are_masked(model):
    images, prompt_ids, target_ids = make_batch(b=1)
    padded = torch.cat([prompt_ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    a = model(images, None, prompt_ids, torch.ones_like(prompt_ids, dtype=torch.bool), target_ids)
    b = model(images, None, padded, padded > 0, target_ids)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_gradients_reach_exactly_the_trainable_parts():
    m = make_model()
    m.train()
    images, prompt_ids, target_ids = make_batch()
    # LoRA B starts at zero, so A gets no gradient on the first step: give B a value first
    with torch.no_grad():
        for n, p in m.language_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    out = m(images, None, prompt_ids, None, target_ids)
    (F.cross_entropy(out.logits.flatten(0, 1), target_ids.flatten()) + 0.1 * out.points.abs().mean()).backward()
    groups = {
        "sam": m.image_encoder.sam_encoder, "prompt_encoder": m.prompt_encoder,
        "semantic": m.image_encoder.semantic_encoder, "extractor": m.prompt_extractor, "head": m.trace_head,
    }
    for name in ("sam", "prompt_encoder"):
        assert all(p.grad is None and not p.requires_grad for p in groups[name].parameters()), name
    for name in ("semantic", "extractor", "head"):
        grads = [p.grad for p in groups[name].parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    for n, p in m.language_model.named_parameters():
        if "lora_" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None and not p.requires_grad, n
    rep = parameter_report(m)
    assert rep["t5_base"]["trainable"] == 0 and rep["sam_image_encoder"]["trainable"] == 0
    assert rep["all"]["trainable"] == sum(rep[k]["trainable"] for k in rep if k != "all")


@pytest.mark.parametrize("lm_mode", ["frozen", "full"])
def test_lm_modes(lm_mode):
    m = make_model(lm_mode=lm_mode)
    t5_trainable = [p.requires_grad for p in m.language_model.parameters()]
    assert all(t5_trainable) if lm_mode == "full" else not any(t5_trainable)


def test_spatial_head_model_points_inside_frame():
    m = make_model(head="spatial")
    images, prompt_ids, target_ids = make_batch()
    out = m(images, None, prompt_ids, None, target_ids)
    assert out.points.min() >= 0 and out.points.max() <= 128


def test_bad_inputs_raise_clear_errors(model):
    images, prompt_ids, target_ids = make_batch()
    with pytest.raises(ValueError, match="B×3×128×128"):
        model(images[:, :, :64], None, prompt_ids, None, target_ids)
    with pytest.raises(ValueError, match="B×4"):
        model(images, torch.zeros(2, 2), prompt_ids, None, target_ids)
    with pytest.raises(KeyError, match="unknown preset"):
        build_pixelllm("huge")


def test_eval_mode_restores_training_and_leaves_an_eval_model_alone():
    from pixelllm.utils import eval_mode

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Dropout(0.5)
            self.switches = 0

        def train(self, mode: bool = True):
            self.switches += 1
            return super().train(mode)

    m = Counting()
    with eval_mode(m):
        assert not m.training and not m.inner.training
    assert m.training and m.inner.training and m.switches == 2     # eval() is train(False), then back
    m.eval()
    m.switches = 0
    with pytest.raises(RuntimeError):
        with eval_mode(m):
            raise RuntimeError("inside")
    assert not m.training and m.switches == 0                     # an eval model is never walked
