"""A control group per sandbox: the code lives in :mod:`plugin_host._cgroup` (shared with the compile validator,
whose validations get a group each) and is re-bound here, where the admin and the sandbox roots use it."""

from __future__ import annotations

from plugin_host.lowlevel import cgroup as _cgroup

__all__ = ["Support", "SandboxGroup", "V1Group", "V2Group", "support", "seal", "CPU_PERIOD_US", "UNIFIED", "CPU_BASE"]

Support = _cgroup.Support
SandboxGroup = _cgroup.SandboxGroup
V1Group = _cgroup.V1Group
V2Group = _cgroup.V2Group
support = _cgroup.support
seal = _cgroup.seal
CPU_PERIOD_US = _cgroup.CPU_PERIOD_US
UNIFIED = _cgroup.UNIFIED
CPU_BASE = _cgroup.CPU_BASE
