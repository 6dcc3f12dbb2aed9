'use strict';
// Real listening sockets standing in for the agent, decoding what arrives.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const dgram = require('node:dgram');
const { decodeMulti, decodeMultiStream } = require('@msgpack/msgpack');

const decodeOpts = { useBigInt64: true };

async function waitUntil(pred, timeoutMs = 5000, intervalMs = 5) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v || Date.now() >= deadline) return v;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'st-node-'));
}

class FakeAgent {
  constructor() {
    this.messages = [];
    this.connections = 0;
    this.streamErrors = 0;
    this._conns = new Set();
  }

  static async unix(dir, name = 'agent.sock') {
    const a = new FakeAgent();
    a.path = path.join(dir, name);
    a.endpoint = `unix://${a.path}`;
    a.server = net.createServer((conn) => {
      a.connections++;
      a._conns.add(conn);
      (async () => {
        try {
          for await (const msg of decodeMultiStream(conn, decodeOpts)) a.messages.push(msg);
        } catch (e) {
          a.streamErrors++;
        }
      })();
      conn.on('error', () => {});
      conn.on('close', () => a._conns.delete(conn));
    });
    await new Promise((r) => a.server.listen(a.path, r));
    return a;
  }

  static async udp() {
    const a = new FakeAgent();
    a.server = dgram.createSocket('udp4');
    a.server.on('message', (buf) => {
      for (const m of decodeMulti(buf, decodeOpts)) a.messages.push(m);
    });
    await new Promise((r) => a.server.bind(0, '127.0.0.1', r));
    a.endpoint = `udp://127.0.0.1:${a.server.address().port}`;
    return a;
  }

  waitCount(n, timeoutMs = 5000) {
    return waitUntil(() => this.messages.length >= n, timeoutMs);
  }

  // Closes every connection and goes on listening, as the agent does with a
  // connection left idle.
  dropConnections() {
    for (const c of this._conns) c.destroy();
  }

  async close() {
    for (const c of this._conns) c.destroy();
    await new Promise((r) => this.server.close(() => r()));
  }
}

const KINDS = new Set(['trace', 'start', 'end', 'event', 'feedback']);
const REQUIRED = {
  trace: ['v', 'kind', 'trace_id'],
  feedback: ['v', 'kind', 'trace_id'],
  start: ['v', 'kind', 'trace_id', 'id', 'type'],
  event: ['v', 'kind', 'trace_id', 'id', 'type'],
  end: ['v', 'kind', 'trace_id', 'id'],
};
const isInt = (x) => typeof x === 'bigint' || Number.isInteger(x);
const isMap = (x) => typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array);

// Why the agent would reject the decoded message `msg`, or null: the checks
// of ipc/event.cpp (validate), on decoded values.
function protocolProblem(msg) {
  if (!isMap(msg)) return 'not_map';
  const m = Object.fromEntries(Object.entries(msg).filter(([, v]) => v !== null && v !== undefined));
  if (!KINDS.has(m.kind)) return `bad kind ${m.kind}`;
  for (const k of REQUIRED[m.kind]) if (!(k in m)) return `missing ${k}`;
  if (!isInt(m.v) || BigInt(m.v) !== 1n) return 'bad_version';
  for (const k of ['trace_id', 'id', 'parent_id', 'target_id', 'type']) {
    if (!(k in m)) continue;
    if (typeof m[k] !== 'string') return `${k}: wrong_type ${typeof m[k]}`;
    const n = Buffer.byteLength(m[k], 'utf8');
    if (n < 1 || n > 128) return `${k}: bad_value length ${n}`;
  }
  for (const k of ['name', 'error', 'conversation_id', 'session_id', 'interaction_id', 'channel_id', 'tag', 'text']) {
    if (k in m && typeof m[k] !== 'string') return `${k}: wrong_type ${typeof m[k]}`;
  }
  if ('status' in m && m.status !== 'ok' && m.status !== 'error') return `status: bad_value ${m.status}`;
  for (const k of ['ts', 'end_ts', 'latency_ms']) {
    if (!(k in m)) continue;
    if (!isInt(m[k])) return `${k}: wrong_type ${typeof m[k]}`;
    const max = k === 'latency_ms' ? (1n << 63n) - 1n : (1n << 64n) - 1n;
    if (BigInt(m[k]) < 0n || BigInt(m[k]) > max) return `${k}: bad_value ${m[k]}`;
  }
  if ('score' in m && typeof m.score !== 'number' && typeof m.score !== 'bigint') return `score: wrong_type ${typeof m.score}`;
  for (const k of ['attrs', 'user', 'metadata']) if (k in m && !isMap(m[k])) return `${k}: wrong_type`;
  return null;
}

module.exports = { FakeAgent, waitUntil, tempDir, protocolProblem };
