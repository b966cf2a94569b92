"""The demo harness: brokers for tests and the demo, process helpers, the demo story."""
