"""``actors``: ``ChildSpec`` and ``Supervisor`` validation, and the ``Plugin`` behaviour's defaults."""

from __future__ import annotations

import pickle
from typing import Any

import attrs
import pytest

from actors import ChildSpec, Plugin, Supervisor
from actors._spec import RESTART_TYPES, STRATEGIES, bare_plugin_supervisor
from plugin_host.errors import InvalidSpecError, PluginHostError


class Counter(Plugin):
    """A minimal worker behaviour for specs."""


class Echo(Plugin):
    """Another worker behaviour."""


def supervisor(**attributes: Any) -> type[Supervisor]:
    """A fresh ``Supervisor`` subclass with the given class attributes."""
    return type("Custom", (Supervisor,), attributes)


# -- ChildSpec -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", None, 3, b"bytes", "tab\there", "x" * 201])
def test_child_spec_rejects_a_bad_name(name: Any) -> None:
    """A child name must be a non-empty printable ``str``."""
    with pytest.raises(InvalidSpecError):
        ChildSpec(name, Counter)


@pytest.mark.parametrize("plugin", [object, int, Counter(), "actors.Plugin", None, lambda: Counter])
def test_child_spec_rejects_a_plugin_that_is_not_a_plugin_or_supervisor_class(plugin: Any) -> None:
    """``plugin`` must be a ``Plugin`` or ``Supervisor`` subclass, not an instance or other type."""
    with pytest.raises(InvalidSpecError, match="'worker'"):
        ChildSpec("worker", plugin)


@pytest.mark.parametrize("restart", ["always", "", None, "Permanent", 1])
def test_child_spec_rejects_a_bad_restart_type(restart: Any) -> None:
    """``restart`` is one of permanent, transient, temporary."""
    with pytest.raises(InvalidSpecError):
        ChildSpec("worker", Counter, restart=restart)


@pytest.mark.parametrize("restart", RESTART_TYPES)
def test_child_spec_accepts_every_restart_type(restart: str) -> None:
    """Each OTP restart type is valid."""
    assert ChildSpec("worker", Counter, restart=restart).restart == restart


def test_child_spec_defaults_to_permanent_with_no_args() -> None:
    """Without options a child is permanent and gets ``None`` args."""
    spec = ChildSpec("worker", Counter)
    assert (spec.restart, spec.args) == ("permanent", None)


def test_invalid_spec_error_is_both_ours_and_a_value_error() -> None:
    """Spec errors can be caught as ``PluginHostError`` or ``ValueError``."""
    with pytest.raises(PluginHostError):
        ChildSpec("", Counter)
    with pytest.raises(ValueError):
        ChildSpec("", Counter)


def test_child_spec_knows_whether_it_is_a_supervisor() -> None:
    """``is_supervisor`` tells nested supervisors from workers."""
    assert ChildSpec("sub", supervisor()).is_supervisor
    assert not ChildSpec("worker", Counter).is_supervisor


def test_child_spec_is_frozen_and_validates_on_evolve() -> None:
    """A spec cannot be changed in place, and ``attrs.evolve`` re-validates."""
    spec = ChildSpec("worker", Counter)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(InvalidSpecError):
        attrs.evolve(spec, restart="never")


def test_child_spec_of_an_importable_plugin_pickles() -> None:
    """A spec naming a module-level plugin class survives plain pickle."""
    spec = ChildSpec("worker", Counter, args={"start": 1}, restart="transient")
    assert pickle.loads(pickle.dumps(spec)) == spec


# -- Supervisor.check ------------------------------------------------------------------


def test_supervisor_check_accepts_a_valid_tree() -> None:
    """A well-formed nested tree passes ``check``, which walks every actor of it (nested ones included)."""
    inner = supervisor(strategy="rest_for_one", children=[ChildSpec("echo", Echo)])
    outer = supervisor(
        strategy="one_for_all",
        max_restarts=0,
        max_seconds=0.5,
        children=[ChildSpec("counter", Counter), ChildSpec("inner", inner, restart="transient")],
    )
    seen: set[str] = set()
    assert outer.check(seen) is None
    assert seen == {"counter", "inner", "echo"}


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
def test_supervisor_check_accepts_every_strategy(strategy: str) -> None:
    """Each OTP strategy is valid (listed here, not read from ``STRATEGIES``, so dropping one fails)."""
    assert strategy in STRATEGIES
    assert supervisor(strategy=strategy, children=[ChildSpec("c", Counter)]).check() is None


def test_supervisor_defaults_are_one_for_one_three_in_five_seconds() -> None:
    """The base spec's defaults are OTP-like and valid (an empty supervisor is allowed)."""
    assert (Supervisor.strategy, Supervisor.max_restarts, Supervisor.max_seconds) == ("one_for_one", 3, 5.0)
    supervisor().check()


@pytest.mark.parametrize("strategy", ["one_for_rest", "", None, "ONE_FOR_ONE", 1])
def test_supervisor_check_rejects_a_bad_strategy(strategy: Any) -> None:
    """An unknown strategy is an ``InvalidSpecError``."""
    with pytest.raises(InvalidSpecError, match="strategy"):
        supervisor(strategy=strategy).check()


@pytest.mark.parametrize("value", [-1, 1.5, "3", None, True])
def test_supervisor_check_rejects_bad_max_restarts(value: Any) -> None:
    """``max_restarts`` is an int ``>= 0`` (not a bool)."""
    with pytest.raises(InvalidSpecError, match="max_restarts"):
        supervisor(max_restarts=value).check()


@pytest.mark.parametrize("value", [0, -1, -0.5, "5", None, True])
def test_supervisor_check_rejects_bad_max_seconds(value: Any) -> None:
    """``max_seconds`` is a positive number (not a bool)."""
    with pytest.raises(InvalidSpecError, match="max_seconds"):
        supervisor(max_seconds=value).check()


@pytest.mark.parametrize(
    "children",
    [
        [Counter],
        [("counter", Counter)],
        [ChildSpec("ok", Counter), {"name": "bad"}],
        [None],
    ],
)
def test_supervisor_check_rejects_children_that_are_not_child_specs(children: list[Any]) -> None:
    """Every child must be a ``ChildSpec``."""
    with pytest.raises(InvalidSpecError, match="ChildSpec"):
        supervisor(children=children).check()


def test_supervisor_check_rejects_children_that_are_not_a_list() -> None:
    """``children`` itself must be a list (or tuple) of specs."""
    with pytest.raises(InvalidSpecError):
        supervisor(children=ChildSpec("c", Counter)).check()


def test_supervisor_check_accepts_a_tuple_of_children() -> None:
    """A tuple of specs is as good as a list: accepted, and every child of it is checked."""
    seen: set[str] = set()
    assert supervisor(children=(ChildSpec("a", Counter), ChildSpec("b", Echo))).check(seen) is None
    assert seen == {"a", "b"}
    with pytest.raises(InvalidSpecError, match="'a'"):
        supervisor(children=(ChildSpec("a", Counter), ChildSpec("a", Echo))).check()


def test_supervisor_check_rejects_a_name_used_twice_among_siblings() -> None:
    """Two children of one supervisor cannot share a name."""
    with pytest.raises(InvalidSpecError, match="'twin'"):
        supervisor(children=[ChildSpec("twin", Counter), ChildSpec("twin", Echo)]).check()


def test_supervisor_check_rejects_a_name_used_twice_across_nested_supervisors() -> None:
    """Names are unique across the whole sandbox tree, nested supervisors included."""
    inner = supervisor(children=[ChildSpec("worker", Echo)])
    outer = supervisor(children=[ChildSpec("worker", Counter), ChildSpec("inner", inner)])
    with pytest.raises(InvalidSpecError, match="'worker'"):
        outer.check()


def test_supervisor_check_rejects_a_supervisor_child_named_like_a_deeper_worker() -> None:
    """A nested supervisor's own name clashes with a worker's name further down, too."""
    deepest = supervisor(children=[ChildSpec("mid", Counter)])
    middle = supervisor(children=[ChildSpec("deep", deepest)])
    with pytest.raises(InvalidSpecError, match="'mid'"):
        supervisor(children=[ChildSpec("mid", middle)]).check()


def test_supervisor_check_rejects_an_invalid_nested_supervisor() -> None:
    """A bad option deep in the tree is found by the root's ``check``."""
    inner = supervisor(strategy="bogus", children=[ChildSpec("w", Counter)])
    with pytest.raises(InvalidSpecError, match="strategy"):
        supervisor(children=[ChildSpec("inner", inner)]).check()


def test_supervisor_check_can_be_called_twice() -> None:
    """``check`` keeps no state between calls (names seen are per call), and changes nothing in the spec."""
    spec = supervisor(children=[ChildSpec("once", Counter)])
    children = list(spec.children)
    assert spec.check() is None
    assert spec.check() is None  # a name remembered from the first call would be "used twice" here
    assert list(spec.children) == children


def test_supervisor_reused_in_two_branches_is_rejected_for_duplicate_names() -> None:
    """The same nested supervisor class used twice would start two actors of the same names."""
    inner = supervisor(children=[ChildSpec("leaf", Counter)])
    outer = supervisor(children=[ChildSpec("left", inner), ChildSpec("right", inner)])
    with pytest.raises(InvalidSpecError, match="'leaf'"):
        outer.check()


def test_supervisor_check_rejects_nan_max_seconds() -> None:
    """A NaN restart window is not a positive number."""
    with pytest.raises(InvalidSpecError, match="max_seconds"):
        supervisor(max_seconds=float("nan")).check()


# -- bare_plugin_supervisor ------------------------------------------------------------


def test_bare_plugin_supervisor_names_its_child_after_the_class_lower_cased() -> None:
    """A bare plugin becomes a one-child supervisor whose child is named ``classname``."""

    class WordCount(Plugin):
        """Counts words."""

    root = bare_plugin_supervisor(WordCount, {"lang": "en"})
    assert issubclass(root, Supervisor)
    assert [(c.name, c.plugin, c.args, c.restart) for c in root.children] == [
        ("wordcount", WordCount, {"lang": "en"}, "permanent")
    ]
    assert root.__module__ == WordCount.__module__
    root.check()


def test_bare_plugin_supervisor_leaves_the_base_supervisor_children_alone() -> None:
    """Wrapping a plugin does not touch ``Supervisor.children`` shared by every spec."""
    bare_plugin_supervisor(Counter, None)
    assert Supervisor.children == []


# -- Plugin defaults -------------------------------------------------------------------


def test_plugin_init_returns_its_args_by_default() -> None:
    """The default ``init`` makes the args the initial state."""
    args = {"start": 3}
    assert Plugin().init(args) is args


def test_plugin_handle_cast_and_handle_info_keep_the_state_by_default() -> None:
    """Unhandled casts and infos leave the state unchanged."""
    state = {"n": 1}
    assert Plugin().handle_cast("msg", state) is state
    assert Plugin().handle_info("tick", state) is state


def test_plugin_code_change_keeps_the_old_state_by_default() -> None:
    """The default migration returns the old state as is."""
    state = {"n": 1}
    assert Plugin().code_change(state, 1, 2) is state


def test_plugin_terminate_does_nothing_by_default() -> None:
    """The default ``terminate`` is a no-op returning ``None``."""
    assert Plugin().terminate("shutdown", {"n": 1}) is None


def test_plugin_handle_call_raises_not_implemented_by_default() -> None:
    """An unexpected call crashes the actor, naming the plugin class and the request."""
    with pytest.raises(NotImplementedError, match=r"Counter.*'ping'"):
        Counter().handle_call("ping", None)


def test_plugin_version_tag_defaults_to_none() -> None:
    """``vsn`` is optional."""
    assert Plugin.vsn is None


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda p: p.name, id="name"),
        pytest.param(lambda p: p.sandbox_id, id="sandbox_id"),
        pytest.param(lambda p: p.call("other", "ping"), id="call"),
        pytest.param(lambda p: p.cast("other", "ping"), id="cast"),
        pytest.param(lambda p: p.send_after(10, "tick"), id="send_after"),
        pytest.param(lambda p: p.stop(), id="stop"),
    ],
)
def test_plugin_services_outside_a_sandbox_raise_a_runtime_error_that_says_so(use: Any) -> None:
    """Services that need a worker actor fail clearly when the plugin is used directly."""
    with pytest.raises(RuntimeError, match="not running in a sandbox"):
        use(Counter())


def test_plugin_reserved_attributes_use_the_ph_prefix() -> None:
    """Host-owned attributes on ``Plugin`` start with ``_ph_``, out of the author's namespace."""
    own = {n for n in vars(Plugin) if n.startswith("_") and not n.startswith("__")}
    assert own and all(n.startswith("_ph_") for n in own)
