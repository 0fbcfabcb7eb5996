"""The transport's primitives, for the actor processes of :mod:`actors` (as ``trio.lowlevel`` is for
trio's own parts): who signed the frame being handled, signing for a given key, the keys of this
process, the runtime audit of a sandbox process (:mod:`plugin_host._audit`) and what a process gives
up before plugin code runs (:mod:`plugin_host._confine`: hard rlimits, capabilities) and the mount and
IPC namespace it runs in (:mod:`plugin_host._namespace`), all also used by the compile validator, the control
groups of sandboxes and validations (:mod:`plugin_host._cgroup`), and
matching replies to requests by correlation id (:class:`Replies`, the host's calls use it too).  Not re-exported by
:mod:`plugin_host`; no stability promise beyond plugin-host's own use.
"""

from __future__ import annotations

from . import _audit as audit
from . import _cgroup as cgroup
from . import _confine as confine
from . import _namespace as namespace
from ._replies import Replies
from ._wire import (
    KID_REQUIREMENT,
    Principal,
    RejectionTail,
    new_sandbox_principal,
    process_keys,
    sender_principal,
    signing_for,
)

__all__ = [
    "KID_REQUIREMENT",
    "audit",
    "cgroup",
    "confine",
    "namespace",
    "Principal",
    "RejectionTail",
    "Replies",
    "new_sandbox_principal",
    "process_keys",
    "sender_principal",
    "signing_for",
]
