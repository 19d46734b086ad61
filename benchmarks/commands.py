"""CLI: `bench` (measure models x formats x threads) and `bench-report` (Markdown + plots)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edge_bloodcls.errors import CliError

from .harness import BenchError, BenchOptions, run_bench
from .options import BASELINE, DEFAULT_ARCHS, FORMATS, RESULTS_NAME
from .report import check_readme, update_readme, write_report
from .report_pareto import write_pareto
from .results import Results
from .trust import trust_report_cmd

_log = logging.getLogger(__name__)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command("bench")
@click.option(
    "--models",
    default=",".join(DEFAULT_ARCHS),
    show_default=True,
    help="comma-separated: arch names (runs/ARCH_SIZE), run directories, bundles (NAME.json), "
    "'shipped', or ARCH@SIZE for an untrained build",
)
@click.option("--formats", default=",".join(FORMATS), show_default=True, help="comma-separated formats")
@click.option("--threads", default="1,all", show_default=True, help="interpreter threads: numbers and/or 'all'")
@click.option(
    "--data",
    type=click.Path(exists=True),
    help="test images: a split CSV (its test rows) or a class-folder directory  [default: RUNS_DIR/split.csv]",
)
@click.option("--data-root", type=click.Path(file_okay=False), help="where the split's paths live")
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False),
    help="split CSV for exports made here (train rows calibrate int8, val rows gate) [default: --data "
    "when a CSV, else RUNS_DIR/split.csv]",
)
@click.option("--runs", default=200, show_default=True, help="timed inferences per configuration")
@click.option("--warmup", default=20, show_default=True, help="untimed inferences before them")
@click.option(
    "--max-images",
    type=click.IntRange(0),
    help="accuracy on a stratified subset of the test images (0: no accuracy) [default: all]",
)
@click.option("--size", default=96, show_default=True, help="input size of runs named by architecture")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--exports-dir",
    default="runs/exports",
    show_default=True,
    help="bundles from scripts/export_all.sh, used when exported from the same model.keras",
)
@click.option(
    "--cache-dir", default=".cache", show_default=True, help="pixel cache, untrained builds, exports made here"
)
@click.option(
    "--qat-epochs",
    default=1,
    show_default=True,
    help="epochs of QAT fine-tuning for a qat-int8 export made here (0: no qat-int8 unless "
    "runs/exports has one; untrained builds never get one)",
)
@click.option(
    "--export-eval-samples",
    default=256,
    show_default=True,
    help="val images the export's own gate checks (the benchmark's accuracy is on the test images)",
)
@click.option("--calibration-samples", default=300, show_default=True)
@click.option("--baseline", default=BASELINE, show_default=True, help="model whose int8 the ratios compare with")
@click.option(
    "--shipped/--no-shipped",
    default=True,
    show_default=True,
    help="include the runtime's default bundle (measured once: it is normally one of the exports)",
)
@click.option(
    "--reference",
    is_flag=True,
    help="also an untrained MobileNetV2 at 224 px (float32, int8), the "
    "network published Pi and Coral figures are for; the report's edge estimates scale by it",
)
@click.option("--redo", is_flag=True, help="measure again what the results file holds already")
@click.option(
    "--redo-latency",
    is_flag=True,
    help="time again what the results file holds, keeping its accuracy (e.g. once the machine is idle)",
)
@click.option("--timeout", default=3 * 3600, show_default=True, help="seconds one configuration may take")
@click.option("--quick", is_flag=True, help="a tiny model on generated images: the whole harness in seconds")
@click.option("--no-report", is_flag=True, help="only the results JSON")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help=f"directory of {RESULTS_NAME} (resumed when present), REPORT.md and the plots",
)
def bench_cmd(
    models,
    formats,
    threads,
    data,
    data_root,
    calibration,
    runs,
    warmup,
    max_images,
    size,
    runs_dir,
    exports_dir,
    cache_dir,
    qat_epochs,
    export_eval_samples,
    calibration_samples,
    baseline,
    shipped,
    reference,
    redo,
    redo_latency,
    timeout,
    quick,
    no_report,
    out,
):
    """Accuracy, latency (p50/p90/p99), load time, size, parameters, MACs and peak memory of every
    model in every format, at each thread count, on the same test images.

    Each configuration runs in a process of its own; results go to OUT/bench.json after each
    one, and a rerun measures only what is missing (--redo: everything again)."""
    opts = BenchOptions(
        out=out,
        models=_csv(models),
        formats=_csv(formats),
        threads=_csv(threads),
        data=data,
        data_root=data_root,
        calibration=calibration,
        runs=runs,
        warmup=warmup,
        max_images=max_images,
        size=size,
        runs_dir=runs_dir,
        exports_dir=exports_dir or None,
        cache_dir=cache_dir,
        qat_epochs=qat_epochs,
        export_eval_samples=export_eval_samples or None,
        calibration_samples=calibration_samples,
        baseline=baseline,
        shipped=shipped,
        reference=reference,
        redo=redo,
        redo_latency=redo_latency,
        timeout=timeout,
        quick=quick,
        report=not no_report,
    )
    try:
        run_bench(opts, log=_log.info)
    except BenchError as e:
        raise CliError(str(e)) from None


@click.command("bench-report")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out", type=click.Path(file_okay=False), help="directory for REPORT.md and plots [default: beside RESULTS]"
)
@click.option(
    "--pareto",
    is_flag=True,
    help="also PARETO.md and pareto.png: int8 accuracy against speed, "
    "with speed-ups against MobileNetV2-1.0 @224 in the same run",
)
@click.option(
    "--readme",
    type=click.Path(exists=True, dir_okay=False),
    help="also write the paper table into this README, between its paper-table markers",
)
def bench_report_cmd(results, out, pareto, readme):
    """Markdown report and PNG plots from a bench results JSON."""
    folder = Path(out) if out else Path(results).parent
    if readme:  # before anything is written: a README it cannot update is a usage error
        try:
            check_readme(Path(readme))
        except ValueError as e:
            raise CliError(str(e)) from None
    written = write_report(Path(results), folder) + (write_pareto(Path(results), folder) if pareto else [])
    if readme:
        update_readme(Path(readme), Results.load(Path(results)))
        written.append(Path(readme))
    for f in written:
        click.echo(f"wrote {f}")


COMMANDS = [bench_cmd, bench_report_cmd, trust_report_cmd]
