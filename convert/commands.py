"""CLI: `convert` (a trained .keras model -> a gated TFLite bundle)."""

from __future__ import annotations

import click

from edge_bloodcls.edge_runtime.core.trust import DEFAULT_FALSE_ALARM, DEFAULT_REVIEW_TARGET
from edge_bloodcls.errors import EXIT_INPUTS_FAILED, CliError, require_train_extra

from .calibrate import DEFAULT_SAMPLES
from .export import EdgeTPUUnavailable, ExportError, ExportOptions, GateFailed, run
from .formats import IO_TYPES, QUANTIZE_CHOICES


@click.command("convert")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--quantize",
    required=True,
    type=click.Choice(QUANTIZE_CHOICES),
    help="export format (convert/formats.py has the table)",
)
@click.option("--qat", is_flag=True, help="quantization-aware fine-tuning before the int8 export")
@click.option("--qat-epochs", default=2, show_default=True)
@click.option("--qat-lr", default=1e-4, show_default=True, help="peak learning rate, cosine to zero")
@click.option("--batch-size", default=64, show_default=True, help="QAT batch size")
@click.option(
    "--calibration",
    type=click.Path(exists=True),
    help="split CSV (its train rows are used) or a class-folder directory; default: the eval split CSV",
)
@click.option(
    "--calibration-samples",
    default=DEFAULT_SAMPLES,
    show_default=True,
    help="stratified sample size for int8 calibration",
)
@click.option(
    "--io",
    type=click.Choice(IO_TYPES),
    help="model input/output type of an int8 export [default: int8; uint8 with --edgetpu]",
)
@click.option("--edgetpu", is_flag=True, help="also compile for the Coral Edge TPU (needs edgetpu_compiler)")
@click.option(
    "--per-tensor",
    is_flag=True,
    help="int8 weights with one scale per tensor instead of per channel: a smaller file, usually a less accurate one",
)
@click.option("--max-drop", default=1.0, show_default=True, help="largest accepted val accuracy drop, in points")
@click.option("--allow-float-ops", is_flag=True, help="accept ops left in float in an int8 export")
@click.option("--force", is_flag=True, help="write the bundle even if the gate fails")
@click.option("--data-root", type=click.Path(file_okay=False), help="where the split's paths live")
@click.option(
    "--split",
    "split_csv",
    type=click.Path(dir_okay=False),
    help="split CSV for evaluation [default: --calibration if a CSV, else the run's config.json]",
)
@click.option("--eval-samples", type=int, help="gate on a stratified subset of the val split (default: all)")
@click.option("--eval-test", is_flag=True, help="also evaluate on the test split (recorded, never gated on)")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="decoded-pixel cache (training's is reused)")
@click.option("--threads", type=int, help="interpreter threads for evaluation [default: all cores]")
@click.option("--name", help="bundle name [default: ARCH_SIZE_FORMAT, e.g. mobilenetv2_96_int8]")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-trust", is_flag=True, help="skip the trust statistics (OOD score, temperature, review threshold)")
@click.option(
    "--trust-samples",
    default=0,
    show_default=True,
    help="training cells (stratified) the OOD statistics are fitted on; 0 = all",
)
@click.option(
    "--false-alarm",
    type=click.FloatRange(0, 0.5, min_open=True),
    default=DEFAULT_FALSE_ALARM,
    show_default=True,
    help="share of validation cells the OOD threshold may flag",
)
@click.option(
    "--review-target",
    type=click.FloatRange(0.5, 1.0),
    default=DEFAULT_REVIEW_TARGET,
    show_default=True,
    help="accuracy of the cells that are not flagged for review, on validation",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory for NAME.tflite + NAME.json")
def convert_cmd(
    model,
    quantize,
    qat,
    qat_epochs,
    qat_lr,
    batch_size,
    calibration,
    calibration_samples,
    io,
    edgetpu,
    per_tensor,
    max_drop,
    allow_float_ops,
    force,
    data_root,
    split_csv,
    eval_samples,
    eval_test,
    cache_dir,
    threads,
    name,
    seed,
    no_trust,
    trust_samples,
    false_alarm,
    review_target,
    out,
):
    """Export MODEL.keras to TFLite, check it against the float model on the validation split,
    and write a bundle (NAME.tflite + NAME.json) if the accuracy drop is within --max-drop.

    Exit status 1: the export failed its checks (nothing written but the error report); 2: bad
    options or inputs, or the Edge TPU compiler is missing (the CPU model is written)."""
    require_train_extra("convert")

    opts = ExportOptions(
        model=model,
        quantize=quantize,
        out=out,
        qat=qat,
        qat_epochs=qat_epochs,
        qat_lr=qat_lr,
        batch_size=batch_size,
        calibration=calibration,
        calibration_samples=calibration_samples,
        io=io,
        edgetpu=edgetpu,
        per_tensor=per_tensor,
        max_drop=max_drop,
        allow_float_ops=allow_float_ops,
        force=force,
        data_root=data_root,
        split=split_csv,
        eval_samples=eval_samples,
        eval_test=eval_test,
        cache_dir=cache_dir,
        threads=threads,
        name=name,
        seed=seed,
        trust=not no_trust,
        trust_samples=trust_samples or None,
        false_alarm=false_alarm,
        review_target=review_target,
    )
    try:
        result = run(opts)
    except (ExportError, EdgeTPUUnavailable) as e:
        raise CliError(str(e)) from None
    except GateFailed as e:
        for p in e.problems:
            click.echo(f"FAILED: {p}", err=True)
        raise CliError(
            "nothing written"
            + (f" except the error report {e.report}" if e.report else "")
            + "; --force writes the bundle anyway",
            EXIT_INPUTS_FAILED,
        ) from None
    click.echo(result["bundle"])  # the result, on stdout (what it took, on stderr)


from .summary import summary_cmd  # noqa: E402 - beside the command whose output it summarises

COMMANDS = [convert_cmd, summary_cmd]
