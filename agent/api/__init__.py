"""The agent's local HTTP API: an OpenAI-compatible subset on a Unix socket (and TCP).

    http.py      HTTP/1.1 on asyncio + h11: sockets, limits, timeouts, streaming
    errors.py    the OpenAI error shape
    wire.py      request and response documents (msgspec Structs), as OpenAI spells them
    chat.py      chat templates (the model's Jinja template in a sandbox, or the default)
    host.py      the loaded models behind the API: queue, loading state, bundle switch
    routes.py    the routes: /v1/completions, /v1/chat/completions, /v1/images/generations,
                 /v1/models, /health, /metrics, /fleetgen/status
    metrics.py   request counters, latency percentiles, Prometheus text
    service.py   the API in its own thread: start (READY), stop (drain)

Nothing here imports the runtime (numpy, onnxruntime) until a model is loaded, so the
daemon with the API up and no model stays small (ADR 0055).
"""
