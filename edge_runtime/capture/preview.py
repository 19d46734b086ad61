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

from .webserve import CSP, WebServer

WINDOW = "edge-bloodcls"
# BGR
GREEN, ORANGE, RED, GREY, WHITE = (0, 170, 0), (0, 140, 255), (40, 40, 220), (110, 110, 110), (255, 255, 255)
BLUE, YELLOW = (200, 120, 0), (0, 200, 230)
# The Pi touch screen: the drawn view is scaled to fit, so that text stays legible on it.
SCREEN = (800, 480)
# state of the frame (slide.py) -> banner colour and text
STATES = {
    "counting": (GREEN, "COUNTING"),
    "moving": (ORANGE, "MOVING - not counting"),
    "out of focus": (ORANGE, "OUT OF FOCUS - not counting"),
    "lost": (RED, "LOST - not counting"),
}
LEGEND = (
    ("counted", GREEN),
    ("flagged", ORANGE),
    ("out of distr.", RED),
    ("already counted", BLUE),
    ("pending", YELLOW),
    ("not counted", GREY),
)


@dataclass
class Box:
    box: tuple
    label: str
    confidence: float
    review: bool = False
    ood: bool = False
    note: str = ""  # counting.ShownCell.note: counted, already counted, pending, not counted


def _colour(b: Box):
    if b.note == "already counted":
        return BLUE
    if b.note == "pending":
        return YELLOW
    if b.note == "not counted":
        return GREY
    return RED if b.ood else ORANGE if b.review else GREEN


def _caption(b: Box) -> str:
    if b.note == "not counted" or not b.label:
        return b.note
    if b.note == "pending":
        return "pending"  # a label from one or two views must not look like a result
    text = f"{b.label} {b.confidence:.2f}" + (" OOD" if b.ood else "") + (" ?" if b.review else "")
    return text + (" (already counted)" if b.note == "already counted" else "")


def annotate(
    rgb: np.ndarray,
    boxes: list[Box],
    status: list[str],
    banner: str = "",
    state: str = "",
    screen: tuple[int, int] = SCREEN,
) -> np.ndarray:
    """BGR image at most `screen` (800x480) in size: boxes coloured by what happened to the cell
    (see LEGEND), the frame's state (counting / moving / out of focus / lost) at the top, status
    lines at the bottom, a red banner when the session is unvalidated."""
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    k = min(1.0, screen[0] / w, screen[1] / h)
    if k < 1.0:
        img = cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
    fs = 0.45 if w >= 480 else 0.35
    line_h = int(22 * fs) + 6
    for b in boxes:
        colour = _colour(b)
        x0, y0, x1, y1 = (int(round(v * k)) for v in b.box)
        thick = 1 if b.note in ("not counted", "pending") else 2
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        _text(img, _caption(b), (x0 + 3, max(line_h, y0 + line_h - 4)), fs, colour)
    top = 0
    if banner:
        cv2.rectangle(img, (0, 0), (w, line_h + 6), RED, -1)
        _text(img, banner[:100], (6, line_h), fs, WHITE, bg=None)
        top = line_h + 6
    if state in STATES:
        colour, text = STATES[state]
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs * 1.3, 2)
        cv2.rectangle(img, (0, top), (tw + 12, top + th + 12), colour, -1)
        cv2.putText(img, text, (6, top + th + 6), cv2.FONT_HERSHEY_SIMPLEX, fs * 1.3, WHITE, 2, cv2.LINE_AA)
        _legend(img, top, fs, line_h)
    for i, line in enumerate(reversed(status)):
        _text(img, line[:110], (6, h - 8 - i * line_h), fs, (20, 20, 20))
    return img


def _legend(img, top, fs, line_h) -> None:
    # OpenCV: the [edge] extra; classify, review and report run without it
    import cv2

    w = img.shape[1]
    width = max(cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)[0][0] for name, _ in LEGEND) + 26
    x = w - width - 4
    cv2.rectangle(img, (x - 4, top + 2), (w - 2, top + 6 + line_h * len(LEGEND)), WHITE, -1)
    for i, (name, colour) in enumerate(LEGEND):
        y = top + 4 + i * line_h
        cv2.rectangle(img, (x, y + 3), (x + 14, y + line_h - 3), colour, -1)
        cv2.putText(img, name, (x + 20, y + line_h - 5), cv2.FONT_HERSHEY_SIMPLEX, fs, (20, 20, 20), 1, cv2.LINE_AA)


def _text(img, s, org, fs, colour, bg=WHITE):
    # OpenCV: the [edge] extra; classify, review and report run without it
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
        # OpenCV: the [edge] extra; classify, review and report run without it
        import cv2

        try:
            cv2.imshow(WINDOW, bgr)
            key = cv2.waitKey(1) & 0xFF
            # Closing the window with its X leaves imshow nothing to draw into; without this
            # check the next imshow would silently open a new window.
            closed = self.shown and cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error as e:
            self.on = False
            self.echo(
                "preview off: this OpenCV cannot open a window ("
                + str(e).strip().splitlines()[-1][:80]
                + "); the web live view (--live-port 8080) works with headless OpenCV"
            )
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
                # OpenCV: the [edge] extra; classify, review and report run without it
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
        # Starlette (the [edge] extra) only when the live page is asked for; a bare install captures without it.
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        self.jpeg = b""
        self.seq = 0
        self.text = ""
        self.state = ""
        self.min_dt = 1.0 / max_fps
        self.last = 0.0
        self.lock = threading.Lock()
        web = Path(__file__).parent / "web"
        files = {
            "/": ("live.html", "text/html; charset=utf-8"),
            "/live.js": ("live.js", "text/javascript"),
            "/live.css": ("live.css", "text/css"),
        }

        async def page(request):
            name, ctype = files[request.url.path]
            return Response((web / name).read_bytes(), media_type=ctype)

        async def frame(request):
            with self.lock:
                jpeg = self.jpeg
            return Response(jpeg, media_type="image/jpeg") if jpeg else Response("no frame yet", 404)

        async def status(request):
            with self.lock:
                return JSONResponse({"seq": self.seq, "text": self.text, "state": self.state})

        app = Starlette(
            routes=[
                Route("/", page),
                Route("/live.js", page),
                Route("/live.css", page),
                Route("/frame.jpg", frame),
                Route("/status.json", status),
            ]
        )
        self.server = WebServer(app, host, port, lambda path: CSP).start()
        self.base = self.server.base
        self.token = self.server.token
        self.url = self.server.url

    def due(self) -> bool:
        """Whether publish() would encode a new frame now (lets the caller skip drawing one)."""
        return time.monotonic() - self.last >= self.min_dt

    def publish(self, bgr: np.ndarray, text: str, state: str = "") -> None:
        now = time.monotonic()
        if now - self.last < self.min_dt:
            with self.lock:
                self.text, self.state = text, state
            return
        # OpenCV: the [edge] extra; classify, review and report run without it
        import cv2

        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self.lock:
            self.text, self.state = text, state
            if ok:
                self.jpeg, self.seq, self.last = enc.tobytes(), self.seq + 1, now

    def close(self) -> None:
        self.server.stop()
