"""The spool on its own: durable across a kill, bounded (samples go first), rows leave only
when acknowledged, a corrupt file is moved aside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.spool import Spool
from agent.update.journal import Journal
from agent.update.machine import UpdateState


def test_rows_leave_only_when_acknowledged_oldest_first(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    ids = [s.add("sample", f"s{i}".encode()) for i in range(5)]
    e = s.add("event", b"e0")
    rows = s.oldest("sample", 3)
    assert [r.payload for r in rows] == [b"s0", b"s1", b"s2"]
    assert [r.payload for r in s.oldest("sample", 10, exclude=[r.id for r in rows])] == [b"s3", b"s4"]
    s.ack(ids[:3])
    assert [r.payload for r in s.oldest("sample", 10)] == [b"s3", b"s4"]
    assert [r.id for r in s.oldest("event", 10)] == [e]
    assert s.stats().rows == 3 and s.stats().added_samples == 5 and s.stats().added_events == 1
    s.close()


def test_what_was_added_survives_a_kill_9(tmp_path: Path) -> None:
    code = ("import os, signal, sys; from agent.spool import Spool; s = Spool(sys.argv[1]);"
            "[s.add('event', b'x%d' % i) for i in range(50)]; os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spool.db")], check=False)
    assert proc.returncode == -9
    s = Spool(tmp_path / "spool.db")
    assert [r.payload for r in s.oldest("event", 100)] == [b"x%d" % i for i in range(50)]
    s.close()


def test_full_spool_drops_the_oldest_samples_then_events_and_counts(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_bytes=64 * 1024)
    for i in range(10):
        s.add("event", b"e" * 1000 + str(i).encode())
    for i in range(200):
        s.add("sample", b"s" * 1000 + str(i).encode())
    st = s.stats()
    assert st.bytes <= 64 * 1024 and st.dropped_samples > 0 and st.dropped_events == 0
    samples = s.oldest("sample", 1000)
    assert samples[-1].payload.endswith(b"199") and not samples[0].payload.endswith(b"s0")
    assert len(s.oldest("event", 100)) == 10
    for i in range(100):  # events only: they displace samples first, then the oldest events
        s.add("event", b"E" * 1000 + str(i).encode())
    st = s.stats()
    assert not s.oldest("sample", 1) and st.dropped_events > 0
    assert s.oldest("event", 1000)[-1].payload.endswith(b"99")
    s.close()


def test_a_corrupt_spool_is_moved_aside_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    s = Spool(path)
    assert s.stats().corrupt_files == 1 and s.stats().rows == 0
    s.add("event", b"after")
    s.close()
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside and os.path.getsize(tmp_path / aside[0]) == 2200


def test_a_corrupt_journal_is_moved_aside_and_the_agent_starts_idle(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.save(UpdateState(phase="downloading"))
    assert j.load().phase == "downloading"
    j.path.write_bytes(b"{half a journ")
    assert j.load() == UpdateState() and j.corrupt_count == 1
    assert [p for p in j.dir.iterdir() if p.name.startswith("journal.corrupt-")]
