"""DistributedDataParallel on CPU (gloo, 2 processes) == one process with the same global batch.

Each rank sees batch_size/2 samples (its slice of the same seeded permutation); the loss is normalised by
the global token/point counts, so the averaged gradients are those of the single-process batch. Sequences
have different lengths per sample, so per-rank averaging would NOT match — this checks the normaliser.
Tolerance: losses rel 1e-5, weights rtol 1e-5 / atol 1e-6 (float32 reductions in a different order).
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pixelllm.engine.checkpoint import load_checkpoint
from test_engine import make_trainer, params_of, toy_config

CFG = dict(steps=5, batch_size=8, accum_steps=1, lr=1e-2, warmup_steps=2, ckpt_interval=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, cfg: dict) -> None:
    from pixelllm.engine.distributed import cleanup, init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed(device="cpu")
    assert info.world_size == world and info.rank == rank
    try:
        tr = make_trainer(toy_config(**cfg), out_dir=out_dir, dist_info=info)
        tr.fit()
        torch.save({"history": tr.history, "params": params_of(tr)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_two_ranks_match_single_process(tmp_path, accum):
    cfg = dict(CFG, accum_steps=accum, batch_size=8 // accum)
    torch.set_num_threads(1)
    single = make_trainer(toy_config(**cfg))
    single.fit()

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), cfg), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    assert [h["loss"] for h in r0["history"]] == pytest.approx([h["loss"] for h in single.history], rel=1e-5)
    assert [h["point_l1"] for h in r0["history"]] == pytest.approx([h["point_l1"] for h in single.history], rel=1e-5)
    for k, v in params_of(single).items():
        torch.testing.assert_close(r0["params"][k], v, rtol=1e-5, atol=1e-6)
        assert torch.equal(r0["params"][k], r1["params"][k])            # ranks stay in sync
    # rank 0 alone wrote the checkpoint, with one RNG state per rank
    state = load_checkpoint(tmp_path)
    assert state["step"] == 5 and len(state["rng"]) == 2
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 5
