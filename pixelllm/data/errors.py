"""Errors and skip bookkeeping shared by the dataset readers.

Two ways a reader reacts to bad input, never a third:

* :class:`DataFormatError` — the file does not follow its format (malformed JSON, a required field
  missing or of the wrong type). Loading stops with a message that names the file, the line (JSON
  lines) and the field, e.g. ``ln.jsonl:17: field 'timed_caption[2].start_time': expected a number,
  got 'abc'``.
* :class:`SkipCounter` — the record is well-formed but unusable for the task (a narrative without a
  trace, a zero-area box). It is skipped, counted by reason, and the counts are reported once at the
  end of loading (a ``logging`` warning + a dict), so no data disappears silently.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any, Iterator

log = logging.getLogger("pixelllm.data")

#: largest image accepted, in pixels: 8192² ≈ 67 M (COCO, Visual Genome and Open Images photos have under
#: 2 M; 67 M RGB pixels already decode to 200 MB). Read at call time by :func:`check_coco_images` (declared
#: sizes, at which masks are decoded) and :func:`pixelllm.data.images.open_image` (image files, a
#: decompression bomb); raise it here for larger images.
MAX_IMAGE_PIXELS = 8192 * 8192


class DataFormatError(ValueError):
    """A file that does not follow its format.

    Args:
        path: the file being read.
        line: 1-based line number (JSON lines files), or ``None`` for whole-file formats.
        field: the offending field as a path, e.g. ``"timed_caption[2].start_time"``; ``None`` when the
            problem is not about one field (malformed JSON).
        message: what is wrong, e.g. ``"expected a number, got 'abc'"``.
    """

    def __init__(self, path: str | os.PathLike | None, line: int | None, field: str | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if self.path is not None else "<data>"
        if line is not None:
            where += f":{line}"
        what = f"field {field!r}: {message}" if field else message
        super().__init__(f"{where}: {what}")


def _short(value: Any, n: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def require(obj: Any, key: str, types: type | tuple[type, ...], path, line, prefix: str = "",
            optional: bool = False, default: Any = None) -> Any:
    """``obj[key]`` checked against ``types``; raises :class:`DataFormatError` naming ``prefix + key``.

    ``bool`` is refused where a number is expected (JSON ``true`` is not a coordinate). Numbers must be
    finite. ``optional=True`` returns ``default`` when the key is absent.
    """
    field = f"{prefix}{key}"
    if not isinstance(obj, dict):
        raise DataFormatError(path, line, prefix.rstrip(".") or None, f"expected an object, got {type_name(obj)}")
    if key not in obj:
        if optional:
            return default
        raise DataFormatError(path, line, field, "missing")
    return check_type(obj[key], types, path, line, field)


def check_type(value: Any, types: type | tuple[type, ...], path, line, field: str) -> Any:
    """``value`` if it is an instance of ``types`` (numbers: finite, not bool), else DataFormatError."""
    types = types if isinstance(types, tuple) else (types,)
    numeric = any(t in (int, float) for t in types)
    ok = isinstance(value, types) and not (numeric and isinstance(value, bool) and bool not in types)
    if ok and numeric and isinstance(value, float) and not math.isfinite(value):
        raise DataFormatError(path, line, field, f"expected a finite number, got {value!r}")
    if not ok:
        names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
        want = " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))
        if set(types) >= {int, float}:
            want = "a number"
        raise DataFormatError(path, line, field, f"expected {want}, got {_short(value)}")
    return value


class SkipCounter:
    """Counts skipped (or repaired) records by reason and reports them once, at the end of loading.

    >>> skips = SkipCounter("visual_genome")
    >>> skips.add("zero-area box", detail="region 17")
    >>> skips.report()          # logs one warning line, returns the counts
    {'zero-area box': 1}
    """

    def __init__(self, source: str = "data", max_examples: int = 3):
        self.source = source
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, reason: str, n: int = 1, detail: str | None = None) -> None:
        """Count ``n`` records under ``reason``; keep the first few ``detail`` strings as examples."""
        self.counts[reason] += n
        if detail is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.max_examples:
                ex.append(detail)

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return len(self) > 0

    def merge(self, other: "SkipCounter") -> None:
        for k, v in other.counts.items():
            self.add(k, v)
        for k, ex in other.examples.items():
            self.examples.setdefault(k, []).extend(ex[: self.max_examples])

    def report(self, logger: logging.Logger | None = None) -> dict[str, int]:
        """Log one warning summarising the counts (nothing when empty) and return them as a dict."""
        out = dict(self.counts)
        if out:
            parts = []
            for k, v in sorted(out.items()):
                ex = self.examples.get(k)
                parts.append(f"{k}: {v}" + (f" (e.g. {'; '.join(ex)})" if ex else ""))
            (logger or log).warning("%s: %s", self.source, ", ".join(parts))
        return out

    def __repr__(self) -> str:
        return f"SkipCounter({self.source!r}, {dict(self.counts)})"


def read_json(path: str | os.PathLike) -> Any:
    """``json.load`` of a whole file; malformed JSON or bytes that are not UTF-8 raise
    :class:`DataFormatError` naming file:line."""
    import json

    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e, raw.count(b"\n", 0, e.start) + 1) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataFormatError(path, None, None, "malformed JSON (nested too deeply)") from None


def _not_utf8(path, raw: bytes, e: UnicodeDecodeError, lineno: int) -> DataFormatError:
    """A :class:`DataFormatError` for bytes that are not UTF-8 (JSON text is UTF-8, RFC 8259 §8.1);
    ``raw`` is the file's (or the line's) bytes, ``e.start`` the offset in them."""
    col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    return DataFormatError(path, lineno, None, f"not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column {col})")


def read_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` of every non-blank line of a JSON-lines file; a malformed line or
    one that is not UTF-8 raises :class:`DataFormatError` naming file:line."""
    import json

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, raw, e, lineno) from None
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None


def check_file_name(name: str, path, line, field: str) -> str:
    """``name`` if it is a relative path that stays inside the image folder, else :class:`DataFormatError`:
    an absolute path or one with a ``..`` component would read a file outside the data set."""
    from pathlib import PurePosixPath, PureWindowsPath

    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or \
            PureWindowsPath(name).drive or ".." in parts or "\0" in name:
        raise DataFormatError(path, line, field, f"image file name must be a relative path inside the image folder, "
                                                 f"got {_short(name, 60)}")
    return name


def read_coco_images(path: str | os.PathLike, sizes_optional: bool = False) -> tuple[dict[int, dict], list]:
    """Read a COCO-style file (``images`` {id, file_name, width, height} + ``annotations``), checked.

    Returns ``({image_id: {"image_id", "file_name", "width", "height"}}, annotations)``, images in file
    order; ``sizes_optional`` lets width / height be absent (then ``None``). Annotations are only checked
    to be a list. A missing or mistyped field, a duplicate image id, a size ≤ 0 or above
    :data:`MAX_IMAGE_PIXELS`, or a file name outside the image folder raises
    :class:`DataFormatError` naming it."""
    data = read_json(path)
    images = require(data, "images", list, path, None)
    anns = require(data, "annotations", list, path, None)
    return check_coco_images(images, path, sizes_optional), anns


def check_coco_images(images: list, path, sizes_optional: bool = False) -> dict[int, dict]:
    """``{image_id: {"image_id", "file_name", "width", "height"}}`` of a COCO ``images`` list, checked as
    :func:`read_coco_images` says."""
    recs: dict[int, dict] = {}
    for i, im in enumerate(images):
        pre = f"images[{i}]."
        iid = require(im, "id", int, path, None, pre)
        if iid in recs:
            first = next(k for k, r in enumerate(recs) if r == iid)
            raise DataFormatError(path, None, f"{pre}id", f"duplicate image id {iid} (first at images[{first}])")
        size = {}
        for k in ("width", "height"):
            v = require(im, k, int, path, None, pre, optional=sizes_optional)
            if v is not None and v <= 0:
                raise DataFormatError(path, None, f"{pre}{k}", f"expected a positive integer, got {v}")
            size[k] = v
        w, h = size["width"], size["height"]
        if w is not None and h is not None and w * h > MAX_IMAGE_PIXELS:
            # masks of this image would be decoded at this size (pycocotools allocates h·w bytes)
            raise DataFormatError(path, None, f"{pre}width", f"{w}×{h} pixels exceed the limit of {MAX_IMAGE_PIXELS} "
                                                            "(pixelllm.data.errors.MAX_IMAGE_PIXELS)")
        recs[iid] = {"image_id": iid,
                     "file_name": check_file_name(require(im, "file_name", str, path, None, pre), path, None,
                                                  f"{pre}file_name"), **size}
    return recs


def keep_nonempty(records, key: str, skips: SkipCounter, reason: str) -> list[dict]:
    """The records whose ``key`` list is non-empty, in order; each other one is counted in ``skips``
    under ``reason`` (detail ``image <image_id>``)."""
    out = []
    for r in records:
        if r[key]:
            out.append(r)
        else:
            skips.add(reason, detail=f"image {r['image_id']}")
    return out
