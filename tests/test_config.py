"""``HostConfig`` and ``ResourceLimits``: defaults, environment variables, validation, immutability."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest

from plugin_host.config import SECURITY_PROFILES, SUPPORTED_BASES, HostConfig, ResourceLimits
from plugin_host.errors import ConfigError

FIELDS = [a.name for a in attrs.fields(HostConfig)]
LIMIT_FIELDS = [a.name for a in attrs.fields(ResourceLimits)]
TIMEOUT_FIELDS = [
    "call_timeout",
    "compile_timeout",
    "reload_timeout",
    "start_timeout",
    "shutdown_timeout",
    "heartbeat_interval",
    "hang_timeout",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ``PLUGIN_HOST_*`` variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("PLUGIN_HOST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    yield


# Per field: (environment text, the value it must produce, an explicit value differing from it).
ENV_CASES: dict[str, tuple[str, Any, Any]] = {
    "base": ("simpleSystemBase", "simpleSystemBase", "multiprocTCPBase"),
    "admin_port": ("19001", 19001, 19002),
    "bind_address": ("0.0.0.0", "0.0.0.0", "127.0.0.1"),
    "state_dir": ("/tmp/ph-env-state", Path("/tmp/ph-env-state"), Path("/tmp/ph-arg-state")),
    "max_versions": ("7", 7, 3),
    "call_timeout": ("2.5", 2.5, 4.0),
    "compile_timeout": ("11", 11.0, 12.0),
    "reload_timeout": ("12.5", 12.5, 13.0),
    "start_timeout": ("13", 13.0, 14.0),
    "limits": (
        '{"max_actors": 4, "max_memory_mb": 64}',
        ResourceLimits(max_memory_mb=64, max_actors=4),
        ResourceLimits(max_actors=2),
    ),
    "security_profile": ("restricted", "restricted", "permissive"),
    "isolation": ("user", "user", "process"),
    "sandbox_uids": ("70000-70009", (70000, 70009), (61184, 61190)),
    "heartbeat_interval": ("0.5", 0.5, 0.25),
    "hang_timeout": ("20", 20.0, 15.0),
    "shutdown_timeout": ("3", 3.0, 4.0),
    "probation_seconds": ("1.5", 1.5, 2.0),
    "monitor_interval": ("0.5", 0.5, 2.0),
    "node_timeout": ("3.5", 3.5, 20.0),
    "convention_leader": ("10.0.0.1:1900", "10.0.0.1:1900", "10.0.0.2:1901"),
    "capabilities": ('{"gpu": true, "zone": "a"}', {"gpu": True, "zone": "a"}, {"zone": "b"}),
    "find_links": (os.pathsep.join(["/w1", "/w2"]), ("/w1", "/w2"), ("/w3",)),
    "no_index": ("yes", True, False),
    "cookie_file": ("/etc/ph-cookie", Path("/etc/ph-cookie"), Path("/other")),
    "plugin_values": ("plain", "plain", "objects"),
    "control_groups": ("off", "off", "required"),
    "cgroup_root": ("/mnt/cg", Path("/mnt/cg"), Path("/sys/fs/cgroup")),
    "syscall_filter": ("off", "off", "required"),
}


def test_env_cases_cover_every_host_config_field() -> None:
    """The environment table below tests every field ``HostConfig`` has."""
    assert set(ENV_CASES) == set(FIELDS)


def test_host_config_defaults_match_the_design() -> None:
    """With no arguments and a clean environment, the documented defaults apply."""
    config = HostConfig()
    assert config.base == "multiprocTCPBase"
    assert config.admin_port is None
    assert config.bind_address == "127.0.0.1"
    assert config.max_versions is None
    assert config.limits == ResourceLimits()
    assert config.security_profile == "standard"
    assert config.convention_leader is None
    assert config.capabilities == {}
    assert config.find_links == ()
    assert config.no_index is False
    assert config.probation_seconds == 0.0
    assert config.heartbeat_interval < config.hang_timeout
    for name in TIMEOUT_FIELDS:
        assert isinstance(getattr(config, name), float) and getattr(config, name) > 0


def test_host_config_default_state_dir_is_under_xdg_state_home(tmp_path: Path) -> None:
    """``state_dir`` defaults to ``$XDG_STATE_HOME/plugin-host``."""
    assert HostConfig().state_dir == tmp_path / "xdg" / "plugin-host"


def test_host_config_default_state_dir_falls_back_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without ``XDG_STATE_HOME`` the state folder is ``~/.local/state/plugin-host``."""
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert HostConfig().state_dir == tmp_path / "home" / ".local" / "state" / "plugin-host"


def test_state_dir_expands_user_and_accepts_strings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ``state_dir`` string becomes a ``Path`` with ``~`` expanded."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert HostConfig(state_dir="~/s").state_dir == tmp_path / "s"


@pytest.mark.parametrize("field", sorted(ENV_CASES))
def test_every_field_is_read_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    """``PLUGIN_HOST_<FIELD>`` sets each field when no argument is given."""
    text, expected, _ = ENV_CASES[field]
    monkeypatch.setenv(f"PLUGIN_HOST_{field.upper()}", text)
    assert getattr(HostConfig(), field) == expected


@pytest.mark.parametrize("field", sorted(ENV_CASES))
def test_explicit_argument_wins_over_environment_variable(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    """An argument given to ``HostConfig`` beats the environment variable of the same field."""
    text, _, explicit = ENV_CASES[field]
    monkeypatch.setenv(f"PLUGIN_HOST_{field.upper()}", text)
    assert getattr(HostConfig(**{field: explicit}), field) == explicit


def test_explicit_argument_wins_even_over_an_invalid_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad variable is not even parsed when the field is given explicitly."""
    monkeypatch.setenv("PLUGIN_HOST_CALL_TIMEOUT", "abc")
    assert HostConfig(call_timeout=3.0).call_timeout == 3.0


@pytest.mark.parametrize("text", ["", "none", "None"])
def test_optional_fields_read_none_from_the_environment(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """An empty or ``none`` variable leaves an optional field unset."""
    for field in ("admin_port", "max_versions", "convention_leader"):
        monkeypatch.setenv(f"PLUGIN_HOST_{field.upper()}", text)
    config = HostConfig()
    assert (config.admin_port, config.max_versions, config.convention_leader) == (None, None, None)


@pytest.mark.parametrize(
    "text, expected", [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("off", False)]
)
def test_no_index_reads_common_boolean_spellings(monkeypatch: pytest.MonkeyPatch, text: str, expected: bool) -> None:
    """``PLUGIN_HOST_NO_INDEX`` accepts the usual yes/no spellings."""
    monkeypatch.setenv("PLUGIN_HOST_NO_INDEX", text)
    assert HostConfig().no_index is expected


@pytest.mark.parametrize(
    "field, text",
    [
        ("call_timeout", "abc"),
        ("call_timeout", "-1"),
        ("compile_timeout", "0"),
        ("heartbeat_interval", "nan"),
        ("admin_port", "http"),
        ("admin_port", "0"),
        ("admin_port", "70000"),
        ("max_versions", "2.5"),
        ("max_versions", "0"),
        ("base", "multiprocQueueBase"),
        ("bind_address", "localhost"),
        ("security_profile", "paranoid"),
        ("convention_leader", "nohost"),
        ("capabilities", "[1, 2]"),
        ("capabilities", "{not json"),
        ("limits", "[]"),
        ("limits", '{"max_threads": 2}'),
        ("no_index", "maybe"),
        ("probation_seconds", "-1"),
        ("node_timeout", "0"),
        ("capabilities", '{"plugin_host.node": "x"}'),
        ("hang_timeout", "0.5"),
    ],
)
def test_invalid_environment_variable_raises_config_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, field: str, text: str
) -> None:
    """A bad ``PLUGIN_HOST_<FIELD>`` raises ``ConfigError`` whose ``field`` names that field."""
    monkeypatch.setenv(f"PLUGIN_HOST_{field.upper()}", text)
    with pytest.raises(ConfigError) as info:
        HostConfig()
    assert info.value.field == field


def test_invalid_environment_error_message_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error for an unparsable variable quotes the variable and its value."""
    monkeypatch.setenv("PLUGIN_HOST_CALL_TIMEOUT", "abc")
    with pytest.raises(ConfigError, match="PLUGIN_HOST_CALL_TIMEOUT") as info:
        HostConfig()
    assert "abc" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("field", TIMEOUT_FIELDS)
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, None, True, "5", float("nan")])
def test_non_positive_or_non_numeric_timeouts_are_rejected(field: str, value: Any) -> None:
    """Every timeout and interval must be a positive number; the error names the field."""
    with pytest.raises(ConfigError) as info:
        HostConfig(**{field: value})
    assert info.value.field == field


@pytest.mark.parametrize("field", TIMEOUT_FIELDS)
def test_timeouts_accept_ints_and_floats(field: str) -> None:
    """A positive int or float is a valid duration (heartbeat kept below hang timeout)."""
    extra = {"heartbeat_interval": 0.1} if field == "hang_timeout" else {}
    if field == "heartbeat_interval":
        extra = {"hang_timeout": 100.0}
    assert getattr(HostConfig(**{field: 7, **extra}), field) == 7
    assert getattr(HostConfig(**{field: 7.5, **extra}), field) == 7.5


@pytest.mark.parametrize("value", ["multiprocQueueBase", "multiprocUDPBase", "", None, "simplesystembase"])
def test_unsupported_base_is_rejected(value: Any) -> None:
    """Only the supported Thespian bases are accepted."""
    with pytest.raises(ConfigError) as info:
        HostConfig(base=value)
    assert info.value.field == "base"


@pytest.mark.parametrize("base", SUPPORTED_BASES)
def test_supported_bases_are_accepted(base: str) -> None:
    """Each supported base is a valid ``base``."""
    assert HostConfig(base=base).base == base


@pytest.mark.parametrize("value", [0, -1, 65536, 70000, True, False, "8080", 80.0])
def test_bad_admin_port_is_rejected(value: Any) -> None:
    """``admin_port`` must be an int in 1..65535 (not a bool, str or float)."""
    with pytest.raises(ConfigError) as info:
        HostConfig(admin_port=value)
    assert info.value.field == "admin_port"


@pytest.mark.parametrize("value", [1, 1900, 65535, None])
def test_valid_admin_ports_are_accepted(value: Any) -> None:
    """Ports at both ends of the range, and ``None``, are valid."""
    assert HostConfig(admin_port=value).admin_port == value


@pytest.mark.parametrize("value", ["localhost", "256.0.0.1", "::1", "", None, "127.0.0.1 "])
def test_bad_bind_address_is_rejected(value: Any) -> None:
    """``bind_address`` must be an IPv4 address literal."""
    with pytest.raises(ConfigError) as info:
        HostConfig(bind_address=value)
    assert info.value.field == "bind_address"


@pytest.mark.parametrize("value", [2130706433, b"\x7f\x00\x00\x01"], ids=["int", "packed-bytes"])
def test_bind_address_that_is_not_a_string_is_rejected(value: Any) -> None:
    """``bind_address`` is a dotted-quad string; an int or packed bytes is refused."""
    with pytest.raises(ConfigError) as info:
        HostConfig(bind_address=value)
    assert info.value.field == "bind_address"


@pytest.mark.parametrize("value", ["paranoid", "", None, "Standard"])
def test_bad_security_profile_is_rejected(value: Any) -> None:
    """Only the named security profiles are accepted."""
    with pytest.raises(ConfigError) as info:
        HostConfig(security_profile=value)
    assert info.value.field == "security_profile"


@pytest.mark.parametrize("profile", SECURITY_PROFILES)
def test_every_security_profile_is_accepted(profile: str) -> None:
    """``restricted``, ``standard`` and ``permissive`` are valid."""
    assert HostConfig(security_profile=profile).security_profile == profile


@pytest.mark.parametrize("hang, heartbeat", [(1.0, 1.0), (0.5, 1.0), (2, 5)])
def test_hang_timeout_not_longer_than_heartbeat_interval_is_rejected(hang: float, heartbeat: float) -> None:
    """A hang timeout at or below the heartbeat interval would kill healthy actors."""
    with pytest.raises(ConfigError) as info:
        HostConfig(hang_timeout=hang, heartbeat_interval=heartbeat)
    assert info.value.field == "hang_timeout"


@pytest.mark.parametrize("value", ["nohost", "host:", ":1900", "host:port", "host:0", "host:70000", "host:-1"])
def test_bad_convention_leader_is_rejected(value: str) -> None:
    """``convention_leader`` must be ``host:port`` with a valid port."""
    with pytest.raises(ConfigError) as info:
        HostConfig(convention_leader=value)
    assert info.value.field == "convention_leader"


@pytest.mark.parametrize("value", ["10.0.0.1:1900", "leader.example:65535", None])
def test_valid_convention_leader_is_accepted(value: Any) -> None:
    """``host:port`` strings and ``None`` are valid leaders."""
    assert HostConfig(convention_leader=value).convention_leader == value


@pytest.mark.parametrize("value", [None, [], "gpu", [("gpu", True)], {1: "x"}])
def test_capabilities_must_be_a_mapping_with_string_keys(value: Any) -> None:
    """``capabilities`` that are not a dict with str keys raise ``ConfigError``."""
    with pytest.raises(ConfigError) as info:
        HostConfig(capabilities=value)
    assert info.value.field == "capabilities"


@pytest.mark.parametrize("value", [0, -3, 1.5, "3", True])
def test_bad_max_versions_is_rejected(value: Any) -> None:
    """``max_versions`` is a positive int or ``None``."""
    with pytest.raises(ConfigError) as info:
        HostConfig(max_versions=value)
    assert info.value.field == "max_versions"


@pytest.mark.parametrize("value", [-1, -0.1, True, "1", None])
def test_bad_probation_seconds_is_rejected(value: Any) -> None:
    """``probation_seconds`` is a number ``>= 0``."""
    with pytest.raises(ConfigError) as info:
        HostConfig(probation_seconds=value)
    assert info.value.field == "probation_seconds"


def test_state_dir_that_is_not_a_path_is_rejected() -> None:
    """A ``state_dir`` that cannot become a path raises ``ConfigError`` naming it."""
    with pytest.raises(ConfigError) as info:
        HostConfig(state_dir=42)
    assert info.value.field == "state_dir"


def test_limits_given_as_a_mapping_become_resource_limits() -> None:
    """``HostConfig(limits={...})`` converts the mapping into ``ResourceLimits``."""
    assert HostConfig(limits={"max_actors": 3}).limits == ResourceLimits(max_actors=3)


def test_limits_with_an_invalid_value_are_rejected() -> None:
    """``HostConfig(limits={...})`` with a bad limit raises ``ConfigError`` at construction."""
    with pytest.raises(ConfigError, match="max_actors"):
        HostConfig(limits={"max_actors": -1})


def test_invalid_limit_value_names_the_limits_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad limit given to ``HostConfig`` names the HostConfig field ``limits``, from args or environment."""
    with pytest.raises(ConfigError) as info:
        HostConfig(limits={"max_actors": -1})
    assert info.value.field == "limits"
    monkeypatch.setenv("PLUGIN_HOST_LIMITS", '{"max_actors": -1}')
    with pytest.raises(ConfigError) as info:
        HostConfig()
    assert info.value.field == "limits"


def test_limits_of_the_wrong_type_are_rejected() -> None:
    """``limits`` that is neither a mapping nor ``ResourceLimits`` raises ``ConfigError``."""
    with pytest.raises(ConfigError) as info:
        HostConfig(limits=[("max_actors", 3)])
    assert info.value.field == "limits"


@pytest.mark.parametrize("field", LIMIT_FIELDS)
@pytest.mark.parametrize("value", [0, -1, -0.5, True, False, "10", [1], float("nan")])
def test_resource_limits_reject_non_positive_and_wrongly_typed_values(field: str, value: Any) -> None:
    """Every limit is a positive number (or ``None``); the error names the limit."""
    with pytest.raises(ConfigError) as info:
        ResourceLimits(**{field: value})
    assert info.value.field == field


@pytest.mark.parametrize("field", ["max_actors", "max_mailbox"])
def test_count_limits_reject_fractions(field: str) -> None:
    """``max_actors`` and ``max_mailbox`` are counts: a float is refused."""
    with pytest.raises(ConfigError) as info:
        ResourceLimits(**{field: 2.5})
    assert info.value.field == field


def test_resource_limits_default_to_unlimited() -> None:
    """A bare ``ResourceLimits()`` limits nothing."""
    assert all(getattr(ResourceLimits(), name) is None for name in LIMIT_FIELDS)


def test_resource_limits_accept_positive_values() -> None:
    """Positive ints and floats are valid limits."""
    limits = ResourceLimits(
        max_memory_mb=128.5, max_cpu_seconds=2, call_cpu_budget_ms=50, max_actors=4, max_mailbox=100
    )
    assert (limits.max_memory_mb, limits.max_actors) == (128.5, 4)


def test_resource_limits_from_mapping_rejects_unknown_keys() -> None:
    """An unknown key in a limits mapping raises ``ConfigError`` naming ``limits`` and the key."""
    with pytest.raises(ConfigError, match="max_threads") as info:
        ResourceLimits.from_mapping({"max_actors": 2, "max_threads": 8})
    assert info.value.field == "limits"


def test_resource_limits_from_mapping_validates_values() -> None:
    """Values in the mapping go through the same validation as the constructor."""
    with pytest.raises(ConfigError) as info:
        ResourceLimits.from_mapping({"max_memory_mb": -5})
    assert info.value.field == "max_memory_mb"


@pytest.mark.parametrize("value", ["max_actors=2", 3, ["max_actors"]])
def test_resource_limits_from_mapping_rejects_non_mappings(value: Any) -> None:
    """Only a dict, ``ResourceLimits`` or ``None`` can become limits."""
    with pytest.raises(ConfigError) as info:
        ResourceLimits.from_mapping(value)
    assert info.value.field == "limits"


def test_resource_limits_from_mapping_passes_none_and_instances_through() -> None:
    """``None`` gives unlimited limits; an instance is returned unchanged."""
    limits = ResourceLimits(max_actors=2)
    assert ResourceLimits.from_mapping(None) == ResourceLimits()
    assert ResourceLimits.from_mapping(limits) is limits


def test_limits_environment_variable_holds_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PLUGIN_HOST_LIMITS`` is a JSON object of limits."""
    monkeypatch.setenv("PLUGIN_HOST_LIMITS", json.dumps({"max_mailbox": 10, "call_cpu_budget_ms": 250.0}))
    assert HostConfig().limits == ResourceLimits(max_mailbox=10, call_cpu_budget_ms=250.0)


def test_host_config_is_frozen() -> None:
    """Assigning to a field of a ``HostConfig`` raises ``FrozenInstanceError``."""
    config = HostConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.call_timeout = 1.0  # type: ignore[misc]


def test_resource_limits_are_frozen() -> None:
    """Assigning to a limit raises ``FrozenInstanceError``."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ResourceLimits().max_actors = 3  # type: ignore[misc]


def test_host_config_evolve_revalidates() -> None:
    """``attrs.evolve`` gives an updated copy and still validates."""
    config = HostConfig()
    assert attrs.evolve(config, call_timeout=2.0).call_timeout == 2.0
    with pytest.raises(ConfigError):
        attrs.evolve(config, call_timeout=-2.0)


def test_host_config_pickles_round_trip_equal() -> None:
    """A fully populated ``HostConfig`` survives pickling and compares equal."""
    config = HostConfig(
        base="simpleSystemBase",
        admin_port=1901,
        limits={"max_actors": 3},
        capabilities={"gpu": True},
        find_links=["/w"],
        convention_leader="h:1",
    )
    restored = pickle.loads(pickle.dumps(config))
    assert restored == config
    assert isinstance(restored.state_dir, Path)


def test_host_config_pickle_does_not_reread_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpickling keeps the pickled values even when the environment says otherwise."""
    data = pickle.dumps(HostConfig(call_timeout=3.0))
    monkeypatch.setenv("PLUGIN_HOST_CALL_TIMEOUT", "abc")
    assert pickle.loads(data).call_timeout == 3.0


def test_resource_limits_pickle_and_hash_by_value() -> None:
    """Limits pickle round-trip and equal limits hash equally."""
    limits = ResourceLimits(max_memory_mb=64, max_actors=2)
    restored = pickle.loads(pickle.dumps(limits))
    assert restored == limits and hash(restored) == hash(limits)


def test_host_config_is_hashable() -> None:
    """A config (with its unhashable capabilities dict) can still be hashed and used as a key."""
    assert hash(HostConfig(capabilities={"a": 1})) == hash(HostConfig(capabilities={"a": 1}))


def test_nan_probation_seconds_is_rejected() -> None:
    """A NaN probation window is not a duration and raises ``ConfigError``."""
    with pytest.raises(ConfigError) as info:
        HostConfig(probation_seconds=float("nan"))
    assert info.value.field == "probation_seconds"


@pytest.mark.parametrize("value", ["false", None], ids=["str-false", "none"])
def test_explicit_no_index_must_be_a_bool(value: Any) -> None:
    """``no_index`` given as an argument must be a real ``bool``."""
    with pytest.raises(ConfigError) as info:
        HostConfig(no_index=value)
    assert info.value.field == "no_index"


@pytest.mark.parametrize("value", [None, [1], [None]], ids=["none", "int-item", "none-item"])
def test_find_links_that_are_not_strings_are_rejected(value: Any) -> None:
    """``find_links`` must be a sequence of folder paths or URLs (strings)."""
    with pytest.raises(ConfigError) as info:
        HostConfig(find_links=value)
    assert info.value.field == "find_links"


def test_find_links_given_as_one_string_is_not_split_into_characters() -> None:
    """A single string is either refused or taken as one location, never split into characters."""
    try:
        config = HostConfig(find_links="/wheels")
    except ConfigError as error:
        assert error.field == "find_links"
    else:
        assert config.find_links == ("/wheels",)


def test_node_timeout_must_leave_the_admin_two_ticks() -> None:
    """A member gets at least two of the admin's ticks (min(1 s, heartbeat_interval)) to answer a ping."""
    with pytest.raises(ConfigError) as info:
        HostConfig(node_timeout=2.0)
    assert info.value.field == "node_timeout"
    assert HostConfig(node_timeout=2.0, heartbeat_interval=0.5).node_timeout == 2.0


def test_a_default_follows_the_fields_that_were_set_and_only_explicit_values_contradict() -> None:
    """``heartbeat_interval=30`` alone is valid: the default ``hang_timeout`` becomes ten heartbeats (it was
    a fixed 10 s, shorter than the heartbeat, and the config raised). Two explicit values that contradict
    each other still raise ConfigError naming the field; the default is 10 s for short heartbeats."""
    assert HostConfig(heartbeat_interval=30).hang_timeout == 300
    assert HostConfig(heartbeat_interval=0.2).hang_timeout == HostConfig().hang_timeout == 10.0
    with pytest.raises(ConfigError) as caught:
        HostConfig(heartbeat_interval=30, hang_timeout=20)
    assert caught.value.field == "hang_timeout"


@pytest.mark.parametrize("field", ["control_groups", "syscall_filter"])
@pytest.mark.parametrize("value", ["sometimes", "", None, True, False, "AUTO", "OFF", ["auto"]])
def test_a_mode_field_takes_auto_off_or_required_only(field: str, value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``control_groups`` and ``syscall_filter`` are each one of ``auto`` (the default), ``off``, ``required``:
    anything else, as an argument or from ``PLUGIN_HOST_<FIELD>``, is a ``ConfigError`` naming the field."""
    with pytest.raises(ConfigError) as info:
        HostConfig(**{field: value})
    assert info.value.field == field
    if isinstance(value, str):
        monkeypatch.setenv(f"PLUGIN_HOST_{field.upper()}", value)
        with pytest.raises(ConfigError) as info:
            HostConfig()
        assert info.value.field == field
        monkeypatch.delenv(f"PLUGIN_HOST_{field.upper()}")
    assert getattr(HostConfig(), field) == "auto"
    assert getattr(HostConfig(**{field: "required"}), field) == "required"


def test_max_cpus_and_max_tasks_are_validated_limits() -> None:
    """``max_cpus`` is a positive number of CPUs (a fraction allowed), ``max_tasks`` a positive count."""
    assert ResourceLimits(max_cpus=0.5, max_tasks=64).max_cpus == 0.5
    with pytest.raises(ConfigError) as info:
        ResourceLimits(max_tasks=2.5)  # type: ignore[arg-type]
    assert info.value.field == "max_tasks"
