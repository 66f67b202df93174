"""Lazy attributes for package ``__init__`` modules (PEP 562 module ``__getattr__``).

    __getattr__ = lazy_module_getattr(__name__, {"Trainer": "pixelllm.engine.trainer"})

A name is imported from its sub-module on first access, so importing the package itself stays light
(no torch, matplotlib, ...). Imports nothing but :mod:`importlib`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_module_getattr(package_name: str, mapping: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package_name``: ``name`` in ``mapping`` is
    ``getattr(import_module(mapping[name]), name)`` (a module name starting with ``.`` is relative to
    ``package_name``); any other name raises ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        if name in mapping:
            return getattr(importlib.import_module(mapping[name], package_name), name)
        raise AttributeError(f"module {package_name!r} has no attribute {name!r}")

    return __getattr__
