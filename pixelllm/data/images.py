"""Image files read safely: a path that stays in its image folder, a pixel limit checked before decoding,
the declared size compared with the real one, and every failure naming the file.

* :func:`image_file` — ``root / file_name`` for a relative ``file_name`` that stays inside ``root``;
  an absolute name or one with ``..`` raises :class:`~pixelllm.data.errors.DataFormatError`.
* :func:`open_image` — the decoded RGB image. Missing file → ``FileNotFoundError``; a file PIL cannot
  identify, a truncated or corrupt file, more than ``pixelllm.data.errors.MAX_IMAGE_PIXELS`` pixels
  (a decompression bomb: a few KB of PNG that decode to gigabytes) or a size that differs from the
  annotation's ``width`` / ``height`` → ``DataFormatError`` naming the file (and both sizes).

The pixel limit is ours, checked from the header before any pixel is decoded, and lower than PIL's
own (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 M pixels: a warning, an error at twice that), which is left
as it is; PIL's ``DecompressionBombError`` is caught and named as well.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from pixelllm.data import errors
from pixelllm.data.errors import DataFormatError, check_file_name


def image_file(root: str | os.PathLike, file_name: str, source: str | os.PathLike | None = None,
               field: str = "file_name") -> Path:
    """``root / file_name``, refusing (``DataFormatError`` naming ``source`` and ``field``) an absolute
    ``file_name`` or one that climbs out of ``root`` with ``..``."""
    check_file_name(file_name, source, None, field)
    return Path(root) / file_name


def open_image(path: str | os.PathLike, expected_hw: Sequence[int | None] | None = None,
               max_pixels: int | None = None, what: str = ""):
    """Decode ``path`` into an RGB ``PIL.Image``, checked (module docstring).

    Args:
        expected_hw: the (height, width) its annotation declares; ``None`` entries are not compared.
        max_pixels: refuse images with more pixels than this (checked from the header, before decoding);
            default ``pixelllm.data.errors.MAX_IMAGE_PIXELS``.
        what: names the record in messages, e.g. ``"image_id 17"``.
    """
    import struct

    from PIL import Image

    path = Path(path)
    max_pixels = errors.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    tag = f" ({what})" if what else ""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}{tag}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DataFormatError(path, None, None, f"image of {w}×{h} = {w * h} pixels exceeds the limit of "
                                                        f"{max_pixels} (a decompression bomb?); raise "
                                                        "pixelllm.data.errors.MAX_IMAGE_PIXELS for larger images")
            im.load()
            rgb = im.convert("RGB")
    except DataFormatError:
        raise
    except Image.DecompressionBombError as e:
        raise DataFormatError(path, None, None, f"refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:   # incl. UnidentifiedImageError
        raise DataFormatError(path, None, None, f"cannot read image{tag}: {type(e).__name__}: {e}") from None
    if expected_hw is not None:
        eh, ew = expected_hw
        if (eh is not None and eh != h) or (ew is not None and ew != w):
            raise DataFormatError(path, None, "width/height", f"the file is {w}×{h} (w×h) but its annotation{tag} "
                                                              f"declares {ew}×{eh}; boxes and masks are in the "
                                                              "declared pixels, so the image does not match them")
    return rgb
