"""Times on the wire: the converters' Timestamps are protobuf's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from dspy_registry.server.api.convert.common import timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 7, 10, 0, 30, 603042, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch: nanos stay positive
        datetime(2026, 1, 1, 5, 0, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2020, 2, 2, 2, 2, 2, 999999),  # naive: UTC, as FromDatetime takes it
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_timestamp_is_what_from_datetime_makes(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected
