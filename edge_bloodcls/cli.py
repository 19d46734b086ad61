"""The `edge-bloodcls` command. Each part of the toolkit contributes its own commands; they are
imported when the group is built, and the TensorFlow-heavy ones import TensorFlow only when run."""
from __future__ import annotations

import importlib
import os

import click

from . import __version__

# TensorFlow must take the Keras 2 API (tf_keras) that tensorflow-model-optimization needs.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# module -> its command objects; a module that is absent (a slim install) adds nothing.
COMMAND_MODULES = (
    "edge_bloodcls.train.commands",
    "edge_bloodcls.convert.commands",
    "edge_bloodcls.edge_runtime.commands",
    "edge_bloodcls.benchmarks.commands",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-bloodcls")
def main():
    """Blood-cell classification from training to the microscope."""


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as e:
        if e.name == _name:
            continue
        raise
    for _cmd in _mod.COMMANDS:
        main.add_command(_cmd)


if __name__ == "__main__":
    main()
