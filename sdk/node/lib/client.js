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
  'argsCoerced', // arguments of another type converted (a number given as text, a number id...)
  'argsDropped', // arguments left out: wrong type, out of range, unknown option key
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
  constructor(options) {
    this._stats = Object.fromEntries(STAT_KEYS.map((k) => [k, 0]));
    this._endpoint = null;
    this._maxQueue = 10000;
    this._maxQueueBytes = 16 << 20;
    this._maxMessageBytes = 1 << 20;
    this.exitFlushMs = 2000;
    let text = '';
    try {
      const opts = asOptions(this, options, CLIENT_KEYS);
      text = asText(this, opts.endpoint) || process.env.SIDETRACE_ENDPOINT || DEFAULT_ENDPOINT;
      this._endpoint = parseEndpoint(text);
      for (const [key, field, min] of [
        ['maxQueue', '_maxQueue', 1],
        ['maxQueueBytes', '_maxQueueBytes', 1],
        ['maxMessageBytes', '_maxMessageBytes', 1024],
      ]) {
        if (opts[key] === undefined) continue;
        const n = asNumber(this, opts[key]);
        if (n === undefined) this._stats.argsDropped++;
        else this[field] = Math.max(min, Math.floor(n));
      }
      if (opts.exitFlushMs !== undefined) this.exitFlushMs = asTimeoutMs(this, opts.exitFlushMs);
    } catch (e) {
      this._stats.internalErrors++;
    }
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

  // Starts a trace (or continues one, given its traceId). A traceId that is
  // not a usable id is replaced by a new one.
  trace(context) {
    try {
      const ctx = asOptions(this, context, TRACE_KEYS);
      const t = new Trace(this, asId(this, ctx.traceId) || newTraceId());
      t._update(ctx);
      return t;
    } catch (e) {
      this._stats.internalErrors++;
      return new Trace(this, newTraceId());
    }
  }

  // Resolves true once everything emitted so far is handed to the agent's
  // socket; false on timeout or when some was dropped meanwhile (an
  // unreachable agent is reported at once, not at the timeout). Never rejects.
  flush(timeoutMs) {
    try {
      const wait = asTimeoutMs(this, timeoutMs);
      if (this._outstanding === 0) return Promise.resolve(true);
      return new Promise((resolve) => {
        const waiter = { resolve, dropsBefore: this._drops(), timer: null };
        waiter.timer = setTimeout(() => this._finishWaiter(waiter), wait);
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
  async close(timeoutMs) {
    try {
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
    } catch (e) {
      this._stats.internalErrors++;
      return false;
    }
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
    let items;
    try { // a Proxy or a getter may throw
      if (Array.isArray(value) || value instanceof Set) items = Array.from(value);
      else items = Array.from(value instanceof Map ? value.entries() : Object.entries(value));
    } catch (e) {
      return this._degrade(`<unreadable ${typeof value}>`);
    }
    seen.add(value);
    let out;
    if (Array.isArray(value) || value instanceof Set) {
      out = items.map((v) => this._sanitize(v, depth + 1, seen));
    } else {
      out = {};
      for (const [k, v] of items) out[this._key(k)] = this._sanitize(v, depth + 1, seen);
    }
    seen.delete(value);
    return out;
  }

  _key(k) {
    try {
      return String(k);
    } catch (e) {
      return this._degrade('<unreadable key>');
    }
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

// ---- arguments ----------------------------------------------------------------
//
// Every public call accepts arguments of any type. Each argument becomes what
// protocol v1 expects, or is left out, by one rule per kind of argument
// (counted in argsCoerced / argsDropped):
// - text (name, error, feedbackTag, conversationId, ...): a string as is; a
//   Buffer/Uint8Array decoded as UTF-8; anything else as String(value).
// - ids (traceId, parent, target): a string as is; an Event gives its id; a
//   finite number or a bigint as its text; anything else, or an id that is
//   empty or longer than 128 UTF-8 bytes, is left out. A traceId left out is
//   replaced by a new one.
// - eventType: text of 1..128 bytes, else 'CUSTOM'.
// - status: 'ok' or 'error' in any case, else left out.
// - ts: a bigint in 0..2^64-1, a finite number >= 0, or a valid Date; a string
//   holding a number converted; anything else left out (meaning "now").
// - latency (ms) and score: a finite number; a bigint or a string holding a
//   number converted; NaN, infinities, a negative latency or anything else
//   left out.
// - attrs, metadata, user: an object or a Map (copied); a user given as a
//   string or number becomes { id }; anything else (arrays included) left out.
// - input, output: any value; what msgpack cannot encode is sent as text
//   (degradedValues).
// - an options argument that is not an object is ignored; an unknown option
//   key is left out.

const MAX_ID_BYTES = 128;
const MAX_NS = (1n << 64n) - 1n;
const MAX_TIMER_MS = 2 ** 31 - 1;
const DIGITS = /^\s*\+?[0-9]+\s*$/;
const DECIMAL = /^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$/; // not 0x.., 0b..

function asText(client, value) {
  if (value === undefined || value === null || typeof value === 'string') return value;
  let text;
  try {
    text = value instanceof Uint8Array ? Buffer.from(value).toString('utf8') : String(value);
  } catch (e) {
    client._stats.argsDropped++;
    return undefined;
  }
  client._stats.argsCoerced++;
  return text;
}

function idFits(text) {
  if (text.length <= MAX_ID_BYTES / 4) return text.length > 0;
  return text.length <= MAX_ID_BYTES && Buffer.byteLength(text, 'utf8') <= MAX_ID_BYTES;
}

function asId(client, value) {
  if (value === undefined || value === null) return undefined;
  let text;
  if (typeof value === 'string') {
    text = value;
  } else if (value instanceof Event) {
    return value.id;
  } else if ((typeof value === 'number' && Number.isFinite(value)) || typeof value === 'bigint') {
    text = String(value);
    client._stats.argsCoerced++;
  } else {
    client._stats.argsDropped++;
    return undefined;
  }
  if (idFits(text)) return text;
  client._stats.argsDropped++;
  return undefined;
}

function asEventType(client, value) {
  const text = asText(client, value);
  if (typeof text !== 'string' || !idFits(text)) {
    client._stats.argsDropped++;
    return 'CUSTOM';
  }
  return TYPE_NAMES.get(text.toLowerCase()) || text;
}

function asStatus(client, value) {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') {
    const low = value.toLowerCase();
    if (low === 'ok' || low === 'error') return low;
  }
  client._stats.argsDropped++;
  return undefined;
}

// A finite number from a number, a bigint or a numeric string (the last two
// counted as coerced); undefined otherwise (not counted: the caller decides).
function asNumber(client, value) {
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined;
  if (typeof value === 'bigint' || (typeof value === 'string' && DECIMAL.test(value))) {
    const n = Number(value);
    if (!Number.isFinite(n)) return undefined;
    client._stats.argsCoerced++;
    return n;
  }
  return undefined;
}

// ns since the epoch as a bigint; now when `ts` is absent or unusable.
function asNs(client, ts) {
  if (ts === undefined || ts === null) return nowNs();
  let ns;
  if (typeof ts === 'bigint') {
    ns = ts;
  } else if (typeof ts === 'number') {
    if (Number.isFinite(ts)) ns = BigInt(Math.trunc(ts));
  } else if (ts instanceof Date) {
    const ms = ts.getTime();
    if (Number.isFinite(ms)) ns = BigInt(ms) * 1000000n;
  } else if (typeof ts === 'string' && DIGITS.test(ts)) {
    ns = BigInt(ts.trim());
    client._stats.argsCoerced++;
  } else {
    const n = asNumber(client, ts);
    if (n !== undefined) ns = BigInt(Math.trunc(n));
  }
  if (ns !== undefined && ns >= 0n && ns <= MAX_NS) return ns;
  client._stats.argsDropped++;
  return nowNs();
}

function asLatencyMs(client, value) {
  if (value === undefined || value === null) return 0;
  const n = asNumber(client, value);
  if (n !== undefined && n >= 0 && n <= Number.MAX_SAFE_INTEGER) return Math.round(n);
  client._stats.argsDropped++;
  return 0;
}

function asScore(client, value) {
  if (value === undefined || value === null) return undefined;
  const n = asNumber(client, value);
  if (n !== undefined) return n;
  client._stats.argsDropped++;
  return undefined;
}

function isMapLike(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value) &&
    !ArrayBuffer.isView(value) && !(value instanceof ArrayBuffer) && !(value instanceof Date) &&
    !(value instanceof Set) && !(value instanceof Number) && !(value instanceof String) &&
    !(value instanceof Boolean);
}

function asMap(client, value, key) {
  if (value === undefined || value === null) return undefined;
  if (isMapLike(value)) {
    try {
      return value instanceof Map ? Object.fromEntries(value) : { ...value };
    } catch (e) { // a Proxy or getter that throws
      client._stats.argsDropped++;
      return undefined;
    }
  }
  if (key === 'user' && (typeof value === 'string' || typeof value === 'bigint' ||
      (typeof value === 'number' && Number.isFinite(value)))) {
    client._stats.argsCoerced++;
    return { id: String(value) };
  }
  client._stats.argsDropped++;
  return undefined;
}

// An options argument as a plain object holding its known keys. A
// non-object, an unknown key, and a key whose getter throws are counted as
// dropped.
function asOptions(client, value, known) {
  if (value === undefined || value === null) return EMPTY;
  if (typeof value !== 'object' || Array.isArray(value)) {
    client._stats.argsDropped++;
    return EMPTY;
  }
  let keys;
  try {
    keys = Object.keys(value);
  } catch (e) { // a Proxy that refuses
    client._stats.argsDropped++;
    return EMPTY;
  }
  const out = {};
  for (const k of keys) {
    if (!known.has(k)) {
      client._stats.argsDropped++;
      continue;
    }
    try {
      out[k] = value[k];
    } catch (e) {
      client._stats.argsDropped++;
    }
  }
  return out;
}

function asTimeoutMs(client, value) {
  if (value === undefined) return 2000;
  const n = asNumber(client, value);
  if (n === undefined) {
    client._stats.argsDropped++;
    return 2000;
  }
  return Math.min(Math.max(0, n), MAX_TIMER_MS);
}

const EMPTY = Object.freeze({});
const TRACE_KEYS = new Set(['conversationId', 'sessionId', 'interactionId', 'channelId', 'metadata', 'user', 'traceId']);
const START_KEYS = new Set(['name', 'attrs', 'ts', 'id']);
const END_KEYS = new Set(['status', 'error', 'attrs', 'ts']);
const FEEDBACK_KEYS = new Set(['feedbackTag', 'feedbackText', 'score', 'target', 'ts']);
const SEND_KEYS = new Set(['eventType', 'input', 'output', 'latency', 'name', 'parent', 'status', 'error', 'attrs', 'ts']);
const CLIENT_KEYS = new Set(['endpoint', 'maxQueue', 'maxQueueBytes', 'maxMessageBytes', 'exitFlushMs']);

// What a public call that failed unexpectedly returns: an Event that has
// already ended and sends nothing.
function detached(trace, client) {
  client._stats.internalErrors++;
  return Event._finished(trace, newEventId(), 'CUSTOM');
}

// ---- traces and events ------------------------------------------------------

const TYPE_NAMES = new Map(
  ['MESSAGE', 'TOOL', 'GENERATION', 'AGENT', 'RETRIEVAL', 'ROUTER', 'SYSTEM', 'CUSTOM'].map(
    (t) => [t.toLowerCase(), t]),
);

// Values the encoder would silently get wrong: Map and Set (as empty maps)
// and bigints outside int64/uint64 (wrapped). Converted at the top level.
function topLevel(value) {
  if (typeof value === 'bigint' && (value < -(1n << 63n) || value >= 1n << 64n)) return value.toString();
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Set) return Array.from(value);
  return value;
}

function putOutcome(client, msg, opts) {
  let status = asStatus(client, opts.status);
  const error = asText(client, opts.error);
  if (error !== undefined && error !== null && status === undefined) status = 'error';
  if (status !== undefined) msg.status = status;
  if (error !== undefined && error !== null) msg.error = error;
  const attrs = asMap(client, opts.attrs, 'attrs');
  if (attrs !== undefined) msg.attrs = attrs;
}

function errorText(e) {
  try {
    if (e instanceof Error) return e.message ? `${e.name}: ${e.message}` : e.name;
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
  update(context) {
    try {
      this._update(asOptions(this.client, context, TRACE_KEYS));
    } catch (e) {
      this.client._stats.internalErrors++;
    }
  }

  _update(ctx) {
    const client = this.client;
    try {
      const msg = { v: PROTOCOL_VERSION, kind: 'trace', trace_id: this.traceId, ts: nowNs() };
      const keys = [
        ['conversationId', 'conversation_id'],
        ['sessionId', 'session_id'],
        ['interactionId', 'interaction_id'],
        ['channelId', 'channel_id'],
      ];
      for (const [from, to] of keys) {
        const text = asText(client, ctx[from]);
        if (text !== undefined && text !== null) msg[to] = text;
      }
      const metadata = asMap(client, ctx.metadata, 'metadata');
      if (metadata !== undefined) msg.metadata = metadata;
      const user = asMap(client, ctx.user, 'user');
      if (user !== undefined) msg.user = user;
      client._emit(msg);
    } catch (e) {
      client._stats.internalErrors++;
    }
  }

  _start(type, input, opts) {
    try {
      return new Event(this, type, input, undefined, opts, START_KEYS);
    } catch (e) {
      return detached(this, this.client);
    }
  }

  custom(name, input, opts) {
    try {
      return new Event(this, 'CUSTOM', input, undefined, withName(this.client, opts, name), null);
    } catch (e) {
      return detached(this, this.client);
    }
  }

  message(input, opts) { return this._start('MESSAGE', input, opts); }
  system(input, opts) { return this._start('SYSTEM', input, opts); }
  tool(input, opts) { return this._start('TOOL', input, opts); }
  generation(input, opts) { return this._start('GENERATION', input, opts); }
  agent(input, opts) { return this._start('AGENT', input, opts); }
  retrieval(input, opts) { return this._start('RETRIEVAL', input, opts); }
  router(input, opts) { return this._start('ROUTER', input, opts); }

  // Feedback for the trace, or for one event with `target` (an Event or an id).
  feedback(fb) {
    const client = this.client;
    try {
      const f = asOptions(client, fb, FEEDBACK_KEYS);
      const msg = { v: PROTOCOL_VERSION, kind: 'feedback', trace_id: this.traceId, ts: asNs(client, f.ts) };
      const tag = asText(client, f.feedbackTag);
      if (tag !== undefined && tag !== null) msg.tag = tag;
      const text = asText(client, f.feedbackText);
      if (text !== undefined && text !== null) msg.text = text;
      const score = asScore(client, f.score);
      if (score !== undefined) msg.score = score;
      const target = asId(client, f.target);
      if (target !== undefined) msg.target_id = target;
      client._emit(msg);
    } catch (e) {
      client._stats.internalErrors++;
    }
  }

  // A whole, already finished event in one message. `latency` is in ms;
  // without `ts` the event is taken to have ended now.
  send(ev) {
    const client = this.client;
    try {
      const e = asOptions(client, ev, SEND_KEYS);
      return this._send(e, asId(client, e.parent));
    } catch (x) {
      return detached(this, client);
    }
  }

  _send(e, parentId) {
    const client = this.client;
    const msg = {
      v: PROTOCOL_VERSION,
      kind: 'event',
      trace_id: this.traceId,
      id: newEventId(),
      type: e.eventType === undefined || e.eventType === null ? 'CUSTOM' : asEventType(client, e.eventType),
    };
    if (parentId !== undefined) msg.parent_id = parentId;
    const name = asText(client, e.name);
    if (name !== undefined && name !== null) msg.name = name;
    if (e.input !== undefined) msg.input = topLevel(e.input);
    if (e.output !== undefined) msg.output = topLevel(e.output);
    const latencyMs = asLatencyMs(client, e.latency);
    if (e.ts !== undefined && e.ts !== null) {
      msg.ts = asNs(client, e.ts);
    } else {
      const ts = nowNs() - BigInt(latencyMs) * 1000000n;
      msg.ts = ts < 0n ? 0n : ts;
    }
    msg.latency_ms = latencyMs;
    putOutcome(client, msg, e);
    client._emit(msg);
    return Event._finished(this, msg.id, msg.type);
  }
}

// The options of custom(name, input, opts): opts with `name` set.
function withName(client, opts, name) {
  const o = asOptions(client, opts, START_KEYS);
  return { ...o, name };
}

class Event {
  // `known`: the option keys the caller accepts (null: already checked).
  constructor(trace, type, input, parentId, opts, known) {
    this.trace = trace;
    this.id = '';
    this.type = type;
    this.parentId = parentId;
    this._ended = true; // until the start is built
    if (trace === null) return; // Event._finished
    const client = trace.client;
    const o = known ? asOptions(client, opts, known) : opts;
    this.id = asId(client, o.id) || newEventId();
    const msg = {
      v: PROTOCOL_VERSION,
      kind: 'start',
      trace_id: trace.traceId,
      id: this.id,
      type,
      ts: asNs(client, o.ts),
    };
    if (parentId !== undefined) msg.parent_id = parentId;
    const name = asText(client, o.name);
    if (name !== undefined && name !== null) msg.name = name;
    if (input !== undefined && input !== null) msg.input = topLevel(input);
    const attrs = asMap(client, o.attrs, 'attrs');
    if (attrs !== undefined) msg.attrs = attrs;
    this._ended = false;
    client._emit(msg);
  }

  static _finished(trace, id, type) {
    const ev = new Event(null, type, undefined, undefined, EMPTY, null);
    ev.id = id;
    ev.trace = trace;
    ev._ended = true;
    return ev;
  }

  get traceId() { return this.trace.traceId; }
  get ended() { return this._ended; }

  _child(type, input, opts, known) {
    try {
      return new Event(this.trace, type, input, this.id, opts, known);
    } catch (e) {
      return detached(this.trace, this.trace.client);
    }
  }

  tool(input, opts) { return this._child('TOOL', input, opts, START_KEYS); }
  generation(input, opts) { return this._child('GENERATION', input, opts, START_KEYS); }
  agent(input, opts) { return this._child('AGENT', input, opts, START_KEYS); }
  retrieval(input, opts) { return this._child('RETRIEVAL', input, opts, START_KEYS); }
  router(input, opts) { return this._child('ROUTER', input, opts, START_KEYS); }
  message(input, opts) { return this._child('MESSAGE', input, opts, START_KEYS); }
  system(input, opts) { return this._child('SYSTEM', input, opts, START_KEYS); }
  custom(name, input, opts) {
    try {
      return this._child('CUSTOM', input, withName(this.trace.client, opts, name), null);
    } catch (e) {
      return detached(this.trace, this.trace.client);
    }
  }

  // A finished child event in one message (see Trace.send); `parent` is this event.
  send(ev) {
    const client = this.trace.client;
    try {
      const e = asOptions(client, ev, SEND_KEYS);
      return this.trace._send(e, this.id);
    } catch (x) {
      return detached(this.trace, client);
    }
  }

  // Ends the event (only the first end() is sent). opts: status ('ok' |
  // 'error'; giving `error` implies 'error'), error, attrs (merged), ts.
  end(output, opts) {
    if (this._ended) return;
    this._ended = true;
    const client = this.trace.client;
    try {
      const o = asOptions(client, opts, END_KEYS);
      const msg = { v: PROTOCOL_VERSION, kind: 'end', trace_id: this.trace.traceId, id: this.id, ts: asNs(client, o.ts) };
      if (output !== undefined && output !== null) msg.output = topLevel(output);
      putOutcome(client, msg, o);
      client._emit(msg);
    } catch (e) {
      client._stats.internalErrors++;
    }
  }

  feedback(fb) {
    const client = this.trace.client;
    try {
      const f = asOptions(client, fb, FEEDBACK_KEYS);
      this.trace.feedback({ ...f, target: this });
    } catch (e) {
      client._stats.internalErrors++;
    }
  }

  // Runs fn(event) and ends the event when fn returns or its promise settles;
  // a throw or rejection ends it with status 'error' and is passed on. A
  // non-function `fn` is left out (counted): the event ends, run() returns
  // undefined.
  run(fn) {
    if (typeof fn !== 'function') {
      this.trace.client._stats.argsDropped++;
      this.end();
      return undefined;
    }
    let result;
    try {
      result = fn(this);
    } catch (e) {
      this.end(undefined, { error: errorText(e) });
      throw e;
    }
    let then;
    try {
      then = result !== null && (typeof result === 'object' || typeof result === 'function') ? result.then : undefined;
    } catch (e) {
      then = undefined; // a thenable whose `then` getter throws: treated as a plain value
    }
    if (typeof then === 'function') {
      return Promise.resolve(result).then(
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

function isFieldObject(fields) {
  return typeof fields === 'object' && fields !== null && !Array.isArray(fields);
}

class Metadata {
  // fields: an object; anything else gives an empty Metadata.
  constructor(fields) {
    if (isFieldObject(fields)) {
      try {
        Object.assign(this, fields);
      } catch (e) {
        // a getter that throws: the fields copied so far stay
      }
    }
  }
}

class User {
  // fields: an object ({ id, ...}), or the id itself as a string or number.
  constructor(fields) {
    if (typeof fields === 'string' || typeof fields === 'number' || typeof fields === 'bigint') {
      this.id = String(fields);
    } else if (isFieldObject(fields)) {
      try {
        Object.assign(this, fields);
      } catch (e) {
        // a getter that throws: the fields copied so far stay
      }
    }
  }
}

module.exports = { Client, Trace, Event, Metadata, User, PROTOCOL_VERSION, DEFAULT_ENDPOINT, STAT_KEYS };
