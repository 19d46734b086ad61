#!/usr/bin/env python3
"""Fuzz the runtime's image decoding: damaged files of every format Pillow can write.

Every seed image (each format Pillow saves here, in several modes and variants) is damaged by
byte flips, truncation, splices of one file's header onto another's body, extreme values poked
into header fields, and cut or repeated slices. Each damaged file goes through
edge_runtime.core.preprocess (probe, load_rgb, prepare): the only exception allowed out is ImageError,
with a one-line message. Deterministic for a given --seed.

    python scripts/fuzz_images.py --seconds 600 --out runs/fuzz   # long run, keeps failing inputs

tests/test_runtime_fuzz.py runs a fixed, short slice of the same cases in CI.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# (format, mode, save options) for the seeds; a format this Pillow cannot write is left out.
VARIANTS = [
    ("JPEG", "RGB", {}),
    ("JPEG", "L", {}),
    ("JPEG", "CMYK", {}),
    ("JPEG", "RGB", {"progressive": True}),
    ("MPO", "RGB", {}),
    ("PNG", "RGB", {}),
    ("PNG", "RGBA", {}),
    ("PNG", "P", {"transparency": 3}),
    ("PNG", "I;16", {}),
    ("PNG", "1", {}),
    ("PNG", "RGB", {"interlace": 1}),
    ("PNG", "LA", {}),
    ("BMP", "RGB", {}),
    ("BMP", "P", {}),
    ("BMP", "1", {}),
    ("BMP", "RGBA", {}),
    ("DIB", "RGB", {}),
    ("GIF", "P", {}),
    ("GIF", "RGB", {"save_all": True, "frames": 2}),
    ("TIFF", "RGB", {}),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("TIFF", "RGB", {"compression": "jpeg"}),
    ("TIFF", "RGBA", {"compression": "tiff_adobe_deflate"}),
    ("TIFF", "I;16", {}),
    ("TIFF", "F", {}),
    ("TIFF", "I", {}),
    ("TIFF", "CMYK", {"compression": "packbits"}),
    ("TIFF", "1", {"compression": "group4"}),
    ("TIFF", "RGB", {"save_all": True, "frames": 2}),
    ("WEBP", "RGB", {}),
    ("WEBP", "RGBA", {"lossless": True}),
    ("WEBP", "RGB", {"save_all": True, "frames": 2}),
    ("PPM", "RGB", {}),
    ("PPM", "L", {}),
    ("PPM", "I;16", {}),
    ("PPM", "1", {}),
    ("ICO", "RGBA", {}),
    ("ICO", "RGB", {"bitmap_format": "bmp"}),
    ("ICNS", "RGBA", {}),
    ("TGA", "RGB", {}),
    ("TGA", "RGBA", {"compression": "tga_rle"}),
    ("TGA", "P", {}),
    ("DDS", "RGB", {}),
    ("DDS", "RGBA", {}),
    ("DDS", "L", {}),
    ("PCX", "RGB", {}),
    ("PCX", "P", {}),
    ("SGI", "RGB", {}),
    ("SGI", "RGBA", {}),
    ("IM", "RGB", {}),
    ("SPIDER", "F", {}),
    ("QOI", "RGBA", {}),
    ("BLP", "P", {}),
    ("MSP", "1", {}),
    ("XBM", "1", {}),
    ("JPEG2000", "RGB", {}),
    ("AVIF", "RGB", {}),
]


def seed_images(size=(48, 40)) -> list[tuple[str, bytes]]:
    """[(name, encoded bytes)] for every variant this Pillow can write and read back."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 5 % 256, yy * 6 % 256, (xx + yy) * 3 % 256], -1).astype(np.uint8)
    base = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(base)
    out = []
    for fmt, mode, opts in VARIANTS:
        opts = dict(opts)
        frames = opts.pop("frames", 1)
        name = "-".join(
            [fmt.lower(), mode.lower().replace(";", "")]
            + [k if v is True else str(v) for k, v in opts.items() if k != "save_all"]
            + (["anim"] if frames > 1 else [])
        )
        if mode in ("I;16", "I", "F"):
            g = np.asarray(rgb.convert("L"), np.float32)
            im = Image.fromarray(
                {"I;16": (g * 257).astype(np.uint16), "I": (g * 1000).astype(np.int32), "F": g / 255.0}[mode]
            )
        else:
            im = rgb.convert(mode)
        if frames > 1:
            opts["append_images"] = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        b = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. formats Pillow has deprecated
                im.save(b, fmt, **opts)
                Image.open(io.BytesIO(b.getvalue())).load()
        except Exception:  # not writable (or readable) by this Pillow build: not a seed here
            continue
        out.append((name, b.getvalue()))
    return out


_EXTREMES = [
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x00\x00\x01\x00",
    b"\xff\xff",
    b"\x00\x00",
    b"\x7f\xff",
    b"\x01\x00",
]


def mutate(data: bytes, rng: np.random.Generator, seeds: list[bytes]) -> tuple[str, bytes]:
    """One damaged copy of `data`: (what was done, bytes)."""
    b = bytearray(data)
    n = len(b)
    kind = ("flip", "flip_header", "flip_tail", "truncate", "splice", "poke", "cut", "repeat", "zero")[rng.integers(9)]
    if kind.startswith("flip"):
        # Headers sit at the start, except TIFF's directory and some trailers, at the end.
        lo, hi = {"flip": (0, n), "flip_header": (0, min(n, 256)), "flip_tail": (max(0, n - 256), n)}[kind]
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(lo, hi))] = int(rng.integers(256))
    elif kind == "truncate":
        b = b[: int(rng.integers(n))]
    elif kind == "splice":
        other = seeds[int(rng.integers(len(seeds)))]
        cut = int(rng.integers(1, min(n, 512)))
        b = b[:cut] + other[int(rng.integers(len(other))) :]
    elif kind == "poke":
        for _ in range(int(rng.integers(1, 4))):
            v = _EXTREMES[int(rng.integers(len(_EXTREMES)))]
            at = int(rng.integers(max(1, min(n, 160) - len(v))))
            b[at : at + len(v)] = v
    elif kind == "cut":
        a = int(rng.integers(n))
        b = b[:a] + b[a + int(rng.integers(1, 64)) :]
    elif kind == "repeat":
        a = int(rng.integers(n))
        b = b[:a] + b[a : a + int(rng.integers(1, 64))] * int(rng.integers(2, 5)) + b[a:]
    else:
        a, k = int(rng.integers(n)), int(rng.integers(1, 128))
        b[a : a + k] = bytes(len(b[a : a + k]))
    return kind, bytes(b)


def check(data: bytes, spec) -> str | None:
    """None when every preprocessing entry point either works or raises a one-line ImageError;
    otherwise what went wrong."""
    from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb, prepare, probe

    for fn in (probe, load_rgb, lambda d, name: prepare(d, spec, name=name)):
        try:
            out = fn(data, name="fuzz")
        except ImageError as e:
            if "\n" in str(e):
                return f"ImageError over several lines: {str(e)!r}"
            continue
        except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
            return f"{type(e).__name__}: {e}"
        if fn is load_rgb and (out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3):
            return f"load_rgb gave {out.dtype} {out.shape}"
    return None


def cases(seed: int):
    """Endless deterministic (name, bytes) damaged files, cycling through the seed formats."""
    seeds = seed_images()
    bodies = [d for _, d in seeds]
    rng = np.random.default_rng(seed)
    i = 0
    while True:
        name, data = seeds[i % len(seeds)]
        kind, bad = mutate(data, rng, bodies)
        yield f"{i:06d}-{name}-{kind}", bad
        i += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="How long to run.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="Write each failing input here.")
    args = ap.parse_args(argv)
    from edge_bloodcls.edge_runtime.core.spec import InputSpec

    spec = InputSpec.named(96)
    print(f"{len(seed_images())} seed images", flush=True)
    t0, n, failures, slowest = time.monotonic(), 0, 0, (0.0, "")
    for name, data in cases(args.seed):
        if time.monotonic() - t0 > args.seconds:
            break
        t = time.monotonic()
        problem = check(data, spec)
        dt = time.monotonic() - t
        slowest = max(slowest, (dt, name))
        n += 1
        if problem:
            failures += 1
            print(f"FAIL {name}: {problem}", flush=True)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{name}.bin").write_bytes(data)
    print(
        f"{n} cases in {time.monotonic() - t0:.0f} s, {failures} failures; slowest {slowest[0] * 1000:.0f} ms "
        f"({slowest[1]})"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
