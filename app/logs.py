"""Messages go through `logging`; results go to stdout. The CLI's -v / -q (edge_bloodcls.cli) set
the levels here, once, for the toolkit and for the libraries' own chatter:

    -q   warnings and errors only
         (default) the toolkit's progress and notes
    -v   also debug detail, and the libraries' own notices (TensorFlow's C++ and Python logs,
         the TFLite runtime's INFO lines, OpenCV's)

Modules log to logging.getLogger(__name__) (all under "edge_bloodcls"); they never print a
message. Without the CLI (a script, a test) nothing is configured and logging's defaults apply.
"""

from __future__ import annotations

import logging
import os

import click

ROOT = "edge_bloodcls"
QUIET, NORMAL, VERBOSE = -1, 0, 1
LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


class ClickHandler(logging.Handler):
    """One line per message on stderr, through click: it finds the stderr of the moment (a
    CliRunner's in tests) and writes what the terminal can show."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # never let a message stop the work it describes
            self.handleError(record)


def configure(verbosity: int = NORMAL) -> None:
    """Levels for the toolkit and the libraries. Safe to call again (the last call counts)."""
    verbosity = max(QUIET, min(VERBOSE, verbosity))
    log = logging.getLogger(ROOT)
    log.setLevel(LEVELS[verbosity])
    for h in [h for h in log.handlers if isinstance(h, ClickHandler)]:
        log.removeHandler(h)
    handler = ClickHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False  # the CLI owns the process's stderr: no second copy through the root
    loud = verbosity >= VERBOSE
    # The libraries read these when they are first imported, which happens inside commands.
    # TensorFlow's C++ start-up lines (oneDNN, CPU features): tfenv sets 2 unless the user set
    # a level; -v shows them all. Its Python logger (and absl's) follow -v / -q.
    if loud:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel({QUIET: logging.ERROR, NORMAL: logging.WARNING}.get(verbosity, logging.INFO))
    # OpenCV's "[ WARN:0@...] can't open camera by index" repeats what the commands say in one
    # line (sources.SourceError). An OPENCV_LOG_LEVEL the user set is kept.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "INFO" if loud else "ERROR")
    # The TFLite runtime's INFO lines are written by C++ to the file descriptor; the interpreter
    # lets them through when its logger is at DEBUG (edge_runtime.core.interpreter).
