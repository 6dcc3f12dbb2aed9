// The agent's lifecycle: builds every component from a Config, runs until
// asked to stop, and shuts down in data-flow order so that nothing accepted is
// lost: intake stops accepting (OTLP/HTTP requests already read are answered
// once their spans are stored, for a few seconds at most), the writer commits
// what is queued, the assembler and the exporter stop, the store closes.
//
// Start-up failures (a socket that cannot be bound, a store that cannot be
// opened even after quarantine, a bad upstream setting) throw
// std::runtime_error with a message for the operator.
//
// Thread safety: construct and run() from one thread; request_stop() and
// request_reload() from any thread (they are also wired to SIGTERM/SIGINT and
// SIGHUP by run()).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "config/config.h"

namespace sidetrace::agent {

struct AgentOptions {
  // Re-reads the configuration for a reload (SIGHUP); throws ConfigError.
  // Empty: reloads are refused.
  std::function<config::Config()> reload;
};

class Agent {
 public:
  Agent(config::Config config, AgentOptions options = {});
  ~Agent();

  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Opens everything, serves until stopped, shuts down. Returns the process
  // exit code (0 after a requested stop). Throws on start-up failure.
  int run();

  void request_stop();
  void request_reload();

  // Whether run() has finished starting (store open, sockets bound).
  bool ready() const;
  // The bound admin port (0 if disabled or not yet bound).
  unsigned short admin_port() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Configures spdlog: stderr, level by name ("info", "debug", ...), and
// journal-friendly lines (no timestamps under systemd, which adds its own).
void setup_logging(const std::string& level);

}  // namespace sidetrace::agent
