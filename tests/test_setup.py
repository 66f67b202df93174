"""Packaging facts the README promises."""
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from pixelllm.utils import knobs, repo_root

ROOT = repo_root()


def test_import_pixelllm_does_no_io_and_no_heavy_imports():
    # A fresh interpreter: importing the package must not pull in torch/transformers nor open files
    # beyond its own modules (audit hook records every open()).
    code = (
        "import sys\n"
        "opened = []\n"
        "sys.addaudithook(lambda ev, args: opened.append(args[0]) if ev == 'open' else None)\n"
        "import pixelllm\n"
        "bad = [p for p in opened if isinstance(p, str) and 'pixelllm' not in p and not p.endswith(('.py', '.pyc'))]\n"
        "assert not bad, bad\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(deps) == sorted(d for d in pip_deps if d != "-e .")
    assert "python=3.11" in env["dependencies"]


def test_torch_is_capped_at_the_tested_release():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.1,<=2.14.1" in deps and "torchvision>=0.16,<=0.29.1" in deps


def test_knobs_resolves_pairs_by_mode():
    full = knobs(False, STEPS=(100, 2), LR=1e-3, SIZES=[64, 8])
    smoke = knobs(True, STEPS=(100, 2), LR=1e-3, SIZES=[64, 8])
    assert (full.STEPS, full.LR, full.SIZES) == (100, 1e-3, 64)
    assert (smoke.STEPS, smoke.LR, smoke.SIZES) == (2, 1e-3, 8)


def test_ci_runs_make_test_only():
    lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[-1] == "make test"
