"""The code runner (wrenn.code_runner, sync and async) on its template (`code-runner-beta`,
also named `python-interpreter-v0-beta`): `run_code` keeps state between calls, an exception
comes back as the execution's error (name, value, traceback), `print` as stdout, all through
the port proxy to the guest's Jupyter server and kernel WebSocket. The template's warm snapshot
holds a started `wrenn` kernel: the SDK reuses it (no second kernel appears), and the first
`run_code` after create is measured against one that has to start a kernel itself.

The SDK reaches the guest's port 8888 at `8888-{capsule id}.{WRENN_PROXY_DOMAIN}`, which the
suite's conftest points at loopback.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest
from wrenn.code_runner import AsyncCapsule as CodeAsyncCapsule
from wrenn.code_runner import Capsule as CodeCapsule

from conftest import wait_until


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Prints a `[numbers]` line past pytest's capture, so the suite's log shows it."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"[numbers] code runner: {line}", flush=True)


@pytest.fixture(scope="module")
def runner(request):
    """A code-runner capsule and the time its create took. The template's warm snapshot is
    made first (a cold boot that starts the Jupyter server and a kernel), by a create that may
    wait longer than the SDK's 30 s, so the measured create restores as it would on a server
    that has served the template before (or prepared it with `--prewarm`)."""
    base = os.environ["WRENN_BASE_URL"]
    headers = {"X-API-Key": os.environ["WRENN_API_KEY"]}
    with httpx.Client(base_url=base, headers=headers, timeout=400) as http:
        t = time.monotonic()
        resp = http.post("/v1/capsules", json={"template": "code-runner-beta"})
        assert resp.status_code in (200, 201), resp.text
        report(
            request,
            f"first create of the template (its warm snapshot made unless it was there) "
            f"{time.monotonic() - t:.1f} s",
        )
        assert http.delete(f"/v1/capsules/{resp.json()['id']}").status_code == 204
    started = time.monotonic()
    c = CodeCapsule.create(wait=True)
    created = time.monotonic() - started
    yield c, created
    c.destroy()


def kernels(c: CodeCapsule) -> list[dict]:
    """The kernels the capsule's Jupyter server runs, through the proxy."""
    resp = c._get_proxy_client().get("/api/kernels")
    resp.raise_for_status()
    return resp.json()


def test_run_code_state_stdout_and_errors(request, runner):
    c, created = runner
    # The warm snapshot's kernel is running before the first call.
    before = kernels(c)
    assert [k["name"] for k in before] == ["wrenn"], before

    t = time.monotonic()
    first = c.run_code("x = 42")
    first_sec = time.monotonic() - t
    assert first.error is None and not first.timed_out, first
    report(
        request,
        f"create {created:.2f} s, first run_code after create {first_sec:.2f} s (warm kernel)",
    )
    # The SDK took the kernel that was already running: still exactly that one.
    assert [k["id"] for k in kernels(c)] == [before[0]["id"]]

    t = time.monotonic()
    doubled = c.run_code("x * 2")
    report(request, f"next run_code {time.monotonic() - t:.3f} s")
    assert doubled.error is None, doubled.error
    assert doubled.text == "84"
    assert doubled.results[0].is_main_result

    out = c.run_code("print('hello', x)\nimport sys; print('to stderr', file=sys.stderr)")
    assert "".join(out.logs.stdout) == "hello 42\n"
    assert "".join(out.logs.stderr) == "to stderr\n"
    assert out.text is None and out.error is None

    seen = []
    err = c.run_code("y = 1\n1 / 0", on_error=seen.append)
    assert err.error is not None and seen == [err.error]
    assert err.error.name == "ZeroDivisionError"
    assert "division by zero" in err.error.value
    # Plain text (the kernel runs without colours): the failing line as written.
    assert "\x1b[" not in err.error.traceback
    assert "ZeroDivisionError" in err.error.traceback and "1 / 0" in err.error.traceback

    raised = c.run_code("raise ValueError('no such thing: ' + str(x))")
    assert raised.error.name == "ValueError"
    assert raised.error.value == "no such thing: 42"

    # An error does not reset the kernel: earlier names are still there.
    after = c.run_code("(x, y)")
    assert after.error is None and after.text == "(42, 1)"


def test_run_code_async_shares_the_kernel(loop, runner):
    """An async handle on the same capsule reaches the same kernel (its names are there)."""
    c, _ = runner
    c.run_code("shared = 'from sync'")

    async def go():
        ac = await CodeAsyncCapsule.connect(c.capsule_id)
        try:
            got = await ac.run_code("shared + ' and async'")
            printed = await ac.run_code("print(len(shared))")
            failed = await ac.run_code("undefined_name")
            return got, printed, failed
        finally:
            await ac.close()

    got, printed, failed = loop.run_until_complete(go())
    assert got.error is None and got.text == "'from sync and async'"
    assert printed.logs.stdout == ["9\n"]
    assert failed.error.name == "NameError" and "undefined_name" in failed.error.value


def test_first_run_code_with_a_kernel_started_cold(request, runner):
    """For comparison: a kernel started after create (what the warm snapshot saves), from
    the request that starts it to the answer of its first run_code. The SDK's proxy client
    gives up on a request after 5 s, and the kernel WebSocket answers only once the kernel
    does, which under emulation takes longer: the kernel is started with a patient client
    and run_code tried again until the WebSocket opens in time."""
    c, _ = runner
    proxy = c._get_proxy_client()
    with httpx.Client(base_url=proxy.base_url, headers=dict(proxy.headers), timeout=120) as http:
        for k in kernels(c):
            assert http.delete(f"/api/kernels/{k['id']}").status_code == 204
        wait_until(lambda: kernels(c) == [], "the kernels to go")

        t = time.monotonic()
        resp = http.post("/api/kernels", json={"name": "wrenn"})
        assert resp.status_code == 201, resp.text
        kernel_id = resp.json()["id"]
    attempts = 0
    while True:
        attempts += 1
        cold = CodeCapsule.connect(c.capsule_id)
        try:
            e = cold.run_code("import sys; sys.version_info[0]", timeout=120)
            break
        except httpx.TimeoutException:
            cold.close()
            assert time.monotonic() - t < 180, "the new kernel never answered"
    try:
        cold_sec = time.monotonic() - t
        assert e.error is None and e.text == "3", e
        report(
            request,
            f"kernel started after create, start + first run_code {cold_sec:.2f} s "
            f"({attempts} attempt(s) of the SDK's run_code)",
        )
        assert cold._kernel_id == kernel_id
        # The deleted kernel's names went with it.
        gone = cold.run_code("x")
        assert gone.error is not None and gone.error.name == "NameError"
    finally:
        cold.close()


def test_the_templates_other_name_runs_code():
    """`python-interpreter-v0-beta` is the same template (and warm snapshot): its create
    restores within the SDK's 30 s and its kernel runs code."""
    c = CodeCapsule.create(template="python-interpreter-v0-beta", wait=True)
    try:
        assert c.get_info().template == "python-interpreter-v0-beta"
        e = c.run_code("import platform; platform.python_version_tuple()[0]")
        assert e.error is None and e.text == "'3'", e
    finally:
        c.destroy()
