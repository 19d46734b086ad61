"""TensorFlow's environment: oneDNN's kernels asked for on x86, a user's own setting kept."""

from __future__ import annotations

import pytest

from edge_bloodcls import tfenv


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_onednn_asked_for_on_x86(monkeypatch, machine):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(tfenv.platform, "machine", lambda: machine)
    tfenv.configure()
    assert tfenv.os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_onednn_left_to_tensorflow_elsewhere(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(tfenv.platform, "machine", lambda: "aarch64")
    tfenv.configure()
    assert "TF_ENABLE_ONEDNN_OPTS" not in tfenv.os.environ


def test_users_own_setting_wins(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    monkeypatch.setattr(tfenv.platform, "machine", lambda: "x86_64")
    tfenv.configure()
    assert tfenv.os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert tfenv.os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"
