"""How fast is the synthetic world? Generates N scenes (default 10,000, every annotation) into a temporary
folder, prints the wall time and writes ``results/synthetic_speed.json`` {n_scenes, seconds, workers}.

    python bench/synthetic_speed.py [--n-scenes 10000] [--workers 2] [--image-size 128]

Target: 10k scenes in <= 60 s on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> dict:
    from pixelllm.data.synthetic import generate
    from pixelllm.utils import results_dir, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-scenes", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--out", default=None, help="results JSON (default results/synthetic_speed.json)")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="synthetic_speed_")
    try:
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        stats = generate(tmp, n_scenes=args.n_scenes, image_size=args.image_size, workers=args.workers)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"n_scenes": args.n_scenes, "seconds": round(seconds, 2), "workers": stats["timing"]["workers"],
           # When other processes share the cores, CPU seconds (this process + its workers) / workers is what
           # the wall time would be on otherwise idle cores; the load average says how contended the run was.
           "cpu_seconds": round(cpu, 2), "render_seconds": stats["timing"]["render_seconds"],
           "image_size": args.image_size, "cpu_count": os.cpu_count(),
           "load_average_1min": round(os.getloadavg()[0], 2)}
    write_json(args.out or results_dir(False) / "synthetic_speed.json", res)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
