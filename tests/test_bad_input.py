"""Bad input, property-based: whatever reaches the admin actor or the ``Host`` API, the answer is
``Failed(...)`` or a documented ``PluginHostError``, the admin keeps answering, and nothing is
written outside ``state_dir``.

One host serves the whole module (starting one per example would take the whole time budget);
its processes name the module's own temporary folder, and it is closed at module teardown, so
the per-test leak guard of ``conftest.py`` stays meaningful.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
from conftest import Scene, sample
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from plugin_host import Host, HostConfig, compiler
from plugin_host import messages as msgs
from plugin_host.config import PLUGIN_VALUES, SECURITY_PROFILES, SUPPORTED_BASES, ResourceLimits
from plugin_host.errors import (
    ActorNotFoundError,
    BadRequestError,
    CompilationError,
    ConfigError,
    HotReloadError,
    PluginHostError,
    SandboxNotFoundError,
)
from plugin_host.values import Artifact

with warnings.catch_warnings():
    # Hypothesis imports this (and libcst, which warns on import) only to report a failure;
    # under ``filterwarnings = error`` that warning would turn the report into an INTERNALERROR.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ASK_TIMEOUT = 5.0
SANDBOX = "c"
"""The one sandbox every example may look at (never destroyed or called with junk)."""


# -- the module's host and its surroundings -------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """A host with one counter sandbox, on a state folder inside a module-private folder."""
    base = tmp_path_factory.mktemp("bad_input")
    state_dir = base / "state"
    state_dir.mkdir()
    config = HostConfig(
        state_dir=state_dir,
        heartbeat_interval=0.2,
        hang_timeout=1.0,
        shutdown_timeout=2.0,
        call_timeout=10.0,
        start_timeout=20.0,
    )
    with Host(config) as host:
        host.create_sandbox(SANDBOX, "root:Root", sandbox_path=sample("counter"))
        yield Scene(host, base, state_dir)


def outside_state(scene: Scene) -> set[str]:
    """Every path under the module folder (but not in ``state_dir``), and the working folder's entries."""
    found = {f"cwd:{name}" for name in os.listdir(os.getcwd())}
    for root, dirs, files in os.walk(scene.base):
        if Path(root) == scene.base:
            dirs[:] = [d for d in dirs if d != scene.state_dir.name]
        found.update(os.path.join(root, name) for name in dirs + files)
    return found


def ask(scene: Scene, message: Any, timeout: float = ASK_TIMEOUT) -> Any:
    """Send ``message`` to the admin from the test thread and return its reply (None on timeout).

    A late reply to an earlier request (another ``corr``) is skipped, so one slow answer cannot
    be taken for the next one.
    """
    corr = message.corr if isinstance(message, msgs.Request) else ""
    system = scene.host.actor_system
    deadline = time.monotonic() + timeout
    reply = system.ask(scene.host.admin_address, message, timeout)
    while isinstance(reply, (msgs.Ok, msgs.Failed)) and reply.corr != corr and time.monotonic() < deadline:
        reply = system.listen(max(0.01, deadline - time.monotonic()))
    return reply


def assert_admin_answers(scene: Scene) -> None:
    """The admin still answers a well-formed request, with the right correlation id."""
    corr = uuid.uuid4().hex
    reply = ask(scene, msgs.ListSandboxes(corr=corr))
    assert isinstance(reply, msgs.Ok), reply
    assert reply.corr == corr
    assert SANDBOX in [info.id for info in reply.value]


def assert_counter_answers(scene: Scene) -> None:
    """The sandbox every example shares still runs its original code."""
    assert isinstance(scene.host.call(SANDBOX, "counter", "get", timeout=10), int)
    assert scene.host.get_sandbox_info(SANDBOX).status == "running"


# -- strategies ----------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.complex_numbers(allow_nan=False),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.frozensets(scalars, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)
"""Arbitrary picklable Python values."""

odd_ids = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "../x",
            "../../escape",
            "a/b",
            "a\\b",
            "/abs",
            "x" * 129,
            "x" * 5000,
            "nul\x00byte",
            "tab\tid",
            "new\nline",
            "\x7f",
            "\u202e-rtl",
            "\u00e9t\u00e9",
            "\U0001f600",
            "~",
            "$HOME",
            "con",
            "a:b",
            " ",
            "x" * 128,
        ]
    ),
    st.text(max_size=140),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.text(alphabet="./\\\x00\n:~ ab", max_size=12),
)
"""Sandbox ids a hostile or careless caller might pass."""

# Requests whose junk cannot change the shared sandbox, hang the admin, or make it send us events.
_SAFE_REQUESTS = [
    msgs.BatchCreate,
    msgs.BatchDestroy,
    msgs.BatchHotReload,
    msgs.CreateSandbox,
    msgs.DestroySandbox,
    msgs.GetAuditLog,
    msgs.GetModuleVersion,
    msgs.GetResourceUsage,
    msgs.GetSandboxInfo,
    msgs.GetVersionHistory,
    msgs.HotReload,
    msgs.ListModuleVersions,
    msgs.ListSandboxes,
    msgs.LookupActor,
    msgs.RestartSandbox,
    msgs.RollbackModule,
    msgs.Run,
]
_READ_ONLY = {
    msgs.GetAuditLog,
    msgs.GetModuleVersion,
    msgs.GetResourceUsage,
    msgs.GetSandboxInfo,
    msgs.GetVersionHistory,
    msgs.ListModuleVersions,
    msgs.LookupActor,
}
_SHORT = st.one_of(
    st.none(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.lists(scalars, max_size=2),
    st.floats(max_value=0.5),
    st.just(math.nan),
    st.integers(max_value=0),
)
"""Junk for wait and timeout fields: never a long positive wait (that would be a valid request to wait)."""


def _field_values(cls: type, field: attrs.Attribute) -> st.SearchStrategy[Any]:
    if field.name == "sandbox_id":
        if cls in _READ_ONLY:
            return st.one_of(junk, odd_ids, st.just(SANDBOX))
        return st.one_of(junk, odd_ids).filter(lambda value: value != SANDBOX)
    if field.name in ("wait", "timeout", "probation"):
        return _SHORT
    if field.name in ("sandbox_ids", "specs", "artifacts"):
        return st.one_of(junk, st.lists(st.one_of(junk, odd_ids).filter(lambda value: value != SANDBOX), max_size=3))
    if field.name in ("fn", "state_handler"):
        return st.one_of(junk, st.builds(msgs.Blob, st.binary(max_size=30)))
    return junk


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _known_admin_bug(request: msgs.Request) -> bool:
    """Requests covered by their own tests below (kept out of the property)."""
    if isinstance(request, msgs.LookupActor):
        return not isinstance(request.wait, (int, float))
    if isinstance(request, (msgs.DestroySandbox, msgs.RestartSandbox)):
        return not _hashable(request.sandbox_id)
    if isinstance(request, msgs.BatchDestroy):
        return isinstance(request.sandbox_ids, (list, tuple)) and not all(_hashable(i) for i in request.sandbox_ids)
    if isinstance(request, msgs.CreateSandbox):
        path, limits = request.sandbox_path, request.limits
        return (path is not None and not isinstance(path, str)) or (
            isinstance(limits, dict) and not all(isinstance(key, str) for key in limits)
        )
    return False


@st.composite
def malformed_requests(draw: st.DrawFn) -> msgs.Request:
    """An admin request whose fields hold arbitrary values (attrs does not check types)."""
    cls = draw(st.sampled_from(_SAFE_REQUESTS))
    values = {f.name: draw(_field_values(cls, f)) for f in attrs.fields(cls) if f.name != "corr"}
    return cls(corr=draw(st.text(max_size=20)), **values)


# -- the admin actor -----------------------------------------------------------------------


@SETTINGS
@given(value=junk)
def test_admin_answers_arbitrary_values_with_a_bad_request_failure(scene: Scene, value: Any) -> None:
    """A value that is no request gets ``Failed(BadRequestError)``; the admin goes on answering."""
    reply = ask(scene, value)
    assert isinstance(reply, msgs.Failed), reply
    assert isinstance(reply.error, BadRequestError)
    assert_admin_answers(scene)


@SETTINGS
@given(request=malformed_requests())
def test_admin_answers_malformed_requests_with_ok_or_a_documented_failure(scene: Scene, request: msgs.Request) -> None:
    """Requests with fields of the wrong type or value get ``Ok`` or ``Failed(PluginHostError)``, echo
    their ``corr``, and leave the admin answering and nothing written outside ``state_dir``."""
    assume(not _known_admin_bug(request))
    before = outside_state(scene)
    reply = ask(scene, request)
    assert isinstance(reply, (msgs.Ok, msgs.Failed)), f"{request!r} got {reply!r}"
    assert reply.corr == request.corr
    if isinstance(reply, msgs.Failed):
        assert isinstance(reply.error, PluginHostError), reply.error
    assert_admin_answers(scene)
    assert outside_state(scene) == before


def _assert_bad_request(scene: Scene, request: msgs.Request) -> None:
    reply = ask(scene, request)
    assert isinstance(reply, msgs.Failed), f"{request!r} got {reply!r}"
    assert isinstance(reply.error, BadRequestError) and reply.corr == request.corr


def test_admin_answers_a_lookup_with_a_non_numeric_wait_with_bad_request(scene: Scene) -> None:
    """``LookupActor(wait=None)`` should get ``Failed(BadRequestError)``, not a ``PoisonMessage``."""
    _assert_bad_request(scene, msgs.LookupActor(corr="lookup", sandbox_id=SANDBOX, name="counter", wait=None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_",
    [
        msgs.DestroySandbox(corr="destroy", sandbox_id=[]),  # type: ignore[arg-type]
        msgs.RestartSandbox(corr="restart", sandbox_id=[]),  # type: ignore[arg-type]
        msgs.BatchDestroy(corr="batch", sandbox_ids=[[]]),  # type: ignore[list-item]
    ],
    ids=["destroy", "restart", "batch-destroy"],
)
def test_admin_answers_an_unhashable_sandbox_id_with_bad_request(scene: Scene, request_: msgs.Request) -> None:
    """An id that is a list should get ``Failed(BadRequestError)`` (alone or in a batch), not a ``PoisonMessage``."""
    reply = ask(scene, request_)
    if isinstance(request_, msgs.BatchDestroy) and isinstance(reply, msgs.Ok):
        reply = reply.value[0]
    assert isinstance(reply, msgs.Failed) and isinstance(reply.error, BadRequestError), reply


def test_admin_answers_a_create_with_a_non_string_sandbox_path_with_bad_request(scene: Scene) -> None:
    """``CreateSandbox(sandbox_path=0)`` should get ``Failed(BadRequestError)``, not a ``PoisonMessage``."""
    _assert_bad_request(
        scene, msgs.CreateSandbox(corr="create-path", sandbox_id="p", supervisor="root:Root", sandbox_path=0)
    )  # type: ignore[arg-type]


def test_admin_answers_a_create_with_limits_of_non_string_keys_with_a_failure(scene: Scene) -> None:
    """``CreateSandbox(limits={1: 2})`` should get ``Failed(PluginHostError)``, not a ``PoisonMessage``."""
    reply = ask(scene, msgs.CreateSandbox(corr="create-limits", sandbox_id="l", supervisor="root:Root", limits={1: 2}))
    assert isinstance(reply, msgs.Failed) and isinstance(reply.error, PluginHostError), reply


def test_admin_answers_a_run_with_a_non_numeric_timeout(host: Host) -> None:
    """``Run(timeout=None)`` to a running sandbox should get ``Failed(BadRequestError)`` promptly."""
    host.create_sandbox(SANDBOX, "root:Root", sandbox_path=sample("counter"))
    request = msgs.Run(corr="run", sandbox_id=SANDBOX, fn=msgs.Blob.dump(int), timeout=None)  # type: ignore[arg-type]
    reply = host.actor_system.ask(host.admin_address, request, ASK_TIMEOUT)
    assert isinstance(reply, msgs.Failed) and isinstance(reply.error, BadRequestError), reply


# -- sandbox ids through the Host API --------------------------------------------------------

_ID_ERRORS = (BadRequestError, SandboxNotFoundError, ActorNotFoundError)


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except PluginHostError as exc:
        assert isinstance(exc, _ID_ERRORS), f"{fn.__name__}{args!r}: undocumented {exc!r}"
        return exc


@SETTINGS
@given(sandbox_id=odd_ids)
def test_arbitrary_sandbox_ids_are_refused_or_work_and_never_become_paths(scene: Scene, sandbox_id: str) -> None:
    """create/info/call/destroy with odd ids raise a documented error or work; no file appears outside."""
    assume(sandbox_id != SANDBOX)
    host = scene.host
    before = outside_state(scene)
    created = _outcome(host.create_sandbox, sandbox_id, "root:Root", sandbox_path=sample("counter"))
    info = _outcome(host.get_sandbox_info, sandbox_id)
    called = _outcome(host.call, sandbox_id, "counter", "inc", timeout=10)
    destroyed = _outcome(host.destroy_sandbox, sandbox_id)
    if isinstance(created, PluginHostError):
        assert isinstance(created, BadRequestError), created
        assert all(isinstance(r, SandboxNotFoundError) for r in (info, called, destroyed)), (info, called, destroyed)
    else:
        assert created.id == info.id == sandbox_id
        assert called == 1 and destroyed is None
    assert isinstance(_outcome(host.get_sandbox_info, sandbox_id), SandboxNotFoundError)
    assert outside_state(scene) == before
    assert_admin_answers(scene)


# -- configuration values ------------------------------------------------------------------

CONFIG_SAMPLES = [
    # Values some field takes, so every field is also shown values it must keep.
    *SUPPORTED_BASES,
    *SECURITY_PROFILES,
    *PLUGIN_VALUES,
    "127.0.0.2",
    "10.0.0.1:1900",
    "leader.example:65535",
    1,
    3,
    1900,
    0.5,
    2.5,
    30,
    True,
    False,
    None,
    "/tmp/elsewhere",
    "~",
    {"gpu": True, "zone": "a"},
    {"max_actors": 2, "max_memory_mb": 64.5},
    ["/wheels", "https://example.org/simple"],
    ("/w",),
    # Edges.
    math.inf,
    -math.inf,
    math.nan,
    0,
    -1,
    0.0,
    1e-300,
    2**70,
    2.0,
    65535,
    65536,
    "1",
    "127.0.0.1",
    "::1",
    "0.0.0.0",
    "1.2.3.04",
    "127.0.0.1 ",
    "~\x00",
    "\x00",
    "",
    "~nosuchuser",
    "\udcff",
    b"/tmp",
    "host:99999",
    ":1",
    "localhost:1",
    "h:\u0661",
    "h:\u00b2",
    "h:" + "1" * 5000,  # past Python's 4,300 digits, int() raises ValueError
    "h:0",
    {"plugin_host.node": "x"},
    {"max_threads": 1},
    {1: 2},
    {"max_actors": 2.5},
    [1],
    [None],
    "multiprocQueueBase",
    "Standard",
]
"""Values every field of ``HostConfig`` and ``ResourceLimits`` is shown, valid ones and edges."""

config_values = st.one_of(junk, st.sampled_from(CONFIG_SAMPLES))

INVALID = object()
"""The oracle's verdict for a value the field must refuse."""

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expected_limit(field: str, value: Any) -> Any:
    """What a ``ResourceLimits`` field holds for ``value``, from the docs: ``None`` or a positive number
    (a positive integer for the counts ``max_actors``, ``max_mailbox`` and ``max_tasks``)."""
    if value is None:
        return None
    if field in ("max_actors", "max_mailbox", "max_tasks"):
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else INVALID
    return value if _is_number(value) and value > 0 else INVALID


def _expected_path(value: Any) -> Any:
    """A path: a string or path-like, with ``~`` expanded; no NUL, encodable, a user that exists."""
    if not isinstance(value, (str, os.PathLike)) or "\x00" in os.fspath(value):
        return INVALID
    try:
        os.fspath(value).encode()
        return Path(value).expanduser()
    except (UnicodeError, RuntimeError, ValueError):
        return INVALID


def _expected_uid_range(value: Any) -> Any:
    """What ``HostConfig(sandbox_uids=value)`` holds: a pair of ints (or ``"first-last"`` of ASCII digits) with
    ``0 < first <= last < 2**31 - 1``."""
    if isinstance(value, str):
        parts = value.split("-")
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
            return INVALID
        value = tuple(int(p) for p in parts)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return INVALID
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in value):
        return INVALID
    return tuple(value) if 0 < value[0] <= value[1] < 2**31 - 1 else INVALID


def _expected_config(field: str, value: Any, defaults: HostConfig) -> tuple[Any, set[str]]:
    """The oracle: what ``HostConfig(**{field: value})`` holds in ``field`` (``INVALID`` when it must raise),
    and the fields its ``ConfigError`` may name. Written from the README and the field docstrings."""
    positive = _is_number(value) and value > 0
    if field == "base":
        return (value if value in SUPPORTED_BASES else INVALID), {field}
    if field == "security_profile":
        return (value if value in SECURITY_PROFILES else INVALID), {field}
    if field == "plugin_values":
        return (value if value in PLUGIN_VALUES else INVALID), {field}
    if field == "isolation":
        return (value if isinstance(value, str) and value in ("process", "user") else INVALID), {field}
    if field == "sandbox_uids":
        return _expected_uid_range(value), {field}
    if field == "admin_port":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535)
        return (value if ok else INVALID), {field}
    if field == "bind_address":
        return (value if isinstance(value, str) and _IPV4.fullmatch(value) else INVALID), {field}
    if field == "cgroup_root":
        return _expected_path(value), {field}
    if field in ("control_groups", "syscall_filter"):
        return (value if isinstance(value, str) and value in ("auto", "off", "required") else INVALID), {field}
    if field in ("state_dir", "cookie_file"):
        return (None if value is None and field == "cookie_file" else _expected_path(value)), {field}
    if field == "max_versions":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        return (value if ok else INVALID), {field}
    if field in (
        "call_timeout",
        "compile_timeout",
        "reload_timeout",
        "start_timeout",
        "shutdown_timeout",
        "monitor_interval",
    ):
        return (value if positive else INVALID), {field}
    if field == "heartbeat_interval":
        # The default hang_timeout follows it (ten heartbeats); an infinite one leaves no longer hang_timeout.
        return (value if positive and value != math.inf else INVALID), {field, "hang_timeout"}
    if field == "hang_timeout":
        return (value if positive and value > defaults.heartbeat_interval else INVALID), {field}
    if field == "node_timeout":
        tick = min(1.0, defaults.heartbeat_interval)
        return (value if positive and value > 2 * tick else INVALID), {field}
    if field == "probation_seconds":
        return (value if _is_number(value) and value >= 0 else INVALID), {field}
    if field == "convention_leader":
        if value is None:
            return None, {field}
        host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
        ok = bool(host) and port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535
        return (value if ok else INVALID), {field}
    if field == "capabilities":
        ok = isinstance(value, dict) and all(
            isinstance(key, str) and not key.startswith("plugin_host.") for key in value
        )
        return (value if ok else INVALID), {field}
    if field == "limits":
        if value is None:
            return ResourceLimits(), {field}
        names = [f.name for f in attrs.fields(ResourceLimits)]
        if (
            not isinstance(value, dict)
            or not all(key in names for key in value)
            or any(_expected_limit(key, limit) is INVALID for key, limit in value.items())
        ):
            return INVALID, {field}
        return ResourceLimits(**value), {field}
    if field == "find_links":
        if isinstance(value, str):
            return (value,), {field}
        ok = isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
        return (tuple(value) if ok else INVALID), {field}
    if field == "no_index":
        return (value if isinstance(value, bool) else INVALID), {field}
    raise AssertionError(f"the oracle does not know HostConfig.{field}: add it")


def _builds_exactly_the_valid_values(build: Any, field: str, value: Any, expected: Any, names: set[str]) -> None:
    """``build()`` keeps a valid ``value`` (as ``expected``) and refuses an invalid one with ``ConfigError``
    naming one of ``names``: a field that accepts anything, or refuses a good value, fails."""
    try:
        made = build()
    except ConfigError as exc:
        assert expected is INVALID, f"{field}={value!r} is valid but was refused: {exc!r}"
        assert getattr(exc, "field", None) in names, f"{field}={value!r}: {exc!r} names {getattr(exc, 'field', None)}"
    else:
        assert expected is not INVALID, f"{field}={value!r} is invalid but was accepted as {getattr(made, field)!r}"
        assert getattr(made, field) == expected


def _check_limit(field: str, value: Any) -> None:
    expected = _expected_limit(field, value)
    _builds_exactly_the_valid_values(lambda: ResourceLimits(**{field: value}), field, value, expected, {field})
    _builds_exactly_the_valid_values(
        lambda: ResourceLimits.from_mapping({field: value}), field, value, expected, {field}
    )


def _check_config(tmp_path: Path, field: str, value: Any) -> None:
    others = {} if field == "state_dir" else {"state_dir": tmp_path / "state"}
    expected, names = _expected_config(field, value, HostConfig(**others))
    _builds_exactly_the_valid_values(lambda: HostConfig(**{field: value}, **others), field, value, expected, names)


@pytest.mark.parametrize("field", [f.name for f in attrs.fields(ResourceLimits)])
def test_resource_limits_keep_exactly_the_valid_listed_values(field: str) -> None:
    """Each value of ``CONFIG_SAMPLES`` is kept by a ``ResourceLimits`` field when valid (``None`` or positive;
    counts are integers) and raises ``ConfigError`` naming the field otherwise, directly and through
    ``from_mapping``."""
    for value in CONFIG_SAMPLES:
        _check_limit(field, value)


@SETTINGS
@pytest.mark.parametrize("field", [f.name for f in attrs.fields(ResourceLimits)])
@given(value=junk)
def test_resource_limits_keep_exactly_the_valid_values_of_any_kind(field: str, value: Any) -> None:
    """The same for any value: a limit that accepts anything, or refuses a good value, fails."""
    _check_limit(field, value)


@pytest.mark.parametrize("field", [f.name for f in attrs.fields(HostConfig)])
def test_host_config_keeps_exactly_the_valid_listed_values(tmp_path: Path, field: str) -> None:
    """Each value of ``CONFIG_SAMPLES`` is kept by a ``HostConfig`` field (normalised as documented) when
    the docs call it valid, and raises ``ConfigError`` naming the field otherwise."""
    for value in CONFIG_SAMPLES:
        _check_config(tmp_path, field, value)


@SETTINGS
@pytest.mark.parametrize("field", [f.name for f in attrs.fields(HostConfig)])
@given(value=config_values)
def test_host_config_keeps_exactly_the_valid_values_of_any_kind(tmp_path: Path, field: str, value: Any) -> None:
    """The same for any value: a field that accepts anything, or refuses a good value, fails."""
    _check_config(tmp_path, field, value)


def test_host_config_with_a_nul_after_a_tilde_in_state_dir_raises_config_error(tmp_path: Path) -> None:
    """``HostConfig(state_dir="~\\x00")`` should raise ``ConfigError(field="state_dir")``."""
    with pytest.raises(ConfigError) as caught:
        HostConfig(state_dir="~\x00")
    assert caught.value.field == "state_dir"


def test_limits_mapping_with_a_non_string_key_raises_config_error(tmp_path: Path) -> None:
    """``HostConfig(limits={1: 2})`` should raise ``ConfigError(field="limits")``."""
    with pytest.raises(ConfigError) as caught:
        HostConfig(state_dir=tmp_path / "state", limits={1: 2})
    assert caught.value.field == "limits"


# -- garbage as code -------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@st.composite
def garbage_artifacts(draw: st.DrawFn) -> Artifact:
    """An ``Artifact`` of random bytes: as bytes, as text with a wrong checksum, or as non-Python text."""
    raw = draw(st.binary(min_size=1, max_size=200))
    module = draw(st.one_of(st.just("counter"), st.just("root"), odd_ids, junk))
    path = draw(st.one_of(st.just("counter.py"), odd_ids, junk))
    kind = draw(st.sampled_from(["bytes", "wrong-checksum", "not-python"]))
    if kind == "bytes":
        return Artifact(module=module, path=path, checksum=hashlib.sha256(raw).hexdigest(), source=raw)  # type: ignore[arg-type]
    text = ")(" + raw.decode("latin-1")  # never valid Python
    checksum = draw(st.text(alphabet="0123456789abcdef", max_size=64)) if kind == "wrong-checksum" else _sha(text)
    assume(checksum != _sha(text) or kind == "not-python")
    return Artifact(module=module, path=path, checksum=checksum, source=text)


@SETTINGS
@given(artifact=garbage_artifacts())
def test_random_bytes_as_compiled_code_are_refused_and_the_sandbox_keeps_answering(
    scene: Scene, artifact: Artifact
) -> None:
    """A hot reload of garbage raises a documented error; the sandbox keeps its code and answers."""
    before = outside_state(scene)
    version = scene.host.get_module_version(SANDBOX, "counter")
    with pytest.raises((BadRequestError, HotReloadError, CompilationError)):
        scene.host.hot_reload(SANDBOX, artifact, timeout=10)
    assert scene.host.get_module_version(SANDBOX, "counter") == version
    assert_counter_answers(scene)
    assert outside_state(scene) == before


not_utf8 = st.binary(max_size=100).map(lambda b: b"\xff" + b)
"""Bytes that do not decode as UTF-8 (0xff never starts a UTF-8 sequence)."""


@SETTINGS
@given(source=not_utf8)
def test_hot_reload_source_of_bytes_that_are_not_utf8_raises_compilation_error(scene: Scene, source: bytes) -> None:
    """``hot_reload_source`` refuses source that is not UTF-8; the sandbox keeps answering."""
    with pytest.raises(CompilationError):
        scene.host.hot_reload_source(SANDBOX, source, "counter")  # type: ignore[arg-type]
    assert_counter_answers(scene)


@SETTINGS
@given(source=not_utf8, module=st.sampled_from(["counter", "m", "pkg.mod"]))
def test_compiling_bytes_that_are_not_utf8_raises_compilation_error(tmp_path: Path, source: bytes, module: str) -> None:
    """The compiler refuses source bytes that are not UTF-8 with ``CompilationError``."""
    with pytest.raises(CompilationError):
        compiler.compile_source(module, source, validate=False, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("event", ["created", "nonsense", ["reloaded"]], ids=["created", "nonsense", "list"])
def test_admin_answers_a_hot_reload_naming_no_reload_event_with_bad_request(scene: Scene, event: Any) -> None:
    """``HotReload(event=...)`` other than ``reloaded``/``rolled_back`` gets ``Failed(BadRequestError)`` and
    changes nothing (``created`` used to reload, then fail to emit its event and never arm probation)."""
    before = scene.host.get_module_version(SANDBOX, "counter")
    source = "from actors import Plugin\n\nclass Counter(Plugin):\n    pass\n"
    artifact = Artifact("counter", "counter.py", hashlib.sha256(source.encode()).hexdigest(), source)
    _assert_bad_request(
        scene, msgs.HotReload(corr=f"reload-{event}", sandbox_id=SANDBOX, artifacts=[artifact], event=event)
    )
    assert scene.host.get_module_version(SANDBOX, "counter") == before
    assert_counter_answers(scene)
