"""Training: one protocol for every architecture, resumable, time-budgeted, reproducible.

out/
  model.keras     final float model (best validation loss), no optimizer state
  history.csv     one row per epoch
  config.json     every option, library versions, split hash, input spec
  metrics.json    test-split metrics (edge_runtime.core.metrics, scikit-learn definitions)
  ckpt/           last epoch with optimizer state and loop state, for --resume (not committed)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from edge_bloodcls import __version__
from edge_bloodcls.edge_runtime.core.metrics import classification_metrics, format_metrics
from edge_bloodcls.edge_runtime.core.spec import LABELS
from edge_bloodcls.host import cpu_model, usable_cores
from edge_bloodcls.tfenv import configure

from . import archs
from .data import read_split
from .distill import distill_objects, distill_targets
from .pipeline import augment_preset, cached_pixels, class_weights, eval_dataset, train_dataset
from .teacher import load_teacher

_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    arch: str
    split: str
    out: str
    img_size: int = 96
    epochs: int = 20
    batch_size: int = 64
    weights: str = "none"
    lr: float | None = None  # None: the architecture's default
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0
    dropout: float = 0.2
    bn_momentum: float = 0.9
    width: float | None = None  # MobileNetV2 alpha
    augment: str | bool = "geometric"  # a preset of pipeline.AUGMENT_PRESETS (bool in older configs)
    balance: str = "none"  # or "class_weights"
    patience: int = 6
    time_budget_min: float | None = None
    seed: int = 0
    data_root: str | None = None
    cache_dir: str | None = None
    max_train: int | None = None  # for smoke tests only
    teacher: str | None = None  # soft targets from `edge-bloodcls teacher` (distillation)
    distill_temperature: float = 2.0
    distill_weight: float = 0.7  # weight of the soft-target term; 1 - it on the hard labels

    @classmethod
    def from_saved(cls, saved: dict) -> tuple[TrainConfig, list[str]]:
        """A config.json "train" record -> (config, the keys dropped). Rule: a key that is not a
        field any more is dropped, and so is an option the architecture never used. Fields are
        removed only when nothing reads them (e.g. label_smoothing and extra, never used by the
        loop), so dropping one cannot change what a resumed run does; a field a run depends on
        is kept, with a default for older files."""
        known = {f.name for f in fields(cls)}
        cfg, dropped = cls(**{k: v for k, v in saved.items() if k in known}), sorted(set(saved) - known)
        if cfg.width is not None and cfg.arch in archs.REGISTRY and "width" not in archs.get(cfg.arch).options:
            # Recorded by a version that took --width for any network and ignored it where it
            # does not apply; archs.build now refuses it, so the resumed run drops it as that one did.
            cfg.width = None
            dropped.append("width")
        return cfg, dropped


def _versions() -> dict:
    # scikit-learn: the [edge]/[train] extras, only for this step
    import sklearn
    import tensorflow as tf
    import tf_keras

    v = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "edge_bloodcls": __version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    return v


def _machine(n_gpus: int) -> str:
    """What this chunk of training ran on, for the cost a report quotes: runs are resumed across
    sessions, and sessions' machines differ (the same ResNet50 epoch took 5 min on one, 22 on another)."""
    return f"{cpu_model()}, {usable_cores()} cores" + (f", {n_gpus} GPU{'s' if n_gpus > 1 else ''}" if n_gpus else "")


def _seed_everything(seed: int):

    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    os.environ["PYTHONHASHSEED"] = str(seed)
    # Also seeds tf_keras's own generator, which unseeded initializers draw from.
    tf_keras.utils.set_random_seed(seed)


def _strategy():
    """MirroredStrategy over several GPUs, mixed precision on any GPU, plain CPU otherwise."""
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf
    import tf_keras

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
        _log.info(f"GPUs: {len(gpus)}; mixed precision on")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), len(gpus)
    return tf.distribute.get_strategy(), len(gpus)


def warmup_cosine_class():
    """Linear warm-up then cosine decay to zero, as a function of the optimizer step, so a
    resumed run continues the schedule exactly. Registered so checkpoints load by name."""
    global _WarmupCosine
    if _WarmupCosine is not None:
        return _WarmupCosine
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tensorflow as tf
    import tf_keras

    @tf_keras.saving.register_keras_serializable(package="edge_bloodcls")
    class WarmupCosine(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, base_lr, warmup_steps, total_steps):
            self.base_lr, self.warmup_steps, self.total_steps = float(base_lr), int(warmup_steps), int(total_steps)

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = self.base_lr * (step + 1) / max(1.0, float(self.warmup_steps))
            progress = (step - self.warmup_steps) / max(1.0, float(self.total_steps - self.warmup_steps))
            cos = 0.5 * self.base_lr * (1 + tf.cos(math.pi * tf.clip_by_value(progress, 0.0, 1.0)))
            return tf.where(step < self.warmup_steps, warm, cos)

        def get_config(self):
            return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    _WarmupCosine = WarmupCosine
    return WarmupCosine


_WarmupCosine = None


def _current_lr(opt) -> float:
    lr = opt.learning_rate
    if callable(lr):
        lr = lr(opt.iterations)
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    configure()  # the CLI has done it; a caller from Python may not have
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    out = Path(cfg.out)
    ckpt_dir = out / "ckpt"
    state_file = ckpt_dir / "state.json"
    if resume:
        if not state_file.exists():
            raise FileNotFoundError(f"{state_file}: nothing to resume (no checkpoint in {out})")
        saved = json.loads((out / "config.json").read_text())["train"]
        # The budget belongs to this session, not the first one; the data may have moved.
        saved["time_budget_min"] = cfg.time_budget_min
        saved.update({k: v for k, v in (("data_root", cfg.data_root), ("cache_dir", cfg.cache_dir)) if v is not None})
        cfg, dropped = TrainConfig.from_saved(saved)
        _log.info(
            f"resuming {cfg.arch} in {out} from its saved configuration"
            + (f" (ignoring settings no longer used: {', '.join(dropped)})" if dropped else "")
        )
    elif state_file.exists():
        raise FileExistsError(
            f"{out}: holds a checkpoint already; pass --resume to continue it or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(exist_ok=True)

    archs.check_options(cfg.arch, width=cfg.width)
    arch = archs.get(cfg.arch)
    lr = cfg.lr if cfg.lr is not None else arch.lr
    spec = archs.input_spec(cfg.arch, cfg.img_size, cfg.weights)
    split = read_split(cfg.split, cfg.data_root)
    _seed_everything(cfg.seed)

    t0 = time.time()
    key = split.sha256[:12]
    data = {}
    for name in ("train", "val", "test"):
        paths, y = split.items(name)
        if name == "train" and cfg.max_train:
            paths, y = paths[: cfg.max_train], y[: cfg.max_train]
        if not paths:
            raise ValueError(f"{cfg.split}: the {name} split is empty")
        data[name] = (cached_pixels(paths, spec.size, cfg.cache_dir, key, progress=True), y)
    _log.info(
        f"data: {', '.join(f'{k} {len(v[1])}' for k, v in data.items())} images at {cfg.img_size}px "
        f"({time.time() - t0:.0f}s)"
    )

    aug = augment_preset(cfg.augment)
    if cfg.teacher and cfg.balance == "class_weights":
        raise ValueError("--teacher and --balance class_weights do not combine (the soft targets carry the balance)")
    weights_by_class = class_weights(data["train"][1], len(LABELS)) if cfg.balance == "class_weights" else None
    # What the loss sees: the label, or with a teacher the label and the teacher's logits.
    targets = {name: y for name, (_, y) in data.items()}
    if cfg.teacher:
        if aug.zoom or aug.brightness or aug.contrast or aug.saturation or aug.hue:
            raise ValueError(
                "--teacher needs --augment geometric or none: its stored soft targets are "
                "invariant to flips and quarter turns only"
            )
        soft = load_teacher(cfg.teacher, split.sha256)
        if cfg.max_train:
            soft["train"] = soft["train"][: cfg.max_train]
        for name in ("train", "val"):
            if len(soft[name]) != len(targets[name]):
                raise ValueError(f"{cfg.teacher}: {len(soft[name])} {name} targets for {len(targets[name])} images")
            targets[name] = distill_targets(targets[name], soft[name])
    strategy, n_gpus = _strategy()
    batch = cfg.batch_size
    steps = len(data["train"][1]) // batch
    if steps == 0:
        raise ValueError(f"batch size {batch} is larger than the training set ({len(data['train'][1])} images)")

    state: dict[str, Any] = {"epoch": 0, "best_val_loss": None, "best_epoch": None, "wait": 0, "elapsed_s": 0.0}
    with strategy.scope():
        if resume:
            warmup_cosine_class()
            distill_objects()
            model = tf_keras.models.load_model(ckpt_dir / "last.keras", compile=True)
            state = json.loads(state_file.read_text())
            _truncate_history(out / "history.csv", state["epoch"])
        else:
            model = archs.build(cfg.arch, cfg.img_size, cfg.weights, cfg.dropout, cfg.bn_momentum, width=cfg.width)
            sched = warmup_cosine_class()(lr, int(cfg.warmup_epochs * steps), cfg.epochs * steps)
            opt = (
                tf_keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay)
                if cfg.weight_decay
                else tf_keras.optimizers.Adam(sched)
            )
            if cfg.teacher:
                loss_cls, acc = distill_objects()
                model.compile(
                    optimizer=opt,
                    loss=loss_cls(cfg.distill_temperature, cfg.distill_weight),
                    metrics=[tf_keras.metrics.MeanMetricWrapper(acc, name="accuracy")],
                )
            else:
                model.compile(optimizer=opt, loss=tf_keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    params = int(model.count_params())

    config = {
        "train": asdict(cfg),
        "lr": lr,
        "input": spec.to_json(),
        "labels": list(LABELS),
        "augment": aug.to_json(),
        "class_weights": weights_by_class,
        "split": {"csv": str(cfg.split), "sha256": split.sha256, "root": str(split.root)},
        "params": params,
        "gpus": n_gpus,
        "versions": _versions(),
        "optimizer": ("AdamW" if cfg.weight_decay else "Adam") + ", warm-up + cosine decay",
        "loss": (
            f"distillation from {cfg.teacher}: {cfg.distill_weight:g} x T^2 KL at T={cfg.distill_temperature:g} "
            f"+ {1 - cfg.distill_weight:g} x cross-entropy"
            if cfg.teacher
            else "sparse categorical cross-entropy, class-weighted"
            if weights_by_class
            else "sparse categorical cross-entropy"
        ),
    }
    if not resume:
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _log.info(
        f"{cfg.arch}: {params:,} parameters, input {spec.size} {spec.color}, lr {lr}, batch {batch}, "
        f"{steps} steps/epoch, epochs {state['epoch']}..{cfg.epochs}"
    )

    # One record per chunk (a first run or a --resume): its epochs, seconds and machine.
    chunks = state.setdefault("chunks", [])
    if state["epoch"] and not chunks:
        chunks.append(
            {
                "epochs": [1, state["epoch"]],
                "seconds": round(state["elapsed_s"], 1),
                "machine": "not recorded (trained before chunks were recorded)",
            }
        )
    # [first, last] epoch; last < first until an epoch ends (metrics.json leaves such a chunk out).
    chunks.append({"epochs": [state["epoch"] + 1, state["epoch"]], "seconds": 0.0, "machine": _machine(n_gpus)})
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    x_val = eval_dataset(data["val"][0], targets["val"], spec, batch)
    history_file = out / "history.csv"
    stop_reason = "completed all epochs"

    if state["epoch"] < cfg.epochs and state.get("stopped") != "early_stopping":
        ds, _ = train_dataset(
            data["train"][0], targets["train"], spec, batch, aug, cfg.seed, state["epoch"], cfg.epochs
        )
        loop = _EpochEnd(cfg, state, ckpt_dir, history_file, budget_s)
        # One fit call over a stream of all remaining epochs: Keras keeps one iterator across
        # epochs, so every batch is the one an uninterrupted run would draw.
        model.fit(
            ds,
            steps_per_epoch=steps,
            epochs=cfg.epochs,
            initial_epoch=state["epoch"],
            validation_data=x_val,
            class_weight=weights_by_class,
            callbacks=[loop],
            verbose=1 if sys.stdout.isatty() else 2,
        )
        stop_reason = loop.stop_reason
    _log.info(stop_reason)

    best = tf_keras.models.load_model(ckpt_dir / "best.keras", compile=False)
    best.save(out / "model.keras")  # loaded without compile: no optimizer state
    probs = best.predict(eval_dataset(*data["test"], spec, batch), verbose=0)
    metrics = classification_metrics(data["test"][1], probs.argmax(1))
    val_probs = best.predict(eval_dataset(*data["val"], spec, batch), verbose=0)
    metrics_val = classification_metrics(data["val"][1], val_probs.argmax(1))
    result = {
        "arch": cfg.arch,
        "img_size": cfg.img_size,
        "params": params,
        "split_sha256": split.sha256,
        "epochs_run": state["epoch"],
        "epochs_planned": cfg.epochs,
        "best_epoch": state["best_epoch"],
        "stop_reason": stop_reason,
        "train_seconds": round(state["elapsed_s"], 1),
        "chunks": [c for c in state["chunks"] if c["epochs"][1] >= c["epochs"][0]],
        "test": metrics,
        "val": {k: metrics_val[k] for k in ("n", "accuracy", "balanced_accuracy", "macro")},
    }
    _write_json(out / "metrics.json", result)
    _log.info("test split:\n" + format_metrics(metrics))
    return result


def _epoch_end_class():
    # TensorFlow: the [train] extra, imported when a command needs it (the edge install has none)
    import tf_keras

    class EpochEnd(tf_keras.callbacks.Callback):
        """Per epoch: history row, best and last checkpoints, early stopping, time budget."""

        def __init__(self, cfg, state, ckpt_dir, history_file, budget_s):
            super().__init__()
            self.cfg, self.state, self.ckpt_dir, self.history_file = cfg, state, ckpt_dir, history_file
            self.budget_s = budget_s
            self.start = time.time()
            self.elapsed_before = state["elapsed_s"]
            self.epoch_times = []
            self.stop_reason = "completed all epochs"

        def on_epoch_begin(self, epoch, logs=None):
            self.t_epoch = time.time()
            self.steps_done = 0

        def on_train_batch_end(self, batch, logs=None):
            # A budget shorter than one epoch (VGG on a CPU) ends the epoch early, recorded as such.
            self.steps_done = batch + 1
            if self.budget_s and time.time() - self.start > self.budget_s:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            cfg, state = self.cfg, self.state
            self.epoch_times.append(time.time() - self.t_epoch)
            row = {
                "epoch": epoch + 1,
                "loss": float(logs["loss"]),
                "accuracy": float(logs["accuracy"]),
                "val_loss": float(logs["val_loss"]),
                "val_accuracy": float(logs["val_accuracy"]),
                "lr": _current_lr(self.model.optimizer),
                "seconds": round(self.epoch_times[-1], 1),
                "steps": self.steps_done,
            }
            _append_csv(self.history_file, row)
            _log.info(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
                f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} ({row['seconds']:.0f}s)"
            )
            if state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"]:
                state.update(best_val_loss=row["val_loss"], best_epoch=epoch + 1, wait=0)
                self.model.save(self.ckpt_dir / "best.keras")
            else:
                state["wait"] += 1
            state["epoch"] = epoch + 1
            state["elapsed_s"] = self.elapsed_before + time.time() - self.start
            state["chunks"][-1]["epochs"][1] = epoch + 1
            state["chunks"][-1]["seconds"] = round(time.time() - self.start, 1)
            # Checkpoint first, then the loop state that points at it: a kill between the two
            # resumes from the previous epoch, never from a state without its weights.
            self.model.save(self.ckpt_dir / "last.tmp.keras")
            os.replace(self.ckpt_dir / "last.tmp.keras", self.ckpt_dir / "last.keras")
            mean_epoch = float(np.mean(self.epoch_times))
            state.pop("stopped", None)
            if state["wait"] >= cfg.patience:
                self.stop_reason = f"early stopping: validation loss did not improve for {cfg.patience} epochs"
                state["stopped"] = "early_stopping"
            elif self.model.stop_training:
                self.stop_reason = (
                    f"time budget of {cfg.time_budget_min:g} min reached during epoch {epoch + 1} "
                    f"after {self.steps_done} steps (history.csv 'steps'); "
                    "--resume continues with the next epoch"
                )
                state["stopped"] = "time_budget"
            elif self.budget_s and epoch + 1 < cfg.epochs and time.time() - self.start + mean_epoch > self.budget_s:
                self.stop_reason = (
                    f"time budget of {cfg.time_budget_min:g} min reached after epoch {epoch + 1} "
                    f"(another epoch would take ~{mean_epoch / 60:.1f} min); --resume continues"
                )
                state["stopped"] = "time_budget"
            _write_json(self.ckpt_dir / "state.json", state)
            if state.get("stopped"):
                self.model.stop_training = True

    return EpochEnd


def _EpochEnd(*args):
    return _epoch_end_class()(*args)


def _truncate_history(path: Path, epochs: int):
    """Drop rows of epochs after the checkpoint (a kill between logging and saving)."""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[: epochs + 1]))


def _append_csv(path: Path, row: dict):
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row), lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)


def _write_json(path: Path, obj):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
