"""The runtime audit through the Host: records per sandbox, blocks under restricted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import eventually

from plugin_host import Host
from plugin_host.errors import PluginError

AUDIT = os.path.join(os.path.dirname(__file__), "plugins", "audit")
SLY = os.path.join(os.path.dirname(__file__), "plugins", "sly")


def events_in(host: Host, sandbox_id: str) -> list[tuple[str, str, bool]]:
    return [(r.event, r.actor, r.blocked) for r in host.audit_log(sandbox_id)]


def test_standard_records_each_audited_operation_with_actor_and_detail(host: Host, tmp_path: Path) -> None:
    """Writes, processes, sockets and reads outside the sandbox's folders are recorded (and allowed)."""
    host.create_sandbox("s", "nosy:Root", sandbox_path=AUDIT, security_profile="permissive")
    host.create_sandbox("std", "nosy:Root", sandbox_path=AUDIT)
    target = tmp_path / "written.txt"
    assert host.call("std", "nosy", ("write", str(target))) == "done"
    host.call("std", "nosy", ("read", str(target)))
    host.call("std", "nosy", ("spawn", None))
    host.call("std", "nosy", ("connect", 9))
    records = eventually(lambda: len(host.audit_log("std")) >= 4 and host.audit_log("std"))
    kinds = {r.event for r in records}
    assert {"open", "subprocess.Popen", "socket.connect"} <= kinds
    write, read = (r for r in records if r.event == "open")
    assert str(target) == write.detail and write.actor == "nosy" and not write.blocked
    assert f"{target} (read)" == read.detail
    assert target.exists()
    assert host.call("s", "nosy", ("write", str(tmp_path / "p.txt"))) == "done"
    assert host.audit_log("s") == []


def test_restricted_refuses_them_inside_the_plugin(host: Host, tmp_path: Path) -> None:
    """Under restricted the plugin gets PermissionError (so it crashes) and the record says blocked.

    The static scan refuses the obvious forms at compile time; this plugin hides them from it.
    """
    host.create_sandbox("r", "sly:Root", sandbox_path=SLY, security_profile="restricted")
    target = tmp_path / "nope.txt"
    with pytest.raises(PluginError) as caught:
        host.call("r", "sly", ("write", str(target)))
    assert caught.value.type_name == "builtins.PermissionError"
    assert not target.exists()
    with pytest.raises(PluginError):
        host.call("r", "sly", ("system", None))
    records = eventually(lambda: len(host.audit_log("r")) >= 2 and host.audit_log("r"))
    assert all(r.blocked for r in records)
    assert {r.event for r in records} >= {"open", "os.system"}
