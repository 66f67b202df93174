"""Generation: the decoder states gathered during HF ``generate`` (greedy and beam search, KV cache) equal
the teacher-forced ones for the same tokens, and so do their trace-head points; batched inference equals
per-image inference; ``locate`` reads the state that emits EOS."""
from __future__ import annotations

import pytest
import torch

from pixelllm.data.tokenizer import train_tokenizer
from pixelllm.modeling.build import build_pixelllm
from conftest import make_test_model

WORDS = ("a red blue green small large circle square triangle left of right above below the image shows "
         "where is long caption and").split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + ["A long image caption:", "where is"]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=120, num_sentinels=4)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = make_test_model(seed=None, tokenizer=tok)
    with torch.no_grad():  # non-zero LoRA B so the adapters take part in the comparison
        for n, p in m.language_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return m


def images(b=3, seed=0):
    return torch.rand(b, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def _teacher_forced(model, tok, imgs, tokens, prompt="A long image caption:"):
    enc = tok([prompt] * imgs.shape[0], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(imgs, None, enc["input_ids"], enc["attention_mask"].bool(), tokens)


def _valid(model, tokens):
    """B×T mask of positions up to and including the first EOS."""
    n = model._lengths(tokens)
    return torch.arange(tokens.shape[1]).unsqueeze(0) <= n.unsqueeze(1)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generated_states_equal_teacher_forced(model, tok, num_beams):
    imgs = images()
    tokens, hidden, points = model.generate(imgs, prompt="A long image caption:", tokenizer=tok,
                                            num_beams=num_beams, max_new_tokens=8)
    assert tokens.shape[0] == 3 and hidden.shape == (*tokens.shape, 64) and points.shape == (*tokens.shape, 4)
    tf = _teacher_forced(model, tok, imgs, tokens)
    valid = _valid(model, tokens)
    assert valid.sum() >= 3
    torch.testing.assert_close(hidden[valid], tf.hidden[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(points[valid], tf.points[valid], atol=1e-4, rtol=1e-5)
    # each generated token is the argmax (greedy) / a likely token (beam) of the teacher-forced logits
    if num_beams == 1:
        assert torch.equal(tf.logits.argmax(-1)[valid], tokens[valid])


def test_beam_search_returns_the_best_beam(model, tok):
    """num_beams=2: the returned sequence scores at least as well as greedy (length-normalised log-prob)."""
    imgs = images(1, seed=3)
    greedy, _, _ = model.generate(imgs, tokenizer=tok, num_beams=1, max_new_tokens=6, with_trace=False)
    beam, _, _ = model.generate(imgs, tokenizer=tok, num_beams=2, max_new_tokens=6, with_trace=False)

    def score(tokens):
        tf = _teacher_forced(model, tok, imgs, tokens)
        logp = tf.logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        v = _valid(model, tokens)
        return (logp * v).sum() / v.sum()  # HF's default length_penalty = 1.0

    assert score(beam) >= score(greedy) - 1e-5


def test_batched_caption_equals_single(model, tok):
    imgs = images(3, seed=5)
    batched = model.caption(imgs, tokenizer=tok, max_new_tokens=6)
    for i in range(3):
        single = model.caption(imgs[i:i + 1], tokenizer=tok, max_new_tokens=6)[0]
        assert single["token_ids"] == batched[i]["token_ids"]
        torch.testing.assert_close(single["points"], batched[i]["points"], atol=1e-4, rtol=1e-5)
    r = batched[0]
    assert set(r) == {"text", "tokens", "token_ids", "points"}
    assert len(r["tokens"]) == len(r["token_ids"]) == r["points"].shape[0] and 1 not in r["token_ids"]
    assert r["text"] == tok.decode(r["token_ids"], skip_special_tokens=True)
    assert r["points"].shape[-1] == 4


def test_caption_with_box_prompt_changes_output(model, tok):
    imgs = images(1, seed=7)
    tokens_a, hid_a, _ = model.generate(imgs, torch.tensor([[0.0, 0.0, 30.0, 30.0]]), tokenizer=tok, max_new_tokens=4)
    tokens_b, hid_b, _ = model.generate(imgs, torch.tensor([[60.0, 60.0, 128.0, 128.0]]), tokenizer=tok,
                                        max_new_tokens=4)
    assert not torch.allclose(hid_a[:, 0], hid_b[:, 0])


@pytest.mark.filterwarnings("ignore:PixelLLM.locate")
def test_locate_reads_the_eos_state(model, tok):
    imgs = images(2, seed=11)
    exprs = ["the red circle", "a small square"]
    boxes = model.locate(imgs, exprs, tok, max_new_tokens=5)   # rows without EOS use the last state
    tokens, _, points = model.generate(imgs, prompt=[f"where is {e}" for e in exprs], tokenizer=tok, max_new_tokens=5)
    idx = model._lengths(tokens).clamp(max=tokens.shape[1] - 1)
    assert boxes.shape == (2, 4)
    torch.testing.assert_close(boxes, points[torch.arange(2), idx])


def test_generation_restores_training_mode(model, tok):
    model.train()
    model.generate(images(1), tokenizer=tok, max_new_tokens=2)
    assert model.training and not model.image_encoder.sam_encoder.training
    model.eval()


def test_lengths_first_eos(model):
    tokens = torch.tensor([[5, 6, 1, 0], [5, 6, 7, 8], [1, 0, 0, 0]])
    assert model._lengths(tokens).tolist() == [2, 4, 0]


@pytest.mark.parametrize("head, stem, context", [("mlp", 0, 0), ("pointer", 0, 0), ("pointer", 8, 0), ("pointer", 0, 1)])
def test_read_point_state_uses_the_state_that_has_read_the_word(tok, head, stem, context):
    """``point_state="read"``: word i's point comes from the decoder state whose input is w_i; the logits
    are the paper's; generation gives the same states and points as teacher forcing (also when a pointer
    head reads a finer grid through its stem, or the states before its own through a causal layer)."""
    torch.manual_seed(0)
    kw = {"pointer_stem": stem, "pointer_context": context}
    emit = make_test_model(seed=None, tokenizer=tok, head=head, **kw)
    read = make_test_model(seed=None, tokenizer=tok, head=head, point_state="read", **kw)
    read.load_state_dict(emit.state_dict())
    imgs = images(2, seed=1)
    tokens, hidden, points = read.generate(imgs, prompt="A long image caption:", tokenizer=tok, max_new_tokens=6)
    tf_emit, tf_read = _teacher_forced(emit, tok, imgs, tokens), _teacher_forced(read, tok, imgs, tokens)
    torch.testing.assert_close(tf_read.logits, tf_emit.logits)                       # the words are the paper's
    # the state read for token i is the paper's state for token i + 1
    torch.testing.assert_close(tf_read.hidden[:, :-1], tf_emit.hidden[:, 1:], atol=1e-5, rtol=1e-5)
    valid = _valid(read, tokens)
    assert valid[:, -1].any()      # the last token's state (one decoder step after generation) is checked too
    torch.testing.assert_close(hidden[valid], tf_read.hidden[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(points[valid], tf_read.points[valid], atol=1e-4, rtol=1e-5)
    # beam search takes the states from one teacher-forced pass over the returned sequences
    tokens3, hidden3, _ = read.generate(imgs, prompt="A long image caption:", tokenizer=tok, max_new_tokens=6,
                                        num_beams=3)
    valid3 = _valid(read, tokens3)
    torch.testing.assert_close(hidden3[valid3], _teacher_forced(read, tok, imgs, tokens3).hidden[valid3],
                               atol=1e-5, rtol=1e-5)
    # with the trace, generation runs on the encoder states it encoded once; the words do not change
    for beams in (1, 3):
        with_trace = read.generate(imgs, prompt="A long image caption:", tokenizer=tok, max_new_tokens=6,
                                   num_beams=beams)[0]
        plain = read.generate(imgs, prompt="A long image caption:", tokenizer=tok, max_new_tokens=6,
                              num_beams=beams, with_trace=False)[0]
        assert torch.equal(with_trace, plain), beams


def test_pointer_stem_gives_a_grid_of_8px_cells(tok):
    m = make_test_model(seed=0, tokenizer=tok, head="pointer", pointer_stem=8)
    imgs = images(2)
    grid = m.image_features(imgs)
    fine = m.head_grid(grid, imgs)
    assert fine.shape == (2, grid.shape[1] + 8, 16, 16) and grid.shape[-2:] == (8, 8)
    torch.testing.assert_close(fine[:, :grid.shape[1], ::2, ::2], grid)          # the coarse cells, repeated
    tokens, _, points = m.generate(imgs, prompt="A long image caption:", tokenizer=tok, max_new_tokens=4)
    tf = _teacher_forced(m, tok, imgs, tokens)
    valid = _valid(m, tokens)
    torch.testing.assert_close(points[valid], tf.points[valid], atol=1e-4, rtol=1e-5)
    assert tf.cell_logits.shape == (*tokens.shape, 16, 16)
