"""CLI: `data audit`, `data split`, `train`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_bloodcls.errors import CliError, require_train_extra

from . import archs
from .archs import WeightsUnavailable
from .data import audit, format_audit, make_split, scan, write_split
from .fit import TrainConfig, train
from .teacher import build_teacher


@click.group("data")
def data_group():
    """Audit a class-folder data set and split it."""


@data_group.command("audit")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the full report here.")
def audit_cmd(directory, json_out):
    """Counts, unreadable files, exact and cross-label duplicates, image sizes."""
    a = audit(scan(directory))
    click.echo(format_audit(a))
    if json_out:
        Path(json_out).write_text(json.dumps(a, indent=2) + "\n")
        click.echo(f"report: {json_out}")


def _ratios(ctx, param, value):
    try:
        r = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: three comma-separated numbers, e.g. 0.7,0.2,0.1") from None
    if len(r) != 3 or abs(sum(r) - 1) > 1e-6 or min(r) < 0:
        raise click.BadParameter(f"{value!r}: three non-negative numbers that sum to 1")
    return r


@data_group.command("split")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="split CSV to write (a .json report goes beside it)"
)
@click.option("--ratios", default="0.7,0.2,0.1", callback=_ratios, show_default=True, help="train,val,test")
@click.option("--seed", default=0, show_default=True)
def split_cmd(directory, out, ratios, seed):
    """Stratified, deduplicated train/val/test split -> CSV (path, label, split, sha256)."""
    records = scan(directory)
    rows, report = make_split(records, ratios, seed)
    digest = write_split(rows, report, out, directory)
    for s, n in report["totals"].items():
        click.echo(f"{s:<6}{n:>6}  " + " ".join(f"{k}:{v}" for k, v in report["counts"][s].items()))
    for u in report["excluded_unreadable"]:
        click.echo(f"excluded {u['path']}: {u['reason']}")
    for d in report["dropped_conflicts"]:
        click.echo(f"dropped {d['path']} ({d['label']}): {d['reason']}")
    click.echo(f"{out} sha256 {digest}")


@click.command("train")
@click.option("--arch", type=click.Choice(archs.names()), help="architecture (from the registry)")
@click.option("--split", "split_csv", type=click.Path(exists=True, dir_okay=False), help="split CSV from `data split`")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory")
@click.option("--img-size", default=96, show_default=True)
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--weights", default="none", show_default=True, help="imagenet, none, or a path to a .keras/.h5 model")
@click.option("--lr", type=float, help="peak learning rate (default: the architecture's)")
@click.option("--width", type=float, help="MobileNetV2 width multiplier (alpha)")
@click.option("--bn-momentum", default=0.9, show_default=True)
@click.option("--dropout", default=0.2, show_default=True)
@click.option("--patience", default=6, show_default=True, help="early stopping on validation loss")
@click.option(
    "--balance",
    type=click.Choice(["class_weights", "none"]),
    default="none",
    show_default=True,
    help="class_weights: 'balanced' loss weights n / (k * count), for strongly imbalanced data",
)
@click.option(
    "--augment",
    "augment",
    type=click.Choice(["full", "geometric", "none"]),
    default="geometric",
    show_default=True,
    help="full: flips, quarter turns, zoom, colour jitter; geometric: flips and quarter turns only",
)
@click.option("--no-augment", is_flag=True, help="same as --augment none")
@click.option("--weight-decay", default=0.0, show_default=True, help="decoupled weight decay (AdamW) when > 0")
@click.option(
    "--time-budget", "time_budget", type=float, help="minutes; stop cleanly after the epoch that would overrun"
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--data-root", type=click.Path(file_okay=False), help="where the split's paths live (default: as recorded)"
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="keep decoded pixels here between runs")
@click.option(
    "--teacher",
    type=click.Path(exists=True, dir_okay=False),
    help="distil from the soft targets in this .npz (from `edge-bloodcls teacher`)",
)
@click.option("--distill-temperature", default=2.0, show_default=True, help="softmax temperature of the soft targets")
@click.option(
    "--distill-weight", default=0.7, show_default=True, help="weight of the soft-target loss (the rest: hard labels)"
)
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
def train_cmd(
    arch,
    split_csv,
    out,
    img_size,
    epochs,
    batch_size,
    weights,
    lr,
    width,
    bn_momentum,
    dropout,
    patience,
    balance,
    augment,
    no_augment,
    weight_decay,
    time_budget,
    seed,
    data_root,
    cache_dir,
    teacher,
    distill_temperature,
    distill_weight,
    resume,
):
    """Train a classifier under the common protocol and evaluate it on the test split."""
    if not resume and not (arch and split_csv):
        raise click.UsageError("--arch and --split are required (unless --resume)")
    if arch:
        try:  # before any data is read: an option the network does not take is a usage error
            archs.check_options(arch, width=width)
        except ValueError as e:
            raise CliError(str(e)) from None
    require_train_extra("train")
    cfg = TrainConfig(
        arch=arch or "",
        split=split_csv or "",
        out=out,
        img_size=img_size,
        epochs=epochs,
        batch_size=batch_size,
        weights=weights,
        lr=lr,
        width=width,
        bn_momentum=bn_momentum,
        dropout=dropout,
        patience=patience,
        balance=balance,
        augment="none" if no_augment else augment,
        weight_decay=weight_decay,
        time_budget_min=time_budget,
        seed=seed,
        data_root=data_root,
        cache_dir=cache_dir,
        teacher=teacher,
        distill_temperature=distill_temperature,
        distill_weight=distill_weight,
    )
    try:
        train(cfg, resume=resume)
    except (WeightsUnavailable, FileNotFoundError, FileExistsError, ValueError) as e:
        raise CliError(str(e)) from None


@click.command("teacher")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="a trained .keras model; repeat for an ensemble",
)
@click.option("--split", "split_csv", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="NAME: writes NAME.npz and NAME.json")
@click.option("--tta/--no-tta", default=True, show_default=True, help="average over the 8 flips and quarter turns")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--cache-dir", type=click.Path(file_okay=False))
def teacher_cmd(models, split_csv, out, tta, data_root, cache_dir):
    """Soft targets for `train --teacher`: models averaged over views, scored on val and test."""
    require_train_extra("teacher")

    try:
        build_teacher(list(models), split_csv, out, tta=tta, data_root=data_root, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None


COMMANDS = [data_group, train_cmd, teacher_cmd]
