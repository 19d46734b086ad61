"""Seconds per training step of adapt's fine-tune on this machine, with the next batch made in a
worker thread (adapt/finetune.py `_ahead`, `MAKE_AHEAD`) and made in turn before each step (the default).

    .venv/bin/python scripts/adapt_step_time.py [--steps 30] [--repeats 2]

Why: adapt's wall time is mostly its 600 training steps (issue 29 asks for 101 labelled cells in
10 minutes), and the same command ran 3.6x slower on one machine of this project than on another.
This times the steps alone on adapt's defaults (batch 32 at 160 px, HED stain augmentation, half
site cells, half PBC cells), the base model and the cached inputs of scripts/adapt_experiments.py.
The first 5 steps of each timing are not counted (tracing, warm-up); the two ways alternate, so
a change in the machine's load falls on both. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adapt_experiments as ax  # noqa: E402  (configures TensorFlow's environment first)
import numpy as np  # noqa: E402

from edge_bloodcls.adapt import finetune as ft  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import InputSpec  # noqa: E402

WARM = 5


def seconds_per_step(model, spec, site, pbc, cfg, steps: int) -> float:
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
    import tf_keras

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ax.REPO / "benchmarks" / "results" / "adapt_step_time.json"))
    args = ap.parse_args()
    spec = InputSpec.named(160)
    _, site, _, _, pbc = ax.inputs(spec)
    cfg = ft.FinetuneConfig(steps=600, colour_mode="hed")  # adapt's defaults (adapt/run.py)
    model = tf_keras.models.load_model(ax.MODEL, compile=False)
    times: dict[str, list[float]] = {"ahead": [], "in_turn": []}
    for _ in range(args.repeats):
        for way in times:
            ft.MAKE_AHEAD = way == "ahead"
            times[way].append(seconds_per_step(model, spec, site, pbc, cfg, args.steps))
            print(f"{way}: {times[way][-1]:.3f} s a step", flush=True)
    ft.MAKE_AHEAD = False
    res = {
        "seconds_per_step": {k: round(float(np.median(v)), 3) for k, v in times.items()},
        "runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "steps_timed": args.steps,
        "command": f".venv/bin/python scripts/adapt_step_time.py --steps {args.steps} --repeats {args.repeats}",
    }
    print(json.dumps(res["seconds_per_step"]))
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
