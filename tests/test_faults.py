"""Faults in checkpoints, resume and the command line (docs/BAD_INPUT.md, "Checkpoints, resume and the
command line"): one test per class, each asserting what happens — the error message naming the file, the
fallback, the kept files."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from pixelllm.engine import checkpoint as ckpt
from pixelllm.engine.checkpoint import CheckpointError, RunInUseError, list_checkpoints, load_checkpoint
from pixelllm.utils import ConfigMismatchError, repo_root
from test_engine import ToyDataset, make_trainer, params_of, toy_collate, toy_config

CFG = dict(steps=4, ckpt_interval=1, keep_last=3)


def finished_run(out, eval_fn=None, **kw):
    tr = make_trainer(toy_config(**{**CFG, **kw}), out_dir=out, eval_fn=eval_fn)
    tr.fit()
    return tr


# ------------------------------------------------------------------------------------- checkpoints
def test_truncated_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    ref = finished_run(tmp_path / "ref")
    finished_run(tmp_path / "run")
    newest = tmp_path / "run" / "ckpt_0000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])      # a crash mid-copy
    (tmp_path / "run" / "final.json").unlink()
    again = make_trainer(toy_config(**CFG), out_dir=tmp_path / "run")
    with pytest.warns(RuntimeWarning, match=r"ckpt_0000004\.pt: checksum mismatch.*previous good checkpoint ckpt_0000003\.pt"):
        assert again.resume()
    assert again.step == 3
    again.fit()                                                     # step 4 trained again, file rewritten
    assert load_checkpoint(newest)["step"] == 4
    for k, v in params_of(ref).items():
        assert torch.equal(params_of(again)[k], v), k


def test_flipped_bytes_fail_the_checksum_and_every_load_error_names_the_file(tmp_path):
    finished_run(tmp_path)
    path = tmp_path / "ckpt_0000004.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                                  # inside tensor data: torch.load would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ckpt_0000004\.pt: checksum mismatch"):
        load_checkpoint(path)
    ckpt.checksum_path(path).unlink()                              # without a sidecar: loads unverified
    assert load_checkpoint(path)["step"] == 4
    bad = tmp_path / "ckpt_0000009.pt"
    for content in (b"", b"not a zip file at all", b"PK\x03\x04" + b"\x00" * 40):
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=r"ckpt_0000009\.pt: cannot be read by torch\.load"):
            load_checkpoint(bad)
    torch.save([1, 2], bad)
    with pytest.raises(CheckpointError, match=r"ckpt_0000009\.pt: not a pixelllm-ckpt-v1 checkpoint"):
        load_checkpoint(bad)
    ckpt.checksum_path(bad).write_text("zz  ckpt_0000009.pt\n")
    with pytest.raises(CheckpointError, match=r"ckpt_0000009\.pt\.sha256: not a sha256 sidecar"):
        load_checkpoint(bad)
    # a folder of which no checkpoint is usable: one error listing them
    for p in list_checkpoints(tmp_path):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"none of its 4 checkpoint\(s\) is usable: .*ckpt_0000009.*ckpt_0000002"):
        load_checkpoint(tmp_path)


def test_sidecar_is_sha256sum_compatible_and_pruned_with_its_checkpoint(tmp_path):
    finished_run(tmp_path, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt_"))
    assert names == ["ckpt_0000003.pt", "ckpt_0000003.pt.sha256", "ckpt_0000004.pt", "ckpt_0000004.pt.sha256"]
    digest, name = (tmp_path / "ckpt_0000004.pt.sha256").read_text().split()
    assert name == "ckpt_0000004.pt" and digest == ckpt.file_sha256(tmp_path / "ckpt_0000004.pt")


def test_orphan_temp_files_are_removed_when_a_run_starts(tmp_path, capsys):
    finished_run(tmp_path, steps=2)
    orphans = [tmp_path / ".ckpt_0000003.pt.tmp4242", tmp_path / ".final.json.tmp77"]
    for p in orphans:
        p.write_bytes(b"half")
    (tmp_path / "notes.tmp1").write_text("mine")                    # not a temp file of ours: kept
    tr = make_trainer(toy_config(**CFG), out_dir=tmp_path)
    assert tr.resume() and tr.step == 2
    assert "removed 2 temp file(s) left by a killed run" in capsys.readouterr().out
    assert not any(p.exists() for p in orphans) and (tmp_path / "notes.tmp1").exists()


def test_checkpoint_of_another_architecture_is_one_error_naming_the_file(tmp_path):
    finished_run(tmp_path, steps=1)
    state = load_checkpoint(tmp_path)
    state["model"]["img.weight"] = torch.zeros(5, 5)
    state["model"]["lm.weight"] = torch.zeros(3, 3)
    tr = make_trainer(toy_config(steps=1))
    with pytest.raises(CheckpointError) as e:
        ckpt.load_trainable_state_dict(tr.model, state["model"], source=state["path"])
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "ckpt_0000001.pt")) and "2 tensor(s) have another shape" in msg
    assert "img.weight: (5, 5) in the checkpoint vs (16, 16) in the model" in msg and "\n" not in msg
    # a stored config that no config class reads: named too
    from pixelllm.engine.builder import checkpoint_config

    state["config"] = json.dumps({"stage": "toy", "no_such_field": 1})
    torch.save(state, tmp_path / "ckpt_0000002.pt")
    with pytest.raises(CheckpointError, match=r"ckpt_0000002\.pt: its stored config cannot be read .*no_such_field"):
        checkpoint_config(tmp_path / "ckpt_0000002.pt")


# ------------------------------------------------------------------------------------------ resume
def test_resume_policy_per_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PIXELLLM_STRICT", raising=False)
    finished_run(tmp_path, steps=2)
    # steps: re-applied with a log line
    longer = make_trainer(toy_config(**{**CFG, "steps": 3}), out_dir=tmp_path)
    assert longer.resume() and longer.step == 2
    assert "resume: steps 2 -> 3 re-applied" in capsys.readouterr().out
    shorter = make_trainer(toy_config(**{**CFG, "steps": 1}), out_dir=tmp_path)
    with pytest.raises(ConfigMismatchError, match="at step 2, past steps=1"):
        shorter.resume()
    # volatile keys: ignored
    assert make_trainer(toy_config(**{**CFG, "steps": 2, "log_interval": 5}), out_dir=tmp_path).resume()
    # batch size, seed, lr, architecture: refused, every differing key listed, nothing loaded
    other = make_trainer(toy_config(**{**CFG, "steps": 2, "batch_size": 8, "seed": 3, "lr": 0.5,
                                       "model_overrides": {"width": 8}}), out_dir=tmp_path)
    before = params_of(other)
    with pytest.raises(ConfigMismatchError) as e:
        other.resume()
    for key in ("batch_size: 4 vs 8", "seed: 0 vs 3", "lr: 0.01 vs 0.5", "model_overrides: {} vs {'width': 8}"):
        assert key in str(e.value)
    assert other.step == 0 and all(torch.equal(v, params_of(other)[k]) for k, v in before.items())
    # strict stage runners refuse too; the default sets that run aside (nothing deleted) and starts afresh
    monkeypatch.setenv("PIXELLLM_STRICT", "1")
    with pytest.raises(ConfigMismatchError, match="unset PIXELLLM_STRICT"):
        other.resume(discard_mismatch=True)
    monkeypatch.delenv("PIXELLLM_STRICT")
    assert not other.resume(discard_mismatch=True) and other.step == 0
    (aside,) = (tmp_path / "superseded").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["ckpt_0000001.pt", "ckpt_0000001.pt.sha256", "ckpt_0000002.pt",
                                                       "ckpt_0000002.pt.sha256", "final.json", "metrics.jsonl"]
    assert load_checkpoint(aside)["step"] == 2 and not list_checkpoints(tmp_path)


def test_retrained_init_checkpoint_is_not_silently_reused(tmp_path, capsys):
    up = tmp_path / "checkpoints" / "upstream"
    finished_run(up, steps=2)
    stage = toy_config(**{**CFG, "steps": 2}, init_from="upstream", run_dir=str(tmp_path))
    first = make_trainer(stage, out_dir=tmp_path / "stage")
    assert list(first.init_checksums) == ["upstream/ckpt_0000002.pt"]
    first.fit()
    assert make_trainer(stage, out_dir=tmp_path / "stage").resume(discard_mismatch=True)   # unchanged: reused
    retrained = make_trainer(toy_config(**{**CFG, "steps": 2, "lr": 0.02}), out_dir=up)
    retrained.resume(discard_mismatch=True)
    retrained.fit()                                                # same file name, other weights
    again = make_trainer(stage, out_dir=tmp_path / "stage")
    assert "init_from checkpoints" in again.config_difference(load_checkpoint(tmp_path / "stage"))
    with pytest.raises(ConfigMismatchError, match="init_from checkpoints"):
        again.resume()
    assert not again.resume(discard_mismatch=True) and again.step == 0   # retrained, old run set aside
    assert "init_from checkpoints" in capsys.readouterr().out


def test_stage_reuse_by_found_or_compute_follows_its_init_checkpoints(tmp_path, monkeypatch, capsys):
    from pixelllm.engine.builder import stage_config
    from pixelllm.utils import config_difference, found_or_compute

    monkeypatch.delenv("FORCE", raising=False)
    monkeypatch.delenv("PIXELLLM_STRICT", raising=False)
    up = tmp_path / "checkpoints" / "upstream"
    finished_run(up, steps=2)
    cfg = toy_config(**{**CFG, "steps": 2}, init_from="upstream", run_dir=str(tmp_path))
    runs = []

    def train_stage():
        runs.append(1)
        tr = make_trainer(cfg, out_dir=tmp_path / "stage")
        tr.resume(discard_mismatch=True)
        tr.fit()

    final = tmp_path / "stage" / "final.json"
    found_or_compute(final, train_stage, config=stage_config(cfg))
    found_or_compute(final, train_stage, config=stage_config(cfg))
    assert len(runs) == 1                                          # same config, same init: reused
    assert json.loads(final.read_text())["init_checksums"] == stage_config(cfg)["init_checksums"]
    retrained = make_trainer(toy_config(**{**CFG, "steps": 2, "lr": 0.02}), out_dir=up)
    retrained.resume(discard_mismatch=True)
    retrained.fit()
    found_or_compute(final, train_stage, config=stage_config(cfg))
    assert len(runs) == 2 and "init_checksums: stored" in capsys.readouterr().out
    # an artifact recorded before init checksums existed is taken as matching (not retrained)
    assert config_difference({"steps": 2}, {"steps": 2, "init_checksums": {"a/ckpt_0000002.pt": "00"}}) == {}


def test_torn_last_log_line_does_not_block_resume_and_no_record_is_duplicated(tmp_path):
    ref = finished_run(tmp_path / "ref")
    run = tmp_path / "run"
    make_trainer(toy_config(**CFG), out_dir=run).fit(until=2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')                          # killed mid-write at step 3
    again = make_trainer(toy_config(**CFG), out_dir=run)
    with pytest.warns(RuntimeWarning, match=r"metrics\.jsonl: line\(s\) \[3\] are not JSON records"):
        assert again.resume() and again.step == 2
    again.fit()
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(ln)["step"] for ln in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert steps == ref_steps == [1, 2, 3, 4]
    assert [r["loss"] for r in again.history] == [r["loss"] for r in ref.history[2:]]


def test_a_finished_run_rerun_is_already_complete_and_overwrites_nothing(tmp_path, capsys):
    finished_run(tmp_path, steps=3, eval_fn=lambda model, step: {"score": 0.5})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    again = make_trainer(toy_config(**{**CFG, "steps": 3}), out_dir=tmp_path, eval_fn=lambda model, step: {"score": 0.0})
    assert again.resume() and again.fit() == []
    assert "already complete (3/3 steps); final.json kept" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before
    assert json.loads(before["final.json"])["train"]["loss"] > 0


def test_training_from_step_0_over_an_earlier_run_sets_it_aside(tmp_path, capsys):
    finished_run(tmp_path, steps=2)
    fresh = make_trainer(toy_config(**{**CFG, "steps": 2}), out_dir=tmp_path)   # not resumed (--no-resume)
    fresh.fit()
    assert "starting from step 0 over an earlier run" in capsys.readouterr().out
    (aside,) = (tmp_path / "superseded").iterdir()
    assert (aside / "final.json").is_file() and len(list_checkpoints(aside)) == 2
    assert [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_two_runs_in_one_out_dir_do_not_interleave(tmp_path):
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib; from pixelllm.engine.checkpoint import RunLock\n"
         "with RunLock(sys.argv[1]):\n    pathlib.Path(sys.argv[2]).touch(); time.sleep(60)\n",
         str(tmp_path / "run"), str(ready)],
        env={**os.environ, "PYTHONPATH": str(repo_root())})
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.1)
        tr = make_trainer(toy_config(**CFG), out_dir=tmp_path / "run")
        with pytest.raises(RunInUseError, match=rf"run is in use by another run \(pid {holder.pid} on .*, since"):
            tr.fit()
        assert tr.step == 0 and not list_checkpoints(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    tr.fit()                                                       # the holder died: the OS released its lock
    assert tr.step == 4 and not (tmp_path / "run" / ".lock.holder").exists()


# ------------------------------------------------------------------------------ exact resume + cache
def test_resume_is_bit_identical_with_the_feature_cache_on(tmp_path):
    cfg = dict(steps=8, batch_size=4, accum_steps=1, ckpt_interval=4, keep_last=2, cache_sam_features=True)
    ref = make_trainer(toy_config(**cfg), out_dir=tmp_path / "ref", dropout=0.3)
    ref.fit()
    assert ref.cache is not None and ref.cache.hits > 0
    make_trainer(toy_config(**cfg), out_dir=tmp_path / "run", dropout=0.3).fit(until=4)
    again = make_trainer(toy_config(**cfg), out_dir=tmp_path / "run", dropout=0.3)
    assert again.resume() and again.step == 4                     # its cache starts empty, mid-epoch
    again.fit()
    for k, v in params_of(ref).items():
        assert torch.equal(params_of(again)[k], v), k
    # an image's cached features are those of encoding it alone, whichever batch brought it: an encoder
    # whose rounding depends on the batch (as a batched ViT's does, ~1e-7) is called on one image at a time
    from pixelllm.engine.trainer import FeatureCache

    def batch_dependent(images, sizes=None):
        return ref.model.frozen_image_features(images) + 1e-3 * len(images)

    first = FeatureCache(batch_dependent)(toy_collate([ToyDataset(24)[i] for i in (5, 1, 7)]))
    other = FeatureCache(batch_dependent)(toy_collate([ToyDataset(24)[i] for i in (7, 2)]))
    assert torch.equal(first[2], other[0])                         # image 7, met in two different batches


# ------------------------------------------------------------------------------------- data up front
def test_missing_training_images_are_found_before_the_first_step(tmp_path):
    from pathlib import Path

    class WithImages(ToyDataset):
        def missing_images(self, indices=None):      # only the Subset's samples are asked about
            return [Path(f"/nowhere/{i:012d}.jpg") for i in (indices if indices is not None else range(24)) if i == 7]

    sub = torch.utils.data.Subset(WithImages(24), range(16))
    with pytest.raises(FileNotFoundError, match=r"1 training image\(s\) do not exist, e\.g\. /nowhere/000000000007\.jpg"):
        from pixelllm.engine.trainer import Trainer

        Trainer(torch.nn.Linear(1, 1), toy_config(), sub, toy_collate, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize("override,message", [
    ("steps=-5", "steps=-5: must be an integer >= 1"),
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("accum_steps=0", "accum_steps=0: must be an integer >= 1"),
    ("max_samples=-3", "max_samples=-3: must be an integer >= 0 (0 = all)"),
    ("tasks={'trace': -1.0}", "tasks={'trace': -1.0}: must map task names to finite weights >= 0"),
    ("lr=inf", "lr=inf: must be a finite number > 0"),
    ("word_weights={'star': -2.0}", "word_weights={'star': -2.0}: must map words to finite weights >= 0"),
    ("lr=abc", "override lr='abc': not a Python literal of type float"),
    ("steps=1.5", "override steps='1.5': expected int, got float"),
    ("nokey=1", "unknown config key 'nokey'; known: accum_steps"),
    ("steps", "override 'steps': expected key=value"),
    ("--preset=huge", "unknown preset 'huge'; available: tiny, small, paper"),
])
def test_cli_refuses_bad_values_up_front_in_one_line(override, message, capsys, monkeypatch):
    import pixelllm.train as cli

    monkeypatch.setattr(cli, "make", lambda *a, **k: pytest.fail("something ran"))
    assert cli.main(["--config", "refseg", "--smoke", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m pixelllm.train: error: ") and message in err and err.count("\n") == 1


def test_cli_turns_run_faults_into_one_line(tmp_path, capsys, monkeypatch):
    import pixelllm.train as cli

    def locked(*a, **k):
        raise RunInUseError(f"{tmp_path} is in use by another run (pid 1 on host, since now)")

    monkeypatch.setattr(cli, "make", locked)
    assert cli.main(["--config", "pretrain", "--smoke", "device=cpu"]) == 2
    assert capsys.readouterr().err == f"python -m pixelllm.train: error: {tmp_path} is in use by another run (pid 1 on host, since now)\n"


def test_notebooks_only_an_unknown_prefix_exits_2_listing_the_notebooks(capsys):
    from pixelllm.notebooks import main

    with pytest.raises(SystemExit) as e:
        main(["--mode", "smoke", "--only", "99"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--only 99: no notebook starts with that" in err and "01_data_prep.ipynb" in err
