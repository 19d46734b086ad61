"""The counting core (counting.py, slide.py) on its own: frames and located cells in, counted
cells out, with a stand-in classifier; no model, database, camera or video file."""

from __future__ import annotations

import numpy as np
import pytest
from capture_fixtures import random_field

from edge_bloodcls.edge_runtime.capture.counting import COUNT_VIEWS, CountingCore
from edge_bloodcls.edge_runtime.capture.locate import locate
from edge_bloodcls.edge_runtime.capture.slide import BLURRED, COUNTING, LOST, MOVING, SlidePosition
from edge_bloodcls.edge_runtime.capture.track import Observation
from edge_bloodcls.edge_runtime.core.classifier import Prediction
from edge_bloodcls.edge_runtime.core.spec import LABELS

cv2 = pytest.importorskip("cv2")


class FakeModel:
    """classify(detections) -> observations with a label chosen by the test; records each call."""

    def __init__(self, label="neutrophil", conf=0.9):
        self.label, self.conf = label, conf
        self.calls: list[int] = []  # detections per call
        self.frame = 0

    def __call__(self, dets):
        self.calls.append(len(dets))
        out = []
        for d in dets:
            label, conf = (self.label(d) if callable(self.label) else self.label), self.conf
            probs = np.full(len(LABELS), (1 - conf) / (len(LABELS) - 1))
            probs[LABELS.index(label)] = conf
            pred = Prediction(label, conf, dict(zip(LABELS, probs)), 1.0, conf < 0.8)
            out.append(Observation(self.frame, d.box, probs, pred, np.zeros((4, 4, 3), np.uint8)))
        return out


def feed(core: CountingCore, frames, model: FakeModel, start=0):
    counted, results = [], []
    for k, rgb in enumerate(frames, start):
        model.frame = k
        r = core.step(k, k / 15, rgb, locate(rgb), model)
        counted += r.counted
        results.append(r)
    return counted, results


def noisy(rgb, seed):
    n = np.random.default_rng(seed).integers(-4, 5, rgb.shape)
    return np.clip(rgb.astype(np.int16) + n, 0, 255).astype(np.uint8)


def pan(a, b, x):
    """The view x px into the strip a|b (both 640 wide)."""
    return np.concatenate([a, b], axis=1)[:, x : x + a.shape[1]]


def core():
    return CountingCore(LABELS, 0.8)


def test_ten_frames_of_one_field_count_its_cells_once_and_classify_each_only_until_counted():
    f = random_field(11)
    assert len(locate(f)) == 3
    c, m = core(), FakeModel()
    counted, results = feed(c, [noisy(f, k) for k in range(10)], m)
    assert len(counted) == 3 and len(c.flush()) == 0
    assert {t.observations for t in counted} == {COUNT_VIEWS}
    assert sum(m.calls) == 3 * COUNT_VIEWS  # never classified again once counted
    assert [r.frame.state for r in results] == [COUNTING] * 10 and c.segments == 1
    assert {s.note for s in results[-1].shown} == {"counted"}


def test_mean_label_and_disagreement_come_from_the_counted_views():
    f = random_field(11)
    labels = iter(["monocyte"] * 3 + ["lymphocyte"] * 3 + ["monocyte"] * 3)
    m = FakeModel(label=lambda d: next(labels), conf=0.9)
    counted, _ = feed(core(), [noisy(f, k) for k in range(3)], m)
    assert len(counted) == 3
    v = [t.verdict(LABELS, 0.8) for t in counted]
    # view 1 monocyte, 2 lymphocyte, 3 monocyte for each cell (labels are handed out per frame)
    assert all(x["label"] == "monocyte" and "frames disagree" in x["review_reason"] for x in v)
    assert abs(v[0]["confidence"] - (0.9 + 0.9 + 0.1 / 7) / 3) < 1e-6


def test_a_still_image_counts_its_cells_and_a_flicker_in_a_held_field_does_not():
    f = random_field(12)
    c = core()
    counted, _ = feed(c, [f], FakeModel())
    assert len(counted) == 0 and len(c.flush()) == 3  # one frame: its cells, at the end
    # a held field in which an extra "cell" is located in one frame only
    g = random_field(13)
    extra = random_field(14)
    frames = [noisy(g, k) for k in range(8)]
    c2, m = core(), FakeModel()
    dets_extra = [d for d in locate(extra)][:1]
    cnt = []
    for k, rgb in enumerate(frames):
        dets = locate(rgb) + (dets_extra if k == 3 else [])
        cnt += c2.step(k, k / 15, rgb, dets, m).counted
    cnt += c2.flush()
    assert len(cnt) == 3 and c2.stats.dropped >= 1


def test_a_cell_followed_across_a_pan_is_counted_once():
    a, b = random_field(3), random_field(4)
    c = core()
    frames = [noisy(pan(a, b, 12 * k), k) for k in range(54)]  # 12 px a frame: still enough to count
    counted, results = feed(c, frames, FakeModel())
    counted += c.flush()
    assert c.segments == 1 and {r.frame.state for r in results} == {COUNTING}
    assert len(counted) == len(locate(a)) + len(locate(b)) == 6
    assert abs(results[-1].frame.offset[0] + 12 * 53) < 6  # the chained position: the view moved 636 px


def test_coming_back_recognises_counted_cells_and_does_not_count_them_again():
    a, b = random_field(3), random_field(4)
    xs = list(range(0, 637, 12)) + list(range(636, -1, -12))  # A -> B -> A, slowly
    c = core()
    counted, results = feed(c, [noisy(pan(a, b, x), k) for k, x in enumerate(xs)], FakeModel())
    counted += c.flush()
    assert len(counted) == 6 and c.segments == 1
    assert c.stats.seen_again > 0 and "already counted" in {s.note for s in results[-1].shown}


def test_moving_and_blurred_frames_are_shown_not_classified():
    a, b = random_field(3), random_field(4)
    c, m = core(), FakeModel()
    feed(c, [noisy(a, k) for k in range(2)], m)
    calls = sum(m.calls)
    blurred = [cv2.GaussianBlur(a, (0, 0), 4) for _ in range(3)]
    _, res = feed(c, blurred, m, start=2)
    assert [r.frame.state for r in res] == [BLURRED] * 3 and sum(m.calls) == calls
    assert all(s.note in ("pending", "not counted") for r in res for s in r.shown)
    fast = [noisy(pan(a, b, 60 * k), k) for k in range(1, 4)]  # 60 px a frame
    _, res = feed(c, fast, m, start=5)
    assert {r.frame.state for r in res} <= {MOVING, LOST} and sum(m.calls) == calls


def test_a_jump_starts_a_segment_and_a_verified_return_rejoins_it():
    a, b = random_field(21), random_field(22)
    c, m = core(), FakeModel()
    frames = (
        [noisy(a, k) for k in range(5)] + [noisy(b, k) for k in range(5, 10)] + [noisy(a, k) for k in range(10, 15)]
    )
    counted, res = feed(c, frames, m)
    counted += c.flush()
    assert res[5].frame.new_segment and not res[5].frame.rejoined
    assert res[10].frame.rejoined and res[10].frame.segment == res[0].frame.segment
    assert len(counted) == len(locate(a)) + len(locate(b)) and c.stats.seen_again >= len(locate(a))


def test_unrelated_fields_are_never_merged():
    # the same box positions in two different fields: two sets of cells, one segment each
    f = random_field(31)
    g = random_field(31, noise_seed=1)[:, ::-1].copy()  # mirrored: same kind of field, another place
    c = core()
    counted, res = feed(c, [noisy(f, k) for k in range(4)] + [noisy(g, k) for k in range(4, 8)], FakeModel())
    counted += c.flush()
    assert res[4].frame.new_segment and not res[4].frame.rejoined and c.segments == 2
    assert len(counted) == len(locate(f)) + len(locate(g))


def test_a_dark_frame_does_not_break_the_count():
    f = random_field(11)
    frames = [noisy(f, k) for k in range(10)]
    frames[5] = np.full_like(f, 10)
    c = core()
    counted, res = feed(c, frames, FakeModel())
    counted += c.flush()
    assert res[5].frame.state == LOST and c.segments == 1 and len(counted) == 3


def test_slide_position_needs_no_cells():
    """The position on the slide from frames alone: a shift of the content moves the offset."""
    a = random_field(5)
    p = SlidePosition()
    s0 = p.update(a)
    moved = np.full_like(a, 220)
    moved[10:, 30:] = a[:-10, :-30]
    s1 = p.update(moved)
    assert s0.new_segment and not s1.new_segment and s1.state == MOVING  # 31 px in one frame
    assert abs(s1.offset[0] - 30) < 3 and abs(s1.offset[1] - 10) < 3
