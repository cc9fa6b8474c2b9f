#!/usr/bin/env bash
# Run a command with two busy processes per core beside it (issue 29: `make demo` and `make test`
# must pass on a loaded machine), e.g.  benchmarks/under_load.sh make demo
# The busy processes (`yes > /dev/null`) are started here and stopped by their PIDs when the command
# ends, also when it fails or this script is interrupted. Prints the command's wall time and exit code.
set -u
per_core=${PER_CORE:-2}
n=$(( $(nproc) * per_core ))
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap stop EXIT INT TERM
for _ in $(seq "$n"); do yes > /dev/null & pids+=($!); done
echo "under_load: $n busy processes (${pids[*]}) beside: $*" >&2
t0=$(date +%s)
"$@"
rc=$?
echo "under_load: exit $rc after $(( $(date +%s) - t0 )) s with $n busy processes; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit $rc
