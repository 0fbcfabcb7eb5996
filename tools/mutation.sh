#!/usr/bin/env bash
# Mutation testing on demand, never in CI: mutmut mutates the pure modules named under [mutmut] in
# setup.cfg (store, its SQL and schema, config, the compiler's scan and import graph) and runs,
# for each mutant, the tests of their fast test files that reach the mutated function.
#
#   tools/mutation.sh                          every mutant (~1,400; about 1 a second per core)
#   tools/mutation.sh 'plugin_host.store.*'    the mutants of one module
#
# mutmut lives in a venv of its own (MUTMUT_VENV, made on first use with the system's packages
# visible, so the project's dependencies are there); MUTMUT_CHILDREN sets the parallel runs
# (default 1: the tests themselves start processes).  The run works in mutants/ (ignored by git)
# and picks up where it left off; `$MUTMUT_VENV/bin/mutmut show NAME` prints one mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MUTMUT_VENV:-${TMPDIR:-/tmp}/plugin-host-mutmut}"
if [ ! -x "$venv/bin/mutmut" ]; then
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install --quiet 'mutmut>=3.8,<4'
fi
nice -n 10 "$venv/bin/mutmut" run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
echo "survivors (and mutants no test reaches):"
"$venv/bin/mutmut" results | grep -v ': not checked$' || true
