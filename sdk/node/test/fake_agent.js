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

  async close() {
    for (const c of this._conns) c.destroy();
    await new Promise((r) => this.server.close(() => r()));
  }
}

module.exports = { FakeAgent, waitUntil, tempDir };
