"""save_pretrained → from_pretrained gives identical outputs; frozen bases are referenced by path, not
duplicated; trainable parts and the LoRA adapter (peft format) are saved."""
from __future__ import annotations

import json

import pytest
import torch

from pixelllm.modeling.build import build_pixelllm, load_pretrained
from pixelllm.modeling.sam import build_sam
from conftest import make_test_model



def _perturb(model):
    """Move every trainable weight (LoRA B included) away from its init, as training would."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=g)
    prompt = torch.randint(3, 300, (2, 4), generator=g)
    target = torch.randint(3, 300, (2, 5), generator=g)
    with torch.no_grad():
        return model.eval()(images, torch.tensor([[0.0, 0.0, 64.0, 100.0]] * 2), prompt, None, target)


@pytest.mark.parametrize("overrides", [{}, {"lm_mode": "full", "head": "spatial"}])
def test_round_trip_random_init_bases(tmp_path, overrides):
    torch.manual_seed(0)
    model = make_test_model(seed=None, eval=False, **{"vocab_size": 300, **overrides})
    _perturb(model)
    before = _outputs(model)
    model.save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(99)  # a different random init must be fully overwritten by the load
    loaded = load_pretrained(tmp_path / "ckpt")
    after = _outputs(loaded)
    for name in ("logits", "points", "hidden"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), atol=0, rtol=0)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "frozen_sam.safetensors", "t5"} <= files
    assert ("lora" in files) == (overrides.get("lm_mode", "lora") == "lora")


def test_frozen_bases_referenced_not_duplicated(tmp_path):
    torch.manual_seed(1)
    sam_path = tmp_path / "sam_tiny.pth"
    torch.save(build_sam("tiny").state_dict(), sam_path)
    from transformers import T5ForConditionalGeneration

    from pixelllm.pretrain.t5 import tiny_t5_config

    t5_dir = tmp_path / "t5_tiny"
    T5ForConditionalGeneration(tiny_t5_config(300, d_model=64, d_kv=16, num_heads=4, d_ff=128)).save_pretrained(t5_dir)

    model = make_test_model(seed=None, eval=False, sam_checkpoint=sam_path, t5=t5_dir, vocab_size=300)
    _perturb(model)
    before = _outputs(model)
    out = model.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in out.iterdir()}
    assert files == {"config.json", "model.safetensors", "lora"}            # no copy of SAM or T5
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sam_checkpoint"] == str(sam_path) and cfg["t5"] == str(t5_dir)
    from safetensors.torch import load_file

    keys = load_file(str(out / "model.safetensors")).keys()
    assert keys and all(k.startswith(("image_encoder.semantic_encoder.", "prompt_extractor.", "trace_head."))
                        for k in keys)
    loaded = load_pretrained(out)
    torch.testing.assert_close(_outputs(loaded).logits, before.logits, atol=0, rtol=0)
    torch.testing.assert_close(_outputs(loaded).points, before.points, atol=0, rtol=0)


def test_bad_config_names_the_file(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"name": "tiny", "lora_rnak": 4}))
    with pytest.raises(ValueError, match=r"config\.json.*lora_rnak"):
        load_pretrained(d)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "missing")
