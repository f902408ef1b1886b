"""Capsule and AsyncCapsule lifecycles, each on a capsule of its own, watched through the
team's event stream (client.events.stream): create with sizes, get_info (instance and by id),
list, ping, is_running, pause(wait=True), connect resuming a paused capsule with its files
kept, destroy(wait=True). The tests of one lifecycle run in order and share its capsule."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest
from conftest import await_until
from wrenn import AsyncCapsule, AsyncWrennClient, Capsule, WrennClient, WrennNotFoundError
from wrenn.models import SSEEvent, Status

EVENT_WAIT_SEC = 60.0


def matching(ev: SSEEvent, kind: str, capsule_id: str) -> bool:
    return ev.event == kind and ev.resource is not None and ev.resource.id == capsule_id


def check_action_event(ev: SSEEvent, capsule_id: str, status: Status) -> None:
    """An action of this API key on the capsule, with the capsule as it was left."""
    assert ev.outcome == "success" and ev.timestamp is not None, ev
    assert ev.resource.type == "capsule" and ev.actor is not None, ev
    assert ev.actor.type == "api_key", ev
    assert ev.sandbox is not None and (ev.sandbox.id, ev.sandbox.status) == (capsule_id, status), ev


def gone_or_stopped(get) -> bool:
    try:
        return get().status == Status.stopped
    except WrennNotFoundError:
        return True


class SyncEvents:
    """The team's event stream read on a thread of its own, from before the capsule exists."""

    def __init__(self) -> None:
        self.client = WrennClient()
        self.queue: queue.Queue = queue.Queue()
        self.seen: list[SSEEvent] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for ev in self.client.events.stream():
                self.queue.put(ev)
        except BaseException as e:  # the test reports it
            self.queue.put(e)

    def wait_for(self, kind: str, capsule_id: str) -> SSEEvent:
        for ev in self.seen:
            if matching(ev, kind, capsule_id):
                return ev
        deadline = time.monotonic() + EVENT_WAIT_SEC
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {kind} event for {capsule_id}; seen: {[e.event for e in self.seen]}"
                )
            try:
                ev = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(ev, BaseException):
                raise AssertionError(f"event stream ended: {ev!r}")
            self.seen.append(ev)
            if matching(ev, kind, capsule_id):
                return ev


@pytest.fixture(scope="module")
def events():
    ev = SyncEvents()
    # The subscription is in place before anything happens: its first frame says so.
    first = ev.queue.get(timeout=EVENT_WAIT_SEC)
    assert isinstance(first, SSEEvent) and first.event == "connected", first
    return ev


@pytest.fixture(scope="module")
def life(events):
    c = Capsule.create(template="minimal", vcpus=1, memory_mb=512, timeout=0, wait=True)
    yield c
    try:
        Capsule.destroy(c.capsule_id)
    except WrennNotFoundError:
        pass


# ── sync ────────────────────────────────────────────────────────────────


def test_create_waits_until_running(life):
    info = life.info
    assert info is not None and info.id == life.capsule_id
    assert info.status == Status.running
    assert (info.template, info.vcpus, info.memory_mb, info.timeout_sec) == ("minimal", 1, 512, 0)
    assert info.created_at is not None


def test_create_event(events, life):
    ev = events.wait_for("capsule.create", life.capsule_id)
    check_action_event(ev, life.capsule_id, Status.running)


def test_get_info_list_ping_is_running(life):
    mine = life.get_info()
    assert (mine.id, mine.status) == (life.capsule_id, Status.running)
    by_id = Capsule.get_info(life.capsule_id)
    assert (by_id.id, by_id.status, by_id.memory_mb) == (life.capsule_id, Status.running, 512)
    # The disk's capacity: at least the size of the guest's root filesystem on it.
    root_mb = int(life.commands.run("df -m --output=size / | tail -n1").stdout.strip())
    assert by_id.disk_size_mb is not None and by_id.disk_size_mb >= root_mb > 0, by_id
    listed = {c.id: c for c in Capsule.list()}
    assert life.capsule_id in listed and listed[life.capsule_id].status == Status.running
    life.ping()
    assert life.is_running()
    with pytest.raises(WrennNotFoundError):
        Capsule.get_info("cl-doesnotexist0000")


def test_pause_waits_until_paused(life):
    life.files.write("/root/kept.txt", "written before the pause")
    info = life.pause(wait=True)
    assert info.status == Status.paused
    assert not life.is_running()
    assert Capsule.get_info(life.capsule_id).status == Status.paused


def test_pause_event(events, life):
    ev = events.wait_for("capsule.pause", life.capsule_id)
    check_action_event(ev, life.capsule_id, Status.paused)


def test_connect_resumes_paused_capsule(life):
    again = Capsule.connect(life.capsule_id)
    assert again.capsule_id == life.capsule_id
    assert again.is_running()
    assert again.files.read("/root/kept.txt") == "written before the pause"
    r = again.commands.run("echo after resume")
    assert (r.stdout, r.exit_code) == ("after resume\n", 0)


def test_destroy_waits_until_gone(life):
    life.destroy(wait=True)
    assert gone_or_stopped(lambda: Capsule.get_info(life.capsule_id))
    assert all(
        c.status != Status.running for c in Capsule.list() if c.id == life.capsule_id
    )
    with WrennClient() as client, pytest.raises(WrennNotFoundError):
        client.capsules.metrics(life.capsule_id)


def test_pause_resume_by_id_and_context_manager():
    with Capsule.create() as c:
        cid = c.capsule_id
        assert Capsule.pause(cid, wait=True).status == Status.paused
        assert Capsule.resume(cid, wait=True).status == Status.running
        assert c.commands.run("echo back").stdout == "back\n"
    # Leaving the block destroyed it.
    assert gone_or_stopped(lambda: Capsule.get_info(cid))


# ── async ───────────────────────────────────────────────────────────────


class AsyncEvents:
    """The team's event stream read by a task on the suite's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.client = AsyncWrennClient()
        self.seen: list[SSEEvent] = []
        self.error: BaseException | None = None
        self.task = loop.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for ev in self.client.events.stream():
                self.seen.append(ev)
        except BaseException as e:
            self.error = e
            raise

    async def wait_for(self, kind: str, capsule_id: str) -> SSEEvent:
        deadline = time.monotonic() + EVENT_WAIT_SEC
        while True:
            for ev in self.seen:
                if matching(ev, kind, capsule_id):
                    return ev
            if self.error is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {kind} event for {capsule_id} (stream error: {self.error!r}); "
                    f"seen: {[e.event for e in self.seen]}"
                )
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def aevents(loop):
    ev = AsyncEvents(loop)

    async def connected():
        return ev.seen or ev.error

    # The subscription is in place before anything happens: its first frame says so.
    loop.run_until_complete(await_until(connected, "the event stream's first frame"))
    assert ev.seen[0].event == "connected", ev.seen
    yield ev
    ev.task.cancel()
    loop.run_until_complete(asyncio.gather(ev.task, return_exceptions=True))
    loop.run_until_complete(ev.client.aclose())


@pytest.fixture(scope="module")
def alife(loop, aevents):
    c = loop.run_until_complete(AsyncCapsule.create(memory_mb=512, wait=True))
    yield c
    try:
        loop.run_until_complete(AsyncCapsule.destroy(c.capsule_id))
    except WrennNotFoundError:
        pass


def test_async_create_and_event(loop, aevents, alife):
    info = alife.info
    assert info is not None and (info.id, info.status) == (alife.capsule_id, Status.running)
    assert info.memory_mb == 512
    ev = loop.run_until_complete(aevents.wait_for("capsule.create", alife.capsule_id))
    check_action_event(ev, alife.capsule_id, Status.running)


def test_async_get_info_list_ping_is_running(loop, alife):
    async def body():
        assert (await alife.get_info()).status == Status.running
        assert (await AsyncCapsule.get_info(alife.capsule_id)).id == alife.capsule_id
        assert alife.capsule_id in {c.id for c in await AsyncCapsule.list()}
        await alife.ping()
        assert await alife.is_running()
        with pytest.raises(WrennNotFoundError):
            await AsyncCapsule.get_info("cl-doesnotexist0000")

    loop.run_until_complete(body())


def test_async_pause_event_and_connect_resumes(loop, aevents, alife):
    async def body():
        await alife.files.write("/root/async-kept.txt", "kept")
        info = await alife.pause(wait=True)
        assert info.status == Status.paused
        assert not await alife.is_running()
        ev = await aevents.wait_for("capsule.pause", alife.capsule_id)
        check_action_event(ev, alife.capsule_id, Status.paused)
        again = await AsyncCapsule.connect(alife.capsule_id)
        assert await again.is_running()
        assert await again.files.read("/root/async-kept.txt") == "kept"

    loop.run_until_complete(body())


def test_async_destroy_waits_until_gone(loop, alife):
    async def body():
        await alife.destroy(wait=True)
        try:
            info = await AsyncCapsule.get_info(alife.capsule_id)
            assert info.status == Status.stopped, info
        except WrennNotFoundError:
            pass

    loop.run_until_complete(body())


def test_async_pause_resume_by_id_and_context_manager(loop):
    async def body():
        async with await AsyncCapsule.create() as c:
            cid = c.capsule_id
            assert (await AsyncCapsule.pause(cid, wait=True)).status == Status.paused
            assert (await AsyncCapsule.resume(cid, wait=True)).status == Status.running
            assert (await c.commands.run("echo back")).stdout == "back\n"
        try:
            assert (await AsyncCapsule.get_info(cid)).status == Status.stopped
        except WrennNotFoundError:
            pass

    loop.run_until_complete(body())
