"""What the capture loop hands to the session log, and the one error a write may raise.

Capture never imports the lab (the session store lives there): the loop writes to any
SessionSink, and the command that runs it (edge_runtime/cli.py) passes the lab's SessionLog,
which has these methods. CellRecord is the record that crosses that border; SessionFileError is
what a log that cannot be written raises (the lab's store raises it, capture catches it and ends
the session with its one line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class SessionFileError(Exception):
    """A file that cannot be used (or no longer be written) as a session log; str() is one line."""


@dataclass
class CellRecord:
    """One counted cell as capture hands it to the log: in field mode a track over frames, in
    cell mode one frame."""

    box: tuple[int, int, int, int]
    label: str
    confidence: float
    review: bool
    probs: dict[str, float]
    crop_path: str | None = None
    crop_jpeg: bytes | None = None
    observations: int = 1
    frame_index: int | None = None  # frame the crop is from; None: the frame being logged
    first_frame: int | None = None
    last_frame: int | None = None
    timestamp: float | None = None
    ood_score: float | None = None
    ood: bool = False
    review_reason: str = ""
    extra: dict = field(default_factory=dict)


class SessionSink(Protocol):
    """The session log as capture sees it (lab/session.py's SessionLog). Every method raises
    SessionFileError (or OSError) when the log cannot be written."""

    id: int

    def log_frame(
        self,
        frame_index: int,
        timestamp: float,
        name: str,
        shape,
        n_detections: int,
        cells: list[CellRecord],
        timing: dict | None = None,
    ) -> list[int]: ...

    def log_cells(self, cells: list[CellRecord]) -> list[int]: ...

    def set_trust(self, gate: dict) -> None: ...

    def finish(self, end_reason: str, summary: dict, retry: bool = True) -> None: ...
