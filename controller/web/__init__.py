"""The controller's web face: REST API (/api/v1, OpenAPI at /openapi.json), dashboard, /metrics.

FastAPI on uvicorn (ADR 0085). Routes are thin: they parse and check input (pydantic), call
the query layer (`queries`) or the same functions the CLI calls, and shape the answer.
"""
