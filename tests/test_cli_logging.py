"""Messages through logging, set once by the group's -v / -q: results on stdout, messages on
stderr, and the libraries' own chatter (TensorFlow, the TFLite runtime) follows the same switch."""

from __future__ import annotations

import logging

import click
import pytest
from click.testing import CliRunner

from edge_bloodcls import logs
from edge_bloodcls.cli import main


@pytest.fixture
def probe(monkeypatch):
    """The real group's options and callback around one command that logs at every level from a
    module logger of the package (as train, convert and bench do) and prints a result."""
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # restored after the test: -v changes it
    saved = {n: logging.getLogger(n).level for n in ("tensorflow", "absl")}
    group = click.Group(params=main.params, callback=main.callback)

    @group.command()
    def work():
        log = logging.getLogger("edge_bloodcls.train.fit")
        log.debug("detail")
        log.info("epoch 1/1")
        log.warning("warning: a split that is not the model's")
        click.echo("runs/model.keras")

    yield group
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)
    logs.configure(logs.NORMAL)


@pytest.mark.parametrize(
    ("flags", "messages"),
    [
        ([], ["epoch 1/1", "warning: a split that is not the model's"]),
        (["-q"], ["warning: a split that is not the model's"]),
        (["-v"], ["detail", "epoch 1/1", "warning: a split that is not the model's"]),
    ],
)
def test_one_switch_sets_the_levels_results_stay_on_stdout(probe, flags, messages):
    r = CliRunner().invoke(probe, [*flags, "work"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "runs/model.keras\n"
    assert r.stderr.splitlines() == messages


def test_verbose_lets_the_libraries_speak(probe):
    import os

    from edge_bloodcls.edge_runtime.core import interpreter

    CliRunner().invoke(probe, ["work"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and not interpreter.verbose()
    assert logging.getLogger("tensorflow").level == logging.WARNING
    CliRunner().invoke(probe, ["-v", "work"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and interpreter.verbose()
    assert logging.getLogger("tensorflow").level == logging.INFO
    CliRunner().invoke(probe, ["-q", "work"])
    assert logging.getLogger("tensorflow").level == logging.ERROR and not interpreter.verbose()


def test_verbose_and_quiet_together_is_a_usage_error(probe):
    r = CliRunner().invoke(probe, ["-v", "-q", "work"])
    assert r.exit_code == 2 and "-v and -q" in r.output


def test_configuring_twice_keeps_one_handler():
    logs.configure(logs.VERBOSE)
    logs.configure(logs.NORMAL)
    handlers = [h for h in logging.getLogger("edge_bloodcls").handlers if isinstance(h, logs.ClickHandler)]
    assert len(handlers) == 1
