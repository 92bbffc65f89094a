"""Photos as a vision-language server accepts them: read upright, sized to its pixel range, JPEG.

Qwen2-VL-class servers (vLLM, Ollama, LM Studio) cut an image into 14-pixel patches merged 2x2,
so every side must be at least 28 pixels (a smaller side is refused with HTTP 400) and each
28x28 block costs one prompt token (a 3000x4000 photo is about 15,000 tokens, over a typical
context limit: "prompt too long"). :func:`prepare_image` therefore

1. reads the file with Pillow, applies its EXIF orientation (``ImageOps.exif_transpose``) and
   converts any mode to 8-bit RGB correctly (16-bit grey scaled by 1/257 rather than clipped,
   transparency flattened onto white, palettes and CMYK through Pillow's converters);
2. pads an extreme aspect ratio (wider than ``max_aspect``, or too wide for every side to reach
   ``min_side`` within ``max_pixels``) with grey, centred;
3. resizes to the backend's pixel range: at most ``max_pixels`` and at least ``min_pixels``
   pixels, every side at least ``min_side``, both sides multiples of ``factor`` when set (the
   rounding of Qwen2-VL's ``smart_resize``: nearest multiple, floored when over the cap, ceiled
   when under the floor);
4. encodes a JPEG at ``jpeg_quality``; over ``max_bytes``, lower qualities, then smaller sizes.

The result records the size sent (pixels and bytes) so callers can trace it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.photos import PhotoError, read_photo

from .base import MLLMError

__all__ = ["ImageLimits", "PreparedImage", "fit_size", "load_rgb", "prepare_image"]

# Qwen2-VL: 14-pixel patches merged 2x2 (28x28 per token); the processor's defaults
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 4 * 28 * 28  # 3,136
#: 1280 tokens of 28x28: the cap the Qwen2-VL / Qwen2.5-VL model cards suggest for serving
DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # 1,003,520
# Qwen2-VL's processor refuses an aspect ratio over 200
QWEN_MAX_ASPECT = 200.0


class ImageLimits(BaseModel):
    """What a server accepts. Defaults fit Qwen2-VL / Qwen2.5-VL served by vLLM.

    Attributes:
        min_side: every side at least this many pixels (Qwen2-VL refuses < 28).
        min_pixels: at least this many pixels in all (Qwen2-VL's processor: 3,136).
        max_pixels: at most this many pixels (prompt tokens ~ pixels / 784 for Qwen2-VL).
        factor: round both sides to a multiple of this (28 reproduces ``qwen_vl_utils``' client-side
            resize); ``None`` leaves rounding to the server.
        max_aspect: the longest side at most this many times the shortest (padded beyond).
        max_bytes: the JPEG at most this many bytes (before base64, which adds a third).
        jpeg_quality: the first JPEG quality tried (1-95).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_side: int = Field(QWEN_FACTOR, ge=1)
    min_pixels: int = Field(QWEN_MIN_PIXELS, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    factor: int | None = Field(None, ge=1)
    max_aspect: float = Field(QWEN_MAX_ASPECT, ge=1.0)
    max_bytes: int = Field(1_000_000, ge=1024)
    jpeg_quality: int = Field(90, ge=1, le=95)

    @model_validator(mode="after")
    def _consistent(self) -> "ImageLimits":
        lo = max(self.min_side, self.factor or 1)
        if lo * lo > self.max_pixels:
            raise ValueError(f"max_pixels {self.max_pixels} is below min_side^2 ({lo}x{lo})")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")
        return self

    def merged(self, override: "ImageLimits | dict | None") -> "ImageLimits":
        """These limits with the fields set in ``override`` replaced."""
        if override is None:
            return self
        changes = override.model_dump(exclude_unset=True) if isinstance(override, ImageLimits) else dict(override)
        return ImageLimits.model_validate({**self.model_dump(), **changes})


@dataclass(frozen=True)
class PreparedImage:
    """A JPEG ready to send, and what it is: ``width`` x ``height`` pixels, ``bytes`` long (before
    base64), made from a ``original_width`` x ``original_height`` upright photo."""

    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    quality: int

    @property
    def bytes(self) -> int:
        return len(self.data)

    def data_uri(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.data).decode("ascii")

    def summary(self) -> dict:
        """The size sent, as plain values for a trace: ``{"width", "height", "bytes", "original",
        "quality"}``."""
        return {"width": self.width, "height": self.height, "bytes": self.bytes,
                "original": [self.original_width, self.original_height], "quality": self.quality}


def load_rgb(source: str | Path | bytes | Image.Image) -> Image.Image:
    """An upright 8-bit RGB copy of a photo (a path, encoded bytes or a PIL image), read by
    :func:`tools.photos.read_photo` (the project's one reading function): EXIF orientation applied,
    16-bit and 32-bit grey scaled to 8 bits, transparency flattened onto white. Raises
    :class:`MLLMError` (kind ``bad-image``) when the file cannot be read or decoded.
    """
    try:
        return read_photo(source)
    except PhotoError as e:
        raise MLLMError(str(e), kind="bad-image") from None


def _snap(x: float, factor: int, lo: int, how) -> int:
    return max(lo, int(how(x / factor)) * factor)


def fit_size(width: int, height: int, limits: ImageLimits) -> tuple[int, int]:
    """The size (width, height) a ``width`` x ``height`` image is resized to within ``limits``
    (aspect ratio kept as far as rounding allows; see the module docstring). The image must
    already be within the aspect limit (see :func:`_pad_aspect`)."""
    f = limits.factor or 1
    lo = max(limits.min_side, f)
    area = width * height
    s = min(1.0, math.sqrt(limits.max_pixels / area))
    s = max(s, math.sqrt(limits.min_pixels / area) if area < limits.min_pixels else s, lo / min(width, height))
    w, h = width * s, height * s
    out_w, out_h = _snap(w, f, lo, round), _snap(h, f, lo, round)
    if out_w * out_h > limits.max_pixels:
        out_w, out_h = _snap(w, f, lo, math.floor), _snap(h, f, lo, math.floor)
    elif out_w * out_h < limits.min_pixels:
        out_w, out_h = _snap(w, f, lo, math.ceil), _snap(h, f, lo, math.ceil)
    return out_w, out_h


def _max_aspect(limits: ImageLimits) -> float:
    lo = max(limits.min_side, limits.factor or 1)
    return min(limits.max_aspect, limits.max_pixels / (lo * lo))


def _pad_aspect(im: Image.Image, limits: ImageLimits) -> Image.Image:
    """Pad the short side with grey so that long / short <= the largest ratio the limits allow."""
    w, h = im.size
    ratio = _max_aspect(limits)
    if max(w, h) <= ratio * min(w, h):
        return im
    if w > h:
        size = (w, math.ceil(w / ratio))
    else:
        size = (math.ceil(h / ratio), h)
    canvas = Image.new("RGB", size, (128, 128, 128))
    canvas.paste(im, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


def _encode(im: Image.Image, quality: int) -> bytes:
    buf = BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def prepare_image(source: str | Path | bytes | Image.Image, limits: ImageLimits | None = None) -> PreparedImage:
    """Read, orient, size and encode one photo for a server with ``limits`` (default: Qwen2-VL's).

    Raises :class:`MLLMError` (kind ``bad-image``) when the photo cannot be read, or cannot be
    brought under ``max_bytes`` even at the smallest size the limits allow.
    """
    limits = limits or ImageLimits()
    upright = load_rgb(source)
    original = upright.size
    padded = _pad_aspect(upright, limits)
    size = fit_size(*padded.size, limits)
    im = padded if size == padded.size else padded.resize(size, Image.Resampling.BICUBIC)
    qualities = [q for q in (limits.jpeg_quality, 80, 70, 55, 40) if q <= limits.jpeg_quality]
    floor = fit_size(*padded.size, limits.merged({"max_pixels": max(limits.min_pixels,
                                                                    max(limits.min_side, limits.factor or 1) ** 2)}))
    while True:
        for q in qualities:
            data = _encode(im, q)
            if len(data) <= limits.max_bytes:
                return PreparedImage(data, im.width, im.height, original[0], original[1], q)
        if im.size == floor:
            raise MLLMError(f"cannot encode the image within {limits.max_bytes} bytes "
                            f"(still {len(data)} bytes at {im.width}x{im.height}, quality {qualities[-1]})",
                            kind="bad-image")
        # 0.7 of the pixels per step, never under the smallest size the limits allow
        smaller = limits.merged({"max_pixels": max(int(im.width * im.height * 0.7), floor[0] * floor[1])})
        size = fit_size(*padded.size, smaller)
        if size[0] * size[1] >= im.width * im.height:
            size = floor
        im = padded.resize(size, Image.Resampling.BICUBIC)
