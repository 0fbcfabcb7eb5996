"""The static scan as a security profile reads it: one verdict for the compiler and for the admin.

The compiler scans what it compiles, so a user sees a finding before anything is sent; the admin
scans every source it is sent (a create, every reload, a rollback), with the sandbox's own
profile, and its verdict is the one that holds.  Both go through :func:`check_sources`.  This
module imports the scan alone, so the admin gets it without the compile pool.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ._compile.scan import Finding, scan_source
from .errors import SecurityViolationError

__all__ = ["Finding", "check_sources", "format_findings", "scan_source"]


def format_findings(findings: Sequence[Finding], kind: str) -> str:
    """One ``file:line: kind: message`` line per finding."""
    return "\n".join(f"{file}:{line}: {kind}: {message}" for file, line, message in findings)


def check_sources(sources: Iterable[tuple[str, str]], profile: str, *, what: str = "") -> list[Finding]:
    """Scan each ``(path, source)`` as ``profile`` wants it; no code runs.

    ``restricted`` refuses any finding (the strict scan, dynamic forms included), ``standard``
    returns its findings as warnings, ``permissive`` scans nothing.

    Args:
        sources: ``(path, source)`` of each module to scan (only the ones that changed, as a rule).
        profile: the security profile of the sandbox the code is for.
        what: said first in the error's message (e.g. which sandbox refused it).

    Returns:
        The findings, to be shown as warnings (``standard``); none under ``permissive``.

    Raises:
        SecurityViolationError: ``restricted`` found something; ``errors`` lists (file, line, message).
        CompilationError: a source is not valid Python.
    """
    if profile == "permissive":
        return []
    strict = profile == "restricted"
    findings = [f for path, source in sources for f in scan_source(source, path, strict=strict)]
    if findings and strict:
        message = format_findings(findings, "security violation")
        raise SecurityViolationError(f"{what}\n{message}" if what else message, errors=findings, output="")
    return findings
