"""open_source: the source a user named (a camera number, picamera2[:N], a stream URL or
/dev/ device, a video file, an image or a folder of images; sources.py's docstring).

Apart from sources.py because it picks among all of them: the cameras and the video source build
on sources.py, so the one function that knows them all sits above the three.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ..core.images import IMAGE_SUFFIXES
from .cameras import cv2_camera, picamera2
from .sources import DEFAULT_BACKOFF, READ_TIMEOUT_S, FolderSource, ImageSource, Source, SourceError, _stderr
from .video import VideoSource


def open_source(
    spec: str,
    fps: float | None = None,
    backoff=DEFAULT_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
    warn: Callable[[str], None] = _stderr,
    size: tuple[int, int] | None = None,
    read_timeout: float | None = READ_TIMEOUT_S,
) -> Source:
    """The source named by `spec` (see sources.py's docstring); raises SourceError. `size`
    (width, height) is asked of cameras; recorded sources keep their own."""
    kw: dict[str, Any] = {"fps": fps, "sleep": sleep, "warn": warn}
    live = {"backoff": backoff, "read_timeout": read_timeout, "size": size}
    spec = str(spec)
    # ASCII digits only: str.isdigit() accepts '²', which int() refuses.
    if spec.isascii() and spec.isdigit():
        return cv2_camera(int(spec), f"camera {spec}", **live, **kw)
    if spec == "picamera2" or spec.startswith("picamera2:"):
        num = spec.partition(":")[2]
        if num and not (num.isascii() and num.isdigit()):
            raise SourceError(f"{spec}: expected picamera2 or picamera2:N with N a camera number")
        return picamera2(int(num) if num else 0, **live, **kw)
    if "://" in spec or spec.startswith("/dev/"):
        return cv2_camera(spec, spec, **live, **kw)
    p = Path(spec)
    if p.is_dir():
        return FolderSource(p, **kw)
    if p.is_file():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return ImageSource(p, **kw)
        return VideoSource(p, **kw)
    raise SourceError(
        f"{spec}: no such camera, file or folder "
        "(use a camera index such as 0, picamera2, a video file or a folder of images)"
    )
