"""Seconds per training step of adapt's fine-tune on this machine, for ways of running the same
training:

- `malloc`: every layer trained, each batch made in turn before its step, CPU tensors from the C
  library's malloc (TensorFlow's own default);
- `in_turn`: the same with TensorFlow's pooling CPU allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`,
  what app/tfenv.py sets; the same weights, bit for bit);
- `ahead`: the next batch made in a worker thread during the step (adapt/finetune.py `_ahead`,
  `MAKE_AHEAD`; the same batches);
- `freeze8`: `--freeze 8`, the backbone's layers finer than 1/8 of the input kept as the base
  trained them (no gradient through the high-resolution stem; a different training);
- `xla`: the step compiled by XLA (`tf.function(jit_compile=True)`, adapt/finetune.py `JIT`);
- `no_onednn`: TensorFlow's own CPU kernels instead of oneDNN's (`TF_ENABLE_ONEDNN_OPTS=0`);
- `batch16`: batches of 16 instead of 32 (the same shares; a different training);
- `batch16_ahead`, `batch16_inter1`: batches of 16 (adapt's default now) made ahead, or with one
  thread in TensorFlow's pool for independent ops (`TF_NUM_INTEROP_THREADS=1`; the same training);
- `batch8`: batches of 8 (the same shares; a different training);
- `batch16_onednn`, `batch16_eigen`: batches of 16 with TensorFlow's oneDNN kernels asked for
  (`TF_ENABLE_ONEDNN_OPTS=1`) or refused (`=0`). Left unset, TensorFlow on x86 Linux uses them only
  on CPUs with AVX512_VNNI, AVX512_BF16 or AMX, so on this project's AMD machines it ran its own
  (Eigen) kernels: the same training, other floating-point rounding. app/tfenv.py asks for
  oneDNN on x86 since the ninth round (docs/adapt.md), so the ways that do not name the setting
  ran Eigen's kernels before it and oneDNN's after it.

    .venv/bin/python scripts/adapt_step_time.py [--steps 30] [--repeats 2] [--ways malloc in_turn ...]

Why: adapt's wall time is mostly its 600 training steps (issue 29 asks for 101 labelled cells in
10 minutes), and the same command ran 3.6x slower on one machine of this project than on another.
This times the steps alone on adapt's defaults before the seventh round (batch 32 at 160 px, HED
stain augmentation, half site cells, half PBC cells; `batch16` is the default now), the base model
and the cached inputs of scripts/adapt_experiments.py. Each timing runs in its own process (the
allocator is chosen when TensorFlow starts); the first 5 steps are not counted (tracing, warm-up);
the ways alternate, so a change in the machine's load falls on all of them. Run it on an idle
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WARM = 5
POOL = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}  # what app/tfenv.py sets
# way -> (environment of its process, batches made ahead, XLA, FinetuneConfig changes)
WAYS: dict[str, tuple[dict, bool, bool, dict]] = {
    "malloc": ({"TF_CPU_ALLOCATOR_USE_BFC": "false"}, False, False, {}),
    "in_turn": (POOL, False, False, {}),
    "ahead": (POOL, True, False, {}),
    "freeze8": (POOL, False, False, {"freeze": 8}),
    "xla": (POOL, False, True, {}),
    "no_onednn": ({**POOL, "TF_ENABLE_ONEDNN_OPTS": "0"}, False, False, {}),
    "batch16": (POOL, False, False, {"batch": 16}),
    "batch16_ahead": (POOL, True, False, {"batch": 16}),
    "batch8": (POOL, False, False, {"batch": 8}),
    # TensorFlow's pool for independent ops, one thread instead of one per core (TF_NUM_INTEROP_THREADS)
    "batch16_inter1": ({**POOL, "TF_NUM_INTEROP_THREADS": "1"}, False, False, {"batch": 16}),
    "batch16_onednn": ({**POOL, "TF_ENABLE_ONEDNN_OPTS": "1"}, False, False, {"batch": 16}),
    "batch16_eigen": ({**POOL, "TF_ENABLE_ONEDNN_OPTS": "0"}, False, False, {"batch": 16}),
}


def child(way: str, steps: int) -> float:
    """This process's seconds a step for `way` (its allocator was set when it started)."""
    import adapt_experiments as ax  # configures TensorFlow's environment first
    import tf_keras

    from edge_bloodcls.adapt import finetune as ft
    from edge_bloodcls.edge_runtime.core.spec import InputSpec

    _, ahead, jit, changes = WAYS[way]
    spec = InputSpec.named(160)
    _, site, _, _, pbc = ax.inputs(spec)
    # adapt's defaults before the seventh round (batches of 32; `batch16` is adapt's default since)
    cfg = replace(ft.FinetuneConfig(steps=600, colour_mode="hed"), **changes)
    model = tf_keras.models.load_model(ax.MODEL, compile=False)
    ft.MAKE_AHEAD = ahead
    ft.JIT = jit
    at: dict[int, float] = {}
    ft.train(
        model,
        spec,
        site["x"],
        site["y"],
        pbc["train"],
        pbc["train_y"],
        cfg,
        progress=lambda s, total, loss: at.__setitem__(s, time.perf_counter()),
        steps=steps + WARM,
    )
    return (at[steps + WARM] - at[WARM]) / steps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ways", nargs="*", default=list(WAYS), choices=list(WAYS))
    ap.add_argument("--child", choices=list(WAYS), help=argparse.SUPPRESS)
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "adapt_step_time.json")
    )
    args = ap.parse_args()
    if args.child:
        print(f"{child(args.child, args.steps):.4f}")
        return 0
    times: dict[str, list[float]] = {w: [] for w in args.ways}
    for _ in range(args.repeats):
        for way in args.ways:
            env = {**os.environ, **WAYS[way][0]}
            run = subprocess.run(
                [sys.executable, __file__, "--child", way, "--steps", str(args.steps)],
                env=env,
                capture_output=True,
                text=True,
            )
            if run.returncode:
                print(run.stderr[-2000:], file=sys.stderr)
                return 1
            times[way].append(float(run.stdout.split()[-1]))
            print(f"{way}: {times[way][-1]:.3f} s a step", flush=True)
    res = {
        "seconds_per_step": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "ways": {k: {**WAYS[k][0], "made_ahead": WAYS[k][1], "xla": WAYS[k][2], **WAYS[k][3]} for k in times},
        "steps_timed": args.steps,
        "cpu": _cpu(),
        "command": f".venv/bin/python scripts/adapt_step_time.py --steps {args.steps} --repeats {args.repeats}"
        + (f" --ways {' '.join(args.ways)}" if args.ways != list(WAYS) else ""),
    }
    print(json.dumps(res["seconds_per_step"]))
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def _cpu() -> str:
    """The CPU's model name, usable cores and vector extensions: step times differ 3-5x between
    this project's machines, and TensorFlow picks its kernels by the extensions."""
    from edge_bloodcls.host import cpu_model, cpuinfo, usable_cores

    cpu = cpuinfo()
    flags = set(cpu.get("flags", "").split())
    ext = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{cpu_model(cpu)}, {usable_cores()} cores" + (f", {' '.join(ext)}" if ext else "")


if __name__ == "__main__":
    sys.exit(main())
