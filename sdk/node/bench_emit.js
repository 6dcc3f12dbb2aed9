#!/usr/bin/env node
'use strict';
// Cost of one emitted event on the caller's turn, agent up and agent down.
// Prints one JSON object per line:
// {"bench":"emit","sdk":"node","agent":"up","p50_us":...,"p99_us":...}
// "up": a Unix stream socket drained by another process; "down": nothing
// listens (events queue up to the bound, then are dropped and counted).

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Client } = require('.');

const N = Number(process.env.SIDETRACE_BENCH_EVENTS || 50000);
const WARMUP = 2000;
const BURST = 1000; // events per turn; the sender runs between bursts

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function measure(client) {
  const trace = client.trace({ conversationId: 'bench' });
  const samples = new Float64Array(N + WARMUP);
  let i = 0;
  while (i < N + WARMUP) {
    for (let k = 0; k < BURST && i < N + WARMUP; k++, i++) {
      const t0 = process.hrtime.bigint();
      trace.send({ eventType: 'TOOL', input: "What's the weather in Paris?", output: 'sunny, 21C', latency: 12 });
      samples[i] = Number(process.hrtime.bigint() - t0);
    }
    await new Promise((r) => setImmediate(r));
  }
  const sorted = Array.from(samples.subarray(WARMUP)).sort((a, b) => a - b);
  return [percentile(sorted, 0.5) / 1000, percentile(sorted, 0.99) / 1000];
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'st-bench-'));
  const sock = path.join(dir, 'agent.sock');
  const drain = spawn(process.execPath, ['-e', `
    require('node:net').createServer((c) => { c.on('data', () => {}); c.on('error', () => {}); })
      .listen(${JSON.stringify(sock)}, () => process.stdout.write('up\\n'));`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => drain.stdout.once('data', r));
  try {
    for (const [agent, endpoint] of [['up', `unix://${sock}`], ['down', `unix://${dir}/absent.sock`]]) {
      const client = new Client({ endpoint, maxQueue: 10000 });
      const heapBefore = process.memoryUsage().heapUsed;
      const [p50, p99] = await measure(client);
      const heapAfter = process.memoryUsage().heapUsed;
      const stats = client.stats();
      await client.close(agent === 'up' ? 2000 : 0);
      console.log(JSON.stringify({
        bench: 'emit', sdk: 'node', agent,
        p50_us: Math.round(p50 * 100) / 100, p99_us: Math.round(p99 * 100) / 100,
        events: N + WARMUP, sent: stats.sent, dropped: stats.dropped,
        heap_growth_kb: Math.round((heapAfter - heapBefore) / 1024),
      }));
    }
  } finally {
    drain.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
