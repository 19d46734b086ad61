"""The CLI on the edge install: without the [train] extra (TensorFlow, tf_keras, tfmot,
matplotlib, tqdm) every command is still listed and the runtime's run; the training ones say
what they need only when run: one line, exit 2, no traceback. Also: the exit codes of the one
error type (edge_bloodcls.errors), and options an architecture does not take are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

BLOCKED = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "matplotlib", "tqdm")

SCRIPT = textwrap.dedent(f"""
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, Block())
    from click.testing import CliRunner
    from edge_bloodcls.cli import main

    r = CliRunner().invoke(main, ["--help"])
    print("RESULT " + json.dumps({{"exit": r.exit_code, "output": r.output, "commands": sorted(main.commands),
                                  "loaded": sorted(k for k in sys.modules if k.split(".")[0] in {BLOCKED!r})}}))
""")


# The same block, then the real entry point with real stdout/stderr: what a user of an edge
# install sees (argv after the script).
RUN = textwrap.dedent(f"""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, Block())
    from edge_bloodcls.cli import main

    main(sys.argv[1:], prog_name="edge-bloodcls")
""")


def _edge_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def model_inputs(tmp_path):
    """What the training commands are given for real: a model file, a split, a labelled folder."""
    model = tmp_path / "run" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"PK\x03\x04 not opened: the command stops before")
    split = tmp_path / "split.csv"
    split.write_text("path,label,split,sha256\n")
    (tmp_path / "cells" / "neutrophil").mkdir(parents=True)
    return model, split, tmp_path / "cells"


@pytest.mark.parametrize("command", ["adapt", "convert", "train", "teacher"])
def test_commands_that_need_tensorflow_say_so_in_one_line_on_an_edge_install(command, model_inputs, tmp_path):
    from edge_bloodcls.train.archs import names

    model, split, cells = model_inputs
    out = tmp_path / "out"
    args = {
        "adapt": ["--labelled", cells, "--model", model, "--out", out],
        "convert": [model, "--quantize", "int8", "--calibration", split, "--out", out],
        "train": ["--arch", names()[0], "--split", split, "--out", out],
        "teacher": ["--model", model, "--split", split, "--out", out / "teacher"],
    }[command]
    p = _edge_run(command, *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert err[0].startswith(f"error: {command} needs TensorFlow") and "edge-bloodcls[train]" in err[0]
    assert p.stdout == "" and not out.exists()


def test_a_train_module_missing_past_the_checks_is_the_same_one_line():
    """The group's safety net: a [train] module first imported deep inside a command (no check of
    its own) ends as the same one line and exit 2; any other missing module is a bug and raises."""
    import click

    from edge_bloodcls.cli import App

    group = App()

    @group.command("plots")
    def plots():
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    @group.command("broken")
    def broken():
        raise ModuleNotFoundError("No module named 'edge_bloodcls.nothing'", name="edge_bloodcls.nothing")

    r = CliRunner().invoke(group, ["plots"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)
    assert r.output.strip().splitlines() == [
        "error: plots needs TensorFlow, which the edge install does not have (matplotlib is not installed): "
        "install the full toolkit (pip install 'edge-bloodcls[train]', or `make setup`); the edge install runs "
        "bundles"
    ]
    r = CliRunner().invoke(group, ["broken"])
    assert isinstance(r.exception, ModuleNotFoundError) and r.exception.name == "edge_bloodcls.nothing"
    assert isinstance(group, click.Group)


def test_exit_codes_are_the_error_types():
    """0 done; 1 some inputs failed (named as they failed: no further line); 2 usage or setup."""
    import click

    from edge_bloodcls.errors import EXIT_INPUTS_FAILED, EXIT_USAGE, CliError, InputsFailed

    @click.command()
    @click.argument("what")
    def cmd(what):
        if what == "setup":
            raise CliError("no model")
        if what == "some":
            click.echo("error: a.png: not an image", err=True)
            raise InputsFailed()
        if what == "partial":
            raise CliError("the session log stops short", EXIT_INPUTS_FAILED)
        click.echo("done")

    runs = {w: CliRunner().invoke(cmd, [w]) for w in ("ok", "setup", "some", "partial")}
    assert {w: r.exit_code for w, r in runs.items()} == {"ok": 0, "setup": EXIT_USAGE, "some": 1, "partial": 1}
    assert runs["setup"].output == "error: no model\n"
    assert runs["some"].output == "error: a.png: not an image\n"
    assert runs["partial"].output == "error: the session log stops short\n"
    assert CliRunner().invoke(cmd, []).exit_code == EXIT_USAGE  # click's own usage error


def test_every_command_is_listed_without_the_train_extra():
    from edge_bloodcls.cli import main

    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert res["exit"] == 0 and res["loaded"] == []
    assert res["commands"] == sorted(main.commands)
    for name in ("train", "convert", "bench", "classify", "evaluate", "capture"):
        assert name in res["commands"] and f"  {name}" in res["output"]


def test_an_option_the_architecture_does_not_take_is_refused(tmp_path):
    from edge_bloodcls.cli import main
    from edge_bloodcls.train import archs

    split = tmp_path / "split.csv"
    split.write_text("path,label,split,sha256\n")
    r = CliRunner().invoke(
        main, ["train", "--arch", "resnet50", "--width", "0.5", "--split", str(split), "--out", str(tmp_path / "run")]
    )
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: --width: not an option of resnet50 (its options: none)"]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--width: not an option of vgg16"):
        archs.build("vgg16", 32, width=0.5)
    archs.check_options("mobilenetv2", width=0.35)  # its own option
    archs.check_options("resnet50", width=None)  # not given


def test_old_config_files_still_load():
    from edge_bloodcls.train.fit import TrainConfig

    saved = {
        "arch": "mobilenetv2",
        "split": "s.csv",
        "out": "o",
        "img_size": 32,
        "label_smoothing": 0.0,
        "extra": {},
        "width": 0.35,
    }
    cfg, dropped = TrainConfig.from_saved(saved)
    assert dropped == ["extra", "label_smoothing"]
    assert (cfg.arch, cfg.img_size, cfg.width) == ("mobilenetv2", 32, 0.35)
    assert not hasattr(cfg, "label_smoothing") and not hasattr(cfg, "extra")
    # a width an older version recorded for a network without one (and ignored) is dropped too
    cfg, dropped = TrainConfig.from_saved({"arch": "resnet50", "split": "s.csv", "out": "o", "width": 0.5})
    assert cfg.width is None and dropped == ["width"]
