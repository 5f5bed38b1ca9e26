#!/usr/bin/env bash
# Deploy (or upgrade) the volgraph dataflow on Kubernetes with bytewax's waxctl.
#
#   deploy/waxctl.sh                      2 processes × 1 worker, recovery on, namespace volgraph
#   PROCESSES=4 WORKERS=2 deploy/waxctl.sh
#   DRY_RUN=1 deploy/waxctl.sh > manifests.yaml   # print what would be applied, change nothing
#
# What it does, in order:
#   1. applies deploy/k8s/flow-config.yaml (the pods' graph.toml) with runtime.processes and
#      runtime.workers rewritten to PROCESSES and WORKERS: volgraph routes expiries to the
#      worker slots, so the two must agree with the cluster's shape;
#   2. creates/updates the ConfigMap volgraph-dataflow holding deploy/dataflow.py (the entry file);
#   3. runs `waxctl dataflow deploy deploy/dataflow.py` with the shape (-p processes, -w workers),
#      recovery on a persistent volume per the flags below (--recovery, --recovery-parts,
#      --recovery-size, --recovery-snapshot-interval), the image, and the chart values of
#      deploy/helm/values.yaml (-V): environment from the Secret volgraph-flow-env
#      (VOLGRAPH_PG_DSN, VOLGRAPH_GATEWAY_URL) — waxctl's -e takes only literal KEY=VALUE, so
#      secrets go through the chart's envFromSecrets, never on this command line.
#
# Before the first run (once per cluster; docs/operations.md "Deploy"):
#   kubectl apply -f deploy/k8s/namespace.yaml
#   kubectl -n volgraph create secret generic volgraph-flow-env \
#       --from-literal=VOLGRAPH_PG_DSN='postgresql://...' \
#       --from-literal=VOLGRAPH_GATEWAY_URL='ws://volgraph-gateway-publish:8765/publish?token=...'
# Recovery partitions: RECOVERY_PARTS is fixed at the first deploy (the init container creates
# them once and keeps them after); changing PROCESSES or WORKERS later needs a fresh recovery
# volume (docs/operations.md "Scale").
set -euo pipefail

NAME="${NAME:-volgraph}"
NAMESPACE="${NAMESPACE:-volgraph}"
PROCESSES="${PROCESSES:-2}"
WORKERS="${WORKERS:-1}"
RECOVERY_PARTS="${RECOVERY_PARTS:-$PROCESSES}"
RECOVERY_SIZE="${RECOVERY_SIZE:-10Gi}"
SNAPSHOT_INTERVAL_S="${SNAPSHOT_INTERVAL_S:-30}"
IMAGE_REPOSITORY="${IMAGE_REPOSITORY:-ghcr.io/volgraph/volgraph}"
IMAGE_TAG="${IMAGE_TAG:-0.1.0}"
DRY_RUN="${DRY_RUN:-}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

for n in "$PROCESSES" "$WORKERS" "$RECOVERY_PARTS" "$SNAPSHOT_INTERVAL_S"; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
        echo "waxctl.sh: PROCESSES, WORKERS, RECOVERY_PARTS and SNAPSHOT_INTERVAL_S must be integers ≥ 1 (got '$n')" >&2
        exit 2
    fi
done
if (( RECOVERY_PARTS < PROCESSES )); then
    echo "waxctl.sh: RECOVERY_PARTS=$RECOVERY_PARTS < PROCESSES=$PROCESSES; give every process a partition" >&2
    exit 2
fi
for tool in kubectl waxctl; do
    if [[ -z "$DRY_RUN" ]] && ! command -v "$tool" >/dev/null; then
        echo "waxctl.sh: $tool not found; install it (waxctl: https://bytewax.io/downloads)" >&2
        exit 2
    fi
done

config="$(sed -E -e "s/^( *)processes = [0-9]+/\1processes = $PROCESSES/" \
                 -e "s/^( *)workers = [0-9]+/\1workers = $WORKERS/" \
                 -e "s/^( *)namespace: .*/\1namespace: $NAMESPACE/" "$here/k8s/flow-config.yaml")"

deploy=(waxctl dataflow deploy "$here/dataflow.py"
        --name "$NAME"
        --namespace "$NAMESPACE"
        --processes "$PROCESSES"
        --workers "$WORKERS"
        --recovery
        --recovery-parts "$RECOVERY_PARTS"
        --recovery-size "$RECOVERY_SIZE"
        --recovery-snapshot-interval "$SNAPSHOT_INTERVAL_S"
        --image-repository "$IMAGE_REPOSITORY"
        --image-tag "$IMAGE_TAG"
        --image-pull-policy IfNotPresent
        --chart-values-file "$here/helm/values.yaml")

if [[ -n "$DRY_RUN" ]]; then
    printf '%s\n---\n' "$config"
    if command -v waxctl >/dev/null; then
        "${deploy[@]}" --dry-run
    else
        echo "# waxctl not installed; would run: ${deploy[*]} --yes" 
    fi
    exit 0
fi

printf '%s\n' "$config" | kubectl apply -f -
kubectl -n "$NAMESPACE" create configmap volgraph-dataflow --from-file="$here/dataflow.py" \
    --dry-run=client -o yaml | kubectl apply -f -
"${deploy[@]}" --yes
echo "deployed $NAME: $PROCESSES process(es) × $WORKERS worker(s), $RECOVERY_PARTS recovery partition(s)."
echo "check it: kubectl apply -f $here/k8s/doctor-job.yaml && kubectl -n $NAMESPACE logs -f job/volgraph-doctor"
