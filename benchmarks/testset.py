"""The test images every model and format of a benchmark is scored on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_bloodcls.convert import calibrate
from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.train.pipeline import cached_pixels

from .options import BenchError


@dataclass
class TestImages:
    source: str
    paths: list
    labels: np.ndarray
    indices: np.ndarray  # the images accuracy is measured on (all, or a stratified subset)
    key: str  # identity of the image list, for the pixel cache and for stale results
    split_sha256: str | None = None
    _pixels: dict = field(default_factory=dict)

    def pixel_file(self, size: int, cache_dir: Path) -> str:
        """The test images decoded and resized by the runtime's functions, as a uint8 .npy file
        (training's cache of the same split is reused)."""
        if size not in self._pixels:
            arr = cached_pixels(self.paths, (size, size), cache_dir, self.key)
            filename = getattr(arr, "filename", None)  # a memmap's file
            if filename is None:  # just written: read back as a memmap
                filename = getattr(cached_pixels(self.paths, (size, size), cache_dir, self.key), "filename", None)
            self._pixels[size] = str(filename)
        return self._pixels[size]

    def describe(self) -> dict:
        counts = np.bincount(self.labels[self.indices], minlength=len(LABELS)).tolist()
        return {
            "source": self.source,
            "n_total": int(len(self.labels)),
            "n": int(len(self.indices)),
            "subset": len(self.indices) < len(self.labels),
            "key": self.key,
            "split_sha256": self.split_sha256,
            "per_class": dict(zip(LABELS, counts)),
        }


def load_test_images(data: Path, data_root, max_images: int | None, seed: int) -> TestImages:
    if data.is_dir():
        # The same files as `edge-bloodcls evaluate DIR` (edge_runtime.core.images.list_class_images);
        # those that are not images by their header are left out and counted in `source`.
        try:
            images = calibrate.from_directory(data)
        except (OSError, ValueError) as e:
            raise BenchError(str(e)) from None
        rel = "\n".join(str(Path(p).relative_to(data)) for p in images.paths)
        key = "dir" + hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:9]
        left_out = len(images.info.get("unreadable", []))
        note = f"; {left_out} unreadable file(s) left out" if left_out else ""
        source = f"{data} (class folders{note})"
    else:
        images = calibrate.from_split(data, "test", data_root)
        assert images.split_sha256 is not None, "from_split records the split's hash"
        # The pixel cache is named by key, size and count only: a key of the split alone would
        # read the val images' file in place of the test images' wherever both have one count.
        key = images.split_sha256[:12] + "-test"
        source = f"{data}:test"
    n = None if not max_images else max_images
    idx = calibrate.stratified(images.labels, n, seed)
    return TestImages(source, [str(p) for p in images.paths], images.labels, idx, key, images.split_sha256)
