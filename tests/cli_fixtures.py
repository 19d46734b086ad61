"""The CLI as a user meets it: in-process (`run`) or in its own process (`cli`, optionally as
`nobody` so that root's disregard for permissions does not hide a bug), and the checks that no
traceback reaches the user and each error is one `error: ` line."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner


def run(*args):
    from edge_bloodcls.cli import main

    return CliRunner().invoke(main, list(map(str, args)))


def cli(*args, env=None, timeout=120, user=None):
    """The CLI in its own process (what a user runs); user='nobody' drops root's privileges."""
    cmd = [sys.executable, "-m", "edge_bloodcls.cli", *map(str, args)]
    if user:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
    limit = 4 << 30  # address space: a regression that reads /dev/zero must fail, not eat the machine

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(cmd, capture_output=True, timeout=timeout, env={**os.environ, **(env or {})}, preexec_fn=cap)


def errors(stderr) -> list[str]:
    text = stderr if isinstance(stderr, str) else stderr.decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.startswith("error: ")]


def no_traceback(r) -> None:
    if hasattr(r, "exception") and r.exception is not None:
        assert isinstance(r.exception, SystemExit), repr(r.exception)
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err


def _setpriv_nobody() -> str | None:
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: permissions cannot be tested (root ignores them)")
    probe = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            "import edge_bloodcls.edge_runtime.core.preprocess",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this checkout's Python: {probe.stderr.decode()[-200:]}")
    return "nobody"
