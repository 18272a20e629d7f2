"""The mailbox that carries Train's reports to Tune (one actor per tuning run instead of
Ray's queue actor per trial): reports arrive in order, per key, and none is lost to a
timed-out wait. The class is exercised directly on an event loop; the integration tests
run it as the Ray actor."""

from __future__ import annotations

import asyncio

from lexiray.channel import TrialMailbox


def test_reports_arrive_in_order_per_key_and_waits_time_out_empty():
    async def scenario():
        mailbox = TrialMailbox()
        assert await mailbox.get("a", timeout=0.01) is None
        assert await mailbox.get("a", timeout=0) is None
        sender = asyncio.ensure_future(mailbox.put("a", {"step": 1}))
        await mailbox.put("b", {"step": 9})
        assert await mailbox.get("a", timeout=1) == {"step": 1}
        await sender
        second = asyncio.ensure_future(mailbox.put("a", {"step": 2}))
        third = asyncio.ensure_future(mailbox.put("a", {"step": 3}))  # waits: one report per key at a time
        await asyncio.sleep(0)
        assert await mailbox.get("a", timeout=0) == {"step": 2}
        assert await mailbox.get("a", timeout=1) == {"step": 3}
        await asyncio.gather(second, third)
        assert await mailbox.get("b", timeout=0) == {"step": 9}
        mailbox.forget("a")
        assert "a" not in mailbox.queues

    asyncio.run(scenario())


def test_a_report_put_while_a_wait_times_out_is_kept_for_the_next_get():
    async def scenario():
        mailbox = TrialMailbox()
        for attempt in range(200):  # puts landing at every point around the timeout
            waiting = asyncio.ensure_future(mailbox.get("k", timeout=0.001))
            await asyncio.sleep(0.001 * (attempt % 3) / 2)
            await mailbox.put("k", {"n": attempt})
            first = await waiting
            report = first if first is not None else await mailbox.get("k", timeout=1)
            assert report == {"n": attempt}

    asyncio.run(scenario())
