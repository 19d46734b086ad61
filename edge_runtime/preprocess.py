"""The single definition of how any image file becomes model input.

decode (safely) -> RGB uint8 -> centre square crop -> bilinear resize -> normalise.
Training caches the uint8 output of `load_rgb` + `resize` and applies `normalise`'s formula,
so train, calibration and the Pi see the same pixels.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from .spec import InputSpec

# A camera or microscope image is never this large; anything bigger is treated as a
# decompression bomb rather than decoded.
MAX_PIXELS = 40_000_000
MIN_SIDE = 16
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An input that cannot be used; str() is a one-line reason naming the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit and 32-bit integer images: scale the full range down to 8 bits.
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        hi = 1.0 if arr.max() <= 1.0 else arr.max()
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent areas become white, the colour of an empty slide under brightfield.
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def load_rgb(source, name=None) -> np.ndarray:
    """Decode a file path or bytes into an HxWx3 uint8 RGB array, or raise ImageError."""
    name = name if name is not None else (source if not isinstance(source, (bytes, bytearray)) else "<bytes>")
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            if os.path.isdir(source):
                raise ImageError(name, "is a directory")
            data = Path(source).read_bytes()
    except ImageError:
        raise
    except OSError as e:
        raise ImageError(name, f"cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageError(name, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(name, f"image too large ({w}x{h} pixels, limit {MAX_PIXELS})")
                im.load()
                rgb = _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, f"image too large (decompression bomb guard: {e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(name, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(name, f"corrupt or truncated image ({e})") from None
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(name, f"image too small ({rgb.size[0]}x{rgb.size[1]}, minimum {MIN_SIDE} px a side)")
    return np.asarray(rgb, dtype=np.uint8)


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop to a square and resize (bilinear) to size=(height, width).

    PBC cells are centred; cropping keeps the aspect ratio of the cell whatever the camera's.
    """
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top:top + side, left:left + side]
    if square.shape[:2] == tuple(size):
        return np.ascontiguousarray(square)
    im = Image.fromarray(np.ascontiguousarray(square), "RGB").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def normalise(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float32 model input according to spec."""
    x = pixels.astype(np.float32)
    if spec.color == "BGR":
        x = x[..., ::-1]
    return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def prepare(source, spec: InputSpec, name=None) -> np.ndarray:
    """File path, bytes or RGB array -> float32 HxWx3 model input."""
    rgb = source if isinstance(source, np.ndarray) else load_rgb(source, name=name)
    return normalise(resize(rgb, spec.size), spec)
