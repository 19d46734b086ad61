"""Where on the slide, and whether this frame may be counted from.

Each frame is registered (field_motion.Correlator) against a key frame, and the shifts are chained
into an offset: slide position = frame position - offset. A cell seen again after the stage came
back, or in the overlap of two fields, therefore lands on the same slide position and is
recognised (counting.py) instead of counted again.

Segments. Positions are only comparable within a chain of verified registrations: a *segment*.
The chain breaks when a frame cannot be registered against the key frame nor the previous frame
(a jump of the stage, a frame too blurred or too dark to match). A frame that cannot be registered
is "lost": it is shown, nothing on it is counted, and it does not start anything. The next frame
sharp enough to count from, if it still does not register, starts a new segment, unless it
registers against one of the last key frames of earlier segments (ANCHORS): then it rejoins that
segment at the matched position (a verified registration: the same test that tells the same
field from another frame to frame, whose thresholds are measured in field_motion.py). Nothing is
ever merged on a guess: cells in two segments that were never joined by a verified registration
are two cells (a possible recount, never a lost cell).

Drift. Frames are registered against a key frame, not each against the previous one, so a stage
at rest or vibrating does not drift at all; the key frame moves on when the view has moved by
KEY_STEP of its width, so errors add up only once per KEY_STEP of travel (sub-pixel each).

State of a frame, in this order:
  lost          not registered (jump, blur, dark or blank frame): located cells are shown only
  moving        the stage moved more than MOVING_RBC red-cell diameters since the previous frame
                (a camera exposes for about its frame interval, so that is about the smear)
  out of focus  sharpness under FOCUS_RATIO of the best seen at this place, or under
                SESSION_FLOOR of the session's usual sharpness (a view that arrives blurred)
  counting      otherwise: cells are classified and counted from this frame
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .field_motion import Correlator, grey_small, sharpness

MOVING_RBC = 0.15  # per frame: 15 px at BCCD's scale (640x480, red cell ~100 px)
FOCUS_RATIO = 0.75  # of the best sharpness at this place (a 50 % cross-fade gives ~0.7)
SESSION_FLOOR = 0.35  # of the session's median sharpness over SESSION_FRAMES counting frames
PLACE_DECAY = 0.97  # per frame: the best sharpness at a place fades, so a plainer field is not "blurred" for ever
SESSION_FRAMES = 64
PLACE_STEP = 0.25  # of the frame width: farther than this from where the focus reference was set is a new place
KEY_STEP = 0.20  # of the frame width: the key frame moves on after this much travel
CHANGE_STEP = 0.25  # of the frame width: nearer than this to the key frame, failing to match it is a change of content
ANCHORS = 8  # earlier key frames tried when a new segment would start (each ~0.3 ms)

COUNTING, MOVING, BLURRED, LOST = "counting", "moving", "out of focus", "lost"


@dataclass(frozen=True)
class FrameState:
    state: str  # COUNTING, MOVING, BLURRED or LOST
    segment: int  # 1, 2, ... (0 before the first registered frame)
    offset: tuple[float, float] | None  # slide = frame - offset; None when lost
    shift: tuple[float, float]  # stage shift since the previous registered frame, frame pixels
    sharpness: float
    focus: float  # sharpness / the best at this place (1.0: as sharp as it gets here)
    new_segment: bool = False  # this frame started a segment (the previous one has ended)
    rejoined: bool = False  # ... by registering against a key frame of an earlier segment

    @property
    def countable(self) -> bool:
        return self.state == COUNTING

    def to_slide(self, box) -> tuple[float, float, float, float]:
        assert self.offset is not None
        ox, oy = self.offset
        return (box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy)


@dataclass
class _Key:
    grey: np.ndarray
    segment: int
    offset: tuple[float, float]
    sharpness: float


class SlidePosition:
    """Feed every frame in order (update); returns its FrameState."""

    def __init__(self, rbc_px: float | None = None, correlator: Correlator | None = None):
        self.rbc_px = rbc_px
        self.corr = correlator or Correlator()
        self.key: _Key | None = None
        self.prev: _Key | None = None  # the previous frame, when it was registered
        self.last: np.ndarray | None = None  # the previous frame's grey, registered or not
        self.anchors: deque[_Key] = deque(maxlen=ANCHORS)
        self.segment = 0
        self.segments = 0
        self.place: tuple[float, float] | None = None
        self.place_best = 0.0
        self.session: deque[float] = deque(maxlen=SESSION_FRAMES)
        self.force_new = False  # the operator asks for a new segment (preview's space bar)

    def session_sharpness(self) -> float | None:
        return float(np.median(self.session)) if self.session else None

    def update(self, rgb: np.ndarray) -> FrameState:
        g = grey_small(rgb)
        s = sharpness(g)
        h, w = rgb.shape[:2]
        scale = w / g.shape[1]
        rbc = self.rbc_px or 0.21 * min(h, w)
        ref = self.session_sharpness()
        floor_ok = ref is None or s >= SESSION_FLOOR * ref
        self.place_best *= PLACE_DECAY
        offset = None
        changed = False
        last, self.last = self.last, g
        if self.key is not None and not self.force_new:
            r = self.corr.register(self.key.grey, g)
            if r.ok:
                offset = (self.key.offset[0] + r.dx * scale, self.key.offset[1] + r.dy * scale)
            elif self.prev is not None and self.prev is not self.key:
                r = self.corr.register(self.prev.grey, g)
                if r.ok:
                    offset = (self.prev.offset[0] + r.dx * scale, self.prev.offset[1] + r.dy * scale)
                    near_key = (
                        np.hypot(offset[0] - self.key.offset[0], offset[1] - self.key.offset[1]) < CHANGE_STEP * w
                    )
                    # the key frame should still match here: if this frame is as sharp as the place
                    # allows, what it shows has changed in place (a cross-fade, another slide)
                    changed = near_key and s >= FOCUS_RATIO * self.place_best and floor_ok
                    if changed:
                        offset = None
        new_segment = rejoined = False
        if offset is None:
            # a pair of frames that match each other where nothing matched before: the stage has
            # come to rest at a place (however plain the field), not a smear in passing
            at_rest = (
                not changed
                and last is not None
                and self.prev is None
                and (r2 := self.corr.register(last, g)).ok
                and np.hypot(r2.dx, r2.dy) * scale <= MOVING_RBC * rbc
            )
            # before the session has a usual sharpness, the last key frame stands in for it
            sharp_enough = floor_ok if ref is not None else self.key is None or s >= SESSION_FLOOR * self.key.sharpness
            if not (sharp_enough or at_rest or changed or self.force_new):
                self.prev = None
                return FrameState(LOST, self.segment, None, (0.0, 0.0), s, 0.0)
            # sharp enough to count from and not where we were: a new segment, or an earlier one
            # found again by a verified registration
            self.force_new = False
            cur = _Key(g, 0, (0.0, 0.0), s)
            for a in reversed(self.anchors) if not changed else ():
                r = self.corr.register(a.grey, g)
                if r.ok:
                    cur.segment, cur.offset = a.segment, (a.offset[0] + r.dx * scale, a.offset[1] + r.dy * scale)
                    rejoined = True
                    break
            if not rejoined:
                self.segments += 1
                cur.segment = self.segments
            if self.key is not None and not changed:
                self.anchors.append(self.key)
            new_segment = True
            self.segment = cur.segment
            self.key = cur
            self.prev = None
            offset = cur.offset
            self.place, self.place_best = offset, s
        shift = (0.0, 0.0)
        if self.prev is not None:
            shift = (offset[0] - self.prev.offset[0], offset[1] - self.prev.offset[1])
        moving = float(np.hypot(*shift)) > MOVING_RBC * rbc
        if self.place is None or np.hypot(offset[0] - self.place[0], offset[1] - self.place[1]) > PLACE_STEP * w:
            self.place, self.place_best = offset, s
        else:
            self.place_best = max(self.place_best, s)
        focus = s / self.place_best if self.place_best > 0 else 0.0
        sharp = focus >= FOCUS_RATIO and floor_ok
        cur = _Key(g, self.segment, offset, s)
        assert self.key is not None
        if not new_segment and sharp and not moving:
            travelled = np.hypot(offset[0] - self.key.offset[0], offset[1] - self.key.offset[1])
            # a sharper view of the same place is a better key (the first may have been soft)
            if travelled > KEY_STEP * w or s > 1.25 * self.key.sharpness:
                if travelled > KEY_STEP * w:
                    self.anchors.append(self.key)
                self.key = cur
        self.prev = cur
        state = MOVING if moving else COUNTING if sharp else BLURRED
        if state == COUNTING:
            self.session.append(s)
        return FrameState(state, self.segment, offset, shift, s, focus, new_segment, rejoined)
