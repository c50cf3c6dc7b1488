"""The read cache never serves what a commit made stale."""

from __future__ import annotations

from dspy_registry.server.api.response_cache import ResponseCache
from dspy_registry.server.domain.model import Event


def test_a_commit_drops_every_entry_of_its_program_only() -> None:
    cache = ResponseCache()
    for key in ("programs/a/versions/latest", "programs/a/versions/1.0.0"):
        cache.put("a", key, b"a", cache.generation("a"))
    cache.put("b", "programs/b/versions/latest", b"b", cache.generation("b"))
    cache.on_commit([Event(kind="program_version.yanked", resource="programs/a/versions/1.0.0")])
    assert cache.get("programs/a/versions/latest") is None and cache.get("programs/a/versions/1.0.0") is None
    assert cache.get("programs/b/versions/latest") == b"b"


def test_a_read_that_raced_a_commit_is_not_cached() -> None:
    cache = ResponseCache()
    generation = cache.generation("a")  # the read starts
    cache.on_commit([Event(kind="program_version.registered", resource="programs/a/versions/2.0.0")])
    cache.put("a", "programs/a/versions/latest", b"stale", generation)  # the read ends
    assert cache.get("programs/a/versions/latest") is None


def test_capacity_is_bounded() -> None:
    cache = ResponseCache(capacity=3)
    for i in range(10):
        cache.put(f"p{i}", f"programs/p{i}/versions/latest", b"x", cache.generation(f"p{i}"))
    assert len(cache) == 3 and cache.get("programs/p9/versions/latest") == b"x"
    assert cache.get("programs/p0/versions/latest") is None


def test_clear_makes_every_in_flight_read_stale() -> None:
    cache = ResponseCache()
    generation = cache.generation("a")
    cache.put("b", "programs/b/versions/latest", b"b", cache.generation("b"))
    cache.clear()
    cache.put("a", "programs/a/versions/latest", b"a", generation)
    assert len(cache) == 0


def test_bytes_are_bounded_too() -> None:
    """Entries are counted and weighed: ten thousand answers of a large version's metadata would be
    hundreds of MiB."""
    cache = ResponseCache(capacity=1000, max_bytes=64 * 100)
    for i in range(100):
        cache.put(f"p{i}", f"programs/p{i}/versions/latest", b"x" * 100, cache.generation(f"p{i}"))
    assert cache.size == 64 * 100 and len(cache) == 64  # the oldest went, by weight
    assert cache.get("programs/p99/versions/latest") is not None
    assert cache.get("programs/p0/versions/latest") is None
    cache.put("big", "programs/big/versions/latest", b"x" * 1000, cache.generation("big"))
    assert cache.get("programs/big/versions/latest") is None  # larger than a 64th: not cached
    cache.on_commit([Event(kind="program_version.yanked", resource="programs/p99/versions/1.0.0")])
    assert cache.size == 63 * 100
