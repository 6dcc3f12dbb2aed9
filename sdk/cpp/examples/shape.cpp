// The cross-language program shape (tests/crosslang), written with the C++ SDK.
// Usage: SIDETRACE_ENDPOINT=unix:///path/agent.sock sidetrace_shape_example TRACE_ID
// Emits one trace with the given id and exits 0 once every message was handed
// to the agent's socket, 1 if some were dropped, 2 on bad usage. The same shape
// is written in tests/crosslang/shape.py (Python) and shape.js (Node.js): keep
// the three identical.
#include <sidetrace/client.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace st = sidetrace::client;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s TRACE_ID (the endpoint comes from $SIDETRACE_ENDPOINT)\n",
                 argv[0]);
    return 2;
  }
  st::Client client;
  st::Trace trace = client.trace({.trace_id = argv[1],
                                  .conversation_id = "conv_123",
                                  .session_id = "session_123",
                                  .metadata = {{"environment", "production"}},
                                  .user = {{"id", "user_123"}, {"plan", "pro"}}});
  std::string generation_id;
  {
    st::Event message = trace.message("User: Tell me about neural networks");

    // A tool call that already happened, sent whole (35 ms long).
    message.send({.type = "TOOL",
                  .input = "lookup(42)",
                  .output = std::map<std::string, bool>{{"found", true}},
                  .latency_ms = 35,
                  .name = "lookup"});

    st::Event retrieval = message.retrieval("Searching documentation");
    retrieval.end("Found 2 relevant articles");

    st::Event tool = message.tool(std::map<std::string, std::string>{{"query", "neural networks"}},
                                  {.name = "search_docs"});
    tool.end(std::map<std::string, int>{{"hits", 2}});

    st::Event gen = message.generation(
        std::vector<std::map<std::string, std::string>>{
            {{"role", "user"}, {"content", "Tell me about neural networks"}}},
        {.name = "Creating explanation",
         .attrs = {{"model", "gpt-4o-mini"}, {"temperature", 0.2}}});
    gen.end("Neural networks are layered function approximators.",
            {.attrs = {{"input_tokens", 812}, {"output_tokens", 95}}});
    generation_id = gen.id();

    st::Event fetch = message.tool("https://example.invalid/nn", {.name = "fetch"});
    fetch.fail("timeout");

    message.end("Bot: Neural networks are...");
  }
  trace.system("Initializing cache").end("Cache warmed up");

  trace.feedback({.tag = "THUMBS_UP", .text = "helpful", .score = 1.0});
  trace.feedback({.tag = "WRONG_SOURCE", .score = 0.0, .target_id = generation_id});

  return client.close(std::chrono::seconds(5)) ? 0 : 1;
}
