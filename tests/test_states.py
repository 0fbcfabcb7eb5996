"""Named states (:mod:`plugin_host.states`): each is its plain string to every reader, and the code spells
none of them as a bare literal outside the state module."""

from __future__ import annotations

import ast
import json
import pickle
from enum import Enum
from pathlib import Path

import pytest
from conftest import ROOT

from plugin_host import states
from plugin_host.values import ChildInfo, SandboxInfo

STATE_TYPES = [
    value
    for value in vars(states).values()
    if isinstance(value, type) and issubclass(value, Enum) and value.__module__ == states.__name__
]
MEMBERS = [member for kind in STATE_TYPES for member in kind]
STATE_VALUES = {member.value for member in MEMBERS}
# Names whose value is a lifecycle state when a literal is assigned or passed to them.
STATE_NAMES = {"status", "phase", "action", "kind", "event", "state"}


@pytest.mark.parametrize("member", MEMBERS, ids=lambda member: f"{type(member).__name__}.{member.name}")
def test_a_state_reads_as_its_plain_string_everywhere(member: states.SandboxStatus) -> None:
    """``==``, ``str``, f-strings, ``repr``, JSON and a pickle round trip all see the plain string's value."""
    plain = member.value
    assert member == plain and hash(member) == hash(plain)
    assert str(member) == f"{member}" == plain
    assert repr(member) == repr(plain)
    assert json.dumps({"status": member}) == json.dumps({"status": plain})
    assert pickle.loads(pickle.dumps(member)) is member


def test_a_value_type_shows_its_state_as_before() -> None:
    """A value type carrying a state prints ``status='running'``, as when the field was a plain string."""
    child = ChildInfo(name="w", pid=1, restarts=0, module="m", version=1, status=states.ChildStatus.RUNNING)
    info = SandboxInfo(id="s", status=states.SandboxStatus.RUNNING, supervisor="m:S", created_at=0.0, restart_count=0)
    assert "status='running'" in repr(info) and "status='running'" in repr(child)


def bare_state_literals(path: Path, strict: bool) -> list[str]:
    """Where ``path`` spells a lifecycle state as a string literal.

    Always: one compared with, assigned to or passed as a keyword named as in :data:`STATE_NAMES`.
    With ``strict`` (the actors, where every such string is a state), also one compared with
    anything, passed positionally or assigned to any name.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        candidates: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if strict or {getattr(side, "attr", getattr(side, "id", "")) for side in sides} & STATE_NAMES:
                candidates = sides
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {getattr(target, "attr", getattr(target, "id", "")) for target in targets}
            if strict or names & STATE_NAMES:
                candidates = [node.value]
        elif isinstance(node, ast.keyword) and (strict or node.arg in STATE_NAMES):
            candidates = [node.value]
        elif isinstance(node, ast.Call) and strict:
            candidates = list(node.args)
        candidates += [
            item for group in candidates if isinstance(group, (ast.Tuple, ast.List, ast.Set)) for item in group.elts
        ]
        found += [
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{item.lineno}: {item.value!r}"
            for item in candidates
            if isinstance(item, ast.Constant) and item.value in STATE_VALUES
        ]
    return found


def test_no_lifecycle_state_is_a_bare_string_outside_the_state_module() -> None:
    """The actors and the host spell every lifecycle state through :mod:`plugin_host.states`, so mypy
    catches a misspelt one."""
    found = [hit for path in sorted((ROOT / "actors").rglob("*.py")) for hit in bare_state_literals(path, strict=True)]
    found += [
        hit
        for path in sorted((ROOT / "plugin_host").rglob("*.py"))
        if path.name != "states.py"
        for hit in bare_state_literals(path, strict=False)
    ]
    assert not found, "bare lifecycle states:\n" + "\n".join(found)


def test_the_literal_check_sees_one(tmp_path: Path) -> None:
    """The check itself: a comparison, a keyword and an assignment of a state string are found; a named
    member, a string that is no state, and a state's word compared with something else are not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "if rec.status == 'running':\n"
        "    send(status='stopped')\n"
        "    rec.phase = 'failing'\n"
        "GOING = ('stopping', SupervisorPhase.FAILING)\n"
        "if rec.status == SandboxStatus.RUNNING or name == 'counter' or verb == 'stopping':\n"
        "    pass\n"
    )
    found = bare_state_literals(sample, strict=False)
    assert sorted(hit.split(":")[1] for hit in found) == ["1", "2", "3"]
    assert [hit.split(":")[1] for hit in bare_state_literals(sample, strict=True)].count("4") == 1
