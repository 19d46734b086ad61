"""Where frames come from, as one iterator of RGB frames:

    camera index      "0", "1"          cv2.VideoCapture (USB microscope camera, V4L2)
    picamera2         "picamera2[:N]"   Raspberry Pi camera module (picamera2 imported only then)
    stream or device  "rtsp://…", "/dev/video2"
    video file        "slide.avi"       replayed once
    image folder      "fields/"         images in name order, replayed as frames
    single image      "field.jpg"       one frame

A live source (camera, stream) that stops delivering frames is reopened after a back-off; when
every retry fails the iterator ends and `end_reason` says why. A read that hangs (a USB camera
wedged in the driver, a stalled stream) counts as a failed read after READ_TIMEOUT_S: reads run
in a helper thread so the loop never waits on a dead device. Recorded sources end at their end.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.images import IMAGE_SUFFIXES, list_images, printable
from ..core.preprocess import ImageError, load_rgb

# Seconds before each reopen of a live source that stopped; a USB camera re-enumerates within a
# few seconds of a loose cable being pushed back.
DEFAULT_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
# Consecutive failed reads before a reopen: a single dropped frame is common on a busy USB bus.
READ_FAILURES_BEFORE_REOPEN = 3
# A camera delivers a frame every 33-100 ms; a read that takes this long is a hung device.
READ_TIMEOUT_S = 5.0


class SourceError(RuntimeError):
    """A source that cannot be opened at all; str() is a one-line reason."""


@dataclass
class Frame:
    index: int  # 0, 1, 2 … over the frames delivered
    rgb: np.ndarray  # HxWx3 uint8
    name: str  # file name for a folder, "camera 0 #17" etc. otherwise
    timestamp: float  # time.time() when read
    decode_ms: float  # reading + decoding + colour conversion


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Source:
    """Iterate for frames; afterwards `end_reason` says why it ended, and `failed` whether it
    ended short of what it should have delivered (capture exits 1 then)."""

    live = False
    failed = False

    def __init__(
        self,
        name: str,
        fps: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        warn: Callable[[str], None] = _stderr,
    ):
        self.name = name
        self.fps = fps
        self.sleep = sleep
        self.warn = warn
        self.end_reason = ""
        self._next_t: float | None = None

    def _pace(self) -> None:
        # Replays (folder, video) run as fast as the machine allows unless --fps asks otherwise;
        # for a camera it drops the rate below what the camera delivers.
        if not self.fps:
            return
        now = time.monotonic()
        if self._next_t is not None and now < self._next_t:
            self.sleep(self._next_t - now)
        self._next_t = max(now, self._next_t or now) + 1.0 / self.fps

    def _frames(self) -> Iterator[tuple[np.ndarray, str]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        frames = self._frames()
        while True:
            t = time.perf_counter()
            try:
                rgb, name = next(frames)
            except StopIteration:
                return
            decode_ms = (time.perf_counter() - t) * 1000
            self._pace()
            yield Frame(index, rgb, name, time.time(), decode_ms)
            index += 1

    def close(self) -> None:
        pass


class FolderSource(Source):
    kind = "folder"

    def __init__(self, folder, files=None, **kw):
        super().__init__(printable(folder), **kw)
        self.folder = Path(folder)
        # The one listing of images (images.list_images): the same files as classify and evaluate,
        # and what could not be listed (an unreadable subfolder, a broken link, a pipe) is named,
        # never a traceback or a silent gap in the replay.
        listing = list_images(self.folder) if files is None else None
        self.files = files if files is not None else listing.files
        self.not_listed = listing.errors if listing else []
        if not self.files:
            if self.not_listed:
                path, reason = self.not_listed[0]
                more = f" and {len(self.not_listed) - 1} more" if len(self.not_listed) > 1 else ""
                raise SourceError(f"{printable(path)}: {reason}{more}; no image could be listed in {self.name}")
            raise SourceError(f"{self.name}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        self.skipped = 0

    def _frames(self):
        for path, reason in self.not_listed:
            self.skipped += 1
            self.warn(f"warning: skipped {printable(path)}: {reason}")
        for p in self.files:
            try:
                # printable: a non-UTF-8 file name (legal on Linux) must not break the log or the output
                yield load_rgb(p), printable(p.relative_to(self.folder))
            except ImageError as e:
                self.skipped += 1
                self.warn(f"warning: skipped {e}")
        total = len(self.files) + len(self.not_listed)
        if self.skipped >= total:
            self.failed = True  # not one frame: a session of nothing is no result
            self.end_reason = f"no image of the {self.kind} could be read ({self.skipped} skipped)"
        else:
            self.end_reason = f"end of {self.kind} ({total - self.skipped} images, {self.skipped} skipped)"


class ImageSource(FolderSource):
    kind = "image"

    def __init__(self, path, **kw):
        super().__init__(Path(path).parent, files=[Path(path)], **kw)
        self.name = printable(path)


class LiveSource(Source):
    """A camera or stream, reopened with back-off when it stops delivering.

    `opener()` returns a device with cv2.VideoCapture's read() -> (ok, frame) and release();
    `to_rgb` converts what read() returns. Tests pass their own opener, back-off and sleep.
    """

    live = True
    gave_up = False

    def __init__(
        self,
        name: str,
        opener: Callable,
        to_rgb: Callable[[np.ndarray], np.ndarray],
        backoff=DEFAULT_BACKOFF,
        read_failures: int = READ_FAILURES_BEFORE_REOPEN,
        read_timeout: float | None = READ_TIMEOUT_S,
        **kw,
    ):
        super().__init__(name, **kw)
        self.opener = opener
        self.to_rgb = to_rgb
        self.backoff = tuple(backoff)
        self.read_failures = read_failures
        self.read_timeout = read_timeout
        self.reopens = 0
        self.timeouts = 0
        self.reader: _Reader | None = None
        self.device = self._open()
        if self.device is None:
            raise SourceError(f"{name}: cannot open (not connected, busy, or no permission to the device)")

    def _open(self):
        try:
            dev = self.opener()
        except Exception as e:  # a driver error is as good as "not there"
            self.warn(f"warning: {self.name}: open failed ({type(e).__name__}: {e})")
            return None
        if dev is None or (hasattr(dev, "isOpened") and not dev.isOpened()):
            return None
        return dev

    def _release(self, hung: bool = False):
        if self.reader is not None:
            self.reader.stop()
            self.reader = None
        if self.device is not None:
            dev, self.device = self.device, None
            if hung:
                # the stuck read holds the driver: release from a helper thread, never wait on it
                threading.Thread(target=_quiet_release, args=(dev,), daemon=True).start()
            else:
                _quiet_release(dev)

    def _read(self):
        if self.read_timeout is None:
            return self.device.read()
        if self.reader is None:
            self.reader = _Reader(self.device)
        return self.reader.read(self.read_timeout)

    def _frames(self):
        n = 0
        attempt = 0  # reopens since the last frame: a device that opens but never delivers counts
        while True:
            if self.device is not None:
                failures = 0
                hung = False
                while failures < self.read_failures:
                    try:
                        ok, raw = self._read()
                    except _ReadTimeout:
                        self.timeouts += 1
                        self.warn(f"warning: {self.name}: no frame for {self.read_timeout:g} s (read hung)")
                        hung = True
                        break  # a hung device will not answer a second read either
                    except Exception:
                        ok, raw = False, None
                    if ok and raw is not None:
                        failures = attempt = 0
                        n += 1
                        yield self.to_rgb(raw), f"{self.name} #{n - 1}"
                    else:
                        failures += 1
                self._release(hung)
            if attempt >= len(self.backoff):
                self.gave_up = self.failed = True
                waited = ", ".join(f"{d:g}" for d in self.backoff)
                self.end_reason = (
                    f"{self.name} stopped delivering frames; gave up after "
                    f"{len(self.backoff)} reopen attempts (waited {waited} s)"
                )
                return
            delay = self.backoff[attempt]
            attempt += 1
            self.warn(
                f"warning: {self.name}: no frames; reopening in {delay:g} s (attempt {attempt}/{len(self.backoff)})"
            )
            self.sleep(delay)
            self.device = self._open()
            if self.device is not None:
                self.reopens += 1

    def close(self):
        self._release()


class _ReadTimeout(Exception):
    pass


def _quiet_release(dev) -> None:
    try:
        dev.release()
    except Exception:
        pass


class _Reader:
    """device.read() in a daemon thread, so that a read that never returns can be abandoned (a
    daemon thread does not keep the process from exiting)."""

    def __init__(self, device):
        self.device = device
        self.want = threading.Semaphore(0)
        self.done = threading.Semaphore(0)
        self.result = None
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self):
        self.stopped = True
        self.want.release()

    def _run(self):
        while True:
            self.want.acquire()
            if self.stopped:
                return
            try:
                self.result = self.device.read()
            except Exception as e:
                self.result = e
            self.done.release()

    def read(self, timeout: float):
        self.want.release()
        if not self.done.acquire(timeout=timeout):
            raise _ReadTimeout()
        r, self.result = self.result, None
        if isinstance(r, Exception):
            raise r
        return r


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """What OpenCV delivers (BGR, or grey / BGRA from some USB cameras) -> RGB uint8."""
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True
