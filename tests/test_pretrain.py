"""Our pretrained parts: the SAM builder (parity with segment-anything), tiny SAM training / checkpoint
round trip, and the tiny T5 (span corruption, save_pretrained round trip, training); both pretrainings run
through the Trainer and resume exactly."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from pixelllm.configs import get_config
from pixelllm.modeling.sam import SAM_CONFIGS, build_sam
from pixelllm.pretrain import sam as psam
from pixelllm.pretrain import t5 as pt5
from pixelllm.pretrain.common import checkpoint_dir

torch.set_num_threads(1)

# A small SAM for fast tests: same modules and preset as "tiny", narrower.
SMALL = dict(encoder_embed_dim=32, encoder_depth=2, encoder_global_attn_indexes=(1,), encoder_num_heads=2,
             prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32)


# --------------------------------------------------------------------------------------------------
# fixtures: a tiny COCO-format world and a T5-style tokenizer
# --------------------------------------------------------------------------------------------------

def write_coco_world(root: Path, splits: dict, size: int = 128, seed: int = 0) -> Path:
    """Coloured discs / squares on grey (later shapes occlude earlier ones), written in the layout of
    docs/ARCHITECTURE.md: images/{id:012d}.jpg + coco/instances_{split}.json with RLE masks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "coco").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    img_id, ann_id = 1, 1
    for split, n in splits.items():
        images, anns = [], []
        for _ in range(n):
            im = Image.new("RGB", (size, size), (200, 200, 200))
            draw = ImageDraw.Draw(im)
            masks = []
            for _k in range(int(rng.integers(1, 4))):
                s = int(rng.integers(size // 8, size // 3))
                x0, y0 = (int(v) for v in rng.integers(0, size - s, 2))
                m = Image.new("L", (size, size), 0)
                disc = bool(rng.integers(2))
                col = tuple(int(c) for c in rng.integers(0, 150, 3))
                (draw.ellipse if disc else draw.rectangle)([x0, y0, x0 + s, y0 + s], fill=col)
                (ImageDraw.Draw(m).ellipse if disc else ImageDraw.Draw(m).rectangle)([x0, y0, x0 + s, y0 + s], fill=1)
                mk = np.array(m, dtype=np.uint8)
                masks = [pm & (1 - mk) for pm in masks] + [mk]
            for mk in masks:
                rle = mask_utils.encode(np.asfortranarray(mk))
                anns.append({"id": ann_id, "image_id": img_id, "category_id": 1, "iscrowd": 0,
                             "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
                ann_id += 1
            im.save(root / "images" / f"{img_id:012d}.jpg", quality=95)
            images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": size, "height": size})
            img_id += 1
        (root / "coco" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "shape"}]}))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_coco_world(tmp_path_factory.mktemp("world"), {"train": 6, "val": 2})


WORDS = "a the red blue green circle square triangle is left of right above below and small big .".split()


def sentences(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c, s = rng.choice(["red", "blue", "green"], 2), rng.choice(["circle", "square", "triangle"], 2)
        rel = rng.choice(["left of", "right of", "above", "below"])
        out.append(f"a {c[0]} {s[0]} is {rel} the {c[1]} {s[1]} .")
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The project's tokenizer trainer when present, else a word-level `tokenizers` model with the same
    T5 conventions (pad 0, eos 1, unk 2, <extra_id_k> sentinels)."""
    out = tmp_path_factory.mktemp("tok")
    try:
        from pixelllm.data.tokenizer import train_tokenizer
    except ImportError:
        train_tokenizer = None
    if train_tokenizer is not None:
        from transformers import AutoTokenizer

        train_tokenizer(sentences(200), out, vocab_size=200)
        return AutoTokenizer.from_pretrained(out)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sentinels = [f"<extra_id_{k}>" for k in range(100)]
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS, *sentinels])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=sentinels)


# --------------------------------------------------------------------------------------------------
# SAM builder
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_build_sam_matches_segment_anything_architecture(name):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # no memory, no init cost: only the architecture
        ref = sam_model_registry[name]()
        ours = build_sam(name)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes
    assert ours.image_encoder.img_size == 1024 and ours.prompt_encoder.image_embedding_size == (64, 64)
    assert not ours.training


def test_build_sam_unknown_name():
    with pytest.raises(KeyError, match="vit_x"):
        build_sam("vit_x")


def test_tiny_sam_shapes_and_parity_with_sam_forward():
    """Our batched pieces (embed_images + predict_masks + postprocess) equal segment-anything's own
    Sam.forward on the same weights."""
    torch.manual_seed(0)
    sam = build_sam("tiny")
    cfg = SAM_CONFIGS["tiny"]
    assert sam.image_encoder.img_size == 128 and cfg.embedding_size == 8
    img = torch.randint(0, 256, (3, 128, 96), dtype=torch.uint8)  # h×w after resize, not padded
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 95.0, 127.0]])
    ref = sam([{"image": img.float(), "original_size": (128, 96), "boxes": boxes}], multimask_output=False)[0]
    with torch.no_grad():
        emb = psam.embed_images(sam, [img])
        assert emb.shape == (1, 128, 8, 8)
        logits, iou = psam.predict_masks(sam, emb, boxes=boxes)
        assert logits.shape == (2, 1, 32, 32) and iou.shape == (2, 1)
        up = sam.postprocess_masks(logits, (128, 96), (128, 96))
    torch.testing.assert_close(logits, ref["low_res_logits"])
    torch.testing.assert_close(iou, ref["iou_predictions"])
    assert torch.equal(up > 0, ref["masks"])


def test_batched_decoder_equals_segment_anything_per_image_decoder():
    """decode_masks_batched (prompts of several images in one call) == MaskDecoder one image at a time."""
    torch.manual_seed(0)
    sam = build_sam("tiny", **SMALL)
    with torch.no_grad():
        emb = psam.embed_images(sam, [torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8) for _ in range(2)])
        boxes = [torch.tensor([[5.0, 5.0, 60.0, 40.0]]), torch.tensor([[0.0, 10.0, 30.0, 90.0], [50, 50, 120, 127]])]
        pts = [torch.tensor([[[20.0, 30.0]]]), torch.tensor([[[100.0, 7.0]], [[64.0, 64.0]]])]
        ref_box = [psam.predict_masks(sam, emb[i: i + 1], boxes=boxes[i]) for i in range(2)]
        ref_pt = [psam.predict_masks(sam, emb[i: i + 1], points=(pts[i], torch.ones(len(pts[i]), 1)), multimask=True)
                  for i in range(2)]
        index = torch.tensor([0, 1, 1])
        sp_b, de_b = sam.prompt_encoder(points=None, boxes=torch.cat(boxes), masks=None)
        allp = torch.cat(pts)
        sp_p, de_p = sam.prompt_encoder(points=(allp, torch.ones(len(allp), 1)), boxes=None, masks=None)
        masks, iou = psam.decode_masks_batched(sam, emb, torch.cat([index, index]), torch.cat([sp_b, sp_p]),
                                               torch.cat([de_b, de_p]))
    assert masks.shape == (6, 4, 32, 32) and iou.shape == (6, 4)
    torch.testing.assert_close(masks[:3, :1], torch.cat([r[0] for r in ref_box]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou[:3, :1], torch.cat([r[1] for r in ref_box]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks[3:, 1:], torch.cat([r[0] for r in ref_pt]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou[3:, 1:], torch.cat([r[1] for r in ref_pt]), atol=1e-5, rtol=1e-5)


def test_tiny_sam_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    sam = build_sam("tiny", **SMALL)
    path = psam.save_sam(sam, tmp_path / "sam_tiny.pth")
    torch.manual_seed(1)  # a different init: only the checkpoint can make the outputs equal
    loaded = build_sam("tiny", checkpoint=path, **SMALL)
    x = [torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)]
    box = torch.tensor([[5.0, 5.0, 70.0, 50.0]])
    with torch.no_grad():
        a = psam.predict_masks(sam, psam.embed_images(sam, x), boxes=box)
        b = psam.predict_masks(loaded, psam.embed_images(loaded, x), boxes=box)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the file is a plain state_dict, loadable with weights_only=True (the official checkpoint path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert set(sd) == set(sam.state_dict())


def test_checkpoint_of_another_architecture_names_the_file(tmp_path):
    path = psam.save_sam(build_sam("tiny", **SMALL), tmp_path / "small.pth")
    with pytest.raises(ValueError, match="small.pth"):
        build_sam("tiny", checkpoint=path)


# --------------------------------------------------------------------------------------------------
# SAM losses and data
# --------------------------------------------------------------------------------------------------

def test_mask_iou_and_dice_hand_computed():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[:2, :2] = True                      # 4 pixels
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[:2, :] = True                       # 8 pixels, 4 shared
    assert psam.mask_iou(a, b).item() == pytest.approx(0.5)
    assert psam.mask_iou(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)).item() == 1.0
    # logits 0 -> p = 0.5 everywhere; target has 4 of 16 pixels: 1 - (2*2 + 1) / (8 + 4 + 1) = 8/13
    d = psam.dice_loss(torch.zeros(1, 1, 4, 4), a.float()[None, None])
    assert d.item() == pytest.approx(8 / 13)


def test_sam_loss_keeps_the_best_of_the_multimask_outputs():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    good = torch.where(target > 0, 10.0, -10.0)                        # matches the target
    logits = torch.cat([-good, good, torch.zeros_like(good)], dim=1)   # 1×3×8×8: wrong, right, unsure
    iou_pred = torch.tensor([[0.0, 1.0, 0.0]])
    out = psam.sam_loss(logits, iou_pred, target)
    only_good = psam.sam_loss(good, torch.tensor([[1.0]]), target)
    assert out["focal"].item() == pytest.approx(only_good["focal"].item())
    assert out["dice"].item() == pytest.approx(only_good["dice"].item())
    # actual IoUs: wrong mask 0, right mask 1, "unsure" (logits 0, not > 0) predicts nothing -> 0
    assert out["iou_mse"].item() == pytest.approx(0.0)
    assert out["loss"].item() < 0.01


def test_lowres_targets_pad_and_area_average():
    m = torch.zeros(1, 6, 8, dtype=torch.bool)  # h=6, w=8 resized frame, S=8, low-res 4
    m[0, :2, :2] = True
    t = psam.lowres_targets(m, image_size=8, lowres=4)
    assert t.shape == (1, 1, 4, 4)
    assert t[0, 0, 0, 0].item() == 1.0 and t.sum().item() == pytest.approx(1.0)


def test_sam_instances_reads_coco_and_resizes(world):
    ds = psam.SamInstances(world, "train", image_size=128)
    coco = json.loads((world / "coco" / "instances_train.json").read_text())
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    it = ds[0]
    assert it["image"].shape == (3, 128, 128) and it["image"].dtype == torch.uint8
    assert len(it["boxes"]) == len(anns)
    x, y, w, h = anns[0]["bbox"]
    assert it["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert it["masks"][0].sum().item() == anns[0]["area"]
    small = psam.SamInstances(world, "train", image_size=64)[0]  # longest side 128 -> 64: half the pixels
    assert small["image"].shape == (3, 64, 64) and small["input_size"] == (64, 64)
    assert small["boxes"][0].tolist() == pytest.approx([x / 2, y / 2, (x + w) / 2, (y + h) / 2])
    assert small["orig_masks"].shape[-2:] == (128, 128)


def test_sam_instances_missing_file_and_skips(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_test.json"):
        psam.SamInstances(world, "test")
    bad = tmp_path / "bad"
    (bad / "coco").mkdir(parents=True)
    (bad / "images").mkdir()
    Image.new("RGB", (128, 128)).save(bad / "images" / "000000000001.jpg")
    rle = mask_utils.encode(np.asfortranarray(np.ones((128, 128), np.uint8)))
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 128, 128], "area": 1.0,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 0, "segmentation": []}]
    images = [{"id": 1, "file_name": "000000000001.jpg", "width": 128, "height": 128},
              {"id": 2, "file_name": "000000000002.jpg", "width": 128, "height": 128}]
    (bad / "coco" / "instances_train.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    ds = psam.SamInstances(bad, "train")
    assert len(ds) == 1
    assert ds.skips["annotation without a (non-crowd) segmentation"] == 1
    assert ds.skips["image file missing"] == 1


def test_sam_steps_reduce_the_loss(world):
    """Fixed batch (box prompts, no jitter, every instance): 12 AdamW steps lower the loss."""
    torch.manual_seed(0)
    sam = build_sam("tiny", **SMALL).train()
    ds = psam.SamInstances(world, "train")
    batch = psam.collate_sam([ds[i] for i in range(4)])
    opt = torch.optim.AdamW(sam.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        loss = psam.sam_step(sam, batch, gen, prompts_per_image=8, point_prob=0.0, box_jitter=0.0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def sam_config(**changes):
    """The SMOKE ``sam_tiny`` config with the narrow SAM of these tests."""
    return get_config("sam_tiny", smoke=True, overrides={"sam_overrides": dict(SMALL), **changes})


def test_train_tiny_sam_writes_a_loadable_checkpoint(world, tmp_path):
    out = tmp_path / "sam_tiny" / "sam_tiny.pth"
    r = psam.train_tiny_sam(sam_config(steps=3, batch_size=4, point_prob=0.5), world, out, progress=False)
    assert r["steps_done"] == 3 and len(r["history"]) == 3 and r["resumed_at"] is None
    assert [h["step"] for h in r["history"]] == [1, 2, 3]
    assert set(r["history"][0]) == {"step", "loss", "focal", "dice", "iou_mse", "lr", "grad_norm"}
    assert 0.0 <= r["eval"]["mask_iou"] <= 1.0 and r["eval"]["n_images"] == 2
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["preset"] == "tiny" and meta["eval"] == r["eval"] and meta["steps_done"] == 3
    assert meta["config"]["steps"] == 3 and meta["sec_per_step"] > 0
    assert (out.parent / "sam_tiny_checkpoints" / "final.json").is_file()
    loaded = build_sam(meta["preset"], checkpoint=out, **meta["overrides"])
    ev = psam.evaluate_sam(loaded, world, "val")
    assert ev["mask_iou"] == pytest.approx(r["eval"]["mask_iou"], abs=1e-6)


def test_box_prompt_masks_are_in_the_original_frame(world):
    torch.manual_seed(0)
    sam = build_sam("tiny", image_size=64, **SMALL).eval()   # 128-px images: boxes and masks are scaled back
    ds = psam.SamInstances(world, "val", image_size=64)
    ex = psam.box_prompt_masks(sam, world, "val", n=5)
    assert len(ex) == len(ds) == 2
    for e, (img_id, _, anns) in zip(ex, ds.items):
        assert e["image_id"] == img_id and e["image"].shape == (128, 128, 3) and e["image"].dtype == np.float32
        assert e["masks"].shape == (len(anns), 128, 128) and e["masks"].dtype == bool
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(e["boxes"], xyxy, atol=1e-3)
        assert 0.0 <= e["iou"] <= 1.0
    from pixelllm.viz import figure_box_prompt_masks

    assert len(figure_box_prompt_masks(ex, cols=3).axes) == 2


def test_sam_pretraining_resumes_exactly(world, tmp_path):
    """4 steps in one go = 2 steps, a restart (new task + Trainer, resumed from the checkpoint beside the
    artifact), then 2 more: identical weights, losses and val curve (prompt sampling draws from the global
    RNG, which the checkpoint restores; 3 batches per epoch, so the restart is mid-epoch)."""
    cfg = sam_config(steps=4, batch_size=2, point_prob=0.5, ckpt_interval=2, eval_interval=2, eval_images=2)
    full = psam.train_tiny_sam(cfg, world, tmp_path / "a" / "sam.pth", progress=False)
    out = tmp_path / "b" / "sam.pth"
    psam.sam_trainer(cfg, world, checkpoint_dir(out, cfg), progress=False).fit(until=2)
    again = psam.train_tiny_sam(cfg, world, out, progress=False)
    assert again["resumed_at"] == 2 and again["steps_done"] == 4
    a, b = full["sam"].state_dict(), again["sam"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in full["history"]]
    assert again["val_curve"] == full["val_curve"] and [v["step"] for v in full["val_curve"]] == [2, 4]


def test_sam_checkpoint_of_another_config_is_not_resumed(world, tmp_path):
    out = tmp_path / "sam.pth"
    cfg = sam_config(steps=2, batch_size=2, ckpt_interval=1)
    psam.sam_trainer(cfg, world, checkpoint_dir(out, cfg), progress=False).fit(until=1)
    r = psam.train_tiny_sam(sam_config(steps=2, batch_size=2, ckpt_interval=1, lr=1e-3), world, out, progress=False)
    assert r["resumed_at"] is None and [h["step"] for h in r["history"]] == [1, 2]


# --------------------------------------------------------------------------------------------------
# tiny T5
# --------------------------------------------------------------------------------------------------

def test_tiny_t5_config():
    cfg = pt5.tiny_t5_config(300, num_layers=3)
    assert (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (128, 4, 32, 512)
    assert (cfg.num_layers, cfg.num_decoder_layers) == (3, 2)
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id, cfg.vocab_size) == (0, 1, 0, 300)
    assert cfg.is_gated_act


@pytest.mark.parametrize("length", [2, 5, 13, 40, 100])
def test_random_spans_noise_mask_follows_t5(length):
    rng = np.random.default_rng(length)
    mask = pt5.random_spans_noise_mask(length, rng)
    n_noise = min(max(round(length * 0.15), 1), length - 1)
    assert mask.sum() == n_noise
    assert not mask[0] and mask[-1]  # starts with a non-noise span and ends with a noise span, like T5
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert len(starts) == min(max(round(n_noise / 3), 1), n_noise, length - n_noise)


def test_span_corrupt_hand_computed():
    toks = list(range(10, 20))
    mask = np.zeros(10, bool)
    mask[[2, 3, 7]] = True
    inp, tgt = pt5.span_corrupt(toks, mask, sentinel_ids=[99, 98, 97], eos_id=1)
    assert inp == [10, 11, 99, 14, 15, 16, 98, 18, 19, 1]
    assert tgt == [99, 12, 13, 98, 17, 97, 1]


def test_span_corruption_examples_use_the_tokenizer_sentinels(tokenizer):
    ex = pt5.SpanCorruptionExamples(tokenizer)
    ids = ex.tokenize(["a red circle is left of the blue square ."])[0]
    inp, tgt = ex.example(ids, np.random.default_rng(0))
    s0 = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert s0 in inp and tgt[0] == s0 and inp[-1] == tgt[-1] == tokenizer.eos_token_id
    # input + target together hold every original token exactly once
    kept = [t for t in inp[:-1] if t not in ex.sentinel_ids] + [t for t in tgt[:-1] if t not in ex.sentinel_ids]
    assert sorted(kept) == sorted(ids)
    batch = ex.collate([(inp, tgt), ([5, 1], [6, 1])])
    assert batch["labels"][1].tolist()[2:] == [pt5.IGNORE_INDEX] * (len(tgt) - 2)
    assert batch["attention_mask"][1].tolist() == [True, True] + [False] * (len(inp) - 2)


def test_reconstruction_examples_target_the_whole_text(tokenizer):
    """denoise_fraction=1: input = "Fill in: " + the span-corrupted text, target = every original token in
    order + EOS (the decoder must copy what it reads). The mixture follows the fractions."""
    ex = pt5.SpanCorruptionExamples(tokenizer, denoise_fraction=1.0)
    ids = ex.tokenize(["a red circle is left of the blue square ."])[0]
    inp, tgt = ex.example(ids, np.random.default_rng(0))
    assert inp[: len(ex.denoise_ids)] == ex.denoise_ids and inp[-1] == tokenizer.eos_token_id
    assert tgt == list(ids) + [tokenizer.eos_token_id]
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") in inp          # the input is corrupted
    assert ex.denoise_ids == tokenizer(pt5.DENOISE_PROMPT, add_special_tokens=False)["input_ids"]
    mix = pt5.SpanCorruptionExamples(tokenizer, caption_fraction=0.25, denoise_fraction=0.5)
    rng = np.random.default_rng(1)
    kinds = []
    for _ in range(2000):
        i, _t = mix.example(ids, rng)
        kinds.append("denoise" if i[: len(mix.denoise_ids)] == mix.denoise_ids else
                     "caption" if i[: len(mix.prompt_ids)] == mix.prompt_ids else "span")
    frac = {k: kinds.count(k) / len(kinds) for k in ("caption", "denoise", "span")}
    assert frac == pytest.approx({"caption": 0.25, "denoise": 0.5, "span": 0.25}, abs=0.04)
    with pytest.raises(ValueError, match="≤ 1"):
        pt5.SpanCorruptionExamples(tokenizer, caption_fraction=0.6, denoise_fraction=0.5)


def test_t5_save_pretrained_round_trip(tokenizer, tmp_path):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(pt5.tiny_t5_config(len(tokenizer))).eval()
    pt5.save_t5(model, tokenizer, tmp_path / "t5_tiny", extra={"note": "test"})
    loaded = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5_tiny").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "t5_tiny")
    assert tok.convert_tokens_to_ids("<extra_id_3>") == tokenizer.convert_tokens_to_ids("<extra_id_3>")
    ids = torch.tensor([tok("a red circle .")["input_ids"]])
    dec = torch.tensor([[0, 5, 6]])
    with torch.no_grad():
        a = model(input_ids=ids, decoder_input_ids=dec).logits
        b = loaded(input_ids=ids, decoder_input_ids=dec).logits
    assert torch.equal(a, b)
    assert json.loads((tmp_path / "t5_tiny" / "pretrain.json").read_text()) == {"note": "test"}


def test_pretrain_tiny_t5_learns(tokenizer, tmp_path):
    cfg = get_config("t5_tiny", smoke=True, overrides=dict(steps=60, batch_size=16, warmup_steps=5,
                                                           eval_interval=30, n_val=20))
    r = pt5.pretrain_tiny_t5(cfg, sentences(200), sentences(20, seed=1), tokenizer, tmp_path / "t5", progress=False)
    assert r["steps_done"] == 60 and len(r["history"]) == 60
    first = np.mean([h["loss"] for h in r["history"][:5]])
    last = np.mean([h["loss"] for h in r["history"][-5:]])
    assert last < 0.5 * first
    assert [v["step"] for v in r["val"]] == [30, 60]
    assert r["final_val"]["token_accuracy"] > 0.3
    ex = pt5.span_corruption_examples(r["model"], tokenizer, sentences(2, seed=2), n=2)
    assert len(ex) == 2 and "<extra_id_0>" in ex[0]["input"]
    model, tok = pt5.load_t5(tmp_path / "t5")
    assert model.config.d_model == 128 and len(tok) == len(tokenizer)
    meta = json.loads((tmp_path / "t5" / "pretrain.json").read_text())
    assert meta["steps_done"] == 60 and meta["final_val"] == r["final_val"] and meta["train"]["steps"] == 60


def test_t5_pretraining_resumes_exactly(tokenizer, tmp_path):
    """4 steps in one go = 2 steps, a restart from the checkpoint beside the folder, then 2 more: identical
    weights and losses (the span-corruption noise is seeded from the global RNG; 2 batches per epoch, so the
    restart is at an epoch boundary)."""
    cfg = get_config("t5_tiny", smoke=True, overrides=dict(
        steps=4, batch_size=4, ckpt_interval=2, eval_interval=2, n_val=4,
        t5_overrides=dict(d_model=32, d_kv=8, d_ff=64, num_heads=4)))
    texts, val = sentences(10), sentences(4, seed=1)
    full = pt5.pretrain_tiny_t5(cfg, texts, val, tokenizer, tmp_path / "a" / "t5", progress=False)
    out = tmp_path / "b" / "t5"
    pt5.t5_trainer(cfg, texts, tokenizer, val, checkpoint_dir(out, cfg), progress=False).fit(until=2)
    again = pt5.pretrain_tiny_t5(cfg, texts, val, tokenizer, out, progress=False)
    assert again["resumed_at"] == 2 and again["steps_done"] == 4
    assert (tmp_path / "b" / "t5_checkpoints").is_dir() and not (out / "final.json").exists()
    a, b = full["model"].state_dict(), again["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in full["history"]]
    assert [v["step"] for v in again["val"]] == [2, 4] and again["final_val"] == full["final_val"]


def test_sam_checkpoint_from_another_input_size_loads_with_resized_position_tables(tmp_path):
    """The official SAM checkpoints are 1024 px; the paper feeds SAM 384 px. Same mechanism at small sizes:
    a checkpoint saved at 256 px loads into the 128-px tiny SAM (pos_embed and global rel-pos resized),
    and everything else is copied exactly."""
    import torch

    from pixelllm.modeling.sam import build_sam

    torch.manual_seed(0)
    big = build_sam("tiny", image_size=256)
    path = tmp_path / "sam_256.pth"
    torch.save(big.state_dict(), path)
    small = build_sam("tiny", checkpoint=path)
    sd_big, sd_small = big.state_dict(), small.state_dict()
    assert sd_small["image_encoder.pos_embed"].shape[1:3] == (8, 8)
    assert sd_big["image_encoder.pos_embed"].shape[1:3] == (16, 16)
    # a constant grid stays constant under the resize; mean is preserved approximately
    assert torch.allclose(sd_small["image_encoder.pos_embed"].mean(), sd_big["image_encoder.pos_embed"].mean(), atol=0.05)
    resized = [k for k in sd_big if sd_big[k].shape != sd_small[k].shape]
    assert "image_encoder.pos_embed" in resized
    assert all(k.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")) for k in resized)
    for k in sd_big:
        if k not in resized:
            assert torch.equal(sd_big[k], sd_small[k]), k
    with torch.no_grad():
        out = small.image_encoder(torch.rand(1, 3, 128, 128) * 255)
    assert out.shape[-2:] == (8, 8) and torch.isfinite(out).all()
