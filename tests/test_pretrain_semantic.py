"""Semantic-encoder pretraining (our EVA02 stand-in): per-patch colour / category targets, training through
the Trainer, exact resume."""
import json

import numpy as np
import pytest
import torch

from pixelllm.configs import get_config
from pixelllm.data.vocab import COLORS, SHAPES
from pixelllm.pretrain import semantic as psem
from pixelllm.pretrain.common import checkpoint_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pixelllm.data.synthetic import generate

    root = tmp_path_factory.mktemp("semantic_world")
    generate(root, n_scenes=40, image_size=128, seed=0, workers=1, progress=False)
    return root


def test_patch_targets_are_fractions_of_the_scene_colours_and_shapes(world):
    t = psem.patch_targets(world, "train", image_size=128, patch_size=16)
    n = len(t["images"])
    assert t["images"].dtype == torch.uint8 and t["images"].shape == (n, 3, 128, 128)
    assert t["colour"].shape == (n, len(COLORS) + 1, 8, 8) and t["shape"].shape == (n, len(SHAPES) + 1, 8, 8)
    for key in ("colour", "shape"):                                  # soft targets: fractions summing to 1
        assert torch.allclose(t[key].sum(1), torch.ones(n, 8, 8), atol=1e-5)
        assert (t[key] >= 0).all()
    scenes = {s["image_id"]: s for s in json.loads((world / "scenes.json").read_text())["images"]}
    train_ids = sorted(i for i, s in scenes.items() if s["split"] == "train")
    assert len(train_ids) == n
    for row, img_id in enumerate(train_ids):
        objs = scenes[img_id]["objects"]
        present_c = {psem.COLOR_NAMES[k - 1] for k in range(1, len(COLORS) + 1) if t["colour"][row, k].sum() > 0}
        present_s = {psem.SHAPE_NAMES[k - 1] for k in range(1, len(SHAPES) + 1) if t["shape"][row, k].sum() > 0}
        assert present_c <= {o["color"] for o in objs} and present_s <= {o["shape"] for o in objs}
        # the last-painted object is never occluded: its colour covers its own area exactly
        last = objs[-1]
        k = psem.COLOR_NAMES.index(last["color"]) + 1
        same = [o for o in objs if o["color"] == last["color"]]
        if len(same) == 1:
            assert float(t["colour"][row, k].sum() * 256) == pytest.approx(last["area"], rel=0.02, abs=3)


def test_pretraining_learns_and_the_checkpoint_loads_into_pixelllm(world, tmp_path):
    from pixelllm.modeling.build import build_pixelllm

    torch.set_num_threads(1)
    out = tmp_path / "semantic_tiny.safetensors"
    cfg = get_config("semantic_tiny", smoke=True, overrides=dict(steps=40, batch_size=16, lr=2e-3, warmup_steps=5,
                                                                 eval_interval=20))
    r = psem.pretrain_semantic_encoder(cfg, world, out, progress=False)
    first = np.mean([h["loss"] for h in r["history"][:5]])
    last = np.mean([h["loss"] for h in r["history"][-5:]])
    assert last < 0.75 * first
    assert [v["step"] for v in r["val"]] == [20, 40]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps_done"] == 40 and "colour" in meta["objective"] and len(meta["history"]) == 40
    assert meta["val"] == r["val"] and meta["config"]["lr"] == 2e-3
    model = build_pixelllm("tiny", semantic_checkpoint=out)
    for (k, a), (_, b) in zip(model.image_encoder.semantic_encoder.state_dict().items(), r["vit"].state_dict().items()):
        assert torch.equal(a, b), k
    # a saved PixelLLM carries the semantic weights itself: it loads after the pretraining file is gone
    from pixelllm.modeling.build import load_pretrained

    model.save_pretrained(tmp_path / "model")
    out.unlink()
    again = load_pretrained(tmp_path / "model")
    assert again.config.semantic_checkpoint == str(out)
    w = "image_encoder.semantic_encoder.patch_embed.proj.weight"
    assert torch.equal(again.state_dict()[w], model.state_dict()[w])


def test_semantic_pretraining_resumes_exactly(world, tmp_path):
    """4 steps in one go = 2 steps, a restart from the checkpoint beside the artifact, then 2 more:
    identical weights and losses (the flips draw from the global RNG, which the checkpoint restores)."""
    torch.set_num_threads(1)
    cfg = get_config("semantic_tiny", smoke=True, overrides=dict(
        steps=4, batch_size=8, ckpt_interval=2, eval_interval=2, model_overrides={"semantic_depth": 2}))
    full = psem.pretrain_semantic_encoder(cfg, world, tmp_path / "a" / "sem.safetensors", progress=False)
    out = tmp_path / "b" / "sem.safetensors"
    psem.semantic_trainer(cfg, world, checkpoint_dir(out, cfg), progress=False).fit(until=2)
    again = psem.pretrain_semantic_encoder(cfg, world, out, progress=False)
    assert again["resumed_at"] == 2 and again["steps_done"] == 4
    a, b = full["vit"].state_dict(), again["vit"].state_dict()
    assert len(a) > 0 and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in full["history"]]
    assert again["val"] == full["val"] and [v["step"] for v in full["val"]] == [2, 4]


def test_missing_scene_file_is_named(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "instances_train.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(FileNotFoundError, match="scenes.json"):
        psem.patch_targets(tmp_path, "train", 128, 16)


def test_which_presets_get_the_semantic_pretraining_and_explicit_paths_must_exist(tmp_path):
    import dataclasses

    from pixelllm.configs import get_config
    from pixelllm.engine.paths import pretrains_semantic, resolve_paths
    from pixelllm.pretrain.prerequisites import ensure_prerequisites

    cfg = get_config("pretrain", smoke=True)
    assert pretrains_semantic(cfg)                                                     # tiny: our small Eva
    assert not pretrains_semantic(dataclasses.replace(cfg, preset="small"))           # timm EVA02-S
    assert not pretrains_semantic(dataclasses.replace(cfg, preset="paper"))
    assert not pretrains_semantic(dataclasses.replace(cfg, model_overrides={"encoder_mode": "sam_only"}))
    assert resolve_paths(cfg).semantic.name == "semantic_tiny.safetensors"
    missing = tmp_path / "eva02.safetensors"
    bad = dataclasses.replace(cfg, model_overrides={"semantic_checkpoint": str(missing)})
    assert resolve_paths(bad).semantic == missing
    with pytest.raises(FileNotFoundError, match="semantic_checkpoint"):
        ensure_prerequisites(bad, progress=False)
