#!/bin/sh
# The dataflow process, as bytewax's Helm chart (and so waxctl) starts it: `sh ./entrypoint.sh`
# in the image's WORKDIR (/app). `python -m bytewax.run` reads its shape from the environment the
# chart sets: BYTEWAX_WORKERS_PER_PROCESS, BYTEWAX_POD_NAME + BYTEWAX_STATEFULSET_NAME (the
# process id), BYTEWAX_HOSTFILE_PATH (every process's address), BYTEWAX_RECOVERY_DIRECTORY,
# BYTEWAX_SNAPSHOT_INTERVAL, BYTEWAX_RECOVERY_BACKUP_INTERVAL. tini runs as PID 1 so SIGTERM
# reaches the flow (a PID 1 without a handler would ignore it) and the stop stays within
# terminationGracePeriodSeconds. The root filesystem is read-only: TMPDIR and NUMBA_CACHE_DIR
# must point into a mounted volume (deploy/helm/values.yaml puts them on the recovery volume).
set -eu
for dir in "${TMPDIR:-}" "${NUMBA_CACHE_DIR:-}"; do
    if [ -n "$dir" ]; then mkdir -p "$dir"; fi
done
entry="${BYTEWAX_PYTHON_FILE_PATH:-/app/deploy/dataflow.py}"
if [ ! -f "$entry" ]; then
    echo "entrypoint.sh: $entry does not exist; using /app/deploy/dataflow.py" >&2
    entry=/app/deploy/dataflow.py
fi
exec tini -g -- python -m bytewax.run "$entry:flow"
