"""The team-wide reads, sync and async, run last (after the other files' capsules came and
went): capsules.stats (current counts with the shared capsule running, peaks, a chart series),
capsules.usage (per-day CPU and RAM minutes over a date range), capsules.metrics of the shared
capsule (sampled points), and a wrong API key refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import await_until, wait_until
from wrenn import AsyncWrennClient, WrennAuthenticationError, WrennClient


@pytest.fixture(scope="module")
def client():
    with WrennClient() as c:
        yield c


def check_stats(stats, range_: str) -> None:
    assert stats.range == range_
    cur = stats.current
    assert cur is not None and cur.running_count >= 1, stats
    assert cur.vcpus_reserved >= 1 and cur.memory_mb_reserved >= 128, stats
    peaks = stats.peaks
    assert peaks is not None
    assert peaks.running_count >= cur.running_count
    assert peaks.vcpus >= cur.vcpus_reserved and peaks.memory_mb >= cur.memory_mb_reserved
    s = stats.series
    assert s is not None and len(s.labels) > 0, stats
    assert len(s.labels) == len(s.running) == len(s.vcpus) == len(s.memory_mb)
    assert s.labels == sorted(s.labels)


def test_stats(client, capsule):
    check_stats(client.capsules.stats(), "1h")
    check_stats(client.capsules.stats(range="5m"), "5m")
    check_stats(client.capsules.stats(range="24h"), "24h")


def test_usage(client, capsule):
    today = datetime.now(UTC).date()
    default = client.capsules.usage()
    assert default.to == today and default.from_ is not None and default.from_ < today
    week = client.capsules.usage(from_=today - timedelta(days=7), to=today)
    assert (week.from_, week.to) == (today - timedelta(days=7), today)
    points = week.points or []
    assert all(week.from_ <= p.date <= week.to for p in points), points
    assert all(p.cpu_minutes >= 0 and p.ram_mb_minutes >= 0 for p in points), points
    assert today in {p.date for p in points}, points

    # The capsules of this run are metered for today (the meter runs every few seconds).
    def metered_today():
        pts = client.capsules.usage(from_=today, to=today).points or []
        return [p for p in pts if p.date == today and p.cpu_minutes > 0 and p.ram_mb_minutes > 0]

    wait_until(metered_today, "today's usage of the running capsules", timeout=60, every=2)
    as_text = client.capsules.usage(from_=str(today), to=str(today))
    assert (as_text.from_, as_text.to) == (today, today)


def test_metrics(client, capsule):
    m = wait_until(
        lambda: (r := client.capsules.metrics(capsule.capsule_id)).points and r,
        "metric points of the shared capsule",
    )
    assert m.sandbox_id == capsule.capsule_id and m.range == "10m"
    for p in m.points:
        assert p.timestamp_unix > 0
        assert 0 <= p.cpu_pct <= 100
        assert p.mem_bytes > 0 and p.disk_bytes >= 0
    stamps = [p.timestamp_unix for p in m.points]
    assert stamps == sorted(stamps)
    assert client.capsules.metrics(capsule.capsule_id, range="2h").range == "2h"


def test_async_stats_usage_metrics(loop, capsule):
    async def body():
        async with AsyncWrennClient() as client:
            check_stats(await client.capsules.stats(range="6h"), "6h")
            today = datetime.now(UTC).date()
            usage = await client.capsules.usage(from_=today - timedelta(days=1), to=today)
            assert (usage.from_, usage.to) == (today - timedelta(days=1), today)

            async def points():
                m = await client.capsules.metrics(capsule.capsule_id, range="10m")
                return m.points

            assert all(p.mem_bytes > 0 for p in await await_until(points, "async metric points"))

    loop.run_until_complete(body())


def test_wrong_api_key_refused():
    with WrennClient(api_key="wrn_not-a-real-key") as client:
        with pytest.raises(WrennAuthenticationError):
            client.capsules.list()
