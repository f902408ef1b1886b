// The web console in a real browser (Debian's Chromium, headless, driven by playwright-core)
// against a real `wrenn up` with real microVMs: sign up, an API key shown once, a sandbox
// with a terminal (python3 prints 42), a file upload, pause and resume, a snapshot (which
// destroys its sandbox) and a sandbox started from it, destroy; then GitHub sign-in through a stand-in GitHub served
// here. Screenshots of each step go to WRENN_SCREENSHOTS (target/console-screenshots).
//
// Environment: WRENN_URL (the console), GITHUB_STUB_PORT (where the stand-in GitHub listens;
// `wrenn up` was started with GITHUB_OAUTH_BASE_URL and GITHUB_API_BASE_URL pointing there,
// client id `console-e2e`, secret `console-e2e-secret`). WRENN_CONSOLE_SKIP_VMS=1 leaves out
// the steps that boot VMs (a quick check of the rest). Prints one line per step and a closing
// "N passed, N failed".
import { chromium } from "playwright-core";
import http from "node:http";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const BASE = process.env.WRENN_URL;
const GH_PORT = Number(process.env.GITHUB_STUB_PORT);
const SHOTS = process.env.WRENN_SCREENSHOTS ?? "target/console-screenshots";
const CLIENT_ID = "console-e2e";
const CLIENT_SECRET = "console-e2e-secret";
// VM operations under TCG on a loaded two-core host take a while.
const VM_TIMEOUT = 240_000;
const SKIP_VMS = process.env.WRENN_CONSOLE_SKIP_VMS === "1";
if (!BASE || !GH_PORT) throw new Error("WRENN_URL and GITHUB_STUB_PORT are required");
mkdirSync(SHOTS, { recursive: true });

// ----- the stand-in GitHub: authorize (consents at once), token exchange, user, emails -----
const codes = new Map();
const tokens = new Set();
const ghUser = { id: 4242, login: "octo-console", email: "octo-console@example.com" };
function readBody(req) {
  return new Promise((resolve) => {
    let b = "";
    req.on("data", (c) => (b += c));
    req.on("end", () => resolve(b));
  });
}
const github = http.createServer(async (req, res) => {
  const url = new URL(req.url, `http://127.0.0.1:${GH_PORT}`);
  const json = (status, v) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(v));
  };
  if (url.pathname === "/login/oauth/authorize") {
    const redirect = url.searchParams.get("redirect_uri");
    const state = url.searchParams.get("state");
    if (url.searchParams.get("client_id") !== CLIENT_ID || !redirect || !state) {
      res.writeHead(400);
      return res.end("bad authorize request");
    }
    const code = randomBytes(10).toString("hex");
    codes.set(code, redirect);
    const back = new URL(redirect);
    back.searchParams.set("code", code);
    back.searchParams.set("state", state);
    res.writeHead(302, { location: back.toString() });
    return res.end();
  }
  if (url.pathname === "/login/oauth/access_token" && req.method === "POST") {
    const f = new URLSearchParams(await readBody(req));
    const issued = codes.get(f.get("code"));
    codes.delete(f.get("code"));
    if (f.get("client_secret") !== CLIENT_SECRET || !issued || issued !== f.get("redirect_uri")) {
      return json(200, { error: "bad_verification_code" });
    }
    const token = "gho_" + randomBytes(16).toString("hex");
    tokens.add(token);
    return json(200, { access_token: token, token_type: "bearer", scope: "user:email" });
  }
  const auth = (req.headers.authorization ?? "").replace(/^Bearer /, "");
  if (!tokens.has(auth)) return json(401, { message: "Bad credentials" });
  if (url.pathname === "/user") return json(200, { ...ghUser, type: "User" });
  if (url.pathname === "/user/emails") {
    return json(200, [{ email: ghUser.email, primary: true, verified: true, visibility: null }]);
  }
  json(404, { message: "Not Found" });
});
await new Promise((r) => github.listen(GH_PORT, "127.0.0.1", r));

// ----- the steps -----
let passed = 0;
let failed = 0;
const t0 = Date.now();
let page;
async function step(name, f) {
  const start = Date.now();
  try {
    await f();
    passed++;
    console.log(`ok   ${name} (${((Date.now() - start) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e?.message ?? e}`);
    await page?.screenshot({ path: join(SHOTS, `failed-${name.replace(/\W+/g, "-")}.png`) }).catch(() => {});
    throw e;
  } finally {
    await page?.screenshot({ path: join(SHOTS, `${String(passed + failed).padStart(2, "0")}-${name.replace(/\W+/g, "-")}.png`), fullPage: true }).catch(() => {});
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
  page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const dialogs = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    return d.type() === "prompt" ? d.accept("console-e2e-snap") : d.accept();
  });
  const email = `console-${randomBytes(4).toString("hex")}@example.com`;
  let sandboxId = "";
  let key = "";

  await step("sign up", async () => {
    await page.goto(BASE + "/signup");
    await page.fill("input[name=email]", email);
    await page.fill("input[name=password]", "console-password-1");
    await page.click("button[type=submit]");
    await page.getByText("Sign out").waitFor();
    await page.getByText(email).waitFor();
    // The session is an HttpOnly cookie: page scripts cannot read it.
    const cookies = await context.cookies(BASE);
    const sid = cookies.find((c) => c.name === "wrenn_sid");
    if (!sid || !sid.httpOnly || sid.sameSite !== "Strict") throw new Error("no HttpOnly SameSite=Strict wrenn_sid cookie: " + JSON.stringify(cookies));
    if ((await page.evaluate(() => document.cookie)).includes("wrenn_sid")) throw new Error("the session cookie is readable by scripts");
  });

  await step("API key shown once", async () => {
    await page.getByRole("link", { name: "API keys" }).click();
    await page.fill("input[name=key-name]", "console-key");
    await page.getByRole("button", { name: "Create key" }).click();
    key = (await page.locator("[data-testid=new-key] code").textContent()).trim();
    if (key.length < 20) throw new Error("short key: " + key);
    await page.getByRole("button", { name: "Copy" }).click();
    await page.getByRole("button", { name: "Copied" }).waitFor();
    await page.screenshot({ path: join(SHOTS, "02-new-key-shown-once.png") });
    await page.getByRole("button", { name: "Done" }).click();
    await page.getByRole("cell", { name: "console-key" }).waitFor();
    await page.reload();
    await page.getByRole("cell", { name: "console-key" }).waitFor();
    if ((await page.content()).includes(key)) throw new Error("the key is shown again after a reload");
    // The key works against the API.
    const r = await fetch(BASE + "/v1/sandboxes", { headers: { "x-api-key": key } });
    if (r.status !== 200) throw new Error("the new key is refused: " + r.status);
    // A second key, deleted (after a confirmation), stops working.
    await page.fill("input[name=key-name]", "short-lived");
    await page.getByRole("button", { name: "Create key" }).click();
    const doomed = (await page.locator("[data-testid=new-key] code").textContent()).trim();
    await page.getByRole("button", { name: "Done" }).click();
    await page.getByRole("row", { name: /short-lived/ }).getByRole("button", { name: "Delete" }).click();
    await page.getByRole("cell", { name: "short-lived" }).waitFor({ state: "detached" });
    if (!dialogs.some((d) => d.includes("short-lived"))) throw new Error("no confirmation asked");
    const gone = await fetch(BASE + "/v1/sandboxes", { headers: { "x-api-key": doomed } });
    if (gone.status !== 401) throw new Error("a deleted key still works: " + gone.status);
  });

  if (!SKIP_VMS) {
  await step("create a sandbox", async () => {
    await page.getByRole("link", { name: "Sandboxes" }).click();
    await page.getByRole("button", { name: "New sandbox" }).click();
    await page.getByRole("button", { name: "Create sandbox" }).click();
    await page.waitForURL(/\/sandboxes\/[^/]+$/, { timeout: VM_TIMEOUT });
    sandboxId = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
    await page.locator("[data-testid=status]", { hasText: "running" }).waitFor({ timeout: VM_TIMEOUT });
  });

  await step("terminal runs python3", async () => {
    await page.getByText("Terminal: connected").waitFor({ timeout: 60_000 });
    await page.locator(".term-box").click();
    await page.keyboard.type("python3 -c 'print(6*7)'\n", { delay: 15 });
    await page.waitForFunction(
      () => [...document.querySelectorAll(".xterm-rows > div")].some((r) => r.textContent.trim() === "42"),
      null,
      { timeout: 60_000 },
    );
    // The charts show the sandbox's samples (taken every 2 s while it runs).
    await page.waitForFunction(
      () => [...document.querySelectorAll(".chart figcaption strong")].every((e) => e.textContent !== "—"),
      null,
      { timeout: 60_000 },
    );
    // The terminal follows the window's size: `stty size` sees fewer columns in a narrower one.
    const sizes = () =>
      page.evaluate(() =>
        [...document.querySelectorAll(".xterm-rows > div")]
          .map((r) => r.textContent.trim())
          .filter((t) => /^\d+ \d+$/.test(t)),
      );
    const stty = async () => {
      const before = (await sizes()).length;
      await page.keyboard.type("stty size\n", { delay: 15 });
      await page.waitForFunction(
        (n) =>
          [...document.querySelectorAll(".xterm-rows > div")]
            .map((r) => r.textContent.trim())
            .filter((t) => /^\d+ \d+$/.test(t)).length > n,
        before,
        { timeout: 30_000 },
      );
      const all = await sizes();
      return all[all.length - 1].split(" ").map(Number);
    };
    const [, wide] = await stty();
    await page.setViewportSize({ width: 800, height: 900 });
    await page.waitForTimeout(1000);
    const [, narrow] = await stty();
    if (!(narrow < wide)) throw new Error(`columns after narrowing the window: ${narrow}, before: ${wide}`);
    await page.setViewportSize({ width: 1200, height: 900 });
    await page.waitForTimeout(500);
  });

  await step("upload a file", async () => {
    await page.locator("input[name=upload]").setInputFiles({
      name: "hello-console.txt",
      mimeType: "text/plain",
      buffer: Buffer.from("hello from the console\n"),
    });
    await page.locator("[data-file='hello-console.txt']").waitFor({ timeout: 60_000 });
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.locator("[data-file='hello-console.txt'] button", { hasText: "Download" }).click(),
    ]);
    const path = await download.path();
    const { readFileSync } = await import("node:fs");
    if (readFileSync(path, "utf8") !== "hello from the console\n") throw new Error("downloaded bytes differ");
  });

  await step("pause and resume", async () => {
    await page.getByRole("button", { name: "Pause" }).click();
    await page.locator("[data-testid=status]", { hasText: "paused" }).waitFor({ timeout: VM_TIMEOUT });
    await page.getByText("The terminal is available while the sandbox runs.").waitFor();
    await page.getByRole("button", { name: "Resume" }).click();
    await page.locator("[data-testid=status]", { hasText: "running" }).waitFor({ timeout: VM_TIMEOUT });
    await page.getByText("Terminal: connected").waitFor({ timeout: 60_000 });
  });

  let fromTemplate = "";
  await step("snapshot and start from the template", async () => {
    // The snapshot saves the sandbox as a template and destroys it; the console goes to the
    // templates.
    await page.getByRole("button", { name: "Snapshot" }).click();
    await page.waitForURL((u) => u.pathname === "/templates", { timeout: VM_TIMEOUT });
    const row = page.locator("[data-template='console-e2e-snap']");
    await row.waitFor({ timeout: VM_TIMEOUT });
    // The new sandbox's terminal is held back at its "started" message until the user is
    // typing in the folder field: connecting must not take the keyboard from them.
    let held = [];
    await page.routeWebSocket(/\/pty/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => server.send(m));
      server.onMessage((m) => {
        if (held && typeof m === "string" && m.includes('"started"')) held.push(() => ws.send(m));
        else ws.send(m);
      });
    });
    await row.getByRole("button", { name: "Start sandbox" }).click();
    await page.waitForURL((u) => /\/sandboxes\/[^/]+$/.test(u.pathname) && !u.pathname.endsWith(sandboxId), { timeout: VM_TIMEOUT });
    fromTemplate = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
    await page.locator("[data-testid=status]", { hasText: "running" }).waitFor({ timeout: VM_TIMEOUT });
    await page.locator("input[name=new-dir]").click();
    for (const deadline = Date.now() + 60_000; held.length === 0; ) {
      if (Date.now() > deadline) throw new Error("the terminal never started");
      await page.waitForTimeout(50);
    }
    const release = held;
    held = null;
    release.forEach((send) => send());
    await page.getByText("Terminal: connected").waitFor({ timeout: 60_000 });
    const focused = await page.evaluate(() => document.activeElement?.getAttribute("name"));
    if (focused !== "new-dir") throw new Error(`the terminal took the keyboard from the folder field (focus: ${focused})`);
    // The snapshot kept the uploaded file.
    await page.locator("[data-file='hello-console.txt']").waitFor({ timeout: 60_000 });
    // Make a folder, delete the file.
    await page.fill("input[name=new-dir]", "made-here");
    await page.getByRole("button", { name: "Make folder" }).click();
    await page.locator("[data-file='made-here']").waitFor({ timeout: 60_000 });
    await page.locator("[data-file='hello-console.txt'] button", { hasText: "Delete" }).click();
    await page.locator("[data-file='hello-console.txt']").waitFor({ state: "detached", timeout: 60_000 });
  });

  await step("destroy", async () => {
    if (!page.url().endsWith(encodeURIComponent(fromTemplate))) throw new Error("not on the new sandbox's page: " + page.url());
    await page.getByRole("button", { name: "Destroy" }).click();
    await page.waitForURL((u) => u.pathname === "/", { timeout: VM_TIMEOUT });
    if (!dialogs.some((d) => d.startsWith("Destroy sandbox"))) throw new Error("no confirmation asked");
    await page.getByText("No sandboxes.").waitFor({ timeout: 60_000 });
    await page.getByRole("link", { name: "Templates" }).click();
    const row = page.locator("[data-template='console-e2e-snap']");
    await row.getByRole("button", { name: "Delete" }).click();
    await row.waitFor({ state: "detached", timeout: 60_000 });
  });

  await step("list follows the events stream", async () => {
    // A sandbox made and destroyed through the API appears and goes without a reload.
    await page.getByRole("link", { name: "Sandboxes" }).click();
    await page.getByText("No sandboxes.").waitFor();
    const api = (method, path, body) =>
      fetch(BASE + path, {
        method,
        headers: { "x-api-key": key, "content-type": "application/json" },
        body: body && JSON.stringify(body),
      });
    const r = await api("POST", "/v1/sandboxes", {});
    if (r.status !== 201) throw new Error("create through the API: " + r.status + " " + (await r.text()));
    const { id } = await r.json();
    await page.locator(`[data-sandbox='${id}']`).waitFor({ timeout: 60_000 });
    const d = await api("DELETE", `/v1/sandboxes/${id}`);
    if (d.status !== 204) throw new Error("destroy through the API: " + d.status);
    await page.locator(`[data-sandbox='${id}']`).waitFor({ state: "detached", timeout: 60_000 });
  });
  }

  await step("usage page", async () => {
    await page.getByRole("link", { name: "Usage" }).click();
    await page.getByText("Running now").waitFor();
  });

  await step("phone width", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByRole("link", { name: "Sandboxes" }).click();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 2) throw new Error(`the page is ${overflow}px wider than a phone`);
  });

  await step("sign out", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
    const r = await page.evaluate(async () => (await fetch("/v1/auth/session")).status);
    if (r !== 401) throw new Error("still signed in after signing out: " + r);
  });

  await step("sign in with GitHub", async () => {
    await page.setViewportSize({ width: 1200, height: 900 });
    await page.goto(BASE + "/login");
    await page.getByRole("link", { name: "Sign in with GitHub" }).click();
    await page.getByText(ghUser.email).waitFor({ timeout: 60_000 });
    await page.getByText("Sign out").waitFor();
    const u = new URL(page.url());
    if (u.search.includes("token")) throw new Error("the token stayed in the address bar: " + page.url());
    const back = await page.evaluate(() => history.length);
    await page.goBack().catch(() => {});
    if (page.url().includes("token=")) throw new Error("the token is in the history (" + back + ")");
  });
} catch {
  exitCode = 1;
} finally {
  await browser.close();
  github.close();
}
console.log(`console e2e ran in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(exitCode || (failed ? 1 : 0));
