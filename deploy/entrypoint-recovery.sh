#!/bin/sh
# Init container of bytewax's Helm chart when recovery is on (`sh ./entrypoint-recovery.sh`):
# create BYTEWAX_RECOVERY_PARTS empty recovery partitions in BYTEWAX_RECOVERY_DIRECTORY, once.
# A directory that already holds partitions is kept as it is: `python -m bytewax.recovery` on a
# used directory fails (UNIQUE constraint on parts), and the state in it is what a restart or an
# upgrade resumes from.
set -eu
dir="${BYTEWAX_RECOVERY_DIRECTORY:?set BYTEWAX_RECOVERY_DIRECTORY (the chart does when recovery is enabled)}"
parts="${BYTEWAX_RECOVERY_PARTS:?set BYTEWAX_RECOVERY_PARTS (configuration.recovery.partsCount)}"
mkdir -p "$dir"
if ls "$dir"/part-*.sqlite3 >/dev/null 2>&1; then
    echo "recovery: $dir already holds $(ls "$dir"/part-*.sqlite3 | wc -l) partition(s); keeping them"
    exit 0
fi
exec python -m bytewax.recovery "$dir" "$parts"
