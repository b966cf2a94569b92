"""The table of messages awaiting the controller's `stored` confirmation (ADR 0091), on an
injected clock: what a confirmation releases, when a message falls due again, and how the wait
grows per attempt."""

from __future__ import annotations

from agent.unconfirmed import Unconfirmed, expand, ranges


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(timeout_s: float = 10.0) -> tuple[Unconfirmed[str], Clock]:
    clock = Clock()
    return Unconfirmed(timeout_s=timeout_s, max_timeout_s=40.0, clock=clock), clock


def test_ranges_are_inclusive_sorted_and_merged() -> None:
    assert ranges([5, 1, 2, 3, 9, 10, 3]) == [(1, 3), (5, 5), (9, 10)]
    assert ranges([]) == []
    assert list(expand([(1, 3), (7, 7)])) == [1, 2, 3, 7]


def test_a_hostile_range_is_cut_at_the_limit() -> None:
    assert sum(1 for _ in expand([(0, 10**15)], limit=1000)) == 1000


def test_a_message_leaves_when_all_its_seqs_are_confirmed() -> None:
    t, _ = table()
    t.sent("sample", [1, 2, 3], "batch-a")
    t.sent("event", [1], "event-1")
    assert len(t) == 2
    hits = t.confirm("sample", [1, 2])
    assert [(p.item, sorted(seqs)) for p, seqs in hits] == [("batch-a", [1, 2])]
    assert len(t) == 2  # seq 3 still unconfirmed
    t.confirm("sample", [3])
    assert [p.item for p in t] == ["event-1"]  # the event's seq 1 is another kind: untouched


def test_unknown_seqs_are_ignored() -> None:
    t, _ = table()
    t.sent("event", [4], "e4")
    assert t.confirm("event", [99]) == []
    assert t.confirm("sample", [4]) == []
    assert len(t) == 1


def test_an_overdue_message_is_handed_back_and_the_wait_doubles() -> None:
    t, clock = table(timeout_s=10.0)
    t.sent("event", [1], "e1")
    assert t.next_due() == 110.0
    clock.now = 109.9
    assert t.take_due() == []
    clock.now = 110.0
    due = t.take_due()
    assert [p.item for p in due] == ["e1"] and len(t) == 0
    again = t.sent("event", [1], "e1", attempts=due[0].attempts + 1)
    assert again.due == 110.0 + 20.0
    assert t.sent("event", [2], "e2", attempts=9).due == 110.0 + 40.0  # capped


def test_sending_a_seq_again_moves_it_to_the_new_message() -> None:
    t, _ = table()
    t.sent("sample", [1, 2], "old")
    t.sent("sample", [2, 3], "new")
    assert sorted(p.item for p in t) == ["new", "old"]
    hits = t.confirm("sample", [2])
    assert [p.item for p, _ in hits] == ["new"]
    t.sent("sample", [1], "newer")  # the old message's last seq moves: the old one is gone
    assert sorted(p.item for p in t) == ["new", "newer"]


def test_a_new_connection_makes_everything_due_now() -> None:
    t, _clock = table()
    t.sent("event", [1], "e1")
    t.sent("sample", [1], "s1", attempts=3)
    t.all_due()
    due = t.take_due()
    assert sorted(p.item for p in due) == ["e1", "s1"]
    assert {p.item: p.attempts for p in due} == {"e1": 1, "s1": 3}
    assert t.next_due() is None


def test_a_huge_range_confirms_what_it_covers_without_walking_it() -> None:
    t, _ = table()
    t.sent("sample", [5, 6, 10**12], "a")
    t.sent("sample", [3], "b")
    hits = t.confirm_ranges("sample", [(4, 10**15), (0, 0)])
    assert sorted((p.item, sorted(seqs)) for p, seqs in hits) == [("a", [5, 6, 10**12])]
    assert [p.item for p in t] == ["b"]
    assert [p.item for p, _ in t.confirm_ranges("sample", [(3, 3)])] == ["b"]  # narrow: walked
