"""A device process for the resilience scenarios: the update worker on a local repository
(the kill -9 tests in tests/agent now run the whole daemon).

    python -m tests.resilience.update_child STATE METADATA TARGETS [ENVELOPE.json]

Submits the envelope (as the retained `desired` would arrive after every start), runs
until the worker has settled, writes the notices to STATE/../notices.jsonl, exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import msgspec

from agent.protocol.messages import SignedEnvelope
from agent.trust.fetch import LocalFetcher
from agent.update.worker import Notice, UpdateWorker, WorkerPost


def main(argv: list[str]) -> int:
    state, metadata, targets = Path(argv[0]), Path(argv[1]), Path(argv[2])
    log = (state.parent / "notices.jsonl").open("a")

    def post(item: WorkerPost) -> None:
        if isinstance(item, Notice):
            log.write(json.dumps({"kind": item.kind, "message": item.message, "details": item.details}) + "\n")
            log.flush()

    worker = UpdateWorker(state, lambda: LocalFetcher(metadata, targets), "dev-1", "generic", post)
    worker.recover()
    worker.start()
    if len(argv) > 3:
        worker.submit(msgspec.json.decode(Path(argv[3]).read_bytes(), type=SignedEnvelope))
    while not worker.settled():
        time.sleep(0.01)
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
