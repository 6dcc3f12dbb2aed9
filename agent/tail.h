// `sidetrace tail`: follows a running agent's recently finished traces
// through its admin endpoint (GET /api/traces?since=, then
// GET /api/traces/<id> for each new one) and prints each as an indented
// tree, one line per event:
//
//   trace 4bf92f...  rev 1  2024-05-01T12:00:00.000Z  812.0 ms  ok  session=s1 user=u-42
//     AGENT answer  812.0 ms  ok
//       GENERATION llm  790.5 ms  error  ! rate limited
//     feedback  thumbs  score=1  "great"  on g1
//
// Thread safety: run_tail() blocks its caller; it installs SIGINT/SIGTERM
// handlers for its duration (through an asio signal_set), so call it from
// one thread at a time.
// Errors: an agent that cannot be reached at the start is an error (exit 3);
// one that goes away later is reported once and polled until it is back.
#pragma once

#include <chrono>
#include <cstddef>
#include <ostream>
#include <string>

namespace sidetrace::agent {

struct TailOptions {
  std::string admin;                         // --admin host:port (required)
  std::string token;                         // the admin token; "" for none
  std::chrono::milliseconds interval{1000};  // --interval-ms: time between polls
  size_t last = 10;                          // --last N: recent traces to print first
  size_t count = 0;                          // --count N: stop after N traces; 0: never
  std::string session, conversation, user;   // --session --conversation --user
  std::string query;                         // --query: the viewer's search
  bool errors_only = false;                  // --errors
  bool color = true;                         // --no-color turns it off
};

// Runs until SIGINT/SIGTERM, or until `count` traces were printed.
// Returns 0 then; 2 on bad options; 3 when the agent cannot be reached at
// the start. Traces go to `out`, diagnostics to `err`.
int run_tail(const TailOptions& options, std::ostream& out, std::ostream& err);

// Renders one trace document as the indented tree above (with a trailing
// newline). Returns false, writing nothing, when `document` is not a trace
// document.
bool render_trace_text(const std::string& document, bool color, std::string* text);

}  // namespace sidetrace::agent
