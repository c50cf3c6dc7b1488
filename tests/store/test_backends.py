"""What each backend promises beyond the conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspy_registry.server.errors import StoreUnavailable
from dspy_registry.server.store.base import open_store


async def test_a_second_server_on_the_same_file_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    first = open_store(url)
    await first.open()
    second = open_store(url)
    with pytest.raises(StoreUnavailable, match="in use by another dspy-registry server"):
        await second.open()
    await first.close()
    await second.open()  # free again once the first one closed
    await second.close()


def test_relative_and_absolute_urls() -> None:
    from dspy_registry.server.store.sqlite import path_from_url

    assert path_from_url("sqlite:///.dspy-registry/registry.db") == ".dspy-registry/registry.db"
    assert path_from_url("sqlite:////var/lib/r.db") == "/var/lib/r.db"
    with pytest.raises(ValueError):
        path_from_url("sqlite://")


async def test_an_unreachable_postgres_is_store_unavailable_not_a_driver_error() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailable):
        await store.open()
