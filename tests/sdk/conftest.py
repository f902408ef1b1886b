"""Shared set-up of the Python SDK suite: the official Wrenn SDK (0.3.0), sync and async,
against a running `wrenn up` whose address and API key are in WRENN_BASE_URL and
WRENN_API_KEY (crates/wrenn-cli/tests/sdk_e2e.rs starts it and runs this suite).

It owns the capsule that most tests share (sync and async handles on one VM), the event loop
the async tests run on, a deadline per test, small polling helpers and the port proxy's names
on loopback (WRENN_PROXY_DOMAIN, *.localhost); the tests judge.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from collections.abc import Callable

import pytest
from wrenn import AsyncCapsule, Capsule

# Port proxy names on loopback. The SDK builds http://{port}-{id}.{WRENN_PROXY_DOMAIN} (get_url,
# the code runner); the suite's domain is localhost with the API's port, and names under
# .localhost resolve to loopback (RFC 6761; hosts without systemd's resolver do not do it, so
# the suite does it in this process only).
if not os.environ.get("WRENN_PROXY_DOMAIN") and os.environ.get("WRENN_BASE_URL"):
    _port = os.environ["WRENN_BASE_URL"].rstrip("/").rsplit(":", 1)[-1]
    os.environ["WRENN_PROXY_DOMAIN"] = f"localhost:{_port}"
_system_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _system_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo

# One test's longest run: a hung call fails its test instead of the whole run.
TEST_DEADLINE_SEC = int(os.environ.get("WRENN_SDK_TEST_DEADLINE", "240"))


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [v for v in ("WRENN_API_KEY", "WRENN_BASE_URL") if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not set: run this suite through "
            "`cargo test -p wrenn-cli --test sdk_e2e`, which starts wrenn up"
        )


@pytest.fixture(autouse=True)
def _deadline(request: pytest.FixtureRequest):
    def expire(signum, frame):
        raise TimeoutError(f"{request.node.name}: still running after {TEST_DEADLINE_SEC} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_DEADLINE_SEC)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def loop():
    """The event loop of every async test (async clients stay bound to one loop)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def capsule():
    """A running capsule shared by the command, file, stats and metrics tests, each of
    which works in a directory of its own."""
    c = Capsule.create(wait=True)
    yield c
    c.destroy()


@pytest.fixture(scope="session")
def acapsule(loop, capsule):
    """An async handle on the shared capsule (AsyncCapsule.connect to a running one)."""
    return loop.run_until_complete(AsyncCapsule.connect(capsule.capsule_id))


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0, every: float = 0.3):
    """Calls `check` until it returns something true and returns that; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {got!r})")
        time.sleep(every)


async def await_until(check, what: str, timeout: float = 30.0, every: float = 0.3):
    """Async `wait_until`: awaits `check()` until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {got!r})")
        await asyncio.sleep(every)


def random_bytes(size: int, seed: int) -> bytes:
    """Bytes no server could fake, the same for a seed."""
    return random.Random(seed).randbytes(size)
