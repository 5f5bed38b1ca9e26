"""The websocket gateway between the dataflow and dashboards (`volgraph gateway`).

server.py    the server: lifecycle, /ws and /publish handlers, fan-out, the CLI
surfaces.py  typed decoding of published frames, per-surface state, per-client coalescing queues
web.py       plain HTTP on the same port: dashboard files, /healthz, /status, /metrics
publisher.py the dataflow's bytewax sink that publishes to /publish

Imports nothing at package level: `import connectors.gateway.publisher` must not start
or import the server.
"""
