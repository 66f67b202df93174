"""Interrupt + resume == uninterrupted (bit-identical, dropout and shuffling on); atomic writes; keep-last-K."""
import random

import numpy as np
import pytest
import torch

from pixelllm.engine import checkpoint as ckpt
from pixelllm.engine.checkpoint import list_checkpoints, load_checkpoint
from test_engine import make_trainer, params_of, toy_config

# 24 samples / batch 4 → 6 batches per epoch; with accumulation 2 an epoch is 3 steps, 7 steps cross two
# epoch boundaries and the interruption after step 4 falls mid-epoch.
CFG = dict(steps=7, batch_size=4, accum_steps=2, lr=1e-2, warmup_steps=2, ckpt_interval=2, keep_last=3)


@pytest.mark.parametrize("interrupt_after", [2, 4])
def test_resume_is_bit_identical(tmp_path, interrupt_after):
    ref = make_trainer(toy_config(**CFG), out_dir=tmp_path / "ref", dropout=0.3)
    ref.fit()

    run = tmp_path / "run"
    first = make_trainer(toy_config(**CFG), out_dir=run, dropout=0.3)
    first.fit(until=interrupt_after)                                   # "preempted" after this step
    assert first.step == interrupt_after
    del first
    # a new process starts from other RNG states and a fresh init of the trainable weights (frozen ones
    # come from their own file, here: the same seed): prove both get restored
    second = make_trainer(toy_config(**CFG), out_dir=run, dropout=0.3)
    with torch.no_grad():
        for p in second.params:
            p.add_(torch.randn_like(p))
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    assert second.resume() is True
    assert second.step == interrupt_after
    state = load_checkpoint(run)
    assert (state["epoch"], state["batch_in_epoch"]) == divmod(interrupt_after * 2, 6)
    second.fit()

    for k, v in params_of(ref).items():
        assert torch.equal(params_of(second)[k], v), k
    for (k, a), b in zip(ref.optimizer.state_dict()["state"].items(), second.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert [r["loss"] for r in second.history] == [r["loss"] for r in ref.history[interrupt_after:]]
    # the log of the resumed run reads like the uninterrupted one
    assert (run / "metrics.jsonl").read_text().count("\n") == (tmp_path / "ref" / "metrics.jsonl").read_text().count("\n")


def test_without_rng_restore_the_run_differs(tmp_path):
    """Guards the test above: dropout really depends on the RNG state, so restoring it matters."""
    ref = make_trainer(toy_config(**CFG), out_dir=tmp_path / "ref", dropout=0.3)
    ref.fit()
    run = tmp_path / "run"
    make_trainer(toy_config(**CFG), out_dir=run, dropout=0.3).fit(until=4)
    second = make_trainer(toy_config(**CFG), out_dir=run, dropout=0.3)
    second.resume()
    torch.manual_seed(123)                                             # clobber the restored RNG
    second.fit()
    assert not all(torch.equal(params_of(second)[k], v) for k, v in params_of(ref).items())


def test_keep_last_k(tmp_path):
    tr = make_trainer(toy_config(steps=5, ckpt_interval=1, keep_last=2), out_dir=tmp_path)
    tr.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000004.pt", "ckpt_0000005.pt"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    tr = make_trainer(toy_config(steps=2, ckpt_interval=1, keep_last=5), out_dir=tmp_path)
    tr.fit(until=1)
    good = tmp_path / "ckpt_0000001.pt"
    good_bytes = good.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tr.fit()                                                        # step 2's checkpoint fails mid-write
    assert not (tmp_path / "ckpt_0000002.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".pt") or "tmp" in p.name) == ["ckpt_0000001.pt"]
    assert good.read_bytes() == good_bytes
    # overwriting an existing name: the old content survives a failed write
    with pytest.raises(OSError):
        ckpt.atomic_torch_save({"x": 1}, good)
    assert good.read_bytes() == good_bytes
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1


def test_checkpoint_loads_weights_only_and_rejects_foreign_files(tmp_path):
    tr = make_trainer(toy_config(steps=1, ckpt_interval=1), out_dir=tmp_path)
    tr.fit()
    obj = torch.load(list_checkpoints(tmp_path)[-1], weights_only=True)   # plain containers only
    assert obj["format"] == ckpt.FORMAT and isinstance(obj["config"], str) and len(obj["rng"]) == 1
    torch.save({"hello": torch.zeros(1)}, tmp_path / "ckpt_0000009.pt")
    with pytest.raises(ValueError, match="ckpt_0000009.pt: not a pixelllm-ckpt-v1 checkpoint"):
        load_checkpoint(tmp_path / "ckpt_0000009.pt")                  # the file itself: an error naming it
    with pytest.warns(RuntimeWarning, match="ckpt_0000009.pt: not a pixelllm-ckpt-v1.*previous good checkpoint ckpt_0000001.pt"):
        assert load_checkpoint(tmp_path)["step"] == 1                  # the folder: falls back to the good one
    with pytest.raises(KeyError, match="model lacks"):
        ckpt.load_trainable_state_dict(tr.model, {"nope.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="misses trainable"):
        ckpt.load_trainable_state_dict(tr.model, {})
