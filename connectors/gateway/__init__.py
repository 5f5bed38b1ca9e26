"""The websocket gateway between the dataflow and dashboards (`volgraph gateway`).

server.py    the server: lifecycle, /ws and /publish handlers, fan-out, the CLI
protocol.py  the client protocol's msgspec types (docs/gateway-protocol.md), publish checks, the JSON Schema
auth.py      the publish token (env, file, cookie), loopback test, origin allow-list
surfaces.py  typed decoding of published frames, per-stream state and seq, per-client coalescing queues
web.py       plain HTTP on the same port: dashboard files, /healthz, /status, /metrics
publisher.py the dataflow's bytewax sink that publishes to /publish
watch.py     `volgraph watch`: the protocol's reference client, a live surface in the terminal

Imports nothing at package level: `import connectors.gateway.publisher` must not start
or import the server.
"""
