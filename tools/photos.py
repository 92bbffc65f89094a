"""Reading photos as they are, and telling when a photo changed since it was indexed.

One reading function for the whole project (indexing, the offline recogniser, training, the HTML
report, the MLLM backends through :func:`tools.mllm.images.load_rgb`): :func:`read_photo` returns
an upright 8-bit RGB image.

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a phone photo stored sideways
  with an orientation tag is embedded as it is seen, not lying down.
* Every mode becomes 8-bit RGB correctly: 16-bit and 32-bit integer grey scaled to 8 bits (Pillow's
  ``convert("RGB")`` clips them, so a 16-bit grey photo turns near-white); float grey taken as 0-1
  when it stays within it, else 0-255; transparency flattened onto white; palettes, CMYK and the
  rest through Pillow's converters.
* Any failure (missing, empty, truncated, not an image, a decompression bomb over Pillow's pixel
  limit, a path with a NUL byte or too long for the file system) raises :class:`PhotoError`, an
  ``OSError`` whose message names the file in printable form.

:func:`file_stamp` records a file's size and modification time at indexing; :func:`photo_changed`
compares a file with its stamp, so THI can skip a photo that was deleted, emptied or replaced
after indexing (a note in the trace) and ``python -m tools.gallery index`` can re-embed it.

>>> read_photo("photo.jpg").mode          # doctest: +SKIP
'RGB'
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .text import printable, printable_path

__all__ = ["PhotoError", "read_photo", "to_rgb", "file_stamp", "photo_changed", "STAMP_KEYS", "PHOTO_GONE"]

PhotoSource = Union[str, os.PathLike, bytes, Image.Image]
#: metadata keys of a stamp: the file's size in bytes and its modification time in nanoseconds
STAMP_KEYS = ("bytes", "mtime_ns")
#: :func:`photo_changed`'s reason for a file that no longer exists
PHOTO_GONE = "the photo is gone since indexing"


class PhotoError(OSError):
    """A photo cannot be read or decoded; the message is one printable line naming the file."""


def _name(source: Any) -> str:
    if isinstance(source, bytes):
        return "image bytes"
    try:
        return printable(printable_path(source), max_len=300)
    except (TypeError, ValueError):
        return printable(repr(source), max_len=300)


def read_photo(source: PhotoSource) -> Image.Image:
    """An upright 8-bit RGB copy of a photo: a path, encoded bytes or a PIL image (see the module doc).

    Raises:
        PhotoError: the file is missing, empty, unreadable, not an image, or over Pillow's
            decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` x 2).
    """
    try:
        if isinstance(source, Image.Image):
            im = source
            im.load()
        elif isinstance(source, bytes):
            from io import BytesIO

            im = Image.open(BytesIO(source))
            im.load()
        else:
            with Image.open(source) as opened:
                opened.load()
                # transposed and converted while the file is open: some formats read their EXIF late
                return to_rgb(ImageOps.exif_transpose(opened) or opened)
        return to_rgb(ImageOps.exif_transpose(im) or im)
    except PhotoError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # ValueError: NUL bytes in the path; OSError: missing, ENAMETOOLONG, truncated; SyntaxError:
        # some Pillow plugins on malformed headers
        reason = printable(str(e) or type(e).__name__, max_len=200)
        if isinstance(e, OSError) and getattr(e, "strerror", None) and getattr(e, "filename", None) is not None:
            reason = printable(e.strerror)
        raise PhotoError(f"cannot read image {_name(source)}: {reason}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB, scaling high bit depths instead of clipping them (see the module doc)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        # 16-bit data (every "I;16*" mode, and "I" images holding values past 8 bits): 0-65535
        scale = 257.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 1.0
        grey = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        if np.isfinite(a).all() and a.min(initial=0) >= 0 and a.max(initial=0) <= 1.0:
            a = a * 255.0
        grey = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def file_stamp(path: str | os.PathLike) -> dict[str, int] | None:
    """``{"bytes": size, "mtime_ns": modification time}`` of a file, or None when it cannot be
    stat'ed (missing, a bad path)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def photo_changed(path: str | os.PathLike, stamp: Mapping[str, Any] | None) -> str | None:
    """Why the file at ``path`` is no longer the photo that was indexed, or None when it is (or when
    ``stamp``, the indexed ``bytes``/``mtime_ns``, was not recorded: galleries indexed before stamps
    were kept are taken as they are).

    >>> photo_changed("/nonexistent.jpg", {"bytes": 10, "mtime_ns": 1})
    'the photo is gone since indexing'
    """
    if not stamp or any(k not in stamp for k in STAMP_KEYS):
        return None
    now = file_stamp(path)
    if now is None:
        return PHOTO_GONE
    if now["bytes"] == 0:
        return "the photo is empty (0 bytes) since indexing"
    if now["bytes"] != stamp["bytes"] or now["mtime_ns"] != stamp["mtime_ns"]:
        return (f"the photo changed since indexing ({stamp['bytes']} -> {now['bytes']} bytes); "
                f"re-index to refresh it: python -m tools.gallery index ...")
    return None
