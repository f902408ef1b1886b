"""capsule.get_url(port), the port proxy through real VMs: `python3 -m http.server` in the
shared capsule (a directory listing, a relative link followed, the redirect of a directory
asked without its slash), a WebSocket echo server in the guest reached at the SDK's proxy
URL with the key on the upgrade (as the code runner connects), the path form, and the
refusals: no or a wrong key 401, another team's key 404, a port with nothing listening 502
in the API's error format without the host's addresses. One capsule, two guest servers."""

from __future__ import annotations

import os
import time
import uuid
from urllib.parse import urljoin

import httpx
import httpx_ws
import pytest
from conftest import wait_until
from wrenn.capsule import _build_proxy_url

HTTP_PORT = 8000
WS_PORT = 8765
SITE = "/tmp/proxy-site"

# A WebSocket echo server with the standard library only (the guest image has python3 and
# no websocket package): text comes back as "echo:<text>", binary as it is.
WS_ECHO = r'''
import base64, hashlib, socket, struct, threading

def frame(op, data):
    n = len(data)
    if n < 126:
        head = bytes([0x80 | op, n])
    elif n < 65536:
        head = bytes([0x80 | op, 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | op, 127]) + struct.pack(">Q", n)
    return head + data

def serve(c):
    f = c.makefile("rb")
    key = None
    while True:
        line = f.readline()
        if not line or line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if key is None:
        c.close()
        return
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        h = f.read(2)
        if len(h) < 2:
            return
        op, n = h[0] & 0x0F, h[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", f.read(8))[0]
        mask = f.read(4) if h[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            c.sendall(frame(8, data[:2]))
            return
        if op == 9:
            c.sendall(frame(10, data))
        elif op == 1:
            c.sendall(frame(1, b"echo:" + data))
        elif op == 2:
            c.sendall(frame(2, data))

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT))
s.listen(16)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
'''


@pytest.fixture(scope="module")
def servers(capsule):
    """The guest's two servers on the shared capsule, up and answering through the proxy."""
    capsule.files.write(f"{SITE}/hello.txt", "hello through the proxy\n")
    capsule.files.write(f"{SITE}/sub/inner.txt", "inner file\n")
    capsule.files.write("/tmp/ws_echo.py", WS_ECHO.replace("PORT", str(WS_PORT)))
    started = time.monotonic()
    handles = [
        capsule.commands.run(
            f"python3 -m http.server {HTTP_PORT} --directory {SITE}", background=True, tag="px-http"
        ),
        capsule.commands.run("python3 /tmp/ws_echo.py", background=True, tag="px-ws"),
    ]
    key = {"X-API-Key": os.environ["WRENN_API_KEY"]}
    url = capsule.get_url(HTTP_PORT)
    wait_until(
        lambda: httpx.get(url + "/", headers=key, timeout=10).status_code == 200,
        "http.server answers through the proxy",
        timeout=90,
        every=0.5,
    )
    print(f"[numbers] guest http.server reachable through the proxy after {time.monotonic() - started:.1f} s")
    yield capsule
    for h in handles:
        try:
            capsule.commands.kill(h.pid)
        except Exception:
            pass


def key_headers() -> dict[str, str]:
    return {"X-API-Key": os.environ["WRENN_API_KEY"]}


def test_get_url_serves_listing_links_and_redirects(servers):
    url = servers.get_url(HTTP_PORT)
    assert url == f"http://{HTTP_PORT}-{servers.capsule_id}.{os.environ['WRENN_PROXY_DOMAIN']}"
    with httpx.Client(headers=key_headers(), timeout=30) as http:
        t0 = time.monotonic()
        listing = http.get(url + "/")
        took = time.monotonic() - t0
        assert listing.status_code == 200, listing.text
        assert 'href="hello.txt"' in listing.text and 'href="sub/"' in listing.text, listing.text
        print(f"[numbers] one proxied GET of a listing: {took * 1000:.0f} ms")
        # The relative link, resolved as a browser would.
        sub = http.get(urljoin(url + "/", "sub/"))
        assert sub.status_code == 200 and 'href="inner.txt"' in sub.text, sub.text
        assert http.get(urljoin(url + "/sub/", "inner.txt")).text == "inner file\n"
        assert http.get(url + "/hello.txt").text == "hello through the proxy\n"
        # A directory without its slash: http.server redirects to a relative path, kept as
        # it is, and following it lands behind the proxy again.
        moved = http.get(url + "/sub")
        assert moved.status_code == 301, moved.text
        assert moved.headers["location"] == "/sub/"
        followed = http.get(url + "/sub", follow_redirects=True)
        assert followed.status_code == 200 and 'href="inner.txt"' in followed.text
        assert str(followed.url) == url + "/sub/"
        missing = http.get(url + "/nope.txt")
        assert missing.status_code == 404  # http.server's own answer, passed through


def test_path_form_without_wildcard_dns(servers):
    base = os.environ["WRENN_BASE_URL"].rstrip("/")
    prefix = f"/v1/capsules/{servers.capsule_id}/proxy/{HTTP_PORT}"
    with httpx.Client(base_url=base, headers=key_headers(), timeout=30) as http:
        root = http.get(prefix + "/")
        assert root.status_code == 200 and 'href="sub/"' in root.text, root.text
        moved = http.get(prefix + "/sub")
        assert moved.status_code == 301 and moved.headers["location"] == prefix + "/sub/"
        assert http.get(prefix + "/sub", follow_redirects=True).status_code == 200


def test_websocket_through_the_proxy(servers):
    ws_url = _build_proxy_url(
        servers._client._base_url, servers.capsule_id, WS_PORT, servers._client._proxy_domain
    )
    assert ws_url.startswith("ws://")
    with httpx_ws.connect_ws(ws_url + "/", headers=key_headers()) as ws:
        ws.send_text("hello")
        assert ws.receive_text(timeout=30) == "echo:hello"
        blob = os.urandom(60_000)
        ws.send_bytes(blob)
        assert ws.receive_bytes(timeout=30) == blob


def test_async_get_url(loop, servers, acapsule):
    async def body():
        async with httpx.AsyncClient(headers=key_headers(), timeout=30) as http:
            r = await http.get(acapsule.get_url(HTTP_PORT) + "/hello.txt")
            assert r.status_code == 200 and r.text == "hello through the proxy\n"

    loop.run_until_complete(body())


def other_team_key() -> str:
    base = os.environ["WRENN_BASE_URL"].rstrip("/")
    email = f"proxy-other-{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=base, timeout=30) as http:
        r = http.post("/v1/auth/signup", json={"email": email, "password": "password123"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        r = http.post(
            "/v1/api-keys", json={"name": "proxy"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 201, r.text
        return r.json()["key"]


def error_of(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_refusals(servers):
    url = servers.get_url(HTTP_PORT) + "/hello.txt"
    error_of(httpx.get(url, timeout=30), 401, "unauthorized")
    error_of(httpx.get(url, headers={"X-API-Key": "wrn_not-a-real-key"}, timeout=30), 401, "unauthorized")
    error_of(httpx.get(url, headers={"X-API-Key": other_team_key()}, timeout=30), 404, "sandbox_not_found")
    closed = servers.get_url(8001) + "/"
    message = error_of(httpx.get(closed, headers=key_headers(), timeout=60), 502, "agent_error")
    assert "8001" in message and "10.11." not in message and "172.16." not in message, message
