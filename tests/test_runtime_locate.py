"""Field mode: locating white cells in a synthetic field and (when present) in BCCD images."""

from __future__ import annotations

import json

import numpy as np
from capture_fixtures import BG, NUC, RBC, synthetic_field
from click.testing import CliRunner
from PIL import Image

from edge_bloodcls.edge_runtime.capture.locate import CROP_PER_RBC, crop, crop_side, locate
from edge_bloodcls.edge_runtime.capture.locate_eval import iou, locate_eval_command, match, read_voc
from edge_bloodcls.edge_runtime.core.preprocess import load_rgb


def test_locate_synthetic_field_finds_each_cell_once_and_ignores_platelet_and_red_cells():
    rgb, truth = synthetic_field()
    dets = locate(rgb)
    boxes = [d.box for d in dets]
    assert len(boxes) == 4, boxes
    assert match(boxes, truth) == 4
    lobed = max(dets, key=lambda d: iou(d.box, truth[1]))
    nx0, ny0, nx1, ny1 = lobed.nucleus_box
    assert nx0 <= 470 - 45 - 24 + 3 and nx1 >= 470 + 45 + 24 - 3, "all three lobes are one nucleus"
    assert all(not (560 < d.center[0] < 620 and 40 < d.center[1] < 100) for d in dets)


def test_locate_empty_field_finds_nothing():
    rgb = np.full((480, 640, 3), BG, np.uint8)
    rgb[100:200, 100:200] = RBC
    assert locate(rgb) == []


def test_crop_is_at_training_scale_and_padded_at_the_border():
    rgb, truth = synthetic_field()
    det = max(locate(rgb), key=lambda d: iou(d.box, truth[0]))
    side = crop_side(det, 100.0)
    assert side >= CROP_PER_RBC * 100
    c = crop(rgb, det, 100.0)
    assert c.shape == (side, side, 3)
    # the cell is in the middle of the crop, as in PBC
    mid = c[side // 2 - 5 : side // 2 + 5, side // 2 - 5 : side // 2 + 5].reshape(-1, 3).mean(0)
    assert np.abs(mid - NUC).max() < 15
    # outside the frame (top-left here) is filled with the field's background, not black
    assert np.abs(c[2, 2].astype(int) - BG).max() < 15


def test_locate_scale_follows_rbc_px():
    rgb, truth = synthetic_field()
    small = np.asarray(Image.fromarray(rgb).resize((320, 240), Image.BILINEAR))
    dets = locate(small, rbc_px=50)
    assert match([d.box for d in dets], [tuple(v // 2 for v in t) for t in truth]) == 4


def test_locate_on_bccd_test_images(bccd_dir):
    ids = (bccd_dir / "ImageSets" / "Main" / "test.txt").read_text().split()[:8]
    n_truth = n_found = 0
    for i in ids:
        truth = read_voc(bccd_dir / "Annotations" / f"{i}.xml")
        dets = locate(load_rgb(bccd_dir / "JPEGImages" / f"{i}.jpg"))
        n_truth += len(truth)
        n_found += match([d.box for d in dets], truth)
    assert n_truth >= 8 and n_found == n_truth


def test_locate_eval_command_writes_report(tmp_path):
    # a two-image BCCD-like folder built from the synthetic field
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for k in range(2):
        rgb, truth = synthetic_field(seed=k)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"f{k}.jpg", quality=95)
        objs = "".join(
            f"<object><name>WBC</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for b in truth
        )
        objs += (
            "<object><name>RBC</name><bndbox><xmin>10</xmin><ymin>370</ymin><xmax>110</xmax>"
            "<ymax>470</ymax></bndbox></object>"
        )
        (root / "Annotations" / f"f{k}.xml").write_text(f"<annotation>{objs}</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("f1\n")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(locate_eval_command, [str(root), "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["all"]["wbc_boxes"] == 8 and rep["all"]["recall"] == 1.0 and rep["all"]["precision"] == 1.0
    assert rep["test"]["images"] == 1 and rep["missed"] == []
