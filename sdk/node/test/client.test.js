'use strict';
// The Node.js SDK against real sockets: what arrives, and what it does when
// the agent is absent, restarts, or is fed values msgpack cannot encode.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { Client, Metadata, User, Event } = require('..');
const { FakeAgent, waitUntil, tempDir } = require('./fake_agent');

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const SDK_DIR = path.join(__dirname, '..');

let dir;
const cleanups = [];
test.before(() => { dir = tempDir(); });
test.afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

function client(opts) {
  const c = new Client(opts);
  cleanups.push(() => c.close(500));
  return c;
}
async function agent(kind, name) {
  const a = kind === 'udp' ? await FakeAgent.udp() : await FakeAgent.unix(dir, name || `a${cleanups.length}.sock`);
  cleanups.push(() => a.close());
  return a;
}
const kinds = (msgs, kind) => msgs.filter((m) => m.kind === kind);

for (const transport of ['unix', 'udp']) {
  test(`nested trace arrives over ${transport}`, async () => {
    const a = await agent(transport);
    const c = client({ endpoint: a.endpoint });
    const trace = c.trace({
      conversationId: 'conv_123', sessionId: 's1', interactionId: 'i1', channelId: 'web',
      metadata: new Metadata({ environment: 'production' }), user: new User({ id: 'user_123' }),
    });
    const message = trace.message('User: hi');
    const tool = message.tool('Calling weather API', { name: 'weather', attrs: { model: 'm1' } });
    tool.end({ temp: 21 }, { attrs: { output_tokens: 3 } });
    message.end('Bot: sunny');
    assert.equal(await c.flush(2000), true);
    assert.ok(await a.waitCount(5));
    const [tr, mStart, tStart, tEnd, mEnd] = a.messages;
    assert.deepEqual(a.messages.map((m) => m.kind), ['trace', 'start', 'start', 'end', 'end']);
    assert.ok(HEX32.test(trace.traceId));
    for (const m of a.messages) {
      assert.equal(m.v, 1);
      assert.equal(m.trace_id, trace.traceId);
      assert.equal(typeof m.ts, 'bigint');
      const now = BigInt(Date.now()) * 1000000n;
      assert.ok(m.ts > now - 10n ** 10n && m.ts <= now + 10n ** 7n, `ts ${m.ts}`);
    }
    assert.equal(tr.conversation_id, 'conv_123');
    assert.equal(tr.session_id, 's1');
    assert.equal(tr.interaction_id, 'i1');
    assert.equal(tr.channel_id, 'web');
    assert.deepEqual(tr.metadata, { environment: 'production' });
    assert.deepEqual(tr.user, { id: 'user_123' });
    assert.equal(mStart.type, 'MESSAGE');
    assert.equal(mStart.parent_id, undefined);
    assert.ok(HEX16.test(mStart.id) && HEX16.test(tStart.id));
    assert.equal(tStart.parent_id, mStart.id);
    assert.equal(tStart.name, 'weather');
    assert.deepEqual(tStart.attrs, { model: 'm1' });
    assert.equal(tEnd.id, tStart.id);
    assert.deepEqual(tEnd.output, { temp: 21 });
    assert.deepEqual(tEnd.attrs, { output_tokens: 3 });
    assert.equal(mEnd.output, 'Bot: sunny');
    assert.equal(c.stats().sent, 5);
  });
}

test('many events all arrive in order over a stream', async () => {
  const a = await agent('unix');
  const c = client({ endpoint: a.endpoint });
  const trace = c.trace();
  for (let i = 0; i < 3000; i++) trace.send({ eventType: 'tool', input: i, output: 'x', latency: 1 });
  assert.equal(await c.flush(5000), true);
  assert.ok(await a.waitCount(3001));
  const events = kinds(a.messages, 'event');
  assert.deepEqual(events.map((e) => e.input), Array.from({ length: 3000 }, (_, i) => i));
  assert.equal(new Set(events.map((e) => e.id)).size, 3000);
  assert.equal(events[0].type, 'TOOL');
  assert.equal(events[0].latency_ms, 1);
  assert.equal(c.stats().dropped, 0);
});

test('the page examples run with camelCase names', async () => {
  const a = await agent('unix');
  const c = client({ endpoint: a.endpoint });
  let trace = c.trace({ conversationId: 'conv_123', sessionId: 'session_123' });
  let message = trace.message("User: What's the weather?");
  message.end("Bot: It's sunny!");
  message = trace.message('User input');
  message.end('Bot response');
  message.tool('Calling weather API').end('API response received');
  message.generation('Generating response').end('Response generated');
  message.agent('Planning next action').end('Decided to search database');
  message.retrieval('Searching knowledge base').end('Found 3 relevant documents');
  trace.system('Initializing cache').end('Cache warmed up');
  trace.feedback({ feedbackTag: 'THUMBS_UP', feedbackText: 'User marked response as helpful' });
  trace = c.trace({
    conversationId: 'conv_123',
    metadata: new Metadata({ environment: 'production' }),
    user: new User({ id: 'user_123' }),
  });
  try {
    message = trace.message('User: Tell me about neural networks');
    const retrieval = message.retrieval('Searching documentation');
    retrieval.end('Found 2 relevant articles');
    const generation = message.generation('Creating explanation');
    generation.end('Generated response about neural networks');
    message.end('Bot: Neural networks are...');
  } catch (e) {
    message.end(`Error: ${e}`);
  }
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(23));
  const starts = kinds(a.messages, 'start');
  const ends = kinds(a.messages, 'end');
  assert.equal(starts.length, 10);
  assert.deepEqual(new Set(starts.map((s) => s.id)), new Set(ends.map((e) => e.id)));
  const fb = kinds(a.messages, 'feedback')[0];
  assert.equal(fb.tag, 'THUMBS_UP');
  assert.equal(fb.text, 'User marked response as helpful');
  const nested = starts.filter((s) => s.trace_id === trace.traceId);
  const root = nested.find((s) => s.parent_id === undefined);
  assert.deepEqual(nested.filter((s) => s.parent_id === root.id).map((s) => s.type).sort(), ['GENERATION', 'RETRIEVAL']);
});

test('send, feedback for the trace and for one event, custom and system events', async () => {
  const a = await agent('unix');
  const c = client({ endpoint: a.endpoint });
  const trace = c.trace();
  const before = BigInt(Date.now()) * 1000000n;
  const ev = trace.send({ eventType: 'generation', input: 'q', output: 'a', latency: 250 });
  assert.ok(ev instanceof Event && ev.ended);
  trace.feedback({ feedbackTag: 'THUMBS_UP', feedbackText: 'helpful', score: 1 });
  ev.feedback({ feedbackTag: 'WRONG', score: 0.5 });
  const sys = trace.system('boot');
  sys.custom('cache_warm', { keys: 3 }).end();
  sys.end('ok', { error: 'slow disk' });
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(8));
  const one = kinds(a.messages, 'event')[0];
  assert.equal(one.type, 'GENERATION');
  assert.equal(one.latency_ms, 250);
  assert.ok(one.ts >= before - 250000000n - 10000000n);
  const [fbTrace, fbEvent] = kinds(a.messages, 'feedback');
  assert.equal(fbTrace.target_id, undefined);
  assert.equal(fbTrace.score, 1);
  assert.equal(fbEvent.target_id, ev.id);
  assert.equal(fbEvent.score, 0.5);
  const custom = kinds(a.messages, 'start').find((s) => s.type === 'CUSTOM');
  assert.equal(custom.name, 'cache_warm');
  assert.equal(custom.parent_id, sys.id);
  const sysEnd = kinds(a.messages, 'end').find((e) => e.id === sys.id);
  assert.equal(sysEnd.status, 'error');
  assert.equal(sysEnd.error, 'slow disk');
});

test('run() ends the event, and on a throw or rejection ends it with the error', async () => {
  const a = await agent('unix');
  const c = client({ endpoint: a.endpoint });
  const trace = c.trace();
  const m = trace.message('q');
  assert.equal(m.tool('ok').run(() => 42), 42);
  const t2 = m.tool('sync throw');
  assert.throws(() => t2.run(() => { throw new TypeError('bad arg'); }), TypeError);
  const g = m.generation('async');
  await assert.rejects(g.run(async () => { throw new Error('llm down'); }), /llm down/);
  const r = m.retrieval('async ok');
  assert.equal(await r.run(async (ev) => { ev.end('docs'); return 'v'; }), 'v');
  m.end('done');
  m.end('again');
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(11));
  const ends = new Map(kinds(a.messages, 'end').map((e) => [e.id, e]));
  assert.equal(ends.size, 5);
  assert.equal(ends.get(t2.id).status, 'error');
  assert.equal(ends.get(t2.id).error, 'TypeError: bad arg');
  assert.equal(ends.get(g.id).error, 'Error: llm down');
  assert.equal(ends.get(r.id).output, 'docs');
  assert.equal(ends.get(m.id).output, 'done');
  assert.equal(kinds(a.messages, 'end').length, 5);
});

test('agent absent: nothing throws, drops are counted, flush answers fast', async () => {
  const c = client({ endpoint: `unix://${dir}/nobody.sock`, maxQueue: 50 });
  const t0 = Date.now();
  const trace = c.trace();
  for (let i = 0; i < 500; i++) {
    const m = trace.message(`m${i}`);
    m.tool('t').end('r');
    m.end('x');
  }
  const t1 = Date.now();
  assert.equal(await c.flush(2000), false);
  assert.ok(Date.now() - t1 < 1000, 'flush took too long');
  assert.ok(t1 - t0 < 2000);
  const s = c.stats();
  assert.equal(s.sent, 0);
  assert.equal(s.queued, 0);
  assert.equal(s.droppedQueueFull + s.droppedNoAgent, 2001);
  assert.ok(s.droppedQueueFull > 0 && s.droppedNoAgent > 0 && s.connectFailures >= 1);
});

test('the queue is bounded while the agent is down, then delivered', async () => {
  const c = client({ endpoint: `unix://${dir}/late.sock`, maxQueue: 10 });
  const trace = c.trace();
  for (let i = 0; i < 99; i++) trace.send({ eventType: 'TOOL', input: i });
  assert.equal(c.stats().queued, 10);
  assert.equal(c.stats().droppedQueueFull, 90);
  const a = await agent('unix', 'late.sock');
  assert.ok(await a.waitCount(10, 5000));
  assert.deepEqual(a.messages.map((m) => m.input), [undefined, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
});

test('reconnects after the agent restarts', async () => {
  let a = await FakeAgent.unix(dir, 'restart.sock');
  const c = client({ endpoint: a.endpoint });
  const trace = c.trace();
  trace.send({ input: 'before' });
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(2));
  await a.close();
  a = await agent('unix', 'restart.sock');
  const ok = await waitUntil(async () => {
    trace.send({ input: 'after' });
    await c.flush(300);
    return a.messages.some((m) => m.input === 'after');
  }, 5000, 20);
  assert.ok(ok);
  assert.ok(c.stats().connects >= 2);
});

test('a batch sent after the agent closed the connection goes out on a new one', async () => {
  const a = await agent('unix', 'idle.sock');
  const c = client({ endpoint: a.endpoint });
  const trace = c.trace();
  trace.send({ input: 'first' });
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(2));
  a.dropConnections();
  assert.ok(await waitUntil(() => a._conns.size === 0));
  trace.send({ input: 'second' });
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(3));
  assert.equal(a.messages[2].input, 'second');
  assert.equal(c.stats().droppedSendError, 0);
  assert.equal(a.connections, 2);
});

test('values msgpack cannot encode are sent as strings', async () => {
  const a = await agent('unix');
  const c = client({ endpoint: a.endpoint });
  const trace = c.trace({ metadata: { when: () => 1 } });
  const circular = { name: 'loop' };
  circular.self = circular;
  const m = trace.message({ fn() {}, sym: Symbol('s'), circular, ok: [1, 2.5, Buffer.from([0])] });
  m.end(2n ** 70n);
  trace.send({ input: new Map([['k', 1]]), output: new Set([1, 2]) });
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(4));
  const [tr, start, end, ev] = a.messages;
  assert.equal(typeof tr.metadata.when, 'string');
  assert.equal(typeof start.input.fn, 'string');
  assert.equal(start.input.sym, 'Symbol(s)');
  assert.equal(start.input.circular.name, 'loop');
  assert.equal(start.input.circular.self, '[circular]');
  assert.deepEqual(Array.from(start.input.ok[2]), [0]);
  assert.equal(end.output, (2n ** 70n).toString());
  assert.deepEqual(ev.input, { k: 1 });
  assert.deepEqual(ev.output, [1, 2]);
  assert.ok(c.stats().degradedValues >= 4);
  assert.equal(c.stats().internalErrors, 0);
});

test('oversized values are truncated so the event still arrives', async () => {
  const a = await agent('unix');
  const c = client({ endpoint: a.endpoint, maxMessageBytes: 64 * 1024 });
  c.trace().message('q'.repeat(200000)).end('ok');
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(3));
  assert.ok(a.messages[1].input.length < 64 * 1024);
  assert.match(a.messages[1].input, /\[truncated/);
  assert.equal(c.stats().truncated, 1);
});

test('endpoint from the environment; bad and unixgram endpoints drop, counted', async () => {
  const a = await agent('udp');
  process.env.SIDETRACE_ENDPOINT = a.endpoint;
  try {
    const c = client();
    assert.equal(c.endpoint, a.endpoint);
  } finally {
    delete process.env.SIDETRACE_ENDPOINT;
  }
  const warnings = [];
  const onWarning = (w) => warnings.push(w.message);
  process.on('warning', onWarning);
  const bad = client({ endpoint: 'http://nope' });
  const gram = client({ endpoint: `unixgram://${dir}/x.sock` });
  bad.trace().message('x').end('y');
  gram.trace().message('x');
  await waitUntil(() => warnings.length >= 2, 1000);
  process.off('warning', onWarning);
  assert.equal(bad.stats().droppedBadEndpoint, 3);
  assert.equal(gram.stats().droppedUnsupportedEndpoint, 2);
  assert.ok(warnings.some((w) => /http:\/\/nope/.test(w)));
  assert.ok(warnings.some((w) => /unixgram/.test(w)));
});

test('emits after close are dropped and counted', async () => {
  const a = await agent('unix');
  const c = new Client({ endpoint: a.endpoint });
  const t = c.trace();
  assert.equal(await c.close(1000), true);
  t.message('late');
  assert.equal(c.stats().droppedClosed, 1);
});

function runScript(body, env) {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['-e', body], {
    env: { ...process.env, NODE_PATH: path.join(SDK_DIR, 'node_modules'), ...env },
    encoding: 'utf8',
    timeout: 20000,
  });
  return { ...r, took: Date.now() - t0 };
}

test('pending events are flushed when the event loop empties', async () => {
  const a = await agent('unix');
  const r = runScript(
    `const { Client } = require(${JSON.stringify(SDK_DIR)});
     const t = new Client().trace();
     for (let i = 0; i < 300; i++) t.send({ eventType: 'TOOL', input: i });`,
    { SIDETRACE_ENDPOINT: a.endpoint },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.ok(await a.waitCount(301));
});

test('the process exits fast when the agent is absent', () => {
  const r = runScript(
    `const { Client } = require(${JSON.stringify(SDK_DIR)});
     const c = new Client(); const t = c.trace();
     for (let i = 0; i < 300; i++) t.message(i).end(i);
     console.log(c.stats().enqueued);`,
    { SIDETRACE_ENDPOINT: `unix://${dir}/absent.sock` },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), '601');
  assert.equal(r.stderr, '');
  assert.ok(r.took < 3000, `took ${r.took} ms`);
});
