"""The README's picture of the rooms and the import contracts (.importlinter) say the same thing:
the same rooms, in the same order (top to bottom = the layers contract), each with the rule that
its contract is named after. `make lint` runs the contracts; this test keeps the picture honest."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- rooms:"
PREFIX = "importlinter:contract:"


def _picture(text: str) -> list[tuple[str, int, str]]:
    """(name, depth, rule) per entry of the README picture, top to bottom."""
    assert MARKER in text, "README.md has lost its picture of the rooms (the rooms marker)"
    block = text.split(MARKER, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    entries: list[list] = []
    for line in block.splitlines():
        rule = re.match(r"^[│ ]*rule: (.+?)\s*$", line)
        if rule:
            assert entries and entries[-1][2] is None, f"a rule with no room above it, or two: {line!r}"
            entries[-1][2] = rule.group(1)
            continue
        room = re.match(r"^([│ ]*(?:[├└]── )?)([\w.]+?)(/|\.py)\s{2,}\S", line)
        if room:
            entries.append([room.group(2), len(room.group(1)), None])
    assert all(rule for _, _, rule in entries), f"every room keeps one rule: {entries}"
    return [(n, d, r) for n, d, r in entries]


def _contracts() -> dict[str, configparser.SectionProxy]:
    ini = configparser.ConfigParser()
    ini.read(REPO / ".importlinter", encoding="utf-8")
    return {s[len(PREFIX) :]: ini[s] for s in ini.sections() if s.startswith(PREFIX)}


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.strip().splitlines() if v.strip()]


@pytest.fixture(scope="module")
def picture():
    return _picture((REPO / "README.md").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def contracts():
    return _contracts()


def test_every_rule_in_the_picture_is_a_contract_of_that_name(picture, contracts):
    for name, _, rule in picture:
        assert name in contracts, f"README draws {name!r}, .importlinter has no contract {name!r}"
        assert contracts[name]["name"] == rule, (name, rule, contracts[name]["name"])
    # and every contract is drawn (the layers contract is the picture's order itself)
    assert set(contracts) - {"rooms"} == {name for name, _, _ in picture}


def test_the_rooms_are_the_layers_in_the_same_order(picture, contracts):
    depth = {name: d for name, d, _ in picture}
    rooms = [name for name, d, _ in picture if d > depth["edge_runtime"]]
    layers = contracts["rooms"]
    assert _list(layers["containers"]) == ["edge_bloodcls.edge_runtime"]
    assert _list(layers["layers"]) == rooms, "top to bottom in the README = the layers, highest first"
    assert ", ".join(rooms) in layers["name"]
    for room in rooms:  # each room is a real package or module of the runtime
        assert (REPO / "edge_runtime" / room).is_dir() or (REPO / "edge_runtime" / f"{room}.py").is_file(), room


def test_each_rooms_contract_is_about_that_room(picture, contracts):
    for name, _, _ in picture:
        c = contracts[name]
        if c["type"] != "forbidden":
            continue
        sources = _list(c["source_modules"])
        if name == "cli":  # the rule is about everyone else: no room imports the commands
            assert _list(c["forbidden_modules"]) == ["edge_bloodcls.edge_runtime.cli"]
            assert "edge_bloodcls.edge_runtime.cli" not in sources
        else:
            assert any(s.endswith(f".{name}") for s in sources), (name, sources)
    forbidden_by_capture = _list(contracts["capture"]["forbidden_modules"])
    assert "edge_bloodcls.edge_runtime.lab" in forbidden_by_capture
    runtime = _list(contracts["edge_runtime"]["forbidden_modules"])
    assert {
        "tensorflow",
        "tf_keras",
        "edge_bloodcls.train",
        "edge_bloodcls.convert",
        "edge_bloodcls.benchmarks",
    } <= set(runtime)
    assert contracts["edge_bloodcls"]["type"] == "acyclic_siblings"


def test_the_picture_is_read_as_drawn():
    """The reader on a small picture: names, nesting and rules as drawn, and a room without a rule
    refused (a reader that found nothing would let any README pass the tests above)."""
    text = (
        "<!-- rooms: x -->\n```text\na/          top\n│           rule: one\n└── b/      below\n"
        "    ├── c.py    cmds\n    │       rule: three\n    └── d/      more\n"
        "                wrapped description\n                rule: four\n```\n"
    )
    with pytest.raises(AssertionError, match="every room keeps one rule"):
        _picture(text)
    fixed = text.replace("below\n", "below\n    │       rule: two\n")
    assert _picture(fixed) == [("a", 0, "one"), ("b", 4, "two"), ("c", 8, "three"), ("d", 8, "four")]
