"""A watcher's mailbox: a wait ends with a message, or with None at its own timeout, whatever timer an
earlier wait left set (the mailbox keeps one timer across waits rather than one per wait)."""

from __future__ import annotations

import asyncio

from dspy_registry.server.watch import Mailbox

MESSAGE = (7, b"change")


async def _woken_at_once(mailbox: Mailbox, timeout: float) -> None:
    """A wait of `timeout` seconds that a message ends at once (its timer stays set)."""
    asyncio.get_running_loop().call_soon(mailbox.put_nowait, MESSAGE)
    assert await mailbox.get(timeout) == MESSAGE


async def test_a_wait_times_out_at_its_own_deadline_not_an_earlier_waits() -> None:
    loop = asyncio.get_running_loop()
    mailbox = Mailbox(4)
    await _woken_at_once(mailbox, 0.05)  # leaves a timer for 50 ms from then
    started = loop.time()
    assert await mailbox.get(0.3) is None
    # Not ended by the first wait's timer: the progress message comes after the interval, not before.
    assert loop.time() - started >= 0.3 - 0.002


async def test_a_short_wait_after_a_long_one_times_out_at_its_own_deadline() -> None:
    mailbox = Mailbox(4)
    await _woken_at_once(mailbox, 3600.0)  # a timer an hour away
    async with asyncio.timeout(30):  # an hour's timer would fail this
        assert await mailbox.get(0.05) is None


async def test_messages_come_in_order_and_a_full_mailbox_refuses_one_more() -> None:
    mailbox = Mailbox(2)
    assert mailbox.put_nowait((1, b"a")) and mailbox.put_nowait((2, b"b"))
    assert not mailbox.put_nowait((3, b"c"))
    assert [await mailbox.get(0.05), await mailbox.get(0.05)] == [(1, b"a"), (2, b"b")]
    assert await mailbox.get(0.05) is None
    mailbox.close()  # drops its timer: nothing is left scheduled
    assert mailbox.empty()
