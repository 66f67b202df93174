"""Execute the repo's notebooks with papermill, in order.

``python -m pixelllm.notebooks --mode full``  (what ``make reproduce`` runs)
``python -m pixelllm.notebooks --mode smoke`` (what the notebook tests run, one notebook at a time)

Executed copies go to ``runs/<mode>/notebooks/``; the committed notebooks stay output-free.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pixelllm.utils import repo_root, results_dir, run_dir, write_json


def notebook_paths() -> list[Path]:
    """All committed notebooks, in execution order (their ``NN_`` prefix)."""
    return sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def execute(nb: Path, smoke: bool, parameters: dict | None = None, timeout: int | None = None) -> Path:
    """Run one notebook top to bottom with papermill (``SMOKE`` injected) and return the executed copy."""
    import papermill as pm

    out_dir = run_dir(smoke) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / nb.name
    params = {"SMOKE": smoke, **(parameters or {})}
    pm.execute_notebook(
        str(nb), str(out), parameters=params, kernel_name="python3", cwd=str(nb.parent),
        progress_bar=False, execution_timeout=timeout,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["full", "smoke"], default="full")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to run (e.g. 01 04)")
    args = ap.parse_args(argv)
    names = [nb.name for nb in notebook_paths()]
    unknown = [p for p in args.only or [] if not any(n.startswith(p) for n in names)]
    if unknown:
        ap.error(f"--only {' '.join(unknown)}: no notebook starts with that; the notebooks: {', '.join(names)}")
    smoke = args.mode == "smoke"
    timings = {}
    for nb in notebook_paths():
        if args.only and not any(nb.name.startswith(p) for p in args.only):
            continue
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] running {nb.name} ({args.mode}) ...", flush=True)
        execute(nb, smoke)
        timings[nb.name] = round(time.time() - t0, 1)
        print(f"    done in {timings[nb.name]:.0f} s", flush=True)
        # Timings are written after every notebook so an interrupted reproduce keeps what it measured.
        path = results_dir(smoke) / "timings.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, {**old, nb.stem: timings[nb.name]})


if __name__ == "__main__":
    main()
