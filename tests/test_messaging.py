"""Messaging between actors of a sandbox: Plugin.call, Plugin.cast, send_after, handle_info."""

from __future__ import annotations

import os

import pytest
from conftest import eventually

from plugin_host import Host
from plugin_host.errors import PluginError

SIBLINGS = os.path.join(os.path.dirname(__file__), "plugins", "siblings")


@pytest.fixture
def pair(host: Host) -> Host:
    host.create_sandbox("p", "pair:Pair", sandbox_path=SIBLINGS)
    return host


def test_plugin_call_reaches_a_sibling_and_returns_its_reply(pair: Host) -> None:
    """self.call blocks for the sibling's reply, like gen_server:call."""
    assert pair.call("p", "client", ("via_call", "x")) == 1
    assert pair.call("p", "client", ("via_call", "y")) == 2
    assert pair.call("p", "store", "items") == ["x", "y"]


def test_plugin_cast_is_delivered_in_order(pair: Host) -> None:
    """self.cast sends one-way messages; they arrive in the order sent."""
    for value in range(5):
        assert pair.call("p", "client", ("via_cast", value)) == "sent"
    assert eventually(lambda: pair.call("p", "store", "items") == [0, 1, 2, 3, 4])


def test_plugin_call_to_an_unknown_name_crashes_the_caller_with_actor_not_found(pair: Host) -> None:
    """Calling a name that does not exist raises ActorNotFoundError inside the plugin."""
    with pytest.raises(PluginError, match="nobody") as caught:
        pair.call("p", "client", ("call_missing", None))
    assert caught.value.type_name == "plugin_host.errors.ActorNotFoundError"


def test_plugin_call_to_a_crashing_sibling_raises_plugin_error_in_the_caller(pair: Host) -> None:
    """The sibling's crash travels back as PluginError (and crashes the caller too, unless caught)."""
    with pytest.raises(PluginError, match="store crashed"):
        pair.call("p", "client", ("call_crash", None))
    assert pair.call("p", "client", ("via_call", "after")) == 1


def test_plugin_call_times_out(pair: Host) -> None:
    """A sibling that does not answer makes self.call raise CallTimeoutError after its timeout."""
    with pytest.raises(PluginError, match="CallTimeoutError|no reply"):
        pair.call("p", "client", ("call_timeout", 0.3))


def test_send_after_delivers_to_handle_info(pair: Host) -> None:
    """A timer set with send_after arrives at handle_info."""
    assert pair.call("p", "store", ("ping_me_in", 50)) == "scheduled"
    assert eventually(lambda: pair.call("p", "store", "infos") == ["tick"])


def test_host_cast_reaches_handle_cast(pair: Host) -> None:
    """Host.cast goes through the admin to the actor's handle_cast."""
    pair.cast("p", "store", "from-host")
    assert eventually(lambda: pair.call("p", "store", "items") == ["from-host"])


def test_plugin_knows_its_name_and_sandbox(pair: Host) -> None:
    """self.name and self.sandbox_id are the actor's identity."""
    assert pair.call("p", "client", ("whoami", None)) == ("client", "p")


def test_a_call_after_casts_never_overtakes_them(pair: Host) -> None:
    """Casts and calls from one host to one actor arrive in the order sent (as in OTP)."""
    for round_ in range(3):
        for value in range(5):
            pair.cast("p", "store", (round_, value))
        assert pair.call("p", "store", "items")[-5:] == [(round_, v) for v in range(5)]


def test_calling_a_supervisor_is_a_bad_request(host: Host) -> None:
    """Names reach every actor of the tree, but supervisors answer calls with a clear error."""
    from plugin_host.errors import BadRequestError

    host.create_sandbox(
        "t", "trees:Nested", sandbox_path=os.path.join(os.path.dirname(__file__), "plugins", "strategies")
    )
    with pytest.raises(BadRequestError, match="supervisor"):
        host.call("t", "inner", "ping")
