"""Host configuration: :class:`HostConfig` and per-sandbox :class:`ResourceLimits`.

Both are frozen attrs classes validated at construction (a bad value raises
:class:`~plugin_host.errors.ConfigError` naming the field).  Every ``HostConfig`` field not
given explicitly is read from the environment variable ``PLUGIN_HOST_<FIELD>`` when set
(explicit arguments win over the environment, which wins over the default).  Durations are
seconds as floats unless the name carries another unit.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Callable

import attrs

from .errors import ConfigError

__all__ = [
    "HostConfig",
    "ResourceLimits",
    "SUPPORTED_BASES",
    "SECURITY_PROFILES",
    "ISOLATION_MODES",
    "SANDBOX_UIDS",
    "check_choice",
    "check_isolation",
    "PLUGIN_VALUES",
    "CONTROL_GROUPS",
    "SYSCALL_FILTERS",
    "NODE_CAPABILITY",
    "VERSION_CAPABILITY",
    "PYTHON_CAPABILITY",
    "node_name",
    "system_capabilities",
]

SUPPORTED_BASES = ("multiprocTCPBase", "simpleSystemBase")
"""Thespian bases a host may run on; the queue and UDP bases lose crashes or big messages."""

SECURITY_PROFILES = ("restricted", "standard", "permissive")
"""Names of the security profiles, strictest first."""

ISOLATION_MODES = ("process", "user")
"""What ``isolation`` accepts: ``"process"`` (a process group of the host's own uid) or ``"user"`` (a uid of
the sandbox's own, see ``HostConfig.isolation``)."""

SANDBOX_UIDS = (61184, 65519)
"""The default ``HostConfig.sandbox_uids``: systemd's ``DynamicUser`` range."""

RESERVED_CAPABILITY_PREFIX = "plugin_host."
NODE_CAPABILITY = "plugin_host.node"
"""Capability naming the actor system (``host:port`` of its admin), unique in a convention."""
VERSION_CAPABILITY = "plugin_host.version"
"""Capability: the plugin-host version a system runs (sandboxes go only to the same version)."""
PYTHON_CAPABILITY = "plugin_host.python"
"""Capability: ``major.minor`` of the system's Python (cloudpickle is only safe between equal ones)."""


def node_name(bind_address: str, port: int) -> str:
    """How a system is named in a convention: the address others reach its admin on, and the port."""
    if bind_address in ("", "0.0.0.0"):
        import socket

        bind_address = socket.gethostname()
    return f"{bind_address}:{port}"


def system_capabilities(config: HostConfig, port: int) -> dict[str, Any]:
    """The capabilities a system of ``config`` offers: the user's, plus the reserved ones."""
    import sys

    from . import __version__

    return {
        **config.capabilities,
        NODE_CAPABILITY: node_name(config.bind_address, port),
        VERSION_CAPABILITY: __version__,
        PYTHON_CAPABILITY: "%d.%d" % sys.version_info[:2],
    }


_ENV_PREFIX = "PLUGIN_HOST_"


def _positive(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(
            f"{attribute.name} must be a positive number or None, got {value!r}",
            field=attribute.name,
        )


def _positive_required(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        raise ConfigError(f"{attribute.name} must be a positive number", field=attribute.name)
    _positive(instance, attribute, value)


def _positive_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{attribute.name} must be a positive integer or None, got {value!r}",
            field=attribute.name,
        )


@attrs.frozen
class ResourceLimits:
    """Per-sandbox resource limits; ``None`` means unlimited.

    Validated at construction (types and signs); whether this machine can apply them is
    checked where the sandbox starts, and one that cannot be applied fails
    ``create_sandbox`` with ``ConfigError`` (``max_memory_mb`` under 32, a limit above the
    host's own hard rlimit).  Enforcement (hard rlimits in every process of the sandbox, set
    before its plugin code runs, and the monitor actor): see ``actors._process.limits``.
    """

    max_memory_mb: float | None = attrs.field(default=None, validator=_positive)
    """Address space per process of the sandbox, in MiB above the sandbox root's size at its start
    (a hard RLIMIT_AS every process inherits), and the resident growth of its processes together (the
    monitor); with a control group, also a kernel backstop for the group: its charge once the tree runs
    plus this plus 64 MiB.  At least 32."""
    max_cpu_seconds: float | None = attrs.field(default=None, validator=_positive)
    """Lifetime CPU seconds (the runtime's own work included): of the whole sandbox where it has a control
    group (its processes together, dead ones included, from each start of its root; past it the sandbox
    ends ``failed``), else of each of its processes; a hard RLIMIT_CPU per process either way."""
    call_cpu_budget_ms: float | None = attrs.field(default=None, validator=_positive)
    """CPU milliseconds one callback may burn before it is interrupted."""
    max_actors: int | None = attrs.field(default=None, validator=_positive_int)
    """Actors a sandbox may run at once."""
    max_mailbox: int | None = attrs.field(default=None, validator=_positive_int)
    """Messages that may wait for one actor before calls fail fast."""
    max_cpus: float | None = attrs.field(default=None, validator=_positive)
    """CPUs' worth of time the whole sandbox may use at once (a CPU quota on its control group: 0.5 is half
    of one CPU); needs a control group (``HostConfig.control_groups``), else ``create_sandbox`` fails with
    ``ConfigError``."""
    max_tasks: int | None = attrs.field(default=None, validator=_positive_int)
    """Processes and threads the whole sandbox may have at once (``pids.max`` of its control group: a fork
    bomb gets ``EAGAIN``).  ``None``: derived from ``max_actors`` when that is set (see
    ``actors._admin.groups.tasks_for``), else no limit.  Without a control group it is not applied."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | ResourceLimits | None) -> ResourceLimits:
        """Build limits from a mapping (as found in JSON or the environment).

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        if data is None:
            return cls()
        if isinstance(data, ResourceLimits):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"limits must be a mapping, got {type(data).__name__}", field="limits")
        unknown = set(data) - {a.name for a in attrs.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown limit(s): {', '.join(sorted(map(repr, unknown)))}", field="limits")
        return cls(**data)


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "plugin-host"


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def _parse_optional_str(text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_json_mapping(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _parse_paths(text: str) -> tuple[str, ...]:
    if text.lstrip().startswith("["):  # a JSON list: the way to pass URLs, which contain the separator
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError("expected a JSON list of strings")
        return tuple(item for item in items if item)
    return tuple(p for p in text.split(os.pathsep) if p)


def _number(value: object) -> float:
    """``value`` when it is a number, else 0 (its own validator reports it)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _from_env(
    name: str,
    parse: Callable[[str], Any],
    default: Callable[[], Any],
    derived: Callable[[HostConfig], Any] | None = None,
) -> Any:
    """An attrs default that reads ``PLUGIN_HOST_<NAME>`` first; ``derived(instance)``, when given,
    makes the default follow the fields set before it (``default`` is then unused)."""

    def factory(instance: HostConfig) -> Any:
        variable = _ENV_PREFIX + name.upper()
        raw = os.environ.get(variable)
        if raw is None:
            return derived(instance) if derived is not None else default()
        try:
            return parse(raw)
        except (ValueError, TypeError, ConfigError) as exc:
            raise ConfigError(f"{variable}={raw!r} is not a valid {name}: {exc}", field=name) from None

    return attrs.Factory(factory, takes_self=True)


def _check_base(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value not in SUPPORTED_BASES:
        raise ConfigError(
            f"base must be one of {', '.join(SUPPORTED_BASES)}, got {value!r} (multiprocQueueBase "
            "misses killed children and multiprocUDPBase caps messages at 64 KiB)",
            field="base",
        )


def _check_port(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"admin_port must be an integer in 1..65535 or None, got {value!r}", field="admin_port")


def _check_address(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{attribute.name} must be an IPv4 address string, got {value!r}", field=attribute.name)
    try:
        ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{attribute.name} must be an IPv4 address, got {value!r}", field=attribute.name) from None


def check_choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices`` (the values ``field`` accepts).

    Raises:
        ConfigError: it is not (``field=field``).
    """
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{field} must be one of {', '.join(choices)}, got {value!r}", field=field)
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[object, attrs.Attribute, object], None]:
    """An attrs validator: the field's value is one of ``choices`` (:func:`check_choice`)."""

    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        check_choice(attribute.name, value, choices)

    return check


def check_isolation(value: object) -> str:
    """``value`` if it is one of :data:`ISOLATION_MODES`.

    Raises:
        ConfigError: it is not (``field="isolation"``).
    """
    return check_choice("isolation", value, ISOLATION_MODES)


def _to_uid_range(value: Any) -> tuple[int, int]:
    """``(first, last)`` from a pair of ints, or from ``"first-last"`` (the environment variable)."""
    if isinstance(value, str):
        parts = value.split("-")
        pair: Any = [int(p) if p.isascii() and p.isdigit() else None for p in parts] if len(parts) == 2 else None
    else:
        pair = list(value) if isinstance(value, (list, tuple)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in pair):
        raise ConfigError(f"sandbox_uids must be (first, last), got {value!r}", field="sandbox_uids")
    first, last = pair
    if not 0 < first <= last < 2**31 - 1:
        raise ConfigError(
            f"sandbox_uids must be two uids with 0 < first <= last < 2**31 - 1, got {value!r}", field="sandbox_uids"
        )
    return first, last


def _check_leader(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    host, _, port = str(value).rpartition(":")
    # isdigit() alone takes "²" (int() then raises ValueError) and other scripts' digits.
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"convention_leader must be 'host:port', got {value!r}", field="convention_leader")


def _check_mapping(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{attribute.name} must be a mapping with string keys", field=attribute.name)


def _check_capabilities(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _check_mapping(instance, attribute, value)
    assert isinstance(value, dict)  # _check_mapping raised otherwise
    reserved = sorted(k for k in value if k.startswith(RESERVED_CAPABILITY_PREFIX))
    if reserved:
        raise ConfigError(
            f"capabilities {reserved} are reserved: plugin-host sets the "
            f"{RESERVED_CAPABILITY_PREFIX}* capabilities itself",
            field=attribute.name,
        )


def _to_path(value: Any, field: str = "state_dir") -> Path:
    try:
        path = Path(value).expanduser()
        os.fspath(path).encode()  # a NUL or an unencodable name fails here, not at first use
        if "\0" in os.fspath(path):
            raise ValueError("embedded null byte")
        return path
    except (TypeError, ValueError, UnicodeError, RuntimeError):  # RuntimeError: "~nosuchuser"
        raise ConfigError(f"{field} must be a path, got {value!r}", field=field) from None


def _to_limits(value: Any) -> ResourceLimits:
    try:
        return ResourceLimits.from_mapping(value)
    except ConfigError as exc:
        raise ConfigError(f"limits: {exc} (argument or {_ENV_PREFIX}LIMITS)", field="limits") from None


def _to_links(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"find_links must be a list of folders or URLs, got {value!r}", field="find_links")
    return tuple(value)


def _to_cookie_path(value: Any) -> Path | None:
    return None if value is None else _to_path(value, "cookie_file")


PLUGIN_VALUES = ("objects", "plain")
"""What ``HostConfig.plugin_values`` accepts."""


CONTROL_GROUPS = ("auto", "off", "required")
"""What ``HostConfig.control_groups`` accepts."""


SYSCALL_FILTERS = ("auto", "off", "required")
"""What ``HostConfig.syscall_filter`` accepts."""


def _to_cgroup_root(value: Any) -> Path:
    return _to_path(value, "cgroup_root")


def _check_bool(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be True or False, got {value!r}", field=attribute.name)


@attrs.frozen
class HostConfig:
    """Everything a :class:`~plugin_host.Host` needs to know; all fields are optional.

    Raises:
        ConfigError: a field (or its ``PLUGIN_HOST_<FIELD>`` variable) is invalid.
    """

    base: str = attrs.field(default=_from_env("base", str, lambda: "multiprocTCPBase"), validator=_check_base)
    """Thespian system base: ``multiprocTCPBase`` (isolation) or ``simpleSystemBase`` (fast, in-process)."""
    admin_port: int | None = attrs.field(
        default=_from_env("admin_port", _parse_optional_int, lambda: None), validator=_check_port
    )
    """Admin TCP port; ``None`` picks a free one (the host refuses a port already in use)."""
    bind_address: str = attrs.field(
        default=_from_env("bind_address", str, lambda: "127.0.0.1"), validator=_check_address
    )
    """The only address any socket of the actor system binds to."""
    state_dir: Path = attrs.field(default=_from_env("state_dir", Path, _default_state_dir), converter=_to_path)
    """Where the registry, caches and logs live (default: the XDG state folder). It must be this
    user's alone (see :mod:`plugin_host._store.statedir`); a running host's ``config`` holds its real
    path, symlinks resolved."""
    max_versions: int | None = attrs.field(
        default=_from_env("max_versions", _parse_optional_int, lambda: None), validator=_positive_int
    )
    """Versions kept per module; ``None`` keeps all (the current one is never pruned)."""
    call_timeout: float = attrs.field(
        default=_from_env("call_timeout", float, lambda: 10.0), validator=_positive_required
    )
    """Default timeout of ``call`` and ``run`` (``math.inf``: no limit)."""
    compile_timeout: float = attrs.field(
        default=_from_env("compile_timeout", float, lambda: 60.0), validator=_positive_required
    )
    """Default timeout of an isolated compilation."""
    reload_timeout: float = attrs.field(
        default=_from_env("reload_timeout", float, lambda: 30.0), validator=_positive_required
    )
    """Default timeout of a hot reload across a sandbox."""
    start_timeout: float = attrs.field(
        default=_from_env("start_timeout", float, lambda: 30.0), validator=_positive_required
    )
    """How long a sandbox (imports and every ``init``) may take to start."""
    limits: ResourceLimits = attrs.field(
        default=_from_env("limits", _parse_json_mapping, ResourceLimits), converter=_to_limits
    )
    """Default :class:`ResourceLimits` of a sandbox (the environment variable holds JSON)."""
    security_profile: str = attrs.field(
        default=_from_env("security_profile", str, lambda: "standard"), validator=_one_of(SECURITY_PROFILES)
    )
    """Default security profile: ``restricted``, ``standard`` or ``permissive``."""
    isolation: str = attrs.field(
        default=_from_env("isolation", str, lambda: "process"), validator=_one_of(ISOLATION_MODES)
    )
    """Default isolation of a sandbox (``create_sandbox(isolation=...)`` overrides it): ``"process"``, its own
    process group and the host's uid; ``"user"``, a uid of its own from ``sandbox_uids``, which every process
    of the sandbox runs as (see ``actors._process.identity``).  ``"user"`` needs a host running as root (or
    with ``CAP_SETUID``, ``CAP_SETGID`` and ``CAP_CHOWN``): without, ``create_sandbox`` raises
    ``ConfigError``."""
    sandbox_uids: tuple[int, int] = attrs.field(
        default=_from_env("sandbox_uids", _to_uid_range, lambda: SANDBOX_UIDS), converter=_to_uid_range
    )
    """The uids (first, last; each also the sandbox's gid) given to ``isolation="user"`` sandboxes, one per
    sandbox, never one a passwd or group entry names, a running process holds or another host holds.  The
    environment variable holds ``first-last``."""
    heartbeat_interval: float = attrs.field(
        default=_from_env("heartbeat_interval", float, lambda: 1.0), validator=_positive_required
    )
    """How often supervisors ping their children."""
    hang_timeout: float = attrs.field(
        default=_from_env(
            "hang_timeout",
            float,
            lambda: 10.0,
            derived=lambda config: max(10.0, 10 * _number(config.heartbeat_interval)),
        ),
        validator=_positive_required,
    )
    """A child silent for this long (busy in a callback, or hung) is killed and restarted. Default: 10 s,
    or ten heartbeats when ``heartbeat_interval`` is longer than 1 s (a default never contradicts a
    field that was set; only two explicit values can)."""
    shutdown_timeout: float = attrs.field(
        default=_from_env("shutdown_timeout", float, lambda: 5.0), validator=_positive_required
    )
    """How long ``terminate`` may take when an actor is stopped before it is killed."""
    monitor_interval: float = attrs.field(
        default=_from_env("monitor_interval", float, lambda: 1.0), validator=_positive_required
    )
    """How often the monitor samples every sandbox process (and enforces memory and CPU limits)."""
    probation_seconds: float = attrs.field(default=_from_env("probation_seconds", float, lambda: 0.0))
    """After a reload, a crash within this window rolls back automatically (0 disables)."""
    convention_leader: str | None = attrs.field(
        default=_from_env("convention_leader", _parse_optional_str, lambda: None), validator=_check_leader
    )
    """``host:port`` of a convention leader to join, or ``None`` to stand alone."""
    capabilities: dict[str, Any] = attrs.field(
        default=_from_env("capabilities", _parse_json_mapping, dict), validator=_check_capabilities, hash=False
    )
    """Capabilities this system offers to a convention (``plugin_host.*`` names are reserved)."""
    node_timeout: float = attrs.field(
        default=_from_env("node_timeout", float, lambda: 10.0), validator=_positive_required
    )
    """How long a sandbox on another system of the convention may stay silent before it is ``lost``."""
    find_links: tuple[str, ...] = attrs.field(default=_from_env("find_links", _parse_paths, tuple), converter=_to_links)
    """Folders or URLs of wheels for installing sandbox requirements offline."""
    no_index: bool = attrs.field(default=_from_env("no_index", _parse_bool, lambda: False), validator=_check_bool)
    """Install sandbox requirements from ``find_links`` only."""
    cookie_file: Path | None = attrs.field(
        default=_from_env("cookie_file", _parse_optional_str, lambda: None), converter=_to_cookie_path
    )
    """The credential every frame of the actor system is signed with (default ``state_dir/cookie``, made
    ``0600`` at the first start).  Operators need to read it; convention members share it."""
    plugin_values: str = attrs.field(
        default=_from_env("plugin_values", str, lambda: "objects"), validator=_one_of(PLUGIN_VALUES)
    )
    """What ``call`` and ``run`` take from a plugin: ``"objects"`` (any value, plugin-defined classes
    included, rebuilt with cloudpickle in this process, which runs code: trust the plugin), or ``"plain"``
    (builtin data only; anything else raises ``PluginError``): for plugins you do not trust."""

    control_groups: str = attrs.field(
        default=_from_env("control_groups", str, lambda: "auto"), validator=_one_of(CONTROL_GROUPS)
    )
    """A control group per sandbox (cgroup v1 ``memory``, ``pids``, ``cpu``, ``cpuacct``, ``freezer``, or
    cgroup v2 with ``memory``, ``pids``, ``cpu``; see ``plugin_host._cgroup``): every process of the sandbox
    is in it, whatever it forks or detaches, ``max_cpu_seconds`` counts the whole sandbox's CPU, ``max_cpus``
    and ``max_tasks`` apply, and destroy and ``Host.close`` empty it.  ``"auto"``: where this machine allows
    them (root, the hierarchies mounted and writable, the ``memory`` and ``pids`` controllers there), else one
    warning in the log and rlimits plus the monitor only; ``"off"``: never; ``"required"``: ``Host`` fails to
    start with ``ConfigError`` (and the reason) where they cannot be made.
    Local sandboxes only: one on another system of a convention runs without.  The host's compiles give each
    validation a group of its own the same way (``pids.max`` and memory: see ``compiler.compile_sandbox``)."""
    cgroup_root: Path = attrs.field(
        default=_from_env("cgroup_root", Path, lambda: Path("/sys/fs/cgroup")), converter=_to_cgroup_root
    )
    """Where control groups are mounted: the cgroup v2 hierarchy (``cgroup.controllers`` at its root: v2
    groups), else one folder per cgroup v1 controller (v1 groups, a hybrid machine's too)."""
    syscall_filter: str = attrs.field(
        default=_from_env("syscall_filter", str, lambda: "auto"), validator=_one_of(SYSCALL_FILTERS)
    )
    """A seccomp filter in every process of a sandbox (see ``actors._process.syscalls``): no namespaces, no
    mounts, no ``ptrace`` and the other calls container runtimes refuse, so that a plugin cannot lift its control
    group's limits through a user namespace of its own.  ``"auto"``: where libseccomp can be loaded (through
    ``pyseccomp``), else one warning in the log; ``"off"``: never; ``"required"``: ``Host`` fails to start with
    ``ConfigError`` (and the reason) where it cannot filter.  A sandbox on another system of a convention gets the
    host's setting, applied there."""

    @property
    def credential_file(self) -> Path:
        """Where the credential is: ``cookie_file``, else ``state_dir/cookie``."""
        return self.cookie_file if self.cookie_file is not None else self.state_dir / "cookie"

    @probation_seconds.validator
    def _check_probation(self, attribute: attrs.Attribute, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"probation_seconds must be >= 0, got {value!r}", field="probation_seconds")

    @node_timeout.validator
    def _check_node_timeout(self, attribute: attrs.Attribute, value: object) -> None:
        tick = min(1.0, self.heartbeat_interval)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 2 * tick:
            raise ConfigError(
                f"node_timeout ({value}) must be more than twice the admin's tick "
                f"(min(1 s, heartbeat_interval) = {tick} s): a member needs a chance to answer",
                field="node_timeout",
            )

    @hang_timeout.validator
    def _check_hang(self, attribute: attrs.Attribute, value: object) -> None:
        if isinstance(value, (int, float)) and value <= self.heartbeat_interval:
            raise ConfigError(
                f"hang_timeout ({value}) must be longer than heartbeat_interval ({self.heartbeat_interval})",
                field="hang_timeout",
            )
