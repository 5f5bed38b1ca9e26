"""The dataflow entry file for waxctl and bytewax's Helm chart (deploy/waxctl.sh, deploy/helm/values.yaml).

The chart copies this file into /var/bytewax/ and the image's entrypoint.sh runs
`python -m bytewax.run /var/bytewax/dataflow.py:flow`; volgraph itself is installed in the image
under /app (deploy/Dockerfile). The flow is flows/surface.py's, configured by the environment
(VOLGRAPH_CONFIG, VOLGRAPH_PG_DSN, VOLGRAPH_GATEWAY_URL, VOLGRAPH_METRICS_HOST/PORT; see
docs/operations.md). Nothing else belongs here: never imports connectors directly.
"""

from flows.surface import default_flow

flow = default_flow()
