"""Camera openers for sources.LiveSource: OpenCV (USB cameras, V4L2 devices, streams) and the
Raspberry Pi camera module through Picamera2 (imported only when asked for).

Both take a requested frame size (--width/--height). Every way a camera can fail to start is a
SourceError with one line, which the CLI turns into `error: ...` and exit status 2.
"""

from __future__ import annotations

import numpy as np

from .sources import LiveSource, SourceError, _stderr, bgr_to_rgb


def cv2_camera(spec, name, size=None, **kw) -> LiveSource:
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    warned: list[tuple[int, int]] = []

    def opener():
        cap = cv2.VideoCapture(spec)
        if size and cap.isOpened():
            # a request: the driver picks the nearest mode it has, so say when that differs
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
            got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            if got != tuple(size) and not warned:
                warned.append(got)
                kw.get("warn", _stderr)(
                    f"warning: {name}: asked for {size[0]}x{size[1]}, the camera gives {got[0]}x{got[1]}"
                )
        return cap

    return LiveSource(name, opener, bgr_to_rgb, **kw)


class _Picamera2Device:
    """Picamera2 behind the read()/release() of cv2.VideoCapture. Every failure is a SourceError
    with one line (no camera, camera busy, unsupported size), and a camera that opened but failed
    to configure or start is closed again: libcamera keeps it locked otherwise."""

    def __init__(self, num: int, size=None):
        try:
            # only on a Pi with its camera module (apt's python3-picamera2)
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "picamera2 is not importable. On Raspberry Pi OS: `sudo apt install python3-picamera2` "
                "and create the virtual environment with `python3 -m venv --system-site-packages`"
            ) from None
        try:
            self.cam = Picamera2(num)
        except Exception as e:  # IndexError when there is no camera num, RuntimeError when busy
            raise SourceError(
                f"picamera2 {num}: cannot open ({_one_line(e)}; is the camera connected, "
                "enabled and not used by another program?)"
            ) from None
        try:
            # libcamera's "RGB888" is B, G, R in memory: the array is BGR
            main: dict[str, object] = {"format": "RGB888"}
            if size:
                main["size"] = tuple(size)
            self.cam.configure(self.cam.create_video_configuration(main=main))
            self.cam.start()
        except Exception as e:
            _quiet_close(self.cam)
            raise SourceError(f"picamera2 {num}: cannot configure or start ({_one_line(e)})") from None

    def read(self):
        return True, self.cam.capture_array()

    def release(self):
        try:
            self.cam.stop()
        finally:
            _quiet_close(self.cam)


def _quiet_close(cam) -> None:
    try:
        cam.close()
    except Exception:
        pass


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1][:160]}" if text else type(e).__name__


def picamera2(num: int, size=None, **kw) -> LiveSource:
    first = _Picamera2Device(num, size)  # raises SourceError: not installed, no camera, busy
    opened = [first]

    def opener():
        return opened.pop() if opened else _Picamera2Device(num, size)

    return LiveSource(f"picamera2 {num}", opener, lambda bgr: np.ascontiguousarray(bgr[..., 2::-1]), **kw)
