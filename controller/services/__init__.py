"""The controller's services, run by one supervisor (`fleetgen serve`): ingest, repository
responder, director publisher, re-sign schedule, and on the leader the rollout and power
loops. Each is a thin adapter around a pure core (controller/fleet/) and the store."""
