"""Video files as a capture source: replayed once, with damaged frames skipped and counted and a
truncated file reported (see VideoSource)."""

from __future__ import annotations

from pathlib import Path

from ..core.images import printable
from .sources import Source, SourceError, bgr_to_rgb

# Consecutive undecodable frames before a video is given up: one damaged frame is skipped, a run of
# them is a damaged file whose count would be a silent fraction of the recording.
MAX_BAD_FRAMES_IN_A_ROW = 10
# Warnings printed for single bad frames of a video (all are counted): a damaged file must not
# bury the status lines.
MAX_FRAME_WARNINGS = 5


class VideoSource(Source):
    """A video file, replayed once. OpenCV's read() says False both at the end and at a frame it
    cannot decode; the frames read so far against the declared frame count tell them apart, so a
    damaged frame is skipped and counted instead of ending the session as if the video had ended,
    and a file that stops before its declared length (truncated) says so and exits 1."""

    def __init__(self, path, max_bad_run: int = MAX_BAD_FRAMES_IN_A_ROW, **kw):
        super().__init__(printable(path), **kw)
        # OpenCV: the [edge] extra; classify, review and report run without it
        import cv2

        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise SourceError(f"{self.name}: cannot open as a video (unsupported codec or not a video file)")
        self.declared = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # 0 or less: not known
        self.max_bad_run = max_bad_run
        self.bad_frames = 0

    def _position(self) -> int:
        # OpenCV: the [edge] extra; classify, review and report run without it
        import cv2

        return int(self.cap.get(cv2.CAP_PROP_POS_FRAMES) or 0)

    def _frames(self):
        n = run = 0
        run_start = -1  # frame position where the current run of failed reads began
        base = Path(self.name).name
        while True:
            try:
                ok, bgr = self.cap.read()
            except Exception:  # a decoder error raised instead of returned
                ok, bgr = False, None
            if ok and bgr is not None:
                if run:  # the failed reads before this frame were damaged frames, not the end
                    self.bad_frames += run
                    if self.bad_frames - run < MAX_FRAME_WARNINGS:
                        self.warn(
                            f"warning: {self.name}: {run} frame(s) at frame {run_start} could not be decoded, skipped"
                        )
                run = 0
                n += 1
                yield bgr_to_rgb(bgr), f"{base} #{n - 1}"
                continue
            pos = self._position()
            # The end the file declares (or an unknown length: nothing to compare). After a bad frame
            # FFmpeg's position lags by the frames it could not decode: count those as well.
            if self.declared <= 0 or max(pos, n + self.bad_frames) >= self.declared:
                break
            if run == 0:
                run_start = pos
            run += 1
            if run >= self.max_bad_run:
                # FFmpeg's position does not move over undecodable frames, so a truncated file and a
                # long damaged stretch look alike here: both end the session short, with exit 1.
                self.failed = True
                self.end_reason = (
                    f"{self.name}: video ended after {n} of the {self.declared} frames it declares "
                    f"({run} reads in a row failed: truncated or damaged file)"
                )
                if self.bad_frames:
                    self.end_reason += f"; {self.bad_frames} bad frame(s) skipped before"
                self.warn(f"warning: {self.end_reason}")
                return
        skipped = f", {self.bad_frames} undecodable frame(s) skipped" if self.bad_frames else ""
        if self.declared > 0 and n + self.bad_frames < self.declared:
            self.failed = True
            self.end_reason = (
                f"{self.name}: video ended after {n} of the {self.declared} frames it declares "
                f"(truncated or damaged file{skipped})"
            )
            self.warn(f"warning: {self.end_reason}")
        else:
            self.end_reason = f"end of video ({n} frames{skipped})"

    def close(self):
        self.cap.release()
