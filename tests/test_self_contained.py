"""The repo stands on its own: no tracked file points outside it or reads like a development log.

Every text file that git tracks is searched for references to material that ships without the repo
(a ``../shared`` folder, a ``REFERENCE.md`` / ``REFERENCE §`` document, a ``seeds/`` folder) and for
wording about how the repo was made rather than what it does ("this round", "this session", "this
machine", "the issues' goals", ...). Facts about the paper belong in ``docs/PAPER_NOTES.md``; hardware
is described as hardware ("a 2-core CPU"). Each hit is printed as ``file:line: text``.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from pixelllm.utils import repo_root

ROOT = repo_root()
THIS = "tests/test_self_contained.py"
BINARY_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".pdf", ".pt", ".pth", ".safetensors", ".zip", ".gz")

# (pattern, flags): precise phrases only, so that ordinary words ("reference", "issue", "round trip",
# "seeds", "machine") stay allowed.
PATTERNS = [
    (r"\.\./shared", 0),                                   # a folder outside the repo
    (r"/work/shared", 0),
    (r"REFERENCE\.md", 0),                                 # a notes file that is not in the repo
    (r"REFERENCE §", 0),
    (r"(?<![\w.-])seeds/", 0),                             # the seed-documents folder
    (r"\bthis round\b", re.I),                             # development rounds
    (r"\b(previous|last|next|earlier|later) round\b", re.I),
    (r"\bround'?s? of (work|development)\b", re.I),
    (r"\bthis session\b", re.I),                           # work sessions
    (r"\b(these|previous|last|earlier|later|other) sessions?\b", re.I),
    (r"_this_session\b", re.I),
    (r"\bthe issues'", re.I),                              # work tickets
    (r"\b(of|in|by) the issues\b", re.I),
    (r"\bissues? #?\d+\b", re.I),
    (r"\bgoals? (set|stated|given) (by|in)\b", re.I),
    (r"\bthis machine\b", re.I),                           # say "a 2-core CPU" instead
    (r"\bour machine\b", re.I),
    (r"\bthe fix of\b", re.I),
    (r"\bwas fixed\b", re.I),
    (r"\bCEO\b", 0),
    (r"\bdevelopers?\b", re.I),
    (r"\bstop \d+\b", re.I),
    (r"\bthrowaway\b", re.I),
    (r"\blent to\b", re.I),
]
COMPILED = [re.compile(p, f) for p, f in PATTERNS]


def _tracked_text_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to list")
    files = [f for f in out.stdout.decode().split("\0") if f]
    return [f for f in files if f != THIS and not f.lower().endswith(BINARY_SUFFIXES)]


def _hits() -> list[str]:
    hits = []
    for rel in _tracked_text_files():
        path = ROOT / rel
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:                           # binary without a known suffix
            continue
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if any(rx.search(line) for rx in COMPILED):
                hits.append(f"{rel}:{n}: {line.strip()[:200]}")
    return hits


def test_patterns_are_precise():
    """Ordinary words the repo needs are not flagged."""
    fine = ["reference captions", "a round trip", "rounded to pixels", "fixed seeds", "seeds of every arm",
            "a state machine", "the machinery", "issues a warning", "in the background", "stop early",
            "refs(unc).p", "ROUND_HALF_EVEN", "the developed world"]
    assert not [s for s in fine if any(rx.search(s) for rx in COMPILED)]
    bad = ["see ../shared/x", "REFERENCE §2", "the fix of this round", "in this session",
           "most of the issues' goals", "this machine", "refcoco_seconds_this_session"]
    assert all(any(rx.search(s) for rx in COMPILED) for s in bad)


def test_no_references_outside_the_repo_and_no_development_log_wording():
    hits = _hits()
    for h in hits:
        print(h)
    assert not hits, f"{len(hits)} line(s) point outside the repo or read like a development log:\n" + "\n".join(hits)
