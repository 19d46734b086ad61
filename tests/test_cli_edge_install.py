"""The CLI on the edge install: without the [train] extra (TensorFlow, tf_keras, tfmot,
matplotlib, tqdm) every command is still listed and the runtime's run; the training ones say
what they need only when run. Also: options an architecture does not take are refused."""
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
    r = CliRunner().invoke(main, ["train", "--arch", "resnet50", "--width", "0.5", "--split", str(split),
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: --width: not an option of resnet50 (its options: none)"]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--width: not an option of vgg16"):
        archs.build("vgg16", 32, width=0.5)
    archs.check_options("mobilenetv2", width=0.35)  # its own option
    archs.check_options("resnet50", width=None)  # not given


def test_old_config_files_still_load():
    from edge_bloodcls.train.fit import TrainConfig

    saved = {"arch": "mobilenetv2", "split": "s.csv", "out": "o", "img_size": 32, "label_smoothing": 0.0,
             "extra": {}, "width": 0.35}
    cfg, dropped = TrainConfig.from_saved(saved)
    assert dropped == ["extra", "label_smoothing"]
    assert (cfg.arch, cfg.img_size, cfg.width) == ("mobilenetv2", 32, 0.35)
    assert not hasattr(cfg, "label_smoothing") and not hasattr(cfg, "extra")
    # a width an older version recorded for a network without one (and ignored) is dropped too
    cfg, dropped = TrainConfig.from_saved({"arch": "resnet50", "split": "s.csv", "out": "o", "width": 0.5})
    assert cfg.width is None and dropped == ["width"]
