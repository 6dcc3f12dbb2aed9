'use strict';
// The client: encodes each event on the caller's turn, queues it (bounded,
// drop-newest, counted) and writes it to the agent asynchronously.
//
// Contract: no method throws into the application or blocks on the network;
// what cannot be delivered is dropped and counted in client.stats(). The
// client's sockets and timers never keep the process alive, except while a
// flush() (or the bounded flush when the event loop empties) is waiting.

const net = require('node:net');
const dgram = require('node:dgram');
const crypto = require('node:crypto');
const { Encoder } = require('@msgpack/msgpack');
const { DEFAULT_ENDPOINT, parseEndpoint, formatEndpoint } = require('./endpoint');

const PROTOCOL_VERSION = 1;
const STREAM_BATCH_BYTES = 256 * 1024;
const STREAM_HIGH_WATER = 1024 * 1024; // bytes buffered in the socket before we wait for 'drain'
const DATAGRAM_BATCH_BYTES = 16 * 1024;
const UDP_MAX_DATAGRAM = 65507;
const UDP_MAX_IN_FLIGHT = 64;
const BACKOFF_MIN_MS = 50;
const BACKOFF_MAX_MS = 2000;
const MAX_DEPTH = 64;

const STAT_KEYS = [
  'enqueued', // accepted into the queue
  'sent', // handed to the kernel
  'droppedQueueFull', // the queue was at its bound (drop-newest)
  'droppedNoAgent', // the agent was unreachable when a flush/close needed it
  'droppedSendError', // the connection broke with the message unsent
  'droppedTooLarge', // over maxMessageBytes even after truncation
  'droppedClosed', // emitted after close(), or still queued when close() gave up
  'droppedBadEndpoint', // the endpoint could not be parsed
  'droppedUnsupportedEndpoint', // unixgram:// (Node has no Unix datagram sockets)
  'degradedValues', // values msgpack cannot encode, sent as String(value)
  'truncated', // messages whose input/output were cut to fit maxMessageBytes
  'internalErrors', // unexpected errors, swallowed to protect the application
  'connects', // successful connects
  'connectFailures', // failed connect attempts
];
const DROP_KEYS = STAT_KEYS.filter((k) => k.startsWith('dropped'));

const encoder = new Encoder({ useBigInt64: true, ignoreUndefined: true });

// ---- ids and time ----------------------------------------------------------

const idPool = Buffer.alloc(4096);
let idPoolPos = idPool.length;
function randomHex(bytes) {
  if (idPoolPos + bytes > idPool.length) {
    crypto.randomFillSync(idPool);
    idPoolPos = 0;
  }
  const s = idPool.toString('hex', idPoolPos, idPoolPos + bytes);
  idPoolPos += bytes;
  return s;
}
const newTraceId = () => randomHex(16);
const newEventId = () => randomHex(8);

// Wall-clock ns as a BigInt (msgpack int64): the epoch ms of Date.now() refined
// with the monotonic clock, re-anchored every few seconds.
let anchorWallNs = 0n;
let anchorHr = 0n;
function nowNs() {
  const hr = process.hrtime.bigint();
  if (hr - anchorHr > 5000000000n || anchorHr === 0n) {
    anchorHr = hr;
    anchorWallNs = BigInt(Date.now()) * 1000000n;
  }
  return anchorWallNs + (hr - anchorHr);
}
function toNs(ts) {
  if (ts === undefined || ts === null) return nowNs();
  if (typeof ts === 'bigint') return ts;
  if (ts instanceof Date) return BigInt(ts.getTime()) * 1000000n;
  return BigInt(Math.trunc(Number(ts)));
}

const liveClients = new Set();
let exitHookInstalled = false;
function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('beforeExit', () => {
    for (const c of liveClients) c._flushAtExit();
  });
}

class Client {
  // options: endpoint (default $SIDETRACE_ENDPOINT, else unix:///run/sidetrace/agent.sock),
  // maxQueue (10000), maxQueueBytes (16 MiB), maxMessageBytes (1 MiB), exitFlushMs (2000).
  constructor(options = {}) {
    const opts = options || {};
    const text = opts.endpoint || process.env.SIDETRACE_ENDPOINT || DEFAULT_ENDPOINT;
    this._endpoint = parseEndpoint(text);
    this._maxQueue = Math.max(1, opts.maxQueue || 10000);
    this._maxQueueBytes = Math.max(1, opts.maxQueueBytes || 16 << 20);
    this._maxMessageBytes = Math.max(1024, opts.maxMessageBytes || 1 << 20);
    this.exitFlushMs = opts.exitFlushMs === undefined ? 2000 : opts.exitFlushMs;
    this._stats = Object.fromEntries(STAT_KEYS.map((k) => [k, 0]));
    this._queue = [];
    this._queueBytes = 0;
    this._outstanding = 0; // queued + written but not yet confirmed
    this._inFlight = 0; // udp sends awaiting their callback
    this._closed = false;
    this._exitFlushing = false;
    this._waiters = [];
    this._state = 'idle'; // idle | connecting | connected | backoff
    this._sock = null;
    this._backoffMs = BACKOFF_MIN_MS;
    this._backoffTimer = null;
    this._pumpScheduled = false;
    if (!this._endpoint) {
      process.emitWarning(`sidetrace: endpoint ${JSON.stringify(text)} is not unix://, unixgram:// or udp://; events will be dropped`);
    } else if (this._endpoint.scheme === 'unixgram') {
      process.emitWarning('sidetrace: unixgram:// is not available in Node.js (use unix:// or udp://); events will be dropped');
    }
    liveClients.add(this);
    installExitHook();
  }

  get endpoint() {
    return formatEndpoint(this._endpoint);
  }

  stats() {
    const out = { ...this._stats, queued: this._queue.length };
    out.dropped = DROP_KEYS.reduce((n, k) => n + this._stats[k], 0);
    return out;
  }

  trace(context = {}) {
    const ctx = context || {};
    const t = new Trace(this, ctx.traceId || newTraceId());
    t.update(ctx);
    return t;
  }

  // Resolves true once everything emitted so far is handed to the agent's
  // socket; false on timeout or when some was dropped meanwhile (an
  // unreachable agent is reported at once, not at the timeout). Never rejects.
  flush(timeoutMs = 2000) {
    try {
      if (this._outstanding === 0) return Promise.resolve(true);
      return new Promise((resolve) => {
        const waiter = { resolve, dropsBefore: this._drops(), timer: null };
        waiter.timer = setTimeout(() => this._finishWaiter(waiter), Math.max(0, timeoutMs));
        this._waiters.push(waiter);
        if (this._sock) this._sock.ref();
        if (this._state === 'backoff') {
          clearTimeout(this._backoffTimer);
          this._backoffTimer = null;
          this._state = 'idle';
        }
        this._kick();
      });
    } catch (e) {
      this._stats.internalErrors++;
      return Promise.resolve(false);
    }
  }

  // Flushes for up to timeoutMs, then closes the socket; what is still queued
  // is dropped (counted) and later emits are dropped. Never rejects.
  async close(timeoutMs = 2000) {
    if (this._closed) return this._outstanding === 0;
    const ok = await this.flush(timeoutMs);
    this._closed = true;
    this._drop(this._queue.length, 'droppedClosed', true);
    clearTimeout(this._backoffTimer);
    this._backoffTimer = null;
    if (this._sock) {
      if (this._endpoint.scheme === 'unix') this._sock.end();
      else this._sock.close();
      this._sock.unref();
    }
    liveClients.delete(this);
    return ok;
  }

  // ---- emitting --------------------------------------------------------------

  _emit(msg) {
    try {
      if (!this._endpoint) {
        this._stats.droppedBadEndpoint++;
        return;
      }
      if (this._endpoint.scheme === 'unixgram') {
        this._stats.droppedUnsupportedEndpoint++;
        return;
      }
      if (this._closed) {
        this._stats.droppedClosed++;
        return;
      }
      if (this._queue.length >= this._maxQueue) {
        this._stats.droppedQueueFull++;
        return;
      }
      const data = this._encode(msg);
      if (data === null) return;
      if (this._queueBytes + data.byteLength > this._maxQueueBytes) {
        this._stats.droppedQueueFull++;
        return;
      }
      this._queue.push(data);
      this._queueBytes += data.byteLength;
      this._outstanding++;
      this._stats.enqueued++;
      if (this._state === 'connected') this._schedulePump();
      else if (this._state === 'idle') this._connect();
    } catch (e) {
      this._stats.internalErrors++;
    }
  }

  _degrade(value) {
    this._stats.degradedValues++;
    try {
      return String(value);
    } catch (e) {
      return `<unencodable ${typeof value}>`;
    }
  }

  // A copy of `value` msgpack can encode: functions, symbols, cycles, bigints
  // out of range and structures deeper than MAX_DEPTH become strings.
  _sanitize(value, depth, seen) {
    if (value === null || value === undefined) return value;
    const t = typeof value;
    if (t === 'string' || t === 'number' || t === 'boolean') return value;
    if (t === 'bigint') {
      return value >= -(1n << 63n) && value < 1n << 64n ? value : this._degrade(value);
    }
    if (t !== 'object') return this._degrade(value);
    if (value instanceof Uint8Array || value instanceof Date) return value;
    if (depth >= MAX_DEPTH) return this._degrade('[too deep]');
    if (seen.has(value)) return this._degrade('[circular]');
    seen.add(value);
    let out;
    if (Array.isArray(value) || value instanceof Set) {
      out = Array.from(value, (v) => this._sanitize(v, depth + 1, seen));
    } else {
      const entries = value instanceof Map ? value.entries() : Object.entries(value);
      out = {};
      for (const [k, v] of entries) out[String(k)] = this._sanitize(v, depth + 1, seen);
    }
    seen.delete(value);
    return out;
  }

  _encode(msg) {
    let data;
    try {
      data = encoder.encode(msg);
    } catch (e) {
      data = encoder.encode(this._sanitize(msg, 0, new Set()));
    }
    if (data.byteLength <= this._maxMessageBytes) return data;
    // Too large: cut the free-form values so that the event itself arrives.
    const budget = Math.floor(this._maxMessageBytes / 4);
    const cut = { ...msg };
    for (const key of ['input', 'output', 'attrs', 'metadata', 'user']) {
      if (cut[key] === undefined) continue;
      let text = cut[key];
      if (typeof text !== 'string') {
        try {
          text = JSON.stringify(this._sanitize(text, 0, new Set()), (_, v) =>
            typeof v === 'bigint' ? v.toString() : v);
        } catch (e) {
          text = this._degrade(text);
        }
      }
      if (text.length > budget) {
        cut[key] = `${text.slice(0, budget)}... [truncated ${text.length - budget} chars]`;
      }
    }
    data = encoder.encode(this._sanitize(cut, 0, new Set()));
    if (data.byteLength <= this._maxMessageBytes) {
      this._stats.truncated++;
      return data;
    }
    this._stats.droppedTooLarge++;
    return null;
  }

  // ---- sending ---------------------------------------------------------------

  _drops() {
    return DROP_KEYS.reduce((n, k) => n + this._stats[k], 0);
  }

  // `n` messages left the pipeline as `key`.
  _resolve(n, key) {
    if (n <= 0) return;
    this._stats[key] += n;
    this._outstanding -= n;
    if (this._outstanding === 0 && this._waiters.length) {
      for (const w of this._waiters.slice()) this._finishWaiter(w);
    }
  }

  _drop(n, key, fromQueue) {
    if (fromQueue) {
      this._queue.splice(0, n);
      this._queueBytes = this._queue.reduce((s, b) => s + b.byteLength, 0);
    }
    this._resolve(n, key);
  }

  _finishWaiter(w) {
    const i = this._waiters.indexOf(w);
    if (i < 0) return;
    this._waiters.splice(i, 1);
    clearTimeout(w.timer);
    if (this._waiters.length === 0 && this._sock) this._sock.unref();
    w.resolve(this._outstanding === 0 && this._drops() === w.dropsBefore);
  }

  _kick() {
    if (this._state === 'connected') this._schedulePump();
    else if (this._state === 'idle' && this._queue.length) this._connect();
  }

  _connect() {
    if (this._closed) return;
    const ep = this._endpoint;
    if (ep.scheme === 'udp') {
      const sock = dgram.createSocket(net.isIPv6(ep.host) ? 'udp6' : 'udp4');
      sock.on('error', () => {
        this._stats.connectFailures++;
      });
      sock.unref();
      this._sock = sock;
      this._state = 'connected';
      this._stats.connects++;
      if (this._waiters.length) sock.ref();
      this._schedulePump();
      return;
    }
    this._state = 'connecting';
    const sock = net.createConnection({ path: ep.path });
    this._sock = sock;
    sock.unref();
    if (this._waiters.length) sock.ref();
    sock.on('connect', () => {
      if (this._sock !== sock) return;
      this._state = 'connected';
      this._backoffMs = BACKOFF_MIN_MS;
      this._stats.connects++;
      this._schedulePump();
    });
    sock.on('drain', () => this._schedulePump());
    sock.on('error', () => {}); // the outcome is handled on 'close'
    sock.on('close', () => {
      if (this._sock !== sock) return;
      const wasConnected = this._state === 'connected';
      this._sock = null;
      if (this._closed) {
        this._state = 'idle';
        return;
      }
      if (!wasConnected) {
        this._stats.connectFailures++;
        if (this._waiters.length) this._drop(this._queue.length, 'droppedNoAgent', true);
        this._state = 'backoff';
        const delay = this._backoffMs;
        this._backoffMs = Math.min(this._backoffMs * 2, BACKOFF_MAX_MS);
        this._backoffTimer = setTimeout(() => {
          this._backoffTimer = null;
          this._state = 'idle';
          this._kick();
        }, delay);
        this._backoffTimer.unref();
      } else {
        this._state = 'idle';
        this._kick();
      }
    });
  }

  _schedulePump() {
    if (this._pumpScheduled) return;
    this._pumpScheduled = true;
    setImmediate(() => {
      this._pumpScheduled = false;
      try {
        this._pump();
      } catch (e) {
        this._stats.internalErrors++;
      }
    });
  }

  _takeBatch(limit) {
    let size = 0;
    let n = 0;
    while (n < this._queue.length && (n === 0 || size + this._queue[n].byteLength <= limit)) {
      size += this._queue[n].byteLength;
      n++;
    }
    const parts = this._queue.splice(0, n);
    this._queueBytes -= size;
    return { buf: Buffer.concat(parts, size), n };
  }

  _pump() {
    if (this._state !== 'connected' || !this._sock) return;
    const sock = this._sock;
    if (this._endpoint.scheme === 'unix') {
      while (this._queue.length && sock.writableLength < STREAM_HIGH_WATER) {
        const { buf, n } = this._takeBatch(STREAM_BATCH_BYTES);
        sock.write(buf, (err) => this._resolve(n, err ? 'droppedSendError' : 'sent'));
      }
      return;
    }
    const { host, port } = this._endpoint;
    while (this._queue.length && this._inFlight < UDP_MAX_IN_FLIGHT) {
      if (this._queue[0].byteLength > UDP_MAX_DATAGRAM) {
        this._drop(1, 'droppedTooLarge', true);
        continue;
      }
      const { buf, n } = this._takeBatch(DATAGRAM_BATCH_BYTES);
      this._inFlight++;
      sock.send(buf, port, host, (err) => {
        this._inFlight--;
        this._resolve(n, err ? 'droppedSendError' : 'sent');
        if (this._queue.length) this._schedulePump();
      });
    }
  }

  _flushAtExit() {
    if (this._exitFlushing || this._closed || this._outstanding === 0) return;
    this._exitFlushing = true;
    this.close(this.exitFlushMs);
  }
}

// ---- traces and events ------------------------------------------------------

const TYPE_NAMES = new Map(
  ['MESSAGE', 'TOOL', 'GENERATION', 'AGENT', 'RETRIEVAL', 'ROUTER', 'SYSTEM', 'CUSTOM'].map(
    (t) => [t.toLowerCase(), t]),
);
const eventType = (v) => TYPE_NAMES.get(String(v).toLowerCase()) || String(v);

// Values the encoder would silently get wrong: Map and Set (as empty maps)
// and bigints outside int64/uint64 (wrapped). Converted at the top level.
function topLevel(value) {
  if (typeof value === 'bigint' && (value < -(1n << 63n) || value >= 1n << 64n)) return value.toString();
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Set) return Array.from(value);
  return value;
}

function putOutcome(msg, opts) {
  let status = opts.status;
  if (opts.error !== undefined && opts.error !== null && status === undefined) status = 'error';
  if (status !== undefined && status !== null) {
    msg.status = String(status).toLowerCase() === 'error' ? 'error' : 'ok';
  }
  if (opts.error !== undefined && opts.error !== null) msg.error = String(opts.error);
  if (opts.attrs !== undefined && opts.attrs !== null) msg.attrs = topLevel(opts.attrs);
}

function errorText(e) {
  if (e instanceof Error) return e.message ? `${e.name}: ${e.message}` : e.name;
  try {
    return String(e);
  } catch (x) {
    return 'error';
  }
}

class Trace {
  constructor(client, traceId) {
    this.client = client;
    this.traceId = traceId;
  }

  // Sends (more) trace context; later values merge over earlier ones.
  update(ctx = {}) {
    const msg = { v: PROTOCOL_VERSION, kind: 'trace', trace_id: this.traceId, ts: nowNs() };
    const keys = [
      ['conversationId', 'conversation_id'],
      ['sessionId', 'session_id'],
      ['interactionId', 'interaction_id'],
      ['channelId', 'channel_id'],
    ];
    for (const [from, to] of keys) {
      if (ctx[from] !== undefined && ctx[from] !== null) msg[to] = String(ctx[from]);
    }
    if (ctx.metadata) msg.metadata = topLevel(ctx.metadata);
    if (ctx.user) msg.user = topLevel(ctx.user);
    this.client._emit(msg);
  }

  _start(type, input, parentId, opts) {
    return new Event(this, type, input, parentId, opts || {});
  }

  message(input, opts) { return this._start('MESSAGE', input, undefined, opts); }
  system(input, opts) { return this._start('SYSTEM', input, undefined, opts); }
  tool(input, opts) { return this._start('TOOL', input, undefined, opts); }
  generation(input, opts) { return this._start('GENERATION', input, undefined, opts); }
  agent(input, opts) { return this._start('AGENT', input, undefined, opts); }
  retrieval(input, opts) { return this._start('RETRIEVAL', input, undefined, opts); }
  router(input, opts) { return this._start('ROUTER', input, undefined, opts); }
  custom(name, input, opts) {
    return this._start('CUSTOM', input, undefined, { ...(opts || {}), name });
  }

  // Feedback for the trace, or for one event with `target` (an Event or an id).
  feedback(fb = {}) {
    const f = fb || {};
    const msg = { v: PROTOCOL_VERSION, kind: 'feedback', trace_id: this.traceId, ts: toNs(f.ts) };
    if (f.feedbackTag !== undefined && f.feedbackTag !== null) msg.tag = String(f.feedbackTag);
    if (f.feedbackText !== undefined && f.feedbackText !== null) msg.text = String(f.feedbackText);
    if (f.score !== undefined && f.score !== null) {
      const score = Number(f.score);
      if (Number.isFinite(score)) msg.score = score;
      else this.client._stats.degradedValues++;
    }
    if (f.target !== undefined && f.target !== null) {
      msg.target_id = f.target instanceof Event ? f.target.id : String(f.target);
    }
    this.client._emit(msg);
  }

  // A whole, already finished event in one message. `latency` is in ms;
  // without `ts` the event is taken to have ended now.
  send(ev = {}) {
    const e = ev || {};
    const msg = {
      v: PROTOCOL_VERSION,
      kind: 'event',
      trace_id: this.traceId,
      id: newEventId(),
      type: eventType(e.eventType === undefined ? 'CUSTOM' : e.eventType),
    };
    const parentId = e.parent instanceof Event ? e.parent.id : e.parent;
    if (parentId !== undefined && parentId !== null) msg.parent_id = String(parentId);
    if (e.name !== undefined && e.name !== null) msg.name = String(e.name);
    if (e.input !== undefined) msg.input = topLevel(e.input);
    if (e.output !== undefined) msg.output = topLevel(e.output);
    let latencyMs = 0;
    if (e.latency !== undefined && e.latency !== null) {
      const l = Math.round(Number(e.latency));
      if (Number.isFinite(l)) latencyMs = Math.max(0, l);
      else this.client._stats.degradedValues++;
    }
    msg.ts = e.ts !== undefined ? toNs(e.ts) : nowNs() - BigInt(latencyMs) * 1000000n;
    msg.latency_ms = latencyMs;
    putOutcome(msg, e);
    this.client._emit(msg);
    return Event._finished(this, msg.id, msg.type);
  }
}

class Event {
  constructor(trace, type, input, parentId, opts) {
    this.trace = trace;
    this.id = opts.id || newEventId();
    this.type = type;
    this.parentId = parentId;
    this._ended = false;
    if (trace === null) return; // Event._finished
    const msg = {
      v: PROTOCOL_VERSION,
      kind: 'start',
      trace_id: trace.traceId,
      id: this.id,
      type,
      ts: toNs(opts.ts),
    };
    if (parentId !== undefined) msg.parent_id = parentId;
    if (opts.name !== undefined && opts.name !== null) msg.name = String(opts.name);
    if (input !== undefined && input !== null) msg.input = topLevel(input);
    if (opts.attrs !== undefined && opts.attrs !== null) msg.attrs = topLevel(opts.attrs);
    trace.client._emit(msg);
  }

  static _finished(trace, id, type) {
    const ev = new Event(null, type, undefined, undefined, { id });
    ev.trace = trace;
    ev._ended = true;
    return ev;
  }

  get traceId() { return this.trace.traceId; }
  get ended() { return this._ended; }

  _child(type, input, opts) { return new Event(this.trace, type, input, this.id, opts || {}); }
  tool(input, opts) { return this._child('TOOL', input, opts); }
  generation(input, opts) { return this._child('GENERATION', input, opts); }
  agent(input, opts) { return this._child('AGENT', input, opts); }
  retrieval(input, opts) { return this._child('RETRIEVAL', input, opts); }
  router(input, opts) { return this._child('ROUTER', input, opts); }
  message(input, opts) { return this._child('MESSAGE', input, opts); }
  system(input, opts) { return this._child('SYSTEM', input, opts); }
  custom(name, input, opts) { return this._child('CUSTOM', input, { ...(opts || {}), name }); }
  send(ev = {}) { return this.trace.send({ ...(ev || {}), parent: this }); }

  // Ends the event (only the first end() is sent). opts: status ('ok' |
  // 'error'; giving `error` implies 'error'), error, attrs (merged), ts.
  end(output, opts = {}) {
    if (this._ended) return;
    this._ended = true;
    const o = opts || {};
    const msg = { v: PROTOCOL_VERSION, kind: 'end', trace_id: this.trace.traceId, id: this.id, ts: toNs(o.ts) };
    if (output !== undefined && output !== null) msg.output = topLevel(output);
    putOutcome(msg, o);
    this.trace.client._emit(msg);
  }

  feedback(fb = {}) { this.trace.feedback({ ...(fb || {}), target: this }); }

  // Runs fn(event) and ends the event when fn returns or its promise settles;
  // a throw or rejection ends it with status 'error' and is passed on.
  run(fn) {
    let result;
    try {
      result = fn(this);
    } catch (e) {
      this.end(undefined, { error: errorText(e) });
      throw e;
    }
    if (result && typeof result.then === 'function') {
      return result.then(
        (v) => {
          this.end();
          return v;
        },
        (e) => {
          this.end(undefined, { error: errorText(e) });
          throw e;
        },
      );
    }
    this.end();
    return result;
  }
}

class Metadata {
  constructor(fields = {}) { Object.assign(this, fields); }
}

class User {
  constructor(fields = {}) { Object.assign(this, typeof fields === 'string' ? { id: fields } : fields); }
}

module.exports = { Client, Trace, Event, Metadata, User, PROTOCOL_VERSION, DEFAULT_ENDPOINT, STAT_KEYS };
