"""What the person at the microscope sees: the frame with boxes, labels, flags and the running
count, in an OpenCV window (where OpenCV has a GUI) and/or in a web page (`capture --live-port`),
which works on the recommended install: [edge] brings headless OpenCV, which can draw and encode
JPEG but not open a window.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW = "edge-bloodcls"
# BGR
GREEN, ORANGE, RED, GREY, WHITE = (0, 170, 0), (0, 140, 255), (40, 40, 220), (110, 110, 110), (255, 255, 255)


@dataclass
class Box:
    box: tuple
    label: str
    confidence: float
    review: bool = False
    ood: bool = False
    note: str = ""  # "pending", "counted"


def annotate(rgb: np.ndarray, boxes: list[Box], status: list[str], banner: str = "") -> np.ndarray:
    """BGR image: boxes coloured by flag (green sure, orange review, red out of distribution),
    status lines at the bottom, a red banner at the top when the session is unvalidated."""
    import cv2

    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    fs = max(0.4, min(1.0, w / 1400))
    for b in boxes:
        colour = RED if b.ood else ORANGE if b.review else GREEN
        x0, y0, x1, y1 = (int(round(v)) for v in b.box)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
        text = f"{b.label} {b.confidence:.2f}" + (" OOD" if b.ood else "") + (f" {b.note}" if b.note else "")
        _text(img, text, (x0 + 3, max(14, y0 + 16)), fs, colour)
    line_h = int(22 * fs) + 4
    for k, s in enumerate(reversed(status)):
        _text(img, s[:140], (6, h - 8 - k * line_h), fs, (20, 20, 20))
    if banner:
        cv2.rectangle(img, (0, 0), (w, line_h + 8), RED, -1)
        _text(img, banner[:140], (6, line_h), fs, WHITE, bg=None)
    return img


def _text(img, s, org, fs, colour, bg=WHITE):
    import cv2

    if bg is not None:
        (tw, th), _ = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
        cv2.rectangle(img, (org[0] - 2, org[1] - th - 3), (org[0] + tw + 2, org[1] + 4), bg, -1)
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, fs, colour, 1, cv2.LINE_AA)


class Window:
    """OpenCV window; turns itself off (with one message) where OpenCV has no GUI."""

    def __init__(self, echo):
        self.echo = echo
        self.on = True
        self.shown = False

    def show(self, bgr: np.ndarray) -> str | None:
        """Draw; returns "quit" (q, Esc or the window's close button), "field" (space: count the
        cells of this field now), or None."""
        if not self.on:
            return None
        import cv2

        try:
            cv2.imshow(WINDOW, bgr)
            key = cv2.waitKey(1) & 0xFF
            # Closing the window with its X leaves imshow nothing to draw into; without this
            # check the next imshow would silently open a new window.
            closed = self.shown and cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error as e:
            self.on = False
            self.echo("preview off: this OpenCV cannot open a window (" + str(e).strip().splitlines()[-1][:80]
                      + "); the web live view (--live-port 8080) works with headless OpenCV")
            return None
        self.shown = True
        if closed or key in (ord("q"), 27):
            return "quit"
        if key == ord(" "):
            return "field"
        return None

    def close(self):
        if self.on and self.shown:
            try:
                import cv2

                cv2.destroyAllWindows()
            except Exception:
                pass


class LiveView:
    """The annotated preview as a web page (web/live.html; refreshes a few times a second), served
    like the review page (webserve: token in the URL, Host allow-list, security headers, limits).
    JPEG encoding is limited to max_fps so that a Pi does not spend its time on the preview.
    `url` is what to open (with the token), `base` the address without it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, max_fps: float = 5.0):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        from .webserve import CSP, WebServer

        self.jpeg = b""
        self.seq = 0
        self.text = ""
        self.min_dt = 1.0 / max_fps
        self.last = 0.0
        self.lock = threading.Lock()
        web = Path(__file__).parent / "web"
        files = {"/": ("live.html", "text/html; charset=utf-8"), "/live.js": ("live.js", "text/javascript")}

        async def page(request):
            name, ctype = files[request.url.path]
            return Response((web / name).read_bytes(), media_type=ctype)

        async def frame(request):
            with self.lock:
                jpeg = self.jpeg
            return Response(jpeg, media_type="image/jpeg") if jpeg else Response("no frame yet", 404)

        async def status(request):
            with self.lock:
                return JSONResponse({"seq": self.seq, "text": self.text})

        app = Starlette(routes=[Route("/", page), Route("/live.js", page), Route("/frame.jpg", frame),
                                Route("/status.json", status)])
        self.server = WebServer(app, host, port, lambda path: CSP).start()
        self.base = self.server.base
        self.token = self.server.token
        self.url = self.server.url

    def due(self) -> bool:
        """Whether publish() would encode a new frame now (lets the caller skip drawing one)."""
        return time.monotonic() - self.last >= self.min_dt

    def publish(self, bgr: np.ndarray, text: str) -> None:
        now = time.monotonic()
        if now - self.last < self.min_dt:
            with self.lock:
                self.text = text
            return
        import cv2

        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self.lock:
            self.text = text
            if ok:
                self.jpeg, self.seq, self.last = enc.tobytes(), self.seq + 1, now

    def close(self) -> None:
        self.server.stop()
