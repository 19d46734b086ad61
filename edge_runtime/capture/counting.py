"""Counting white cells as a pure core: frames (with their time) and the cells located in them
in, counted cells out. No camera, database, file or window: capture.py is source -> count ->
store -> display around it, and tests and benchmarks/counting.py drive this directly.

Per frame (see slide.py for the frame's state and its position on the slide):

  * Every located cell is placed on the slide (frame box - offset) and matched, within the
    frame's segment, to the cells already there: IoU >= MIN_IOU first, else centre within
    MAX_CENTRE_SHIFT of a box side; greedy, best pairs first.
  * Only in a COUNTING frame (registered, still, in focus) are cells classified: a new cell is
    added, an open one gets one more view. Cells located while the stage moves, the image is
    blurred or the frame is lost are shown and never classified or counted.
  * A cell already counted is never classified again: it is shown as "counted" while still in
    view since it was counted, "already counted" when seen again after it left the view (the
    stage came back, a field overlapping an earlier one).
  * Counting rule: a cell is counted once, with the label of the mean of its views' calibrated
    probabilities, as soon as it has COUNT_VIEWS views, or when it ends with fewer (left the
    view, missed in more than MAX_MISSED counting frames in a row while fully in view, its
    segment ended, or the session ended). Either way it must have been seen in at least
    MIN_SEEN_FRACTION of the counting frames in which it was fully in view, and in at least
    min(MIN_OBSERVATIONS, those frames): a detection seen once in a field held for many frames
    is a flicker, while a field that lasts one frame (a folder of still images) counts its cells.
    A cell that ends without qualifying is dropped, and comes back to life if seen again there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .locate import Detection, iou
from .slide import FrameState, SlidePosition
from .track import MAX_CENTRE_SHIFT, MIN_IOU, MIN_OBSERVATIONS, Observation, Track, centre_close

COUNT_VIEWS = 3
MIN_SEEN_FRACTION = 0.4
MAX_MISSED = 2

OPEN, COUNTED, DROPPED = "open", "counted", "dropped"

# classify(detections) -> one Observation per detection, in order (the caller crops and runs the
# model; the core only decides which cells are worth it)
Classify = Callable[[Sequence[Detection]], Sequence[Observation]]


@dataclass
class SlideCell:
    id: int
    segment: int
    box: tuple[float, float, float, float]  # slide coordinates
    first_frame: int
    track: Track | None = None  # its counting views
    status: str = OPEN
    could_see: int = 0  # counting frames in which it was fully in view
    missed: int = 0  # ... in a row without being located
    left_view: bool = False  # left the view (or its segment was left) since it was counted

    @property
    def views(self) -> int:
        return self.track.observations if self.track is not None else 0


@dataclass(frozen=True)
class ShownCell:
    """A located cell as the operator sees it (frame coordinates)."""

    box: tuple[int, int, int, int]
    note: str  # "counted", "already counted", "pending" (being looked at), "not counted" (not a counting frame)
    label: str = ""
    confidence: float = 0.0
    review: bool = False
    ood: bool = False
    cell_id: int | None = None


@dataclass
class StepResult:
    frame: FrameState
    counted: list[Track]  # the cells counted at this frame, first seen first
    shown: list[ShownCell]
    classified: int  # detections sent to the classifier


@dataclass
class CountingStats:
    frames: int = 0
    states: dict[str, int] = field(default_factory=dict)
    detections: int = 0
    classified: int = 0
    counted: int = 0
    dropped: int = 0
    seen_again: int = 0  # sightings of already counted cells after they left the view


class CountingCore:
    def __init__(
        self,
        labels: Sequence[str],
        review_threshold: float,
        rbc_px: float | None = None,
        min_observations: int = MIN_OBSERVATIONS,
        count_views: int = COUNT_VIEWS,
        position: SlidePosition | None = None,
    ):
        self.labels = list(labels)
        self.review_threshold = review_threshold
        self.min_obs = min_observations
        self.count_views = count_views
        self.position = position or SlidePosition(rbc_px)
        self.cells: dict[int, list[SlideCell]] = {}  # segment -> its cells
        self.open: list[SlideCell] = []  # not yet counted nor dropped, current segment only
        self.next_id = 1
        self.last_index = -1
        self.stats = CountingStats()
        self._release: list[Track] = []

    @property
    def segments(self) -> int:
        return self.position.segments

    def new_field(self) -> None:
        """The operator says the field has changed (preview's space bar): count what is open."""
        self.position.force_new = True

    def step(
        self, index: int, timestamp: float, rgb: np.ndarray, detections: Sequence[Detection], classify: Classify
    ) -> StepResult:
        for t in self._release:  # counted at the previous frame: its record has the crop by now
            if t.best is not None:
                t.best.crop = None
        self._release = []
        st = self.position.update(rgb)
        self.last_index = index
        s = self.stats
        s.frames += 1
        s.states[st.state] = s.states.get(st.state, 0) + 1
        s.detections += len(detections)
        counted: list[Track] = []
        if st.new_segment:
            counted += self._end_open(index - 1)
            for c in self.cells.get(st.segment, ()):
                c.left_view = True
        if st.offset is None:
            return self._done(st, counted, [ShownCell(_int_box(d.box), "not counted") for d in detections], 0)
        h, w = rgb.shape[:2]
        ox, oy = st.offset
        view = (-ox, -oy, w - ox, h - oy)
        seg = self.cells.setdefault(st.segment, [])
        near = [c for c in seg if _overlaps(c.box, view)]
        boxes = [st.to_slide(d.box) for d in detections]
        pairs = []
        for ci, c in enumerate(near):
            for di, b in enumerate(boxes):
                score = iou(c.box, b)
                score = score + 1 if score >= MIN_IOU else centre_close(c.box, b)
                if score > 0:
                    pairs.append((score, ci, di))
        match: dict[int, SlideCell] = {}
        used: set[int] = set()
        for _, ci, di in sorted(pairs, reverse=True):
            if ci in used or di in match:
                continue
            used.add(ci)
            match[di] = near[ci]
        countable = st.countable
        todo: list[tuple[SlideCell, int]] = []
        shown: list[ShownCell | None] = [None] * len(detections)
        for di, d in enumerate(detections):
            m = match.get(di)
            if m is not None:
                c = m
                c.box = boxes[di]
                if c.status == COUNTED:
                    if c.left_view:
                        s.seen_again += 1
                    shown[di] = self._shown(c, d, "already counted" if c.left_view else "counted")
                    continue
                if not countable:
                    shown[di] = self._shown(c, d, "pending" if c.track is not None else "not counted")
                    continue
                if c.status == DROPPED:  # seen again where it was dropped: it is a cell after all
                    c.status = OPEN
                    self.open.append(c)
                todo.append((c, di))
            elif countable:
                c = SlideCell(self.next_id, st.segment, boxes[di], index)
                self.next_id += 1
                seg.append(c)
                self.open.append(c)
                todo.append((c, di))
            else:
                shown[di] = ShownCell(_int_box(d.box), "not counted")
        if todo:
            obs = list(classify([detections[di] for _, di in todo]))
            if len(obs) != len(todo):
                raise ValueError(f"classify returned {len(obs)} observations for {len(todo)} cells")
            for (c, _), o in zip(todo, obs):
                c.missed = 0
                label = self.labels[int(np.argmax(o.probs))]
                if c.track is None:
                    c.track = Track(
                        c.id, c.segment, index, _float_box(o.box), np.asarray(o.probs, np.float64), last_frame=index
                    )
                    c.track._note(o, label)
                else:
                    c.track.add(o, label)
        seen = {id(c) for c, _ in todo}
        still_open = []
        for c in self.open:
            inside = _inside(c.box, view)
            if countable and inside:
                c.could_see += 1
                if id(c) not in seen:
                    c.missed += 1
            if c.views >= self.count_views and self._qualifies(c):
                counted.append(self._count(c, index))
            elif not _overlaps_centre(c.box, view) or c.missed > MAX_MISSED:
                counted += self._end([c], index)
            else:
                still_open.append(c)
        self.open = still_open
        for c in seg:
            if c.status == COUNTED and not c.left_view and not _overlaps_centre(c.box, view):
                c.left_view = True
        for di, d in enumerate(detections):
            if shown[di] is None:
                c = match.get(di) or next(c for c, j in todo if j == di)
                shown[di] = self._shown(c, d, "counted" if c.status == COUNTED else "pending")
        counted.sort(key=lambda t: t.id)
        return self._done(st, counted, [x for x in shown if x is not None], len(todo))

    def flush(self) -> list[Track]:
        """End of session: every open cell ends (counted or dropped)."""
        return sorted(self._end_open(self.last_index), key=lambda t: t.id)

    # --- internals ---

    def _done(self, st, counted, shown, classified) -> StepResult:
        self.stats.classified += classified
        self._release = list(counted)
        return StepResult(st, counted, shown, classified)

    def _qualifies(self, c: SlideCell) -> bool:
        n = c.views
        return n >= 1 and n >= min(self.min_obs, max(1, c.could_see)) and n >= MIN_SEEN_FRACTION * c.could_see

    def _count(self, c: SlideCell, index: int) -> Track:
        c.status = COUNTED
        c.left_view = False
        assert c.track is not None
        c.track.end_frame = index
        self.stats.counted += 1
        return c.track

    def _end(self, cells: list[SlideCell], index: int) -> list[Track]:
        out = []
        for c in cells:
            if self._qualifies(c):
                out.append(self._count(c, index))
            else:
                c.status = DROPPED
                c.missed = 0
                self.stats.dropped += 1
        return out

    def _end_open(self, index: int) -> list[Track]:
        cells, self.open = self.open, []
        return self._end(cells, index)

    def _shown(self, c: SlideCell, d: Detection, note: str) -> ShownCell:
        if c.track is None:
            return ShownCell(_int_box(d.box), note, cell_id=c.id)
        v = c.track.verdict(self.labels, self.review_threshold)
        return ShownCell(_int_box(d.box), note, v["label"], v["confidence"], v["review"], v["ood"], c.id)


def _int_box(b) -> tuple[int, int, int, int]:
    return (int(round(b[0])), int(round(b[1])), int(round(b[2])), int(round(b[3])))


def _float_box(b) -> tuple[float, float, float, float]:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(box, view) -> bool:
    return box[0] >= view[0] - 1 and box[1] >= view[1] - 1 and box[2] <= view[2] + 1 and box[3] <= view[3] + 1


def _overlaps_centre(box, view) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return view[0] <= cx < view[2] and view[1] <= cy < view[3]


__all__ = [
    "CountingCore",
    "StepResult",
    "ShownCell",
    "SlideCell",
    "Classify",
    "COUNT_VIEWS",
    "MAX_CENTRE_SHIFT",
    "MIN_OBSERVATIONS",
]
