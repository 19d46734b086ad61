"""The single definition of how any image file becomes model input.

safe open -> decode -> RGB uint8 -> centre square crop -> bilinear resize -> normalise.
Training caches the uint8 output of `load_rgb` + `resize` and applies `normalise`'s formula,
so train, calibration and the Pi see the same pixels; `prepare` gives the same pixels without
holding the full-size image twice.

Every failure to read or decode a file, whatever the decoder raises, becomes an ImageError
whose str() is one line naming the file: callers catch ImageError and nothing else.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile

from .spec import InputSpec

# Pixel limit: an image whose header claims more is refused before decoding (decompression
# bombs included). Microscope cameras deliver 2-20 Mpx (Pi HQ camera 12.3, 6000x4000 sensors 24).
# Memory, not cameras, sets the limit: on a 1 GB Pi the classifier, the interpreter and the OS
# share the RAM. Measured peak RSS of `edge-bloodcls classify` on one image just under 24 Mpx
# (x86-64, default model, 70 MB for a small image): 220 MB for JPEG, PNG or TIFF, 235 MB 16-bit
# PNG, 260 MB RGBA PNG, 430 MB WebP (Pillow's WebP decoder holds two more full-size canvases).
# Before the band-wise conversions and the 24 Mpx limit, 40 Mpx reached 590 MB (JPEG) to 1050 MB
# (16-bit PNG).
MAX_PIXELS = 24_000_000
# Byte limit, checked with stat() before anything is read: no legitimate image of at most
# MAX_PIXELS is larger than an uncompressed 8-bit RGB file of that size (72 MB); anything larger
# (a video renamed .jpg, a disk image, junk) is refused without being read.
MAX_FILE_BYTES = 80 * 1024 * 1024
MIN_SIDE = 16
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Conversions run a band of rows at a time so that a large image is never held twice at
# full size in a wider type (a 16-bit image as float64 is 8 bytes a pixel).
_BAND_PIXELS = 1 << 20

NOT_REGULAR = {
    stat.S_IFDIR: "is a directory",
    stat.S_IFIFO: "not a regular file (named pipe)",
    stat.S_IFCHR: "not a regular file (character device)",
    stat.S_IFBLK: "not a regular file (block device)",
    stat.S_IFSOCK: "not a regular file (socket)",
}


class ImageError(ValueError):
    """An input that cannot be used; str() is a one-line reason naming the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def os_reason(e: OSError, path=None) -> str:
    """A one-line reason for an OSError met while reading `path`."""
    if e.errno == errno.ENOENT:
        return "broken symbolic link" if path is not None and os.path.islink(path) else "no such file or folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return f"cannot read file ({e.strerror or e})"


def _check_stat(st: os.stat_result, name) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(name, NOT_REGULAR.get(stat.S_IFMT(st.st_mode), "not a regular file"))
    if st.st_size == 0:
        raise ImageError(name, "empty file")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageError(name, f"file too large ({st.st_size / 2**20:.0f} MB, limit {MAX_FILE_BYTES // 2**20} MB)")


def open_image_file(path, name=None):
    """The one way the runtime opens an image file: a binary file object, or ImageError.

    Only regular files of at most MAX_FILE_BYTES: a named pipe would block forever and
    /dev/zero never ends. stat() decides before open() (opening some devices has effects); the
    open is non-blocking and fstat() checks again, since the path may change in between.
    """
    name = path if name is None else name
    try:
        _check_stat(os.stat(path), name)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageError(name, os_reason(e, path)) from None
    try:
        _check_stat(os.fstat(fd), name)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:160] + "...") if len(text) > 160 else text


def _bands(im: Image.Image):
    w, h = im.size
    rows = max(1, _BAND_PIXELS // max(w, 1))
    for top in range(0, h, rows):
        yield top, min(h, top + rows)


def _band_to_rgb(im: Image.Image, hi: float | None) -> Image.Image:
    if hi is not None:
        # 16/32-bit integer and float images: the full range (hi, over the whole image) -> 8 bits.
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent areas become white, the colour of an empty slide under brightfield.
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded image -> RGB, a band of rows at a time (every step is per pixel once `hi`
    is known, so the result is that of converting the whole image at once)."""
    if im.mode == "RGB":
        return im
    hi: float | None = None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        hi = 65535.0 if _band_max(im) > 255 else 255.0
    elif im.mode == "F":
        top = _band_max(im)
        hi = 1.0 if top <= 1.0 else top
    out = Image.new("RGB", im.size)
    for top, bottom in _bands(im):
        out.paste(_band_to_rgb(im.crop((0, top, im.size[0], bottom)), hi), (0, top))
    return out


def _band_max(im: Image.Image) -> float:
    top = im.getextrema()[1]
    assert not isinstance(top, tuple)  # a single-band image: (min, max), not a pair per band
    return top


def _check_size(size: tuple[int, int], name) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(name, f"image too large ({w}x{h} pixels, limit {MAX_PIXELS})")
    if min(w, h) < MIN_SIDE:
        raise ImageError(name, f"image too small ({w}x{h}, minimum {MIN_SIDE} px a side)")


def _formats() -> list[str]:
    # EPS is never opened: decoding it runs Ghostscript on the file. No cell image is EPS.
    Image.init()
    return [f for f in Image.OPEN if f != "EPS"]


@contextmanager
def _opened(source, name):
    """(Image.open()ed image, name) for a path or bytes; any failure inside -> ImageError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "<bytes>" if name is None else name
        if not len(source):
            raise ImageError(name, "empty file")
        if len(source) > MAX_FILE_BYTES:
            raise ImageError(name, f"file too large ({len(source) / 2**20:.0f} MB, limit {MAX_FILE_BYTES // 2**20} MB)")
        fp = io.BytesIO(source)
    else:
        name = source if name is None else name
        fp = open_image_file(source, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's remarks on odd metadata are not failures
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_formats())
            _check_size(im.size, name)
            yield im, name
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, f"image too large (decompression bomb guard: {_one_line(e)})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(name, "not an image (unrecognised format)") from None
    except MemoryError:
        raise ImageError(name, "not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(name, f"corrupt or truncated image ({_one_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise TypeError, IndexError,
        # struct.error, NotImplementedError... on damaged files: all of them mean "bad file".
        raise ImageError(name, f"corrupt or unsupported image ({type(e).__name__}: {_one_line(e)})") from None
    finally:
        fp.close()


def probe(source, name=None) -> tuple[int, int]:
    """(width, height) from the header alone, or ImageError: the checks of `decode` that need no
    pixels (a regular file within the limits, a known image format, size within limits).
    A file that passes may still be truncated; only decoding tells."""
    with _opened(source, name) as (im, _):
        return im.size


def decode(source, name=None) -> Image.Image:
    """A file path or bytes -> a decoded RGB PIL image of at most MAX_PIXELS, or ImageError."""
    with _opened(source, name) as (im, name):
        im.load()
        _check_size(im.size, name)  # ICO settles its size only when loading
        return _to_rgb(im)


def _square(im: Image.Image) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    if w == h:
        return im
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def load_rgb(source, name=None) -> np.ndarray:
    """Decode a file path or bytes into an HxWx3 uint8 RGB array, or raise ImageError."""
    im = decode(source, name)
    w, h = im.size
    out = np.empty((h, w, 3), np.uint8)
    # Band by band: np.asarray(im) would hold two more full-size copies while it converts.
    for top, bottom in _bands(im):
        out[top:bottom] = np.asarray(im.crop((0, top, w, bottom)))
    return out


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop to a square and resize (bilinear) to size=(height, width).

    PBC cells are centred; cropping keeps the aspect ratio of the cell whatever the camera's.
    """
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top : top + side, left : left + side]
    if square.shape[:2] == tuple(size):
        return np.ascontiguousarray(square)
    # Image.BILINEAR, not Image.Resampling (Pillow >= 9.1 only): Pillow sets the module constant
    # at run time, where its annotations cannot see it
    im = Image.fromarray(np.ascontiguousarray(square), "RGB").resize((size[1], size[0]), Image.BILINEAR)  # type: ignore[attr-defined]
    return np.asarray(im, dtype=np.uint8)


def normalise(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float32 model input according to spec."""
    x = pixels.astype(np.float32)
    if spec.color == "BGR":
        x = x[..., ::-1]
    return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def pixels_of(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The inverse of `normalise`: float32 model input (..., H, W, 3) -> the uint8 RGB pixels it was
    made from (exact: the float error is far below the half-level that rounding absorbs). Lets the
    classifier judge a prepared input's colours without a second path from the image."""
    x = np.asarray(x, np.float32) * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32)
    if spec.color == "BGR":
        x = x[..., ::-1]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def prepare(source, spec: InputSpec, name=None) -> np.ndarray:
    """File path, bytes or RGB array -> float32 HxWx3 model input.

    For a file the crop and resize run on the decoded image itself (the same Pillow operations
    on the same pixels as `resize(load_rgb(...))`), so the full-size array is never made.
    """
    if isinstance(source, np.ndarray):
        return normalise(resize(source, spec.size), spec)
    square = _square(decode(source, name))
    if square.size != (spec.size[1], spec.size[0]):
        # Image.BILINEAR: see resize
        square = square.resize((spec.size[1], spec.size[0]), Image.BILINEAR)  # type: ignore[attr-defined]
    return normalise(np.asarray(square, dtype=np.uint8), spec)
