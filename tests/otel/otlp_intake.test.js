'use strict';
// The official OpenTelemetry JS SDK (sdk-trace-base with the OTLP/HTTP
// exporters, protobuf and JSON) exports spans to the real agent. The test
// then checks what the agent acknowledged, what it stored (the trace
// document, from the admin API) and what it forwarded to a loopback upstream
// in `upstream.format = "otlp"`: every span with its ids, parent, name,
// times, status and attributes (docs/protocol.md, "OpenTelemetry spans").
//
// Environment: SIDETRACE_BIN (default build/release/agent/sidetrace).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');
const { spawn } = require('node:child_process');

const api = require('@opentelemetry/api');
const { BasicTracerProvider, SimpleSpanProcessor, InMemorySpanExporter } = require('@opentelemetry/sdk-trace-base');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { OTLPTraceExporter: ProtoExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { OTLPTraceExporter: JsonExporter } = require('@opentelemetry/exporter-trace-otlp-http');

const REPO = path.join(__dirname, '..', '..');
const binary = process.env.SIDETRACE_BIN || path.join(REPO, 'build', 'release', 'agent', 'sidetrace');
let skip = false;
try {
  fs.accessSync(binary, fs.constants.X_OK);
} catch (e) {
  skip = `the agent binary is not built yet (${binary}; set SIDETRACE_BIN)`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `cond` every `interval` ms until it holds or `limit` ms have passed.
async function waitUntil(cond, limit = 15000, interval = 20) {
  const deadline = Date.now() + limit;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() >= deadline) return v;
    await sleep(interval);
  }
}

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

// A loopback upstream that keeps every OTLP/HTTP JSON request it is sent.
async function startSink() {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = zlib.gunzipSync(body);
      requests.push({ path: req.url, type: req.headers['content-type'], body: JSON.parse(body.toString('utf8')) });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, requests, port: server.address().port };
}

// Runs the real agent in a temporary directory, forwarding to `sinkPort` in
// the OTLP format; resolves with its OTLP and admin ports.
async function startAgent(sinkPort) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'st-otel-'));
  const env = {
    ...process.env,
    SIDETRACE_DATA_DIR: path.join(dir, 'data'),
    SIDETRACE_LISTEN_UNIX_STREAM: path.join(dir, 'a.sock'),
    SIDETRACE_LISTEN_UNIX_DGRAM: '',
    SIDETRACE_LISTEN_UDP: '',
    SIDETRACE_LISTEN_OTLP_HTTP: '127.0.0.1:0',
    SIDETRACE_ADMIN_LISTEN: '127.0.0.1:0',
    SIDETRACE_TRACE_QUIET_PERIOD_MS: '200',
    SIDETRACE_UPSTREAM_ENDPOINT: `http://127.0.0.1:${sinkPort}`,
    SIDETRACE_UPSTREAM_FORMAT: 'otlp',
    // The sink reads the JSON encoding; the protobuf one (the default) is
    // decoded by tests/system/test_otlp_export.py.
    SIDETRACE_UPSTREAM_OTLP_ENCODING: 'json',
    SIDETRACE_UPSTREAM_COMPRESSION: 'gzip',
    SIDETRACE_UPSTREAM_FLUSH_INTERVAL_MS: '20',
  };
  const logPath = path.join(dir, 'agent.log');
  const log = fs.openSync(logPath, 'w');
  const proc = spawn(binary, ['agent'], { env, stdio: ['ignore', log, log] });
  const agent = { dir, proc, exited: false, logText: () => fs.readFileSync(logPath, 'utf8') };
  proc.on('exit', () => { agent.exited = true; });
  agent.stop = async () => {
    proc.kill('SIGTERM');
    await waitUntil(() => agent.exited, 10000);
    if (!agent.exited) proc.kill('SIGKILL');
    fs.closeSync(log);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const ready = await waitUntil(() => agent.exited || agent.logText().includes('sidetrace ready'));
  const text = agent.logText();
  if (!ready || agent.exited) {
    await agent.stop();
    throw new Error(`the agent did not start:\n${text}`);
  }
  agent.otlpPort = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)\/v1\/traces/.exec(text)[1]);
  agent.admin = `http://${/admin: listening on (\S+)/.exec(text)[1]}`;
  return agent;
}

// An exporter that records the result of each export it passes on.
class Recording {
  constructor(inner) {
    this.inner = inner;
    this.results = [];
  }
  export(spans, done) {
    this.inner.export(spans, (r) => {
      this.results.push(r);
      done(r);
    });
  }
  shutdown() { return this.inner.shutdown(); }
  forceFlush() { return this.inner.forceFlush ? this.inner.forceFlush() : Promise.resolve(); }
}

// An agent span, a chat span and a failing tool call under it, as an
// application instrumented with OpenTelemetry (GenAI and OpenInference
// conventions) produces them.
async function emitTrace(exporter) {
  const recording = new Recording(exporter);
  const memory = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'support-bot', 'deployment.environment': 'test' }),
    spanProcessors: [new SimpleSpanProcessor(recording), new SimpleSpanProcessor(memory)],
  });
  const tracer = provider.getTracer('sidetrace-otel-test', '1.0.0');
  const root = tracer.startSpan('answer', {
    attributes: {
      'openinference.span.kind': 'AGENT',
      'input.value': 'What is 2+2?',
      'output.value': '4',
      'session.id': 'session-9',
      'user.id': 'u-42',
      'app.flags': ['fast', 'cheap'],
      'app.retries': 2,
      'app.ratio': 0.75,
      'app.cached': false,
    },
  });
  const inRoot = api.trace.setSpan(api.ROOT_CONTEXT, root);
  const chat = tracer.startSpan('chat gpt-4o-mini', {
    kind: api.SpanKind.CLIENT,
    attributes: {
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': 'gpt-4o-mini',
      'gen_ai.usage.input_tokens': 12,
      'gen_ai.usage.output_tokens': 1,
      'gen_ai.conversation.id': 'conv-17',
      'input.value': '[{"role":"user","content":"What is 2+2?"}]',
      'input.mime_type': 'application/json',
      'output.value': '4',
    },
  }, inRoot);
  const tool = tracer.startSpan('lookup', {
    attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'calc' },
  }, inRoot);
  tool.recordException(new Error('division by zero'));
  tool.setStatus({ code: api.SpanStatusCode.ERROR, message: 'calc failed' });
  tool.end();
  chat.end();
  root.setStatus({ code: api.SpanStatusCode.OK });
  root.end();
  // A failed export makes the flush reject; the results say what happened.
  await provider.forceFlush().catch(() => {});
  await waitUntil(() => recording.results.length >= 3, 15000);
  const spans = memory.getFinishedSpans();
  await provider.shutdown().catch(() => {});
  return { spans, results: recording.results, traceId: root.spanContext().traceId };
}

const ns = (hr) => (BigInt(hr[0]) * 1000000000n + BigInt(hr[1])).toString();
const parentOf = (span) => (span.parentSpanContext ? span.parentSpanContext.spanId : span.parentSpanId);

// The OTLP JSON AnyValue the OTLP encoding gives a JS attribute value.
function anyValue(v) {
  if (Array.isArray(v)) return { arrayValue: { values: v.map(anyValue) } };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Number.isInteger(v)) return { intValue: String(v) };
  return { doubleValue: v };
}

function attributesOf(span) {
  const out = {};
  for (const a of span.attributes || []) out[a.key] = a.value;
  return out;
}

async function roundTrip(t, makeExporter) {
  const sink = await startSink();
  const agent = await startAgent(sink.port);
  t.after(async () => {
    await agent.stop();
    sink.server.close();
  });
  const { spans, results, traceId } = await emitTrace(makeExporter(agent.otlpPort));
  assert.equal(spans.length, 3);
  assert.deepEqual(results.map((r) => r.code), [0, 0, 0], `exports failed: ${JSON.stringify(results)}`);

  // Acknowledged means stored: the agent counts the spans it acknowledged.
  const metrics = (await get(`${agent.admin}/metrics`)).body;
  assert.match(metrics, /sidetrace_otlp_spans_total\{outcome="stored"\} 3\n/);
  assert.match(metrics, /sidetrace_otlp_requests_total\{outcome="ok"\} 3\n/);

  // Stored: the trace document.
  const doc = await waitUntil(async () => {
    const r = await get(`${agent.admin}/api/traces/${traceId}`);
    return r.status === 200 ? JSON.parse(r.body) : null;
  });
  assert.ok(doc, `no trace document for ${traceId}:\n${agent.logText().slice(-3000)}`);
  const byName = Object.fromEntries(spans.map((s) => [s.name, s]));
  assert.equal(doc.trace_id, traceId);
  assert.equal(doc.conversation_id, 'conv-17');
  assert.equal(doc.session_id, 'session-9');
  assert.deepEqual(doc.user, { id: 'u-42' });
  assert.equal(doc.metadata['service.name'], 'support-bot');
  assert.equal(doc.metadata['deployment.environment'], 'test');
  assert.equal(doc.status, 'error');
  assert.equal(doc.events.length, 1);
  const root = doc.events[0];
  assert.equal(root.id, byName.answer.spanContext().spanId);
  assert.equal(root.type, 'AGENT');
  assert.equal(root.input, 'What is 2+2?');
  assert.equal(root.output, '4');
  // (JSON numbers in JS are doubles: both sides round the same way.)
  assert.equal(root.start_ts, Number(ns(byName.answer.startTime)));
  assert.equal(root.end_ts, Number(ns(byName.answer.endTime)));
  const children = Object.fromEntries(root.children.map((c) => [c.name, c]));
  assert.equal(children['chat gpt-4o-mini'].type, 'GENERATION');
  assert.equal(children['chat gpt-4o-mini'].parent_id, root.id);
  assert.equal(children['chat gpt-4o-mini'].attrs.model, 'gpt-4o-mini');
  assert.equal(children['chat gpt-4o-mini'].attrs.input_tokens, 12);
  assert.equal(children.lookup.type, 'TOOL');
  assert.equal(children.lookup.status, 'error');
  assert.equal(children.lookup.error, 'calc failed');
  assert.equal(children.lookup.attrs['otel.events'][0].name, 'exception');

  // Forwarded: the OTLP export carries every span as it came.
  const forwarded = await waitUntil(() => {
    const all = {};
    for (const r of sink.requests) {
      for (const rs of r.body.resourceSpans || []) {
        for (const ss of rs.scopeSpans || []) {
          for (const s of ss.spans || []) if (s.traceId === traceId) all[s.spanId] = s;
        }
      }
    }
    return Object.keys(all).length === 3 ? all : null;
  });
  assert.ok(forwarded, `the upstream did not get the trace: ${JSON.stringify(sink.requests).slice(0, 2000)}`);
  assert.equal(sink.requests[0].path, '/v1/traces');
  for (const span of spans) {
    const id = span.spanContext().spanId;
    const out = forwarded[id];
    assert.ok(out, `span ${span.name} (${id}) was not forwarded`);
    assert.equal(out.traceId, span.spanContext().traceId);
    assert.equal(out.parentSpanId, parentOf(span), span.name);
    assert.equal(out.name, span.name);
    assert.equal(out.startTimeUnixNano, ns(span.startTime), span.name);
    assert.equal(out.endTimeUnixNano, ns(span.endTime), span.name);
    // UNSET comes back as OK: the trace document knows ok and error only.
    const code = span.status.code === api.SpanStatusCode.UNSET ? api.SpanStatusCode.OK : span.status.code;
    assert.equal(out.status.code, code, span.name);
    if (span.status.message) assert.equal(out.status.message, span.status.message);
    const attrs = attributesOf(out);
    for (const [key, value] of Object.entries(span.attributes)) {
      assert.deepEqual(attrs[key], anyValue(value), `${span.name}: attribute ${key}`);
    }
  }
}

test('OTLP/HTTP protobuf (exporter-trace-otlp-proto, endpoint from OTEL_EXPORTER_OTLP_ENDPOINT, gzip)',
  { skip }, async (t) => {
    await roundTrip(t, (port) => {
      // What docs/emitting.md tells an application to set.
      const saved = process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
      process.env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${port}`;
      try {
        return new ProtoExporter({ compression: 'gzip' });
      } finally {
        if (saved === undefined) delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
        else process.env.OTEL_EXPORTER_OTLP_ENDPOINT = saved;
      }
    });
  });

test('OTLP/HTTP JSON (exporter-trace-otlp-http)', { skip }, async (t) => {
  await roundTrip(t, (port) => new JsonExporter({ url: `http://127.0.0.1:${port}/v1/traces` }));
});

test('a refusal reaches the exporter as a failed export', { skip }, async (t) => {
  const sink = await startSink();
  const agent = await startAgent(sink.port);
  t.after(async () => {
    await agent.stop();
    sink.server.close();
  });
  // A path the agent does not serve: the exporter reports the 404.
  const exporter = new JsonExporter({ url: `http://127.0.0.1:${agent.otlpPort}/v1/logs` });
  const { results } = await emitTrace(exporter);
  assert.equal(results.length, 3);
  for (const r of results) assert.equal(r.code, 1, JSON.stringify(r));
  const metrics = (await get(`${agent.admin}/metrics`)).body;
  assert.match(metrics, /sidetrace_otlp_requests_total\{outcome="not_found"\} 3\n/);
});
