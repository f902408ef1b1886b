"""capsule.pty(), sync and async: a shell on a real terminal in the shared capsule (a tty,
TERM, envs and cwd), input and output as raw bytes, resize seen by `stty size`, the exit
code, and leaving a terminal then reconnecting by its tag with its earlier output replayed
(pty_connect), and a terminal surviving a pause and resume of its capsule."""

from __future__ import annotations

import time

from wrenn import Capsule


def read_until(term, want: bytes, timeout: float = 60.0) -> bytes:
    """Output of `term` until `want` appears; fails after `timeout`."""
    out = b""
    deadline = time.monotonic() + timeout
    for event in term:
        if event.type == "output":
            out += event.data
        elif event.type in ("exit", "error"):
            out += f"<{event.type} {event.exit_code} {event.data}>".encode()
        if want in out:
            return out
        assert time.monotonic() < deadline, f"no {want!r} in {out!r}"
    raise AssertionError(f"terminal ended before {want!r}: {out!r}")


def test_pty_shell_input_output_resize_env_exit(capsule):
    with capsule.pty(cmd="/bin/sh", cols=100, rows=30, envs={"GREETING": "hi-pty"}, cwd="/tmp") as term:
        started = next(iter(term))
        assert started.type == "started" and started.tag and started.pid
        term.write(b'tty; echo "T=$TERM G=$GREETING D=$(pwd)"; stty size\n')
        out = read_until(term, b"30 100")
        assert b"/dev/pts/" in out and b"T=xterm-256color G=hi-pty D=/tmp" in out, out
        term.resize(cols=132, rows=43)
        term.write(b"stty size\n")
        read_until(term, b"43 132")
        term.write(b"exit 7\n")
        ends = [e for e in term if e.type == "exit"]
        assert ends and ends[-1].exit_code == 7


def test_pty_reconnect_by_tag_replays_output(capsule):
    with capsule.pty(cmd="/bin/sh") as term:
        started = next(iter(term))
        tag = started.tag
        term.write(b"echo before-$((40+2))\n")
        read_until(term, b"before-42")
        # Leave without killing: close the socket only.
        term._ws.close()
    with capsule.pty_connect(tag) as again:
        first = next(iter(again))
        assert first.type == "started" and first.tag == tag
        read_until(again, b"before-42")
        again.write(b"echo still-$((1+1))\n")
        read_until(again, b"still-2")


def test_pty_survives_pause_and_resume():
    c = Capsule.create(wait=True)
    try:
        with c.pty(cmd="/bin/sh") as term:
            tag = next(iter(term)).tag
            term.write(b"X=kept-state; echo set\n")
            read_until(term, b"set")
            term._ws.close()
        c.pause(wait=True)
        c.resume(wait=True)
        with c.pty_connect(tag) as again:
            assert next(iter(again)).tag == tag
            again.write(b'echo "x=$X"\n')
            read_until(again, b"x=kept-state")
    finally:
        c.destroy()


def test_async_pty(loop, acapsule):
    async def go():
        async with acapsule.pty(cmd="/bin/sh") as term:
            out = b""
            await term.write(b"echo async-$((2*21))\n")
            async for event in term:
                if event.type == "output":
                    out += event.data
                if b"async-42" in out:
                    break
            await term.write(b"exit 0\n")
            async for event in term:
                if event.type == "exit":
                    return out, event.exit_code
        return out, None

    out, code = loop.run_until_complete(go())
    assert b"async-42" in out and code == 0
