"""Issue 15 (image and file-system part) and 16 (one image listing): no traceback and no silent
wrong answer from a damaged file, an odd file-system entry or an odd file name.

The CLI runs with the bundled default model (TensorFlow-free). Permission cases run the CLI as
`nobody` through setpriv when the tests run as root (as in CI), since root ignores permissions.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from cell_images import cell_png, make_dataset, synthetic_cell
from cli_fixtures import _setpriv_nobody, cli, errors, no_traceback, run
from PIL import Image

from edge_bloodcls.edge_runtime.core import preprocess
from edge_bloodcls.edge_runtime.core.preprocess import ImageError, load_rgb, prepare
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec

REPO = Path(__file__).resolve().parents[1]


# --- 1. every decoder failure is an ImageError ----------------------------------------------


def tiff_with_text_strip_offsets() -> bytes:
    """StripOffsets typed as ASCII: Pillow raises TypeError while loading."""
    b = io.BytesIO()
    synthetic_cell(2, np.random.default_rng(0)).save(b, "TIFF")
    data = bytearray(b.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry : entry + 2])[0] == 273:
            data[entry + 2 : entry + 4] = struct.pack("<H", 2)
    return bytes(data)


def dds_without_pixel_format() -> bytes:
    """Pixel-format flags zeroed: Pillow raises NotImplementedError."""
    b = io.BytesIO()
    synthetic_cell(2, np.random.default_rng(0)).save(b, "DDS")
    data = bytearray(b.getvalue())
    data[80:84] = bytes(4)
    return bytes(data)


@pytest.mark.parametrize(
    "make, raised", [(tiff_with_text_strip_offsets, "TypeError"), (dds_without_pixel_format, "NotImplementedError")]
)
def test_runtime_any_decoder_failure_is_an_image_error(tmp_path, make, raised):
    f = tmp_path / "bad.img"
    f.write_bytes(make())
    for call in (lambda: load_rgb(f), lambda: prepare(str(f), InputSpec.named(32)), lambda: load_rgb(make())):
        with pytest.raises(ImageError) as e:
            call()
        assert raised in e.value.reason and "\n" not in str(e.value)


def test_runtime_evaluate_and_capture_go_on_past_decoder_failures(model, tmp_path):
    data = make_dataset(tmp_path / "cells", n_per_class=1, seed=3)
    (data / "neutrophil" / "bad.tif").write_bytes(tiff_with_text_strip_offsets())
    (data / "basophil" / "bad_dds.png").write_bytes(dds_without_pixel_format())
    r = run("evaluate", data, "--model", model, "--json", tmp_path / "e.json")
    no_traceback(r)
    assert r.exit_code == 1, r.output  # went on past both, metrics of the rest, and says some failed
    assert sorted(Path(line.split(": ")[1]).name for line in errors(r.stderr)) == ["bad.tif", "bad_dds.png"]
    assert json.loads((tmp_path / "e.json").read_text())["n_failed"] == 2

    frames = tmp_path / "frames"
    cell_png(frames / "0.png")
    (frames / "1.tif").write_bytes(tiff_with_text_strip_offsets())
    (frames / "2.png").write_bytes(dds_without_pixel_format())
    cell_png(frames / "3.png", 4)
    r = run(
        "capture", "--camera", frames, "--mode", "cell", "--model", model, "--db", tmp_path / "c.db", "--no-preview"
    )
    no_traceback(r)
    assert r.exit_code == 0, r.output
    skipped = [line for line in r.stderr.splitlines() if line.startswith("warning: skipped")]
    assert [Path(line.split(": ")[1]).name for line in skipped] == ["1.tif", "2.png"]
    assert "(2 images, 2 skipped)" in r.output


# --- 2. file-system surprises are reported, one line each, exit 1 ---------------------------


def test_runtime_name_too_long_is_one_error_and_the_rest_is_classified(model, tmp_path):
    good = cell_png(tmp_path / "good.png")
    long_name = tmp_path / ("x" * 300 + ".jpg")
    r = run("classify", long_name, good, "--model", model, "--format", "jsonl")
    no_traceback(r)
    assert r.exit_code == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row.get("error") for row in rows] == ["file name too long", None]
    assert len(errors(r.stderr)) == 1


def test_runtime_broken_link_and_pipe_in_a_folder_are_reported(model, tmp_path):
    d = tmp_path / "imgs"
    cell_png(d / "good.png")
    (d / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(d / "pipe.jpg")
    (d / "notes.txt").write_text("not an image name: not listed")
    r = run("classify", d, "--model", model, "--format", "jsonl")
    no_traceback(r)
    assert r.exit_code == 1
    got = {Path(row["path"]).name: row.get("error") for row in map(json.loads, r.stdout.splitlines())}
    assert got == {"good.png": None, "gone.jpg": "broken symbolic link", "pipe.jpg": "not a regular file (named pipe)"}
    assert len(errors(r.stderr)) == 2

    data = make_dataset(tmp_path / "cells", n_per_class=1, seed=4)
    (data / "monocyte" / "gone.png").symlink_to(tmp_path / "missing.png")
    r = run("evaluate", data, "--model", model, "--json", tmp_path / "e.json")
    no_traceback(r)
    assert r.exit_code == 1, r.output  # metrics are computed, but a part of the tree was not read
    assert "accuracy=" in r.stdout
    rep = json.loads((tmp_path / "e.json").read_text())
    assert [Path(x["path"]).name for x in rep["not_read"]] == ["gone.png"]


def test_runtime_folders_without_permission_are_reported(model):
    user = _setpriv_nobody()
    # pytest's tmp_path is private to root: nobody needs a folder it can reach.
    top = Path(tempfile.mkdtemp(prefix="edge-bloodcls-perm-"))
    try:
        top.chmod(0o755)
        d = top / "imgs"
        cell_png(d / "good.png")
        cell_png(d / "noexec" / "a.png")
        cell_png(d / "noread" / "b.png")
        (d / "noexec").chmod(0o644)  # names listable, files not reachable
        (d / "noread").chmod(0o311)  # cannot be listed
        r = cli("classify", d, "--model", model, "--format", "jsonl", user=user)
        no_traceback(r)
        assert r.returncode == 1, r.stderr
        rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
        got = {Path(row["path"]).name: row.get("error") for row in rows}
        assert got["good.png"] is None
        assert "permission denied" in got["noexec"] and "permission denied" in got["noread"]
        assert len(errors(r.stderr)) == 2

        r = cli("classify", d / "noread", "--model", model, user=user)
        assert r.returncode == 1
        assert errors(r.stderr) == [f"error: {d / 'noread'}: permission denied (folder not read)"]
    finally:
        for sub in ("noexec", "noread"):
            p = top / "imgs" / sub
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(top)


# --- 3. one safe open: regular files, byte cap, pixel cap -----------------------------------


def test_runtime_pipe_and_device_are_refused_without_reading(model, tmp_path):
    fifo = tmp_path / "p.jpg"
    os.mkfifo(fifo)
    result = {}

    def target():
        try:
            load_rgb(fifo)
        except ImageError as e:
            result["reason"] = e.reason

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "load_rgb blocked on a named pipe"
    assert result["reason"] == "not a regular file (named pipe)"

    good = cell_png(tmp_path / "good.png")
    r = cli("classify", fifo, "/dev/zero", good, "--model", model, "--format", "jsonl", timeout=60)
    no_traceback(r)
    assert r.returncode == 1
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [row.get("error") for row in rows] == [
        "not a regular file (named pipe)",
        "not a regular file (character device)",
        None,
    ]


def test_runtime_file_over_the_byte_cap_is_not_read(tmp_path):
    big = tmp_path / "junk.jpg"
    with open(big, "wb") as f:
        f.truncate(preprocess.MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ImageError, match="file too large"):
        load_rgb(big)


def _png_claiming(w: int, h: int) -> bytes:
    b = io.BytesIO()
    synthetic_cell(0, np.random.default_rng(0)).save(b, "PNG")
    png = bytearray(b.getvalue())
    i = png.index(b"IHDR")
    png[i + 4 : i + 12] = struct.pack(">II", w, h)
    png[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(png[i : i + 17])) & 0xFFFFFFFF)
    return bytes(png)


def test_runtime_pixel_cap_refuses_before_decoding():
    w = 6000
    with pytest.raises(ImageError, match="image too large"):
        load_rgb(_png_claiming(w, preprocess.MAX_PIXELS // w + 1))
    assert preprocess.MAX_PIXELS <= 24_000_000  # what a 1 GB Pi affords (see preprocess.py)


def test_runtime_near_limit_image_peak_memory(tmp_path):
    """prepare() of a JPEG just under MAX_PIXELS: the process grows by at most 8 bytes a pixel
    (the decoded image plus its centre square), not by several full-size copies."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    w = 6000
    h = preprocess.MAX_PIXELS // w - 1
    col = np.linspace(0, 255, w, dtype=np.float32)
    row = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    arr = np.empty((h, w, 3), np.uint8)
    arr[..., 0] = col
    arr[..., 1] = row
    arr[..., 2] = 128
    f = tmp_path / "big.jpg"
    Image.fromarray(arr).save(f, quality=80)
    del arr
    # VmHWM, not getrusage: ru_maxrss carries the forking parent's peak over into the child.
    code = (
        "import re, sys\n"
        "from edge_bloodcls.edge_runtime.core.preprocess import prepare\n"
        "from edge_bloodcls.edge_runtime.core.spec import InputSpec\n"
        "def peak():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1]) * 1024\n"
        "spec = InputSpec.named(160)\n"
        "prepare(sys.argv[2], spec)  # a small image first: imports and first-call costs\n"
        "before = peak()\n"
        "x = prepare(sys.argv[1], spec)\n"
        "print(x.shape, peak() - before)\n"
    )
    small = cell_png(tmp_path / "small.png")
    r = subprocess.run([sys.executable, "-c", code, str(f), str(small)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shape, grew = r.stdout.rsplit(" ", 1)
    assert shape.startswith("(160, 160, 3)")
    assert int(grew) < 8 * w * h, f"peak grew by {int(grew) / 2**20:.0f} MB for {w}x{h}"


# --- 4. file names that are not UTF-8 --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "csv", "jsonl"])
def test_runtime_non_utf8_names_in_every_output_format(model, tmp_path, fmt):
    d = tmp_path / "imgs"
    d.mkdir()
    cell_png(Path(os.fsdecode(bytes(d) + b"/cell\xff.png")))
    Path(os.fsdecode(bytes(d) + b"/bad\xfe.jpg")).write_bytes(b"not an image")
    # CliRunner's stdout is strict UTF-8, like PYTHONIOENCODING=utf-8:strict.
    r = run("classify", d, "--model", model, "--format", fmt)
    no_traceback(r)
    assert r.exit_code == 1
    assert errors(r.stderr) == [f"error: {d}/bad\\xfe.jpg: not an image (unrecognised format)"]
    if fmt == "jsonl":
        rows = [json.loads(line) for line in r.stdout.splitlines()]  # still valid JSON
        assert sorted(os.fsencode(row["path"]) for row in rows) == [
            bytes(d) + b"/bad\xfe.jpg",
            bytes(d) + b"/cell\xff.png",
        ]
    else:
        assert f"{d}/cell\\xff.png" in r.stdout


# --- 5. one listing of images -----------------------------------------------------------------


def test_runtime_list_images_rules(tmp_path):
    from edge_bloodcls.edge_runtime.capture import sources
    from edge_bloodcls.edge_runtime.core import images
    from edge_bloodcls.edge_runtime.core.images import list_images

    d = tmp_path / "d"
    for rel in ("b.png", "a/z.JPG", ".hidden.jpg", ".dir/x.tif", "a b/y.webp", "notes.txt"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"x")
    (d / "a" / "loop").symlink_to(d)  # a link back up the tree is walked once
    (d / "linked.png").symlink_to(d / "b.png")
    listing = list_images(d)
    assert [str(p.relative_to(d)) for p in listing.files] == [
        ".dir/x.tif",
        ".hidden.jpg",
        "a/z.JPG",
        "a b/y.webp",
        "b.png",
        "linked.png",
    ]
    assert listing.errors == []
    assert sources.IMAGE_SUFFIXES is images.IMAGE_SUFFIXES

    missing = list_images(tmp_path / "nope")
    assert missing.files == [] and missing.errors == [(str(tmp_path / "nope"), "no such file or folder")]


def test_runtime_evaluate_and_bench_see_the_same_files(model, tmp_path):
    from edge_bloodcls.benchmarks.harness import load_test_images
    from edge_bloodcls.convert.calibrate import from_directory

    data = make_dataset(tmp_path / "cells", n_per_class=2, seed=8)
    (data / "neutrophil" / ".DS_0001.jpg").write_bytes(b"\0\0\0\1Bud1")  # as in the PBC archive
    (data / "eosinophil" / "._EO_0000.jpg").write_bytes(b"\0\5\26\7AppleDouble")  # a Mac's copy
    cell_png(data / "lymphocyte" / "deeper" / ".hidden_but_real.png", LABELS.index("lymphocyte"))
    cell_png(data / "platelet" / "UPPER.PNG", LABELS.index("platelet"))
    r = run("evaluate", data, "--model", model, "--json", tmp_path / "e.json")
    no_traceback(r)
    assert r.exit_code == 1, r.output  # went on past both, metrics of the rest, and says some failed
    rep = json.loads((tmp_path / "e.json").read_text())

    test = load_test_images(data, None, None, 0)
    left_out = from_directory(data).info["unreadable"]
    assert rep["n_images"] == len(test.paths) + len(left_out) == 2 * len(LABELS) + 4
    assert sorted(x["path"] for x in rep["failed"]) == sorted(p for p, _ in left_out)
    assert "2 unreadable file(s) left out" in test.source
    cm = np.array(rep["metrics"]["confusion_matrix"])
    assert cm.sum(axis=1).tolist() == list(test.describe()["per_class"].values())
