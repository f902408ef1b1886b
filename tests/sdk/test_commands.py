"""capsule.commands, sync and async: foreground runs (exit code, stdout, stderr, envs, cwd),
background processes (pid, tag, list, kill), the exec stream, and attaching to a running
process with its earlier output. Everything runs in the shared capsule."""

from __future__ import annotations

import pytest
from conftest import await_until, wait_until
from wrenn import CommandHandle, CommandResult, WrennNotFoundError


def stdout_of(events) -> str:
    return "".join(e.data for e in events if e.type == "stdout")


def stderr_of(events) -> str:
    return "".join(e.data for e in events if e.type == "stderr")


# ── sync ────────────────────────────────────────────────────────────────


def test_run_foreground_exit_code_stdout_stderr(capsule):
    r = capsule.commands.run("echo out; echo err >&2; exit 3")
    assert isinstance(r, CommandResult)
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)
    assert r.duration_ms is not None and r.duration_ms >= 0
    ok = capsule.commands.run("true")
    assert (ok.stdout, ok.stderr, ok.exit_code) == ("", "", 0)


def test_run_envs_and_cwd(capsule):
    r = capsule.commands.run(
        'echo "$GREETING|$OTHER"; pwd',
        envs={"GREETING": "hello world", "OTHER": "a=b"},
        cwd="/usr/share",
    )
    assert r.exit_code == 0, r
    assert r.stdout == "hello world|a=b\n/usr/share\n"


def test_background_pid_tag_list_kill(capsule):
    h = capsule.commands.run("sleep 300", background=True, tag="sdk-sleeper")
    assert isinstance(h, CommandHandle)
    assert h.pid > 0 and h.tag == "sdk-sleeper" and h.capsule_id == capsule.capsule_id
    # The pid is the guest's: that process is a running sleep.
    r = capsule.commands.run(f"tr '\\0' ' ' < /proc/{h.pid}/cmdline")
    assert r.exit_code == 0 and "sleep 300" in r.stdout, r

    procs = {p.pid: p for p in capsule.commands.list()}
    assert h.pid in procs, procs
    p = procs[h.pid]
    assert p.tag == "sdk-sleeper"
    assert (p.cmd, p.args) == ("/bin/sh", ["-c", "sleep 300"])

    capsule.commands.kill(h.pid)
    wait_until(
        lambda: h.pid not in {p.pid for p in capsule.commands.list()},
        "killed process leaves the list",
    )
    gone = capsule.commands.run(f"test -e /proc/{h.pid} && echo present || echo gone")
    assert gone.stdout == "gone\n"
    with pytest.raises(WrennNotFoundError):
        capsule.commands.kill(h.pid)


def test_background_envs_cwd_and_generated_tag(capsule):
    capsule.commands.run("rm -rf /tmp/sdk-bg && mkdir -p /tmp/sdk-bg")
    h = capsule.commands.run(
        'echo "$WHO" > out.tmp; pwd >> out.tmp; mv out.tmp out.txt',
        background=True,
        envs={"WHO": "background"},
        cwd="/tmp/sdk-bg",
    )
    assert h.pid > 0 and h.tag, h
    text = wait_until(
        lambda: capsule.commands.run("cat /tmp/sdk-bg/out.txt 2>/dev/null").stdout,
        "background process output file",
    )
    assert text == "background\n/tmp/sdk-bg\n"


def test_stream_shell_command(capsule):
    events = list(capsule.commands.stream("echo a; echo b >&2; exit 4"))
    assert events[0].type == "start" and events[0].pid > 0, [e.type for e in events]
    assert events[-1].type == "exit" and events[-1].exit_code == 4
    assert stdout_of(events) == "a\n" and stderr_of(events) == "b\n"


def test_stream_program_with_args(capsule):
    events = list(capsule.commands.stream("/bin/echo", ["two words", "$HOME"]))
    assert events[-1].type == "exit" and events[-1].exit_code == 0
    # No shell: the arguments arrive as given.
    assert stdout_of(events) == "two words $HOME\n"


def test_connect_gets_earlier_output(capsule):
    d = "/tmp/sdk-attach"
    capsule.commands.run(f"rm -rf {d} && mkdir -p {d}")
    h = capsule.commands.run(
        f"echo early; touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.1; done; echo late",
        background=True,
    )
    wait_until(
        lambda: capsule.commands.run(f"test -e {d}/ready").exit_code == 0,
        "background process started",
    )
    events = capsule.commands.connect(h.pid)
    seen = []
    for ev in events:
        seen.append(ev)
        if "early" in stdout_of(seen) or ev.type in ("exit", "error"):
            break
    assert stdout_of(seen) == "early\n", [(e.type, getattr(e, "data", None)) for e in seen]
    capsule.commands.run(f"touch {d}/go")
    seen.extend(events)
    assert stdout_of(seen) == "early\nlate\n"
    assert seen[-1].type == "exit" and seen[-1].exit_code == 0


# ── async ───────────────────────────────────────────────────────────────


def test_async_run_foreground_envs_cwd(loop, acapsule):
    async def body():
        r = await acapsule.commands.run("echo out; echo err >&2; exit 5")
        assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 5)
        r = await acapsule.commands.run('echo "$X"; pwd', envs={"X": "async env"}, cwd="/etc")
        assert (r.stdout, r.exit_code) == ("async env\n/etc\n", 0)

    loop.run_until_complete(body())


def test_async_background_list_kill(loop, acapsule):
    async def body():
        h = await acapsule.commands.run("sleep 300", background=True, tag="sdk-async-sleeper")
        assert h.pid > 0 and h.tag == "sdk-async-sleeper"
        procs = {p.pid: p for p in await acapsule.commands.list()}
        assert h.pid in procs and procs[h.pid].tag == "sdk-async-sleeper", procs
        await acapsule.commands.kill(h.pid)

        async def gone():
            return h.pid not in {p.pid for p in await acapsule.commands.list()}

        await await_until(gone, "killed process leaves the list")
        with pytest.raises(WrennNotFoundError):
            await acapsule.commands.kill(h.pid)

    loop.run_until_complete(body())


def test_async_stream(loop, acapsule):
    async def body():
        events = [e async for e in acapsule.commands.stream("echo x; echo y >&2; exit 2")]
        assert events[0].type == "start" and events[0].pid > 0
        assert events[-1].type == "exit" and events[-1].exit_code == 2
        assert stdout_of(events) == "x\n" and stderr_of(events) == "y\n"

    loop.run_until_complete(body())


def test_async_connect_gets_earlier_output(loop, acapsule):
    d = "/tmp/sdk-async-attach"

    async def body():
        await acapsule.commands.run(f"rm -rf {d} && mkdir -p {d}")
        h = await acapsule.commands.run(
            f"echo first; touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.1; done; echo second",
            background=True,
        )

        async def ready():
            return (await acapsule.commands.run(f"test -e {d}/ready")).exit_code == 0

        await await_until(ready, "background process started")
        events = acapsule.commands.connect(h.pid)
        seen = []
        async for ev in events:
            seen.append(ev)
            if "first" in stdout_of(seen) or ev.type in ("exit", "error"):
                break
        assert stdout_of(seen) == "first\n"
        await acapsule.commands.run(f"touch {d}/go")
        async for ev in events:
            seen.append(ev)
        assert stdout_of(seen) == "first\nsecond\n"
        assert seen[-1].type == "exit" and seen[-1].exit_code == 0

    loop.run_until_complete(body())
