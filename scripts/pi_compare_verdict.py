"""`pi_compare.py compare`: the tolerance, the versions of every side, each emulated run against
the native one (pi_compare_sides.py), and the verdict with its exit status."""

from __future__ import annotations

import json
from pathlib import Path

from pi_compare_report import Report, table
from pi_compare_sides import ROUNDING, compare_side, load


def _versions(r: Report, sides: list[tuple[str, dict]]) -> None:
    """One column per side, from its info.json (pi_probe.py info); "-" for a side without one."""

    def row(title, f):
        return [title] + [f(i) if i else "-" for _, i in sides]

    def pkg(name):
        return lambda i: i["packages"].get(name) or "-"

    rows = [
        row("OS", lambda i: i["os"]),
        row(
            "machine", lambda i: i["machine"] + (f" (qemu-user, QEMU_CPU={i['qemu_cpu']})" if i.get("qemu_cpu") else "")
        ),
        row(
            "CPU features (AT_HWCAP)",
            lambda i: ",".join(i["cpu_features"]) if i["cpu_features"] is not None else "n/a (x86-64)",
        ),
        row("libc", lambda i: i["libc"]),
        row("Python", lambda i: f"{i['python']} ({i['implementation']})"),
        row(
            "interpreter",
            lambda i: (
                f"{i['model']['interpreter']} {i['model']['interpreter_version']}, {i['model']['threads']} thread(s)"
            ),
        ),
        row("XNNPACK delegate", lambda i: "created" if i.get("xnnpack_delegate") else "not created"),
        row("interpreter stderr", lambda i: "; ".join(x[:60] for x in i.get("interpreter_log", [])[:3]) or "-"),
        row("numpy", pkg("numpy")),
        row(
            "opencv-python-headless",
            lambda i: (
                i["packages"].get("opencv-python-headless") or f"cv2 {i['modules']['cv2']} ({i['modules']['cv2_file']})"
            ),
        ),
        row("pillow", pkg("pillow")),
        row("scikit-learn", pkg("scikit-learn")),
        row("scipy", pkg("scipy")),
        row("click", pkg("click")),
        row("edge-bloodcls", pkg("edge-bloodcls")),
        row(
            "TensorFlow installed",
            lambda i: (
                ("importable! " if i["tensorflow"]["importable"] else "no")
                + (" " + ",".join(i["tensorflow"]["distributions"]) if i["tensorflow"]["distributions"] else "")
            ),
        ),
        row("model", lambda i: f"{i['model']['model']} sha256 {i['model']['model_sha256'][:12]}"),
    ]
    for line in table(rows, ["", *(name for name, _ in sides)]):
        r("  " + line)


def compare(args) -> int:
    r = Report(Path(args.log) if args.log else None)
    native = Path(args.native)
    manifest = json.loads(Path(args.manifest).read_text()) if args.manifest else {}
    # The tolerance: one output quantization step (+ the 6-decimal rounding), taken from the bundle
    # manifest, else from what the native interpreter reports; a float model gets a fixed 1e-5.
    q = (manifest.get("output") or {}).get("quant") or {}
    ni = load(native, "info.json")
    step = q.get("scale")
    source = "the bundle manifest (output.quant.scale)"
    if not step and ni:
        step = ni["model"]["output_quant"]["scale"]
        source = "the interpreter's output tensor (the manifest has no output.quant)"
    if step:
        tol = step + ROUNDING
        r(
            f"output quantization step {step:.8f} (from {source}); tolerance for probabilities: one step "
            f"+ {ROUNDING:g} for rounding to 6 decimals = {tol:.8f}"
        )
    else:
        step, tol = 0.0, 1e-5
        r(f"float output (no quantization step); tolerance for probabilities {tol:g}")
    sides = [("native", ni)] + [(n, load(Path(d), "info.json")) for n, d in (e.split("=", 1) for e in args.emulated)]
    r("")
    r("versions:")
    if ni is None:
        r.fail("native run produced no info.json")
    _versions(r, sides)
    for spec in args.emulated:
        name, d = spec.split("=", 1)
        r("")
        r(f"==== {name} vs native " + "=" * 40)
        compare_side(r, native, Path(d), name, step, tol)
    r("")
    if r.failures:
        n_prob = r.kinds.count("prob")
        n_res = len(r.kinds) - n_prob
        r(
            f"RESULT: FAIL: {n_res} difference(s) in labels, boxes, counts or errors; {n_prob} result(s) with "
            "the same label but a probability more than one quantization step away"
        )
        for f in r.failures:
            r(f"  - {f}")
    else:
        r(
            "RESULT: PASS: every label identical to the native run, every probability within one output "
            "quantization step, identical capture boxes; no TensorFlow on either side"
        )
    r.write()
    return 1 if r.failures else 0
