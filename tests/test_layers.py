"""The package's layers point one way: configs/utils → data/eval → modeling/viz → engine → pretrain → tasks →
report/notebooks/predict → the CLI (``pixelllm.train``), which nothing imports. No import cycle (function-level
imports included), no private name imported from another module."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from pixelllm.utils import repo_root

ROOT = repo_root()

#: (package prefix, rank): a module may import modules of a lower rank, or of its own package
RANKS = [
    ("pixelllm._lazy", 0), ("pixelllm.utils", 0), ("pixelllm.configs", 0),
    ("pixelllm.data", 1), ("pixelllm.eval", 1),
    ("pixelllm.modeling", 2), ("pixelllm.viz", 2),
    ("pixelllm.engine", 3),
    ("pixelllm.pretrain", 4),
    ("pixelllm.tasks", 5),
    ("pixelllm.report", 6), ("pixelllm.notebooks", 6), ("pixelllm.predict", 6),
    ("pixelllm.train", 7),
]


def module_files(folder: str = "pixelllm") -> dict[str, Path]:
    out = {}
    for f in (ROOT / folder).rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = module_files()


def imports_of(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import of the file, outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            out.append((mod, [a.name for a in node.names]))
    return out


def owner(target: str) -> str | None:
    """The package module a dotted import target lives in (``pixelllm.a.b.c`` → longest existing prefix)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def rank(module: str) -> tuple[str, float]:
    for prefix, r in RANKS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, r
    return "pixelllm", 0                                     # the package root (lazy names only)


def edges() -> dict[str, set[str]]:
    g = defaultdict(set)
    for name, path in MODULES.items():
        for mod, names in imports_of(name, path):
            for t in [mod] + [f"{mod}.{n}" for n in names]:
                o = owner(t) if t.startswith("pixelllm") else None
                if o and o != name:
                    g[name].add(o)
    return g


def test_no_upward_import():
    bad = []
    for a, targets in edges().items():
        pa, ra = rank(a)
        for b in targets:
            pb, rb = rank(b)
            if pa != pb and "pixelllm" not in (pa, pb) and rb >= ra:
                bad.append(f"{a} -> {b}")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    g = edges()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("folder", ["pixelllm", "bench", "data_prep"])
def test_nothing_imports_the_cli_module(folder):
    users = [n for n, p in module_files(folder).items() if n != "pixelllm.train"
             for mod, names in imports_of(n, p)
             if mod == "pixelllm.train" or (mod == "pixelllm" and "train" in names)]
    assert not users, f"modules importing the CLI module pixelllm.train: {users}"


def test_no_private_name_imported_from_another_module():
    bad = [f"{n}: from {mod} import {x}" for n, p in MODULES.items() for mod, names in imports_of(n, p)
           if mod.startswith("pixelllm") and owner(mod) != n for x in names
           if x.startswith("_") and not x.startswith("__")]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)
