'use strict';
// End to end: the page's nested example through the real agent binary, read
// back as a finished trace document from $SIDETRACE_DATA_DIR/traces.jsonl.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Client, Metadata, User } = require('..');
const { waitUntil, tempDir } = require('./fake_agent');

const REPO = path.join(__dirname, '..', '..', '..');
const binary = process.env.SIDETRACE_BIN || path.join(REPO, 'build', 'release', 'agent', 'sidetrace');
let executable = false;
try {
  fs.accessSync(binary, fs.constants.X_OK);
  executable = true;
} catch (e) {
  executable = false;
}
const skip = executable ? false : `the agent binary is not built yet (${binary}; set SIDETRACE_BIN)`;

function documents(file, traceId) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    return [];
  }
  return text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l)).filter((d) => d.trace_id === traceId);
}

// Runs the real agent in a temporary directory for the length of `body(env)`.
async function withAgent(body) {
  const dir = tempDir();
  const env = {
    ...process.env,
    SIDETRACE_DATA_DIR: path.join(dir, 'data'),
    SIDETRACE_LISTEN_UNIX_STREAM: path.join(dir, 'a.sock'),
    SIDETRACE_LISTEN_UNIX_DGRAM: path.join(dir, 'a.dgram'),
    SIDETRACE_LISTEN_UDP: '127.0.0.1:0',
    SIDETRACE_LISTEN_OTLP_HTTP: '127.0.0.1:0',
    SIDETRACE_ADMIN_LISTEN: '127.0.0.1:0',
    SIDETRACE_TRACE_QUIET_PERIOD_MS: '100',
  };
  const log = fs.openSync(path.join(dir, 'agent.log'), 'w');
  const agent = spawn(binary, ['agent', '--print'], { env, stdio: ['ignore', log, log] });
  let exited = false;
  agent.on('exit', () => { exited = true; });
  try {
    const up = await waitUntil(() => exited || fs.existsSync(env.SIDETRACE_LISTEN_UNIX_STREAM), 15000, 20);
    assert.ok(up && !exited, `the agent did not start: ${fs.readFileSync(path.join(dir, 'agent.log'), 'utf8').slice(-2000)}`);
    await body(env);
  } finally {
    agent.kill('SIGTERM');
    await waitUntil(() => exited, 10000, 20);
    if (!exited) agent.kill('SIGKILL');
    fs.closeSync(log);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('the nested example becomes a trace tree in the real agent', { skip }, async () => {
  await withAgent(async (env) => {
    const client = new Client({ endpoint: `unix://${env.SIDETRACE_LISTEN_UNIX_STREAM}` });
    const trace = client.trace({
      conversationId: 'conv_123',
      metadata: new Metadata({ environment: 'production' }),
      user: new User({ id: 'user_123' }),
    });
    const message = trace.message('User: Tell me about neural networks');
    const retrieval = message.retrieval('Searching documentation');
    retrieval.end('Found 2 relevant articles');
    const generation = message.generation('Creating explanation');
    generation.end('Generated response about neural networks');
    message.end('Bot: Neural networks are...');
    assert.equal(await client.close(5000), true);

    const jsonl = path.join(env.SIDETRACE_DATA_DIR, 'traces.jsonl');
    const docs = await waitUntil(() => documents(jsonl, trace.traceId).length && documents(jsonl, trace.traceId), 15000, 50);
    assert.ok(docs, `no document for ${trace.traceId} in ${jsonl}`);
    const doc = docs.reduce((a, b) => (b.revision > a.revision ? b : a));
    assert.equal(doc.conversation_id, 'conv_123');
    assert.deepEqual(doc.metadata, { environment: 'production' });
    assert.equal(doc.user.id, 'user_123');
    assert.equal(doc.status, 'ok');
    assert.equal(doc.events.length, 1);
    const root = doc.events[0];
    assert.equal(root.id, message.id);
    assert.equal(root.type, 'MESSAGE');
    assert.equal(root.output, 'Bot: Neural networks are...');
    const kids = Object.fromEntries(root.children.map((c) => [c.type, c]));
    assert.deepEqual(Object.keys(kids).sort(), ['GENERATION', 'RETRIEVAL']);
    assert.equal(kids.RETRIEVAL.id, retrieval.id);
    assert.equal(kids.GENERATION.output, 'Generated response about neural networks');
  });
});

test('arguments of wrong types still make a complete trace in the real agent', { skip }, async () => {
  await withAgent(async (env) => {
    const client = new Client({ endpoint: `unix://${env.SIDETRACE_LISTEN_UNIX_STREAM}` });
    const trace = client.trace({ traceId: 987654321, conversationId: 5, metadata: 'prod', user: 42 });
    const message = trace.message({ q: 1 }, { name: Symbol('n'), attrs: 5, ts: 'x' });
    const tool = message.tool('t', { ts: -1, attrs: [1] });
    tool.end(undefined, { status: 'done', error: new RangeError('late'), ts: NaN });
    message.send({ eventType: '', latency: '-3', ts: '1e400' });
    message.send({ eventType: 'x'.repeat(200), latency: '12', score: 1 });
    trace.feedback({ score: 'high', target: message, ts: true });
    message.end(undefined, { ts: String(BigInt(Date.now()) * 1000000n), status: true });
    assert.equal(await client.close(5000), true);
    const s = client.stats();
    assert.equal(s.internalErrors, 0);
    assert.equal(s.dropped, 0);
    assert.ok(s.argsDropped >= 10 && s.argsCoerced >= 4, JSON.stringify(s));

    const jsonl = path.join(env.SIDETRACE_DATA_DIR, 'traces.jsonl');
    const docs = await waitUntil(() => documents(jsonl, '987654321').length && documents(jsonl, '987654321'), 15000, 50);
    assert.ok(docs, `no document for 987654321 in ${jsonl}`);
    const doc = docs.reduce((x, y) => (y.revision > x.revision ? y : x));
    assert.equal(doc.conversation_id, '5');
    assert.deepEqual(doc.user, { id: '42' });
    assert.equal(doc.partial, false);
    assert.equal(doc.events.length, 1);
    const root = doc.events[0];
    assert.equal(root.id, message.id);
    assert.equal(root.unfinished, false);
    const kids = root.children.slice().sort((x, y) => x.type.localeCompare(y.type));
    assert.deepEqual(kids.map((k) => k.type), ['CUSTOM', 'CUSTOM', 'TOOL']);
    assert.equal(kids[2].status, 'error');
    assert.equal(kids[2].error, 'RangeError: late');
    assert.ok(kids.every((k) => k.unfinished === false));
    assert.equal(doc.feedback[0].target_id, message.id);
  });
});
