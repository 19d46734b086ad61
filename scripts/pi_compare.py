"""`make pi-check` helpers (standard library only; runs with any Python 3.9+).

pi_compare.py inputs OUT [--data DIR]
    The check's inputs, a fixed selection: 2 PBC images per class (classify), 5 others per
    class in class folders (evaluate), 8 BCCD fields (capture, field mode). Copies, never
    links; synthetic PNGs when the data set is not there.

pi_compare.py compare --native DIR --emulated NAME=DIR [...] --manifest M.json --log FILE
    Native run vs each emulated run: identical labels (classify, evaluate, every cell of the
    capture log, and identical boxes), probabilities within one output quantization step.
    Writes the report to FILE (appending) and stdout; exit 1 on any difference.
"""

from __future__ import annotations

# The pieces, standard library only like this file, sit beside it:
#   pi_compare_inputs.py     the fixed input selection (labels from edge_runtime/core/spec.py)
#   pi_compare_synthetic.py  PNG stand-ins when the data set is not there
#   pi_compare_verdict.py    compare: tolerance, versions table, verdict
#   pi_compare_sides.py      compare: one emulated run vs native, command by command
#   pi_compare_report.py     the report's lines, failures and tables
import argparse
import sys
from pathlib import Path

# `python3 scripts/pi_compare.py` puts scripts/ on sys.path by itself; runpy.run_path (as in
# tests/test_single_source.py, under python -I -S) does not, so the siblings are found from here.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# LABELS is re-exported: the entry point is where the check shows that it uses the runtime's one
# list even where edge_bloodcls is not installed.
from pi_compare_inputs import LABELS, make_inputs  # noqa: E402,F401
from pi_compare_verdict import compare  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("inputs")
    a.add_argument("out")
    a.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    c = sub.add_parser("compare")
    c.add_argument("--native", required=True)
    c.add_argument("--emulated", action="append", default=[], metavar="NAME=DIR")
    c.add_argument("--manifest")
    c.add_argument("--log")
    args = ap.parse_args(argv)
    if args.cmd == "inputs":
        rec = make_inputs(Path(args.out), Path(args.data))
        print(
            f"inputs: {len(rec['classify'])} cells to classify ({rec['pbc']}), {len(rec['evaluate'])} in "
            f"class folders ({rec['pbc']}), {len(rec['fields'])} fields ({rec['bccd']})"
        )
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
