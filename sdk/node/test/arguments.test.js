'use strict';
// Arguments of any type: no public call throws, every message that leaves is
// valid protocol v1, and each conversion or omission is counted.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { Client, Metadata, User } = require('..');
const { FakeAgent, tempDir, protocolProblem } = require('./fake_agent');

let dir;
const cleanups = [];
test.before(() => { dir = tempDir(); });
test.afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

async function setup() {
  const a = await FakeAgent.unix(dir, `arg${cleanups.length}.sock`);
  cleanups.push(() => a.close());
  const c = new Client({ endpoint: a.endpoint });
  cleanups.push(() => c.close(500));
  return { a, c };
}

const throwingGetter = { get attrs() { throw new Error('getter'); } };
const hostile = new Proxy({}, { ownKeys() { throw new Error('ownKeys'); }, get() { throw new Error('get'); } });
const circular = { a: 1 };
circular.self = circular;

const BAD_VALUES = [
  5, -1, 1.5, NaN, Infinity, -Infinity, 2n ** 80n, -(2n ** 80n), 10n, true, false,
  'x', '', '9'.repeat(300), '\ud800', Buffer.from([0xff, 0]), [1, 2], { k: () => 1 },
  circular, new Map([[1, 'one']]), new Set([1]), new Date(NaN), new Date(0), Symbol('s'),
  () => 1, Object.create(null), hostile, throwingGetter, new Error('e'), null, undefined,
];

const START_KEYS = ['name', 'attrs', 'ts', 'id'];
const CALLS = [
  ['client.trace', (c, t, e, o) => c.trace(o),
    ['conversationId', 'sessionId', 'interactionId', 'channelId', 'metadata', 'user', 'traceId']],
  ['trace.update', (c, t, e, o) => t.update(o),
    ['conversationId', 'sessionId', 'interactionId', 'channelId', 'metadata', 'user']],
  ...['message', 'system', 'tool', 'generation', 'agent', 'retrieval', 'router'].flatMap((m) => [
    [`trace.${m}`, (c, t, e, o, v) => t[m](v, o), START_KEYS],
    [`event.${m}`, (c, t, e, o, v) => e[m](v, o), START_KEYS],
  ]),
  ['trace.custom', (c, t, e, o, v) => t.custom(v, v, o), START_KEYS],
  ['event.custom', (c, t, e, o, v) => e.custom(v, v, o), START_KEYS],
  ['trace.send', (c, t, e, o) => t.send(o),
    ['eventType', 'input', 'output', 'latency', 'name', 'parent', 'status', 'error', 'attrs', 'ts']],
  ['event.send', (c, t, e, o) => e.send(o),
    ['eventType', 'input', 'output', 'latency', 'name', 'status', 'error', 'attrs', 'ts']],
  ['trace.feedback', (c, t, e, o) => t.feedback(o), ['feedbackTag', 'feedbackText', 'score', 'target', 'ts']],
  ['event.feedback', (c, t, e, o) => e.feedback(o), ['feedbackTag', 'feedbackText', 'score', 'ts']],
  ['event.end', (c, t, e, o, v) => t.message('m').end(v, o), ['status', 'error', 'attrs', 'ts']],
  ['event.run', (c, t, e, o, v) => t.message('m').run(v), []],
  ['client.flush', (c, t, e, o, v) => c.flush(v), []],
];

for (const [name, call, keys] of CALLS) {
  test(`${name} takes any type`, async () => {
    const { a, c } = await setup();
    const trace = c.trace();
    const event = trace.message('parent');
    for (const value of BAD_VALUES) {
      for (const key of keys) call(c, trace, event, { [key]: value }, 'in');
      call(c, trace, event, value, value); // the options argument itself, and positional values
    }
    call(c, trace, event, { noSuchKey: 1 }, 'in');
    assert.equal(await c.flush(5000), true);
    const s = c.stats();
    assert.equal(s.internalErrors, 0);
    assert.equal(s.dropped, 0);
    assert.ok(s.argsDropped > 0);
    assert.ok(await a.waitCount(s.sent));
    const problems = a.messages.map(protocolProblem).filter((p) => p !== null);
    assert.deepEqual(problems, []);
  });
}

test('conversions', async () => {
  const { a, c } = await setup();
  const trace = c.trace({ traceId: 12345, conversationId: 7, metadata: 5, user: 'user_9' });
  const longId = c.trace({ traceId: 't'.repeat(129) });
  const m = trace.message('q', { name: 3, attrs: ['not', 'a', 'map'], ts: '1700000000000000000', colour: 'red' });
  m.end(undefined, { status: 'failed', error: new Error('timeout'), ts: 1.7e18 });
  trace.send({ eventType: 'tool', latency: '35', parent: m, scoreTypo: 1, status: 'OK', attrs: new Map([[1, 'x']]) });
  trace.send({ eventType: '', latency: -5, ts: -1 });
  trace.send({ eventType: 'x'.repeat(129), latency: true, ts: new Date(Date.UTC(2020, 0, 1)) });
  trace.feedback({ feedbackTag: Buffer.from('UP'), score: '0.5', target: 42, ts: 'soon' });
  trace.feedback({ score: NaN, target: [1] });
  assert.equal(await c.flush(2000), true);
  assert.ok(await a.waitCount(9));
  assert.deepEqual(a.messages.map(protocolProblem).filter((p) => p !== null), []);
  const [tr, start, end, ev1, ev2, ev3, fb1, fb2] = a.messages.filter((x) => x.trace_id === '12345');
  assert.equal(tr.conversation_id, '7');
  assert.deepEqual(tr.user, { id: 'user_9' });
  assert.equal(tr.metadata, undefined);
  assert.match(longId.traceId, /^[0-9a-f]{32}$/);
  assert.equal(start.name, '3');
  assert.equal(start.attrs, undefined);
  assert.equal(start.ts, 1700000000000000000n);
  assert.equal(end.status, 'error');
  assert.equal(end.error, 'Error: timeout');
  assert.equal(end.ts, BigInt(1.7e18));
  assert.equal(ev1.type, 'TOOL');
  assert.equal(ev1.latency_ms, 35);
  assert.equal(ev1.parent_id, m.id);
  assert.equal(ev1.status, 'ok');
  assert.deepEqual(ev1.attrs, { 1: 'x' });
  assert.equal(ev2.type, 'CUSTOM');
  assert.equal(ev2.latency_ms, 0);
  const now = BigInt(Date.now()) * 1000000n;
  assert.ok(ev2.ts > now - 10n ** 10n && ev2.ts <= now + 10n ** 7n);
  assert.equal(ev3.type, 'CUSTOM');
  assert.equal(ev3.latency_ms, 0);
  assert.equal(ev3.ts, 1577836800n * 10n ** 9n);
  assert.equal(fb1.tag, 'UP');
  assert.equal(fb1.score, 0.5);
  assert.equal(fb1.target_id, '42');
  assert.ok(fb1.ts > now - 10n ** 10n);
  assert.equal(fb2.score, undefined);
  assert.equal(fb2.target_id, undefined);
  const s = c.stats();
  // coerced: traceId, conversationId, user, name, ts text, error, latency text, tag bytes, score text, target
  assert.equal(s.argsCoerced, 10);
  // dropped: metadata, long traceId, attrs, colour, status, scoreTypo, eventType '',
  // latency -5, ts -1, long eventType, latency true, ts 'soon', score NaN, target array
  assert.equal(s.argsDropped, 14);
  assert.equal(s.internalErrors, 0);
});

test('client options of any type', async () => {
  // Nothing listens: the queue keeps what fits.
  const c = new Client({
    endpoint: `unix://${dir}/nobody.sock`, maxQueue: '3', maxQueueBytes: null, maxMessageBytes: [1], exitFlushMs: 'x', nonsense: 1,
  });
  cleanups.push(() => c.close(500));
  const t = c.trace();
  for (let i = 0; i < 10; i++) t.send({ eventType: 'TOOL', input: i });
  const s = c.stats();
  assert.equal(s.queued, 3);
  assert.equal(s.droppedQueueFull, 8);
  assert.equal(s.argsCoerced, 1);
  assert.equal(s.argsDropped, 4); // maxQueueBytes null, maxMessageBytes, exitFlushMs, nonsense
  assert.equal(c.exitFlushMs, 2000);
  const t0 = Date.now();
  assert.equal(await c.flush('1500'), false);
  assert.ok(Date.now() - t0 < 1400, 'answered before the timeout');
  assert.equal(await c.close({}), true); // the failed flush left nothing queued
  assert.equal(c.stats().argsCoerced, 2); // '1500'
  assert.equal(c.stats().argsDropped, 5); // {}
  for (const weird of [5, 'unix:///x', [1], () => 1]) {
    const w = new Client(weird);
    w.trace().message('x');
    assert.equal(w.stats().internalErrors, 0);
    assert.equal(typeof (await w.close(0)), 'boolean');
  }
});

test('run() with a thenable whose then getter throws, and User/Metadata helpers', async () => {
  const { a, c } = await setup();
  const ev = c.trace().message('q');
  const weird = { get then() { throw new Error('no then'); } };
  assert.equal(ev.run(() => weird), weird);
  assert.ok(ev.ended);
  assert.ok(await a.waitCount(3));
  assert.deepEqual({ ...new User(5) }, { id: '5' });
  assert.deepEqual({ ...new User([1]) }, {});
  assert.deepEqual({ ...new Metadata('abc') }, {});
  assert.deepEqual({ ...new Metadata(throwingGetter) }, {});
});
