// The trace viewer in a real browser: starts the sidetrace agent, sends a
// nested trace with an error and feedback through `sidetrace emit --stdin`,
// opens /ui in headless Chromium and checks what the page shows.
//
// Environment: SIDETRACE_BIN (the agent binary), SIDETRACE_BUILD_DIR (where
// the screenshot goes), SIDETRACE_CHROMIUM (default /usr/bin/chromium).
// Waits poll a condition with a deadline; nothing sleeps a fixed time.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const BIN = process.env.SIDETRACE_BIN;
const BUILD_DIR = process.env.SIDETRACE_BUILD_DIR || process.cwd();
const CHROMIUM = process.env.SIDETRACE_CHROMIUM || "/usr/bin/chromium";
const DEADLINE_MS = 20000;

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const OTHER_ID = "00f067aa0ba902b7a3ce929d0e0e4736";
const T0 = 1700000000000000000n;
const ms = (n) => T0 + BigInt(Math.round(n * 1e6));

let dir, agent, agentLog = "", adminAddr, context;

async function waitFor(what, cond, limit = DEADLINE_MS) {
  const end = Date.now() + limit;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what + "\nagent log:\n" + agentLog);
    await new Promise((r) => setTimeout(r, 20));  // a poll interval, not a wait for an outcome
  }
}

// JSON lines with ns timestamps written exactly (they exceed 2^53).
function line(obj) {
  return JSON.stringify(obj, (k, v) => (typeof v === "bigint" ? "@@" + v.toString() + "@@" : v))
      .replace(/"@@(\d+)@@"/g, "$1");
}

function emit(lines, socket) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ["emit", "--stdin", "--endpoint", "unix://" + (socket || path.join(dir, "agent.sock"))],
                    { stdio: ["pipe", "pipe", "pipe"] });
    let err = "";
    p.stderr.on("data", (d) => { err += d; });
    p.on("error", reject);
    p.on("exit", (code) => (code === 0 ? resolve() : reject(new Error("emit exited " + code + ": " + err))));
    p.stdin.end(lines.map(line).join("\n") + "\n");
  });
}

async function api(target, headers, addr) {
  const res = await fetch("http://" + (addr || adminAddr) + target, { headers: headers || {} });
  return { status: res.status, body: await res.text() };
}

// Starts an agent whose files are under `where`; resolves to its process and
// its admin address once it is ready. Its log is appended to agentLog.
async function startAgent(where, extraEnv) {
  const proc = spawn(BIN, ["agent"], {
    env: {
      ...process.env,
      SIDETRACE_DATA_DIR: path.join(where, "data"),
      SIDETRACE_LISTEN_UNIX_STREAM: path.join(where, "agent.sock"),
      SIDETRACE_LISTEN_UNIX_DGRAM: path.join(where, "agent.dgram.sock"),
      SIDETRACE_LISTEN_UDP: "127.0.0.1:0",
      SIDETRACE_LISTEN_OTLP_HTTP: "127.0.0.1:0",
      SIDETRACE_ADMIN_LISTEN: "127.0.0.1:0",
      SIDETRACE_TRACE_QUIET_PERIOD_MS: "50",
      SIDETRACE_BUFFER_SYNC: "os",
      ...(extraEnv || {}),
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  proc.stderr.on("data", (d) => { log += d; agentLog += d; });
  const m = await waitFor("the admin endpoint", () => {
    if (proc.exitCode !== null) throw new Error("the agent exited early:\n" + log);
    return /sidetrace ready/.test(log) ? /admin: listening on ([0-9.]+:\d+)/.exec(log) : null;
  });
  return { proc, addr: m[1] };
}

async function stopAgent(proc) {
  if (!proc || proc.exitCode !== null) return;
  proc.kill("SIGTERM");
  await waitFor("the agent to stop", () => proc.exitCode !== null || proc.signalCode !== null)
      .catch(() => proc.kill("SIGKILL"));
}

before(async () => {
  assert.ok(BIN, "SIDETRACE_BIN must name the sidetrace binary");
  dir = mkdtempSync(path.join(tmpdir(), "sidetrace-ui-"));
  ({ proc: agent, addr: adminAddr } = await startAgent(dir));

  await emit([
    { kind: "trace", trace_id: TRACE_ID, session_id: "sess-9", conversation_id: "conv-3",
      user: { id: "alice" }, ts: ms(0) },
    { kind: "start", trace_id: TRACE_ID, id: "root", type: "AGENT", name: "answer question",
      input: "What is the weather in Paris?", ts: ms(0) },
    { kind: "event", trace_id: TRACE_ID, id: "ret", parent_id: "root", type: "RETRIEVAL",
      name: "search docs", input: { query: "paris weather" }, output: ["doc-1", "doc-2"],
      ts: ms(10), end_ts: ms(120) },
    { kind: "start", trace_id: TRACE_ID, id: "gen", parent_id: "root", type: "GENERATION",
      name: "llm <img src=x onerror=alert(1)>", input: [{ role: "user", content: "weather?" }],
      attrs: { model: "gpt-4o-mini", input_tokens: 12 }, ts: ms(130) },
    { kind: "event", trace_id: TRACE_ID, id: "tool", parent_id: "gen", type: "TOOL", name: "calculator",
      input: "2+2", output: "4", ts: ms(200), end_ts: ms(260) },
    { kind: "end", trace_id: TRACE_ID, id: "gen", status: "error", error: "rate limited by provider",
      ts: ms(700) },
    { kind: "end", trace_id: TRACE_ID, id: "root", output: "I could not answer.", ts: ms(800) },
    { kind: "feedback", trace_id: TRACE_ID, tag: "THUMBS_DOWN", text: "no answer", score: 0,
      target_id: "gen", ts: ms(900) },
    { kind: "feedback", trace_id: TRACE_ID, tag: "NOTE", text: "retry later", ts: ms(950) },
    { kind: "event", trace_id: OTHER_ID, id: "m", type: "MESSAGE", name: "greeting", input: "hello",
      ts: ms(0), end_ts: ms(5) },
  ]);
  await waitFor("both traces in /api/traces", async () => {
    const r = await api("/api/traces");
    if (r.status !== 200) throw new Error("/api/traces answered " + r.status + ": " + r.body);
    const ids = JSON.parse(r.body).traces.map((t) => t.trace_id);
    return ids.includes(TRACE_ID) && ids.includes(OTHER_ID);
  });

  context = await chromium.launchPersistentContext(path.join(dir, "chromium-profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1400, height: 820 },
  });
});

after(async () => {
  if (context) await context.close();
  await stopAgent(agent);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the API serves the trace document and 404 for an unknown id", async () => {
  const r = await api("/api/traces/" + TRACE_ID);
  assert.equal(r.status, 200);
  const doc = JSON.parse(r.body);
  assert.equal(doc.events[0].children.length, 2);
  assert.equal((await api("/api/traces/nope")).status, 404);
  const errorsOnly = JSON.parse((await api("/api/traces?errors=1")).body).traces.map((t) => t.trace_id);
  assert.deepEqual(errorsOnly, [TRACE_ID]);
});

test("the page lists traces, opens one as a tree with a waterfall, details and feedback", async () => {
  const page = await context.newPage();
  const external = [];
  page.on("request", (req) => {
    if (!req.url().startsWith("http://" + adminAddr + "/")) external.push(req.url());
  });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("dialog", (d) => { errors.push("dialog: " + d.message()); d.dismiss(); });

  await page.goto("http://" + adminAddr + "/ui");
  const row = page.locator(`.trace-row[data-trace-id="${TRACE_ID}"]`);
  await row.waitFor();
  assert.equal(await page.locator("#trace-list .trace-row").count(), 2);
  assert.match(await row.innerText(), /answer question/);
  assert.equal(await row.getAttribute("data-status"), "error");

  await row.click();
  await page.locator('#trace-tree .tree-node[data-event-id="root"]').waitFor();
  assert.equal(await page.locator("#trace-tree .tree-node").count(), 4);
  assert.equal(await page.locator("#waterfall .bar").count(), 4);
  assert.match(await page.locator("#trace-header").innerText(), /sess-9/);

  // The error is marked in the tree and in the waterfall.
  const gen = page.locator('#trace-tree .tree-node[data-event-id="gen"]');
  assert.match(await gen.getAttribute("class"), /\berror\b/);
  assert.match(await gen.innerText(), /error/);
  assert.equal(await page.locator("#trace-tree .tree-node.error").count(), 1);
  assert.equal(await page.locator("#waterfall .bar.error").count(), 1);
  assert.match(await page.locator('#waterfall .bar[data-event-id="gen"]').getAttribute("class"), /\berror\b/);

  // Bars are placed by time: the root spans the trace, the tool sits inside the generation.
  const box = async (id) => page.locator(`#waterfall .bar[data-event-id="${id}"]`).boundingBox();
  const root = await box("root"), g = await box("gen"), tool = await box("tool"), ret = await box("ret");
  assert.ok(g.x > root.x && g.x + g.width <= root.x + root.width + 1, "gen inside root");
  assert.ok(tool.x >= g.x && tool.x + tool.width <= g.x + g.width + 1, "tool inside gen");
  assert.ok(ret.x < g.x, "retrieval before generation");

  // Data is shown as text, never parsed as HTML.
  assert.match(await gen.innerText(), /<img src=x onerror=alert\(1\)>/);
  assert.equal(await page.locator("#trace-tree img").count(), 0);

  // Feedback list.
  const fb = page.locator("#feedback .feedback-item");
  assert.equal(await fb.count(), 2);
  assert.match(await fb.nth(0).innerText(), /THUMBS_DOWN/);
  assert.match(await fb.nth(0).innerText(), /no answer/);
  assert.match(await fb.nth(1).innerText(), /whole trace/);

  // The detail panel for the selected event.
  await gen.click();
  await page.locator("#detail-error").waitFor();
  assert.equal(await page.locator("#detail-error").innerText(), "rate limited by provider");
  assert.match(await page.locator("#detail-attrs").innerText(), /gpt-4o-mini/);
  assert.match(await page.locator("#detail-input").innerText(), /weather\?/);
  assert.match(await gen.getAttribute("class"), /\bselected\b/);
  await page.screenshot({ path: path.join(BUILD_DIR, "ui-viewer.png"), fullPage: true });

  // Collapsing the root hides its descendants in both columns.
  await page.locator('#trace-tree .tree-node[data-event-id="root"] .toggle').click();
  await waitFor("the collapse", async () => (await page.locator("#trace-tree .tree-node").count()) === 1);
  assert.equal(await page.locator("#waterfall .bar").count(), 1);
  await page.locator('#trace-tree .tree-node[data-event-id="root"] .toggle').click();
  await waitFor("the expansion", async () => (await page.locator("#trace-tree .tree-node").count()) === 4);

  // Filters: search text, errors only, session.
  const rows = () => page.locator("#trace-list .trace-row").count();
  await page.fill("#search", "greeting");
  await waitFor("the search", async () => (await rows()) === 1 &&
      (await page.locator(`.trace-row[data-trace-id="${OTHER_ID}"]`).count()) === 1);
  await page.fill("#search", "");
  await waitFor("the cleared search", async () => (await rows()) === 2);
  await page.check("#filter-errors");
  await waitFor("errors only", async () => (await rows()) === 1 &&
      (await page.locator(`.trace-row[data-trace-id="${TRACE_ID}"]`).count()) === 1);
  await page.uncheck("#filter-errors");
  await page.fill("#filter-session", "sess-9");
  await waitFor("the session filter", async () => (await rows()) === 1);
  await page.fill("#filter-session", "");
  await waitFor("all rows back", async () => (await rows()) === 2);

  // Live: a trace that finishes now shows up without a reload.
  const LIVE_ID = "11111111111111111111111111111111";
  await emit([{ kind: "event", trace_id: LIVE_ID, id: "x", type: "TOOL", name: "live one",
                ts: ms(0), end_ts: ms(1) }]);
  await page.locator(`.trace-row[data-trace-id="${LIVE_ID}"]`).waitFor({ timeout: DEADLINE_MS });

  assert.deepEqual(external, [], "the page loads nothing from elsewhere");
  assert.deepEqual(errors, []);
  await page.close();
});

test("an agent with an admin token: the page asks for it once and then shows the traces", async () => {
  const TOKEN = "ui-test-token-0123456789abcdef";
  const TOKEN_TRACE = "22222222222222222222222222222222";
  const where = path.join(dir, "tokened");
  const { proc, addr } = await startAgent(where, { SIDETRACE_ADMIN_TOKEN: TOKEN });
  try {
    await emit([{ kind: "event", trace_id: TOKEN_TRACE, id: "x", type: "TOOL", name: "behind a token",
                  ts: ms(0), end_ts: ms(1) }], path.join(where, "agent.sock"));
    const auth = { Authorization: "Bearer " + TOKEN };
    await waitFor("the trace in /api/traces", async () => {
      const r = await api("/api/traces", auth, addr);
      return r.status === 200 && JSON.parse(r.body).traces.length === 1;
    });
    assert.equal((await api("/api/traces", {}, addr)).status, 401);
    assert.equal((await api("/api/traces/" + TOKEN_TRACE, {}, addr)).status, 401);
    assert.equal((await api("/healthz", {}, addr)).status, 200);
    assert.equal((await api("/ui", {}, addr)).status, 200);

    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("dialog", (d) => { errors.push("dialog: " + d.message()); d.dismiss(); });
    const apiRequests = [];
    page.on("request", (req) => { if (req.url().includes("/api/")) apiRequests.push(req.headers()); });
    await page.goto("http://" + addr + "/ui");

    // Asked for the token; nothing is shown without it.
    await page.locator("#token-bar").waitFor({ state: "visible" });
    assert.match(await page.locator("#live").innerText(), /token/);
    assert.equal(await page.locator("#trace-list .trace-row").count(), 0);

    // A wrong token is refused and asked for again.
    await page.fill("#token-input", "not-the-token-0123456789");
    await page.click("#token-submit");
    await waitFor("the refusal", async () =>
      /refused/.test(await page.locator("#token-note").innerText()) &&
      await page.locator("#token-bar").isVisible());

    // The right one, remembered in this browser: the traces appear.
    await page.fill("#token-input", TOKEN);
    await page.check("#token-remember");
    await page.click("#token-submit");
    const row = page.locator(`.trace-row[data-trace-id="${TOKEN_TRACE}"]`);
    await row.waitFor();
    assert.equal(await page.locator("#token-bar").isVisible(), false);
    await row.click();
    await page.locator('#trace-tree .tree-node[data-event-id="x"]').waitFor();

    // Every API request carried the header that a form cannot send.
    assert.ok(apiRequests.length > 0);
    for (const h of apiRequests) assert.equal(h["x-sidetrace-request"], "1");

    // A second page of this browser is not asked again.
    const again = await context.newPage();
    await again.goto("http://" + addr + "/ui");
    await again.locator(`.trace-row[data-trace-id="${TOKEN_TRACE}"]`).waitFor();
    assert.equal(await again.locator("#token-bar").isVisible(), false);
    assert.deepEqual(errors, []);
    await again.close();
    await page.close();
  } finally {
    await stopAgent(proc);
  }
});
