"""Code on the sandbox side: staging a new version in one process (:mod:`.codeswap`), the sandbox
root's two-phase reload (:mod:`.reload`) and the one-shot actor that installs a version's packages
(:mod:`.envprep`)."""

__all__: list[str] = []
