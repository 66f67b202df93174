"""The training loop on a small real torch model: schedule, learning, accumulation = big batch, frozen
parameters, the feature cache, logging, the eval hook, NaN handling, configs.

``ToyCaptioner`` / ``ToyDataset`` / ``toy_collate`` / ``toy_config`` are reused by test_resume.py and
test_ddp.py.
"""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelllm.configs import TrainConfig, apply_overrides, get_config
from pixelllm.engine.checkpoint import latest_checkpoint, load_checkpoint
from pixelllm.engine.trainer import NonFiniteLossError, Trainer, lr_factor

S, V = 8, 12  # image side (pixels), vocabulary


class ToyCaptioner(nn.Module):
    """A GRU captioner with a point head and the PixelLLM forward signature: images B×3×S×S → logits B×T×V,
    points B×T×4 in pixels. ``frozen`` (a frozen conv "SAM") provides ``frozen_image_features`` so the
    engine can cache it; ``nan_at_call`` makes the n-th forward return NaN logits."""

    def __init__(self, d: int = 16, dropout: float = 0.0, nan_at_call: int = 0):
        super().__init__()
        self.frozen = nn.Conv2d(3, d, 4, stride=4)
        self.frozen.requires_grad_(False)
        self.img = nn.Linear(d, d)
        self.emb = nn.Embedding(V, d)
        self.rnn = nn.GRU(d, d, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.lm = nn.Linear(d, V)
        self.pt = nn.Linear(d, 4)
        self.nan_at_call, self.calls = nan_at_call, 0

    def frozen_image_features(self, images, image_sizes=None):
        return self.frozen(images)                                    # B×d×2×2

    def forward(self, images, boxes, prompt_ids, prompt_mask, target_ids, target_mask, image_sizes=None,
                features=None):
        self.calls += 1
        feats = self.frozen_image_features(images) if features is None else features
        g = torch.tanh(self.img(feats.mean((2, 3))))                   # B×d
        dec_in = torch.cat([torch.zeros_like(target_ids[:, :1]), target_ids[:, :-1]], 1)  # shift right
        h, _ = self.rnn(self.drop(self.emb(dec_in)), g[None].contiguous())
        logits = self.lm(self.drop(h))
        if self.nan_at_call and self.calls >= self.nan_at_call:
            logits = logits * float("nan")
        points = (torch.tanh(self.pt(h)) + 1) / 2 * S                  # pixels of the S×S input
        return {"logits": logits, "points": points}


class ToyDataset(torch.utils.data.Dataset):
    """Learnable toy task: the caption repeats a token given by the image's brightest channel; trace
    samples carry per-token points = the channel index in pixels; odd samples are caption-only."""

    def __init__(self, n: int = 24, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            c = i % 3
            img = torch.rand(3, S, S, generator=g) * 0.3
            img[c] += 0.7
            length = 2 + int(torch.randint(0, 4, (1,), generator=g))
            ids = [3 + c] * (length - 1) + [1]                             # ... EOS
            self.items.append(dict(image=img, ids=ids, c=c, task="trace" if i % 2 == 0 else "caption", image_id=str(i)))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def toy_collate(items):
    T = max(len(it["ids"]) for it in items)
    B = len(items)
    ids = torch.zeros(B, T, dtype=torch.long)
    pts = torch.zeros(B, T, 4)
    valid = torch.zeros(B, T, dtype=torch.bool)
    for b, it in enumerate(items):
        ids[b, :len(it["ids"])] = torch.tensor(it["ids"])
        if it["task"] == "trace":
            n = len(it["ids"]) - 1                                     # EOS carries no point
            pts[b, :n] = torch.tensor([2.0 * it["c"], 1.0, 2.0 * it["c"] + 2, 3.0])
            valid[b, :n] = True
    return {"images": torch.stack([it["image"] for it in items]), "image_ids": [it["image_id"] for it in items],
            "image_sizes": torch.full((B, 2), S), "boxes": torch.tensor([[0.0, 0, S, S]]).repeat(B, 1),
            "prompt_ids": torch.ones(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.bool),
            "target_ids": ids, "target_mask": ids != 0, "points": pts, "point_valid": valid,
            "task": [it["task"] for it in items]}


def toy_config(**kw) -> TrainConfig:
    base = dict(stage="toy", batch_size=4, steps=6, lr=1e-2, warmup_steps=2, log_interval=1, ckpt_interval=0,
                keep_last=2, device="cpu", seed=0, cache_sam_features=False)
    base.update(kw)
    return TrainConfig(**base)


def make_trainer(cfg, out_dir=None, dropout=0.0, model_seed=0, n=24, **kw):
    torch.manual_seed(model_seed)
    model = ToyCaptioner(dropout=dropout, nan_at_call=kw.pop("nan_at_call", 0))
    return Trainer(model, cfg, ToyDataset(n), toy_collate, out_dir=out_dir, progress=False, **kw)


def params_of(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# ------------------------------------------------------------------------------------------ tests
def test_lr_schedule_by_hand():
    f = lambda s: lr_factor(s, warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)                                   # cosine starts at the peak
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)                       # half way: (1 + min) / 2
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_scheduler_drives_optimizer_lr():
    tr = make_trainer(toy_config(steps=5, warmup_steps=2, lr=0.1))
    tr.fit()
    lrs = [r["lr"] for r in tr.history]
    expected = [0.1 * lr_factor(s, 2, 5) for s in range(5)]
    assert lrs == pytest.approx(expected)


def test_training_learns_and_logs(tmp_path):
    tr = make_trainer(toy_config(steps=60, lr=3e-2, log_interval=20, ckpt_interval=30), out_dir=tmp_path)
    frozen_before = tr.model.frozen.weight.detach().clone()
    tr.fit()
    first, last = tr.history[0], tr.history[-1]
    assert last["ce"] < 0.6 * first["ce"]
    assert last["point_l1"] < 0.5 * first["point_l1"]
    assert torch.equal(tr.model.frozen.weight, frozen_before)           # frozen stays frozen
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [20, 40, 60]
    for key in ("loss", "ce", "point_l1", "lr", "samples_per_s", "time", "grad_norm"):
        assert key in recs[0]
    # the logged loss is the mean of the per-step losses of the window
    assert recs[0]["loss"] == pytest.approx(sum(r["loss"] for r in tr.history[:20]) / 20, rel=1e-9)
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["step"] == 60 and final["checkpoint"].endswith("ckpt_0000060.pt")
    # checkpoint: self-describing, trainable weights only
    state = load_checkpoint(tmp_path)
    assert TrainConfig.from_json(state["config"]) == tr.cfg
    assert "frozen.weight" not in state["model"] and "lm.weight" in state["model"]


def test_optimizer_gets_only_trainable_params():
    tr = make_trainer(toy_config())
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert id(tr.model.frozen.weight) not in opt_ids
    assert opt_ids == {id(p) for p in tr.model.parameters() if p.requires_grad}


def test_accumulation_equals_big_batch():
    """batch 8 in one go == 2 micro-batches of 4 (the loss is normalised by the step's global token count)."""
    big = make_trainer(toy_config(batch_size=8, accum_steps=1, steps=4))
    big.fit()
    acc = make_trainer(toy_config(batch_size=4, accum_steps=2, steps=4))
    acc.fit()
    for k, v in params_of(big).items():
        torch.testing.assert_close(params_of(acc)[k], v, rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in acc.history] == pytest.approx([r["loss"] for r in big.history], rel=1e-5)


def test_feature_cache_hits_and_matches_uncached():
    plain = make_trainer(toy_config(steps=8, cache_sam_features=False))
    plain.fit()
    cached = make_trainer(toy_config(steps=8, cache_sam_features=True))
    assert cached.cache is not None
    cached.fit()
    assert len(cached.cache.store) == 24                                # one entry per image id
    assert cached.cache.hits == 8 * 4 - 24                              # 32 samples seen, 24 distinct
    for k, v in params_of(plain).items():
        torch.testing.assert_close(params_of(cached)[k], v, rtol=1e-5, atol=1e-6)
    # augmentation disables the cache
    assert make_trainer(toy_config(cache_sam_features=True, augment=True)).cache is None


def test_eval_hook_runs_in_eval_mode(tmp_path):
    seen = []

    def eval_fn(model, step):
        seen.append((step, model.training, torch.is_grad_enabled()))
        return {"acc": step / 10}

    tr = make_trainer(toy_config(steps=4, eval_interval=2), out_dir=tmp_path, eval_fn=eval_fn)
    tr.fit()
    assert seen == [(2, False, False), (4, False, False)]
    assert tr.model.training
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 4, "eval/acc": 0.4} in recs
    assert json.loads((tmp_path / "final.json").read_text())["eval"] == {"acc": 0.4}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # forward #4 is step 4 → checkpoints at steps 1..3 exist, step 4 must not be taken
    tr = make_trainer(toy_config(steps=6, ckpt_interval=1, keep_last=2), out_dir=tmp_path, nan_at_call=4)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 4.*ckpt_0000003\.pt"):
        tr.fit()
    assert tr.step == 3
    last = latest_checkpoint(tmp_path)
    assert last.name == "ckpt_0000003.pt"
    state = load_checkpoint(last)
    for k, v in state["model"].items():                                # weights unchanged since the checkpoint
        assert torch.equal(v, tr.model.state_dict()[k]), k
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["event"] == "non_finite_loss"


def test_config_overrides_and_json_roundtrip():
    cfg = get_config("ln_trace", smoke=True, overrides=["lr=3e-4", "steps=7", "tasks={'trace': 1.0}",
                                                         "amp=false", "betas=[0.9, 0.95]", "init_from=x"])
    assert cfg.smoke and cfg.lr == 3e-4 and cfg.steps == 7 and cfg.tasks == {"trace": 1.0}
    assert cfg.amp is False and cfg.betas == (0.9, 0.95) and cfg.init_from == "x"
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert apply_overrides(cfg, ["lr=1"]).lr == 1.0                    # int → float field
    with pytest.raises(KeyError, match="unknown config key 'lrr'"):
        apply_overrides(cfg, ["lrr=1"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(cfg, ["steps=1.5"])
    with pytest.raises(KeyError, match="unknown config"):
        get_config("nope")
    full, smoke = get_config("pretrain"), get_config("pretrain", smoke=True)
    assert smoke.steps < full.steps and full.tasks == {"caption": 1.0}
    assert get_config("ln_trace").prompts["trace"] == "A long image caption:"


def test_mixture_dataset_ratio_and_determinism():
    from pixelllm.engine.datasets import MixtureDataset

    trace, caption = list(range(10)), [f"c{i}" for i in range(7)]
    mix = MixtureDataset({"trace": trace, "caption": caption}, {"trace": 2.0, "caption": 1.0}, seed=0)
    assert len(mix) == 15                                              # 10 trace slots + round(1/2 · 10) = 5
    items = [mix[i] for i in range(len(mix))]
    assert sorted(x for x in items if isinstance(x, int)) == trace    # every reference sample once
    assert len({x for x in items if isinstance(x, str)}) == 5          # 5 distinct captions, no repeats
    again = MixtureDataset({"trace": trace, "caption": caption}, {"trace": 2.0, "caption": 1.0}, seed=0)
    assert [again[i] for i in range(len(again))] == items
    with pytest.raises(ValueError, match="weights must be > 0"):
        MixtureDataset({"trace": trace}, {"trace": 0.0})


def test_cli_print_config_and_init_resolution(tmp_path, capsys):
    from pixelllm.engine.builder import resolve_inits
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.train import main

    assert main(["--config", "ln_trace", "--smoke", "--print-config", "lr=0.002"]) == 0
    assert "lr                   = 0.002" in capsys.readouterr().out
    cfg = get_config("ln_trace", overrides=[f"run_dir={tmp_path}"])
    assert resolve_inits(cfg, resolve_paths(cfg)) == []
    with pytest.raises(FileNotFoundError, match="train that stage first"):
        resolve_inits(cfg, resolve_paths(cfg), required=True)
    tr = make_trainer(toy_config(steps=1, ckpt_interval=1), out_dir=tmp_path / "checkpoints" / "pretrain")
    tr.fit()
    assert [p.name for p in resolve_inits(cfg, resolve_paths(cfg))] == ["ckpt_0000001.pt"]


# ------------------------------------------------------------------ tasks that compute their own loss
class ToyOwnLossTask(nn.Module):
    """A task with ``computes_own_loss``: the captioner above plus its own mean CE, as the dense captioner,
    the referring segmenter and the pretrainings do."""

    computes_own_loss = True

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.net = ToyCaptioner(dropout=dropout)

    def forward(self, batch, features=None):
        out = self.net(batch["images"], None, None, None, batch["target_ids"], batch["target_mask"])
        logits = out["logits"]
        ce = F.cross_entropy(logits.transpose(1, 2), batch["target_ids"], reduction="none")   # B×T
        m = batch["target_mask"].float()
        ce = ((ce * m).sum(1) / m.sum(1)).mean()                         # mean of per-sample means
        return {"loss": ce, "ce": ce.detach(), "n_items": torch.tensor(len(logits))}


def make_own_loss_trainer(cfg, out_dir=None, dropout=0.0):
    torch.manual_seed(0)
    return Trainer(ToyOwnLossTask(dropout), cfg, ToyDataset(24), toy_collate, out_dir=out_dir, progress=False)


def test_own_loss_task_learns_and_accumulation_averages_micro_batches():
    tr = make_own_loss_trainer(toy_config(steps=12, lr=3e-2))
    tr.fit()
    assert tr.history[-1]["loss"] < tr.history[0]["loss"]
    assert "n_items" not in tr.history[0] and tr.history[0]["ce"] == pytest.approx(tr.history[0]["loss"])
    # accumulation of 2 micro-batches of 2 = one batch of 4 when the task's loss is a mean over samples
    big = make_own_loss_trainer(toy_config(steps=3, batch_size=4))
    big.fit()
    acc = make_own_loss_trainer(toy_config(steps=3, batch_size=2, accum_steps=2))
    acc.fit()
    for (k, a), b in zip(params_of(big).items(), params_of(acc).values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5, msg=k)       # float summation order only
    assert [r["loss"] for r in acc.history] == pytest.approx([r["loss"] for r in big.history], rel=1e-5)


def test_own_loss_task_resume_is_exact(tmp_path):
    full = make_own_loss_trainer(toy_config(steps=6, ckpt_interval=3), out_dir=tmp_path / "a", dropout=0.3)
    full.fit()
    first = make_own_loss_trainer(toy_config(steps=6, ckpt_interval=3), out_dir=tmp_path / "b", dropout=0.3)
    first.fit(until=3)
    again = make_own_loss_trainer(toy_config(steps=6, ckpt_interval=3), out_dir=tmp_path / "b", dropout=0.3)
    assert again.resume() and again.step == 3
    again.fit()
    for (k, a), b in zip(params_of(full).items(), params_of(again).values()):
        assert torch.equal(a, b), k


def test_time_limit_is_a_warned_safety_net(tmp_path, monkeypatch):
    import pixelllm.engine.trainer as trainer_mod

    clock = iter(range(0, 10_000, 10))                      # every time.time() call advances 10 s
    monkeypatch.setattr(trainer_mod.time, "time", lambda: float(next(clock)))
    tr = make_trainer(toy_config(steps=50, time_limit_s=100.0), out_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="NOT those of the recipe"):
        tr.fit()
    assert 0 < tr.step < 50 and tr.stopped_early
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["stopped_early"] is True and final["step"] == tr.step
    assert (tmp_path / f"ckpt_{tr.step:07d}.pt").is_file()
    # without a limit the same config runs every step
    tr = make_trainer(toy_config(steps=5))
    tr.fit()
    assert tr.step == 5 and not tr.stopped_early


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    from pixelllm.utils import ConfigMismatchError

    make_trainer(toy_config(steps=2, ckpt_interval=1), out_dir=tmp_path).fit()
    longer = make_trainer(toy_config(steps=4, ckpt_interval=1), out_dir=tmp_path)
    assert longer.resume() and longer.step == 2                      # more steps: same recipe, continued
    other = make_trainer(toy_config(steps=4, lr=0.5, ckpt_interval=1), out_dir=tmp_path)
    with pytest.raises(ConfigMismatchError, match="lr"):
        other.resume()
    (tmp_path / "notes.txt").write_text("mine")
    assert not other.resume(discard_mismatch=True) and other.step == 0   # that run removed, starts afresh
    assert not list(tmp_path.glob("ckpt_*")) and not (tmp_path / "metrics.jsonl").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"                # nothing else touched
    other.fit()
    again = make_trainer(toy_config(steps=4, lr=0.5, ckpt_interval=1), out_dir=tmp_path)
    assert again.resume(discard_mismatch=True) and again.step == 4       # its own run: resumed


def test_found_or_compute_reuses_only_a_matching_config(tmp_path, monkeypatch):
    from pixelllm.utils import ConfigMismatchError, config_sidecar, found_or_compute

    monkeypatch.delenv("FORCE", raising=False)
    monkeypatch.delenv("PIXELLLM_STRICT", raising=False)
    calls = []
    art = tmp_path / "artifact.txt"

    def compute():
        calls.append(1)
        art.write_text(str(len(calls)))

    a = toy_config(steps=3)
    found_or_compute(art, compute, config=a)
    assert json.loads(config_sidecar(art).read_text())["steps"] == 3
    found_or_compute(art, compute, config=toy_config(steps=3, log_interval=7))   # volatile key: reused
    assert len(calls) == 1
    with pytest.raises(ConfigMismatchError, match="steps: stored 3 vs wanted 5"):
        found_or_compute(art, compute, config=toy_config(steps=5), strict=True)
    assert len(calls) == 1 and art.read_text() == "1"                 # strict: nothing recomputed
    found_or_compute(art, compute, config=toy_config(steps=5))         # default: recomputed
    assert len(calls) == 2 and json.loads(config_sidecar(art).read_text())["steps"] == 5
    config_sidecar(art).unlink()                                       # unknown origin: recomputed
    found_or_compute(art, compute, config=toy_config(steps=5))
    assert len(calls) == 3


def test_lr_multipliers_make_param_groups_by_name_prefix():
    from torch import nn

    from pixelllm.engine.trainer import param_groups

    net = nn.ModuleDict({"body": nn.Linear(3, 3), "trace_head": nn.Linear(3, 2)})
    cfg = toy_config(lr=1e-3, weight_decay=0.1, lr_multipliers={"trace_head.": 5.0})
    groups = param_groups(list(net.named_parameters()), cfg)
    got = sorted((g["lr"], g["weight_decay"], sum(p.numel() for p in g["params"])) for g in groups)
    assert got == sorted([(1e-3, 0.1, 9), (1e-3, 0.0, 3), (5e-3, 0.1, 6), (5e-3, 0.0, 2)])
    with pytest.raises(ValueError, match="no trainable parameter starts with"):
        param_groups(list(net.named_parameters()), toy_config(lr_multipliers={"head.": 2.0}))


def test_task_scoped_config_keys_compare_only_for_their_task():
    from pixelllm.utils import config_difference

    old = {"tasks": {"caption": 1.0}, "steps": 3}                      # stored before ln_alignment existed
    assert config_difference(old, {"tasks": {"caption": 1.0}, "steps": 3, "ln_alignment": "official"}) == {}
    assert config_difference(old, {"tasks": {"caption": 1.0}, "steps": 3, "lr_multipliers": {}}) == {}
    assert config_difference(old, {"tasks": {"caption": 1.0}, "steps": 3, "lr_multipliers": {"a.": 2.0}}) == {
        "lr_multipliers": ("<absent>", {"a.": 2.0})}
    assert config_difference(old, {"tasks": {"caption": 1.0}, "steps": 3, "group_by_length": False}) == {}
    assert config_difference(old, {"tasks": {"caption": 1.0}, "steps": 3, "group_by_length": True}) == {
        "group_by_length": ("<absent>", True)}
    trace_old = {"tasks": {"trace": 1.0}, "steps": 3}
    assert config_difference(trace_old, {"tasks": {"trace": 1.0}, "steps": 3, "ln_alignment": "official"}) == {
        "ln_alignment": ("<absent>", "official")}


def test_resuming_a_finished_run_keeps_its_last_record_in_final_json(tmp_path):
    tr = make_trainer(toy_config(steps=3, ckpt_interval=1), out_dir=tmp_path)
    tr.fit()
    first = json.loads((tmp_path / "final.json").read_text())
    again = make_trainer(toy_config(steps=3, ckpt_interval=1), out_dir=tmp_path)
    assert again.resume() and again.step == 3
    again.fit()                                                       # nothing left to train
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["step"] == 3 and final["train"]["loss"] == pytest.approx(first["train"]["loss"])


def test_a_trainer_told_to_write_nothing_takes_no_lock(tmp_path):
    """Benchmarks build a stage's trainer as the stage does (out_dir set) and then set ``out_dir = None``:
    training must run and leave nothing in the folder, not even a lock."""
    tr = make_trainer(toy_config(steps=2), out_dir=tmp_path / "run")
    tr.out_dir = None
    tr.fit()
    assert tr.step == 2
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_stage_made_by_the_cli_is_reused_by_the_notebooks_even_when_strict():
    """``python -m pixelllm.train`` writes the config sidecar that ``found_or_compute`` (the notebooks) reads, so a
    stage it made is reused, not called unknown (SMOKE ``refseg``: found when the notebook tests made it)."""
    from pixelllm.configs import get_config
    from pixelllm.engine.builder import stage_config
    from pixelllm.engine.paths import resolve_paths
    from pixelllm.train import main
    from pixelllm.utils import config_sidecar, found_or_compute

    cfg = get_config("refseg", smoke=True)
    final = resolve_paths(cfg).out / "final.json"
    config_sidecar(final).unlink(missing_ok=True)              # as if the stage had been made by the CLI alone
    assert main(["--config", "refseg", "--smoke"]) == 0
    assert found_or_compute(final, lambda: pytest.fail("recomputed"), config=stage_config(cfg), strict=True) == final
