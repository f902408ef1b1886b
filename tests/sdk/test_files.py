"""capsule.files, sync and async: text and binary (every byte value) round trips, parents made
by a write, streamed upload and download of a few MB, listing with depth and the entry
fields, make_dir (parents, already there), exists and remove of files and directories.
What the SDK reports is checked against the guest itself through commands."""

from __future__ import annotations

import hashlib

import pytest
from conftest import random_bytes
from wrenn import FileEntry, WrennNotFoundError

ALL_BYTES = bytes(range(256)) * 4 + bytes(reversed(range(256)))
BIG = 4 * 1024 * 1024 + 123  # a few MB, not a multiple of any chunk size
CHUNK = 64 * 1024


def guest_sha256(capsule, path: str) -> str:
    r = capsule.commands.run(f"sha256sum {path}")
    assert r.exit_code == 0, r
    return r.stdout.split()[0]


def fresh_dir(capsule, d: str) -> str:
    r = capsule.commands.run(f"rm -rf {d} && mkdir -p {d}")
    assert r.exit_code == 0, r
    return d


# ── sync ────────────────────────────────────────────────────────────────


def test_write_read_text(capsule):
    d = fresh_dir(capsule, "/tmp/sdk-files-text")
    text = "héllo wörld ✓\nsecond line\n"
    capsule.files.write(f"{d}/t.txt", text)
    assert capsule.files.read(f"{d}/t.txt") == text
    assert capsule.files.read_bytes(f"{d}/t.txt") == text.encode()
    assert capsule.commands.run(f"cat {d}/t.txt").stdout == text
    # A name with spaces and non-ASCII letters, and an empty file.
    capsule.files.write(f"{d}/név with space.txt", "")
    assert capsule.files.read_bytes(f"{d}/név with space.txt") == b""
    names = {e.name: e for e in capsule.files.list(d)}
    assert set(names) == {"t.txt", "név with space.txt"}
    assert names["név with space.txt"].size == 0
    assert capsule.commands.run(f"stat -c %s '{d}/név with space.txt'").stdout == "0\n"


def test_write_read_every_byte_value(capsule):
    d = fresh_dir(capsule, "/tmp/sdk-files-bytes")
    capsule.files.write(f"{d}/all.bin", ALL_BYTES)
    assert capsule.files.read_bytes(f"{d}/all.bin") == ALL_BYTES
    assert guest_sha256(capsule, f"{d}/all.bin") == hashlib.sha256(ALL_BYTES).hexdigest()
    # Overwriting replaces the whole file.
    capsule.files.write(f"{d}/all.bin", b"\x00\xff")
    assert capsule.files.read_bytes(f"{d}/all.bin") == b"\x00\xff"


def test_write_creates_parent_dirs(capsule):
    d = fresh_dir(capsule, "/tmp/sdk-files-parents")
    capsule.files.write(f"{d}/a/b/c/leaf.txt", "deep")
    assert capsule.files.read(f"{d}/a/b/c/leaf.txt") == "deep"
    assert capsule.commands.run(f"test -d {d}/a/b/c").exit_code == 0


def test_stream_upload_download_few_mb(capsule):
    d = fresh_dir(capsule, "/tmp/sdk-files-stream")
    data = random_bytes(BIG, seed=1)
    capsule.files.upload_stream(
        f"{d}/big.bin", (data[i : i + CHUNK] for i in range(0, len(data), CHUNK))
    )
    assert guest_sha256(capsule, f"{d}/big.bin") == hashlib.sha256(data).hexdigest()
    chunks = list(capsule.files.download_stream(f"{d}/big.bin"))
    assert b"".join(chunks) == data


def test_list_depth_and_entry_fields(capsule):
    d = fresh_dir(capsule, "/tmp/sdk-files-list")
    r = capsule.commands.run(
        f"cd {d} && mkdir -p sub/inner && printf 12345 > sub/five.txt && printf x > top.txt"
        " && printf deep > sub/inner/deep.txt && chmod 750 top.txt && ln -s top.txt link"
    )
    assert r.exit_code == 0, r
    owner, group, mtime, perms = capsule.commands.run(
        f"stat -c '%U %G %Y %A' {d}/top.txt"
    ).stdout.split()

    entries = {e.name: e for e in capsule.files.list(d)}
    assert set(entries) == {"sub", "top.txt", "link"}, entries
    top = entries["top.txt"]
    assert isinstance(top, FileEntry)
    assert (top.path, top.type, top.size) == (f"{d}/top.txt", "file", 1)
    assert top.mode is not None and top.mode & 0o777 == 0o750
    assert top.permissions == perms == "-rwxr-x---"
    assert (top.owner, top.group, top.modified_at) == (owner, group, int(mtime))
    sub = entries["sub"]
    assert (sub.path, sub.type) == (f"{d}/sub", "directory")
    assert sub.permissions is not None and sub.permissions.startswith("d")
    link = entries["link"]
    assert link.symlink_target is not None and link.symlink_target.endswith("top.txt"), link

    two = {e.path: e for e in capsule.files.list(d, depth=2)}
    assert set(two) == {
        f"{d}/sub",
        f"{d}/top.txt",
        f"{d}/link",
        f"{d}/sub/five.txt",
        f"{d}/sub/inner",
    }, sorted(two)
    five = two[f"{d}/sub/five.txt"]
    assert (five.name, five.type, five.size) == ("five.txt", "file", 5)

    with pytest.raises(WrennNotFoundError):
        capsule.files.list(f"{d}/missing")


def test_make_dir_with_parents_and_existing(capsule):
    d = fresh_dir(capsule, "/tmp/sdk-files-mkdir")
    entry = capsule.files.make_dir(f"{d}/x/y/z")
    assert (entry.name, entry.path, entry.type) == ("z", f"{d}/x/y/z", "directory")
    assert capsule.commands.run(f"test -d {d}/x/y/z").exit_code == 0
    assert capsule.files.exists(f"{d}/x/y/z")
    again = capsule.files.make_dir(f"{d}/x/y/z")
    assert (again.name, again.type) == ("z", "directory")


def test_exists_and_remove_file_and_directory(capsule):
    d = fresh_dir(capsule, "/tmp/sdk-files-remove")
    capsule.files.write(f"{d}/f.txt", "bye")
    capsule.files.write(f"{d}/tree/a/b.txt", "nested")
    assert capsule.files.exists(f"{d}/f.txt")
    assert not capsule.files.exists(f"{d}/nothing")
    assert not capsule.files.exists(f"{d}/no/such/dir")
    # Under a regular file: the listed parent is no directory, which is not found too.
    assert not capsule.files.exists(f"{d}/f.txt/x")
    assert not capsule.files.exists(f"{d}/f.txt/x/y")

    capsule.files.remove(f"{d}/f.txt")
    assert not capsule.files.exists(f"{d}/f.txt")
    with pytest.raises(WrennNotFoundError):
        capsule.files.read(f"{d}/f.txt")

    capsule.files.remove(f"{d}/tree")
    assert not capsule.files.exists(f"{d}/tree")
    assert capsule.commands.run(f"test -e {d}/tree").exit_code != 0
    with pytest.raises(WrennNotFoundError):
        capsule.files.remove(f"{d}/tree")


# ── async ───────────────────────────────────────────────────────────────


def test_async_write_read_text_and_bytes(loop, capsule, acapsule):
    d = fresh_dir(capsule, "/tmp/sdk-afiles")

    async def body():
        await acapsule.files.write(f"{d}/t.txt", "async ✓\n")
        assert await acapsule.files.read(f"{d}/t.txt") == "async ✓\n"
        await acapsule.files.write(f"{d}/new/parent/all.bin", ALL_BYTES)
        assert await acapsule.files.read_bytes(f"{d}/new/parent/all.bin") == ALL_BYTES
        with pytest.raises(WrennNotFoundError):
            await acapsule.files.read(f"{d}/missing.txt")

    loop.run_until_complete(body())
    assert guest_sha256(capsule, f"{d}/new/parent/all.bin") == hashlib.sha256(ALL_BYTES).hexdigest()


def test_async_stream_upload_download_few_mb(loop, capsule, acapsule):
    d = fresh_dir(capsule, "/tmp/sdk-afiles-stream")
    data = random_bytes(BIG, seed=2)

    async def chunks():
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]

    async def body():
        await acapsule.files.upload_stream(f"{d}/big.bin", chunks())
        got = bytearray()
        async for chunk in acapsule.files.download_stream(f"{d}/big.bin"):
            got += chunk
        return bytes(got)

    got = loop.run_until_complete(body())
    assert guest_sha256(capsule, f"{d}/big.bin") == hashlib.sha256(data).hexdigest()
    assert got == data


def test_async_list_mkdir_exists_remove(loop, capsule, acapsule):
    d = fresh_dir(capsule, "/tmp/sdk-afiles-tree")
    capsule.commands.run(f"mkdir -p {d}/a/b && printf abc > {d}/a/f.txt")

    async def body():
        one = {e.name: e for e in await acapsule.files.list(d)}
        assert set(one) == {"a"} and one["a"].type == "directory"
        two = {e.path: e for e in await acapsule.files.list(d, depth=2)}
        assert set(two) == {f"{d}/a", f"{d}/a/b", f"{d}/a/f.txt"}
        assert two[f"{d}/a/f.txt"].size == 3
        entry = await acapsule.files.make_dir(f"{d}/m/n")
        assert (entry.name, entry.type) == ("n", "directory")
        again = await acapsule.files.make_dir(f"{d}/m/n")
        assert again.name == "n"
        assert await acapsule.files.exists(f"{d}/m/n")
        await acapsule.files.remove(f"{d}/a")
        assert not await acapsule.files.exists(f"{d}/a")
        with pytest.raises(WrennNotFoundError):
            await acapsule.files.remove(f"{d}/a")

    loop.run_until_complete(body())
