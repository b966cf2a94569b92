"""The controller's pure fleet domain: rollout engine and power allocator.

Nothing here touches MQTT, the database or the wall clock: state goes in, decisions come
out (DESIGN §9). The services in controller/services/ are the adapters around them.
"""
