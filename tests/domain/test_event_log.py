from __future__ import annotations

from dspy_registry.server.domain.model import Event, by_revision


def test_events_are_grouped_one_revision_per_group_in_log_order() -> None:
    events = [
        Event(kind="a.created", resource="a", revision=3),
        Event(kind="a.updated", resource="a", revision=3),
        Event(kind="b.created", resource="b", revision=4),
        Event(kind="c.created", resource="c", revision=7),
        Event(kind="c.updated", resource="c", revision=7),
    ]

    groups = by_revision(events)

    assert [revision for revision, _ in groups] == [3, 4, 7]
    assert [[e.kind for e in group] for _, group in groups] == [
        ["a.created", "a.updated"],
        ["b.created"],
        ["c.created", "c.updated"],
    ]
    assert by_revision([]) == []
