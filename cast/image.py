"""Reading any photo into the RGB array the model needs, with clear errors for bad input.

Handles every PIL mode (RGBA and palette transparency are composited on white, 16-bit and float
images are scaled to 8 bits, CMYK is converted), EXIF orientation, animated files (first frame)
and decompression bombs (refused from the header, before decoding). Large JPEGs are decoded at a
reduced scale (``draft``), since the model only sees the image at its input size.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

__all__ = ["ImageInput", "read_image", "to_rgb_array", "MAX_PIXELS", "MIN_SIDE"]

# Largest image accepted, in pixels (width x height). A 24 MP photo is fine; a header claiming
# more than this is refused before any decoding (decompression-bomb protection).
MAX_PIXELS = int(os.environ.get("CAST_MAX_PIXELS", 150_000_000))
# Smallest side accepted: below this an image cannot hold the 64 parts of the finest level.
MIN_SIDE = int(os.environ.get("CAST_MIN_SIDE", 8))

ImageLike = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias)


@dataclass
class ImageInput:
    """A decoded image: ``rgb`` may be smaller than ``size`` (reduced-scale JPEG decoding)."""

    rgb: np.ndarray  # [h, w, 3] uint8, EXIF-corrected
    size: tuple[int, int]  # (width, height) of the original, EXIF-corrected image
    name: str = ""  # file name when read from a file
    notes: tuple[str, ...] = ()  # conversions made on the way (e.g. "CMYK converted to RGB"), for people


def _orientation_swaps(img: Image.Image) -> bool:
    try:
        return int(img.getexif().get(0x0112, 1)) in (5, 6, 7, 8)
    except Exception:  # unreadable EXIF: treat as upright
        return False


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha composited on white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0
        else:
            top = 65535.0 if (img.mode.startswith("I;16") or np.nanmax(a, initial=0.0) > 255) else 255.0
        a = np.nan_to_num(np.clip(a / top * 255.0, 0, 255)).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def _from_pil(img: Image.Image, draft_to: int | tuple[int, int] | None, name: str,
              decode_pixels: int | None = None) -> ImageInput:
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageReadError(f"{name or 'image'}: empty image ({w}x{h})")
    if min(w, h) < MIN_SIDE:
        raise ImageReadError(f"{name or 'image'}: too small ({w}x{h} px); at least {MIN_SIDE} px per side is needed")
    if w * h > MAX_PIXELS:
        raise ImageReadError(
            f"{name or 'image'}: refused, {w}x{h} is {w * h / 1e6:.0f} MP, more than the {MAX_PIXELS / 1e6:.0f} MP "
            "accepted (possible decompression bomb)"
        )
    notes: list[str] = []
    if img.mode not in ("RGB", "L", "P", "RGBA", "LA", "1"):
        notes.append(f"{img.mode} image converted to 8-bit RGB")
    elif img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        notes.append("transparent areas composited on white")
    try:
        if getattr(img, "is_animated", False):
            notes.append(f"animated image ({getattr(img, 'n_frames', '?')} frames): the first frame is used")
            img.seek(0)
        size = (h, w) if _orientation_swaps(img) else (w, h)
        if decode_pixels and img.format == "JPEG":  # at least the size that keeps this many pixels
            scale = min(1.0, (decode_pixels / (w * h)) ** 0.5)
            draft_to = (max(int(size[0] * scale), 1), max(int(size[1] * scale), 1))
        if draft_to and img.format == "JPEG":
            box = (draft_to, draft_to) if isinstance(draft_to, int) else tuple(draft_to)
            if size != (w, h):  # the box is for the upright image; JPEG draft works on the stored one
                box = (box[1], box[0])
            img.draft("RGB", box)  # decode at >= the box, at the smallest JPEG scale that allows it
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = np.asarray(_to_8bit(img))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name or 'image'}: cannot decode ({e})") from None
    return ImageInput(rgb=np.ascontiguousarray(rgb), size=size, name=name, notes=tuple(notes))


def to_rgb_array(a: np.ndarray) -> np.ndarray:
    """Array input -> ``HxWx3`` uint8 (accepts HxW, HxWx1/3/4, uint8/uint16/float in [0, 1])."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageReadError(f"expected an HxWx3 image array, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (np.clip(np.nan_to_num(a), 0, 1) * 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageReadError(f"unsupported image array dtype {a.dtype}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = (a[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise ImageReadError(f"{a.shape[1]}x{a.shape[0]} image is more than the {MAX_PIXELS / 1e6:.0f} MP accepted")
    return np.ascontiguousarray(a)


def read_image(src: ImageLike, draft_to: int | tuple[int, int] | None = None,
               decode_pixels: int | None = None) -> ImageInput:
    """Read a path, bytes, file object, PIL image or array into an :class:`ImageInput`.

    Args:
        draft_to: when the source is a JPEG, decode it at a reduced scale that keeps at least
            this many pixels per side (an int) or this (width, height) (the original size is still
            reported in ``size``).
        decode_pixels: instead, decode a JPEG at the smallest scale that keeps at least this
            many pixels (or all of them, for smaller photos).

    Raises:
        ImageReadError: not an image, truncated or corrupt, too large, or empty.
    """
    if isinstance(src, np.ndarray):
        rgb = to_rgb_array(src)
        return ImageInput(rgb=rgb, size=(rgb.shape[1], rgb.shape[0]))
    if isinstance(src, Image.Image):
        return _from_pil(src, None, getattr(src, "filename", "") or "")
    name = ""
    if isinstance(src, (str, os.PathLike)):
        name = Path(src).name
        if not Path(src).is_file():
            raise ImageReadError(f"{src}: no such file")
    elif isinstance(src, bytes):
        src = io.BytesIO(src)
    elif isinstance(getattr(src, "name", None), str):  # open file objects (and named buffers) carry a name
        name = Path(src.name).name  # type: ignore[union-attr]
    # Refuse oversized images from the header ourselves; PIL's own bomb check is a warning below 2x.
    try:
        with Image.open(src) as img:  # type: ignore[arg-type]
            return _from_pil(img, draft_to, name, decode_pixels)
    except UnidentifiedImageError:
        raise ImageReadError(f"{name or 'input'}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError:
        raise ImageReadError(
            f"{name or 'input'}: refused, the image is too large (over the {MAX_PIXELS / 1e6:.0f} MP accepted; "
            "possible decompression bomb)"
        ) from None
    except OSError as e:
        raise ImageReadError(f"{name or 'input'}: cannot read ({e})") from None
