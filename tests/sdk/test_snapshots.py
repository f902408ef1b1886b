"""Snapshots, sync and async: a template made from a capsule (which the snapshot consumes),
listed, booted into a new capsule that has the files written before, refused under a taken
name unless overwrite is asked, overwritten, deleted. The sync tests run in order and share
one template name."""

from __future__ import annotations

import pytest
from wrenn import (
    AsyncCapsule,
    AsyncWrennClient,
    Capsule,
    WrennClient,
    WrennError,
    WrennNotFoundError,
)
from wrenn.models import Status

NAME = "sdk-snap"


def consumed(capsule_id: str) -> bool:
    try:
        return Capsule.get_info(capsule_id).status == Status.stopped
    except WrennNotFoundError:
        return True


@pytest.fixture(scope="module")
def client():
    with WrennClient() as c:
        yield c


def test_snapshot_from_capsule(client):
    src = Capsule.create(wait=True)
    try:
        src.files.write("/root/version.txt", "v1")
        t = src.create_snapshot(name=NAME)
    except BaseException:
        Capsule.destroy(src.capsule_id)
        raise
    assert (t.name, t.type) == (NAME, "snapshot")
    assert (t.vcpus, t.memory_mb) == (src.info.vcpus, src.info.memory_mb)
    assert t.created_at is not None
    assert consumed(src.capsule_id)


def test_snapshot_listed(client):
    snaps = {t.name: t for t in client.snapshots.list(type="snapshot")}
    assert NAME in snaps and snaps[NAME].type == "snapshot"
    everything = {t.name: t for t in client.snapshots.list()}
    assert NAME in everything
    assert any(t.type == "base" for t in everything.values()), everything
    assert all(t.type == "base" for t in client.snapshots.list(type="base"))


def test_capsule_from_snapshot_then_overwrite(client):
    with Capsule.create(template=NAME, wait=True) as c:
        assert c.info.template == NAME
        assert c.files.read("/root/version.txt") == "v1"
        c.files.write("/root/version.txt", "v2")
        # /v1/snapshots keeps its own error codes (snapshot_exists, template_not_found), so
        # the SDK raises its base class here; the status says what happened.
        with pytest.raises(WrennError) as refused:
            c.create_snapshot(name=NAME)
        assert refused.value.status_code == 409 and NAME in refused.value.message
        # The refused snapshot left the capsule as it was.
        assert c.is_running()
        t = client.snapshots.create(c.capsule_id, name=NAME, overwrite=True)
        assert t.name == NAME
        assert consumed(c.capsule_id)


def test_overwritten_snapshot_boots_new_state(client):
    c = Capsule.create(template=NAME, wait=True)
    try:
        assert c.files.read("/root/version.txt") == "v2"
    finally:
        c.destroy(wait=True)


def test_snapshot_delete(client):
    client.snapshots.delete(NAME)
    assert NAME not in {t.name for t in client.snapshots.list()}
    with pytest.raises(WrennError) as missing:
        client.snapshots.delete(NAME)
    assert missing.value.status_code == 404
    with pytest.raises(WrennNotFoundError):
        Capsule.create(template=NAME)


def test_async_snapshot_generated_name(loop):
    async def body():
        async with AsyncWrennClient() as client:
            src = await AsyncCapsule.create(wait=True)
            try:
                await src.files.write("/root/from-async.txt", "async snapshot")
                t = await client.snapshots.create(src.capsule_id)
            except BaseException:
                await AsyncCapsule.destroy(src.capsule_id)
                raise
            assert t.name and t.type == "snapshot", t
            assert t.name in {s.name for s in await client.snapshots.list(type="snapshot")}
            c = await AsyncCapsule.create(template=t.name, wait=True)
            try:
                assert await c.files.read("/root/from-async.txt") == "async snapshot"
            finally:
                await c.destroy(wait=True)
            await client.snapshots.delete(t.name)
            assert t.name not in {s.name for s in await client.snapshots.list()}

    loop.run_until_complete(body())
