'use strict';
// The cross-language program shape, written with the Node.js SDK.
// Usage: SIDETRACE_ENDPOINT=unix:///path/agent.sock node shape.js TRACE_ID
// Emits one trace with the given id; exits 0 once every message was handed to
// the agent's socket, 1 if some were dropped, 2 on bad usage. The same shape is
// written in shape.py (Python) and sdk/cpp/examples/shape.cpp (C++): keep the
// three identical.

const path = require('node:path');
const { Client, Metadata, User } = require(path.join(__dirname, '..', '..', 'sdk', 'node'));

async function main(argv) {
  if (argv.length !== 1) {
    process.stderr.write('usage: node shape.js TRACE_ID (endpoint: $SIDETRACE_ENDPOINT)\n');
    return 2;
  }
  const client = new Client();
  const trace = client.trace({
    traceId: argv[0],
    conversationId: 'conv_123',
    sessionId: 'session_123',
    metadata: new Metadata({ environment: 'production' }),
    user: new User({ id: 'user_123', plan: 'pro' }),
  });
  const message = trace.message('User: Tell me about neural networks');
  let gen;
  message.run(() => {
    // A tool call that already happened, sent whole (35 ms long).
    message.send({
      eventType: 'TOOL', input: 'lookup(42)', output: { found: true }, latency: 35, name: 'lookup',
    });

    message.retrieval('Searching documentation').end('Found 2 relevant articles');

    message.tool({ query: 'neural networks' }, { name: 'search_docs' })
      .run((tool) => tool.end({ hits: 2 }));

    gen = message.generation([{ role: 'user', content: 'Tell me about neural networks' }], {
      name: 'Creating explanation',
      attrs: { model: 'gpt-4o-mini', temperature: 0.2 },
    });
    gen.end('Neural networks are layered function approximators.', {
      attrs: { input_tokens: 812, output_tokens: 95 },
    });

    message.tool('https://example.invalid/nn', { name: 'fetch' })
      .end(undefined, { error: 'timeout' });

    message.end('Bot: Neural networks are...');
  });
  trace.system('Initializing cache').end('Cache warmed up');

  trace.feedback({ feedbackTag: 'THUMBS_UP', feedbackText: 'helpful', score: 1 });
  gen.feedback({ feedbackTag: 'WRONG_SOURCE', score: 0 });

  return (await client.close(5000)) ? 0 : 1;
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
