"""What the README says works, verbatim, for a newcomer: every command and code snippet runs.

On a fresh run folder (``$PIXELLLM_RUNS`` in a temp dir): CPU training commands run at SMOKE scale (``--smoke``
added where missing), GPU / real-data commands are parsed and resolved with ``--print-config`` (their paths
do not exist here), the python snippets run against the SMOKE run folder, and the kernel the README names is
the one the notebooks declare.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pixelllm.utils import repo_root

README = repo_root() / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[str]:
    """Every ``python``/``torchrun`` command of the README's bash blocks (continuation lines joined,
    comments dropped)."""
    out = []
    for block in blocks("bash"):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if re.match(r"^(\.venv/bin/)?(python|torchrun)\b", line):
                out.append(line)
    return out


def as_test_command(line: str) -> list[str]:
    """The command to run here: the test's interpreter; torchrun → one process; ``...`` dropped;
    GPU / real-data / other-preset commands only resolve their config (``--print-config``); CPU
    training commands run their SMOKE variant."""
    args = shlex.split(line.replace(" ...", ""))
    if args[0] == "torchrun":
        i = args.index("--nproc_per_node")
        args = ["python"] + args[1:i] + args[i + 2:]
    args = [sys.executable] + args[1:]
    resolve_only = any(a.startswith(("device=cuda", "sam_checkpoint=/", "data_dir=/")) for a in args) or (
        "--preset" in args and args[args.index("--preset") + 1] != "tiny")
    if "pixelllm.train" in args:
        args.append("--print-config" if resolve_only else "--smoke")
    return args


@pytest.fixture(scope="module")
def fresh_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "PIXELLLM_RUNS": str(runs), "PYTHONPATH": str(repo_root())}
    return runs, env


def test_readme_has_commands_and_snippets():
    cmds = commands()
    assert any("--config ln_trace --smoke" in c for c in cmds)        # the quick check
    assert any("torchrun" in c for c in cmds) and blocks("python")


def test_every_readme_command_runs(fresh_runs):
    runs, env = fresh_runs
    for line in commands():
        args = as_test_command(line)
        if "data_prep.make_synthetic" in args:
            args = [sys.executable, "-m", "data_prep.make_synthetic", "--out", str(runs / "world"), "--n-scenes", "12"]
        r = subprocess.run(args, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"README command failed: {line}\nran: {args}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    # the quick check made the SMOKE stages it needs, stage 1 first
    assert (runs / "smoke" / "checkpoints" / "pretrain" / "final.json").is_file()
    assert (runs / "smoke" / "checkpoints" / "ln_trace" / "final.json").is_file()


def test_every_readme_python_snippet_runs(fresh_runs, tmp_path):
    runs, env = fresh_runs
    if not (runs / "smoke" / "checkpoints" / "ln_trace" / "final.json").is_file():
        r = subprocess.run([sys.executable, "-m", "pixelllm.train", "--config", "ln_trace", "--smoke"],
                           cwd=repo_root(), env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-4000:]
    for snippet in blocks("python"):
        code = snippet.replace("runs/full", str(runs / "smoke"))
        script = tmp_path / "snippet.py"
        script.write_text(code)
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"README snippet failed:\n{snippet}\n{r.stderr[-4000:]}"


def test_readme_names_the_kernel_the_notebooks_declare():
    text = README.read_text()
    specs = {json.loads(p.read_text())["metadata"]["kernelspec"]["name"]
             for p in sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    assert specs == {"python3"}
    assert "Python 3 (ipykernel)" in text
    make = (repo_root() / "Makefile").read_text()
    registered = re.search(r'--display-name "([^"]+)"', make).group(1)
    assert registered in text
