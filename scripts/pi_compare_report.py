"""The report `pi_compare.py compare` writes: its lines, its failures, its tables."""

from __future__ import annotations

from pathlib import Path


class Report:
    """Each call prints a line and keeps it; write() appends them all to the log: the log is
    pi_check.sh's own per-release log, which already holds its notes (and may get more runs)."""

    def __init__(self, log: Path | None):
        self.lines: list[str] = []
        self.failures: list[str] = []
        self.kinds: list[str] = []
        self.log = log

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line)

    def fail(self, what: str, kind: str = "result") -> None:
        """kind: "result" (a label, box, count or error) or "prob" (only a probability, labels equal)."""
        self.failures.append(what)
        self.kinds.append(kind)

    def write(self) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write("\n".join(self.lines) + "\n")


def table(rows: list[list[str]], head: list[str]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, a dashed rule under the head."""
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
