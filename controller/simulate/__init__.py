"""The fleet simulator: N devices in a few processes on the real protocol (`fleetgen simulate`).

Each simulated device has its own MQTT connection with its Last Will, publishes status,
reported and telemetry batches with a board's realistic power, verifies every desired
document with the agent's own director check, and answers with the update lifecycle's
event sequence. A chosen share fail their health check (and roll back) or go offline.
"""
