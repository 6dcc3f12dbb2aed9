// sidetrace: the command line. Parses arguments and hands over to the
// components; all behaviour lives in the libraries.
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <malloc.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "agent/admin.h"
#include "agent/agent.h"
#include "agent/tail.h"
#include "agent/tools.h"
#include "agent/wiring.h"
#include "config/config.h"
#include "ipc/emit.h"

namespace {

using sidetrace::config::Config;
using sidetrace::config::ConfigError;

constexpr int kExitConfig = 2;

void add_emit_flags(CLI::App& cmd, sidetrace::ipc::EmitOptions& o) {
  cmd.add_option("--endpoint", o.endpoint,
                 "unix://PATH, unixgram://PATH or udp://HOST:PORT (default: $SIDETRACE_ENDPOINT)");
  cmd.add_flag("--stdin", o.json_lines, "Read one JSON message per line from stdin");
  cmd.add_option("--kind", o.kind, "trace, start, end, event or feedback")->capture_default_str();
  cmd.add_option("--trace-id", o.trace_id, "The trace id");
  cmd.add_option("--id", o.id, "The event id");
  cmd.add_option("--parent-id", o.parent_id, "The parent event's id");
  cmd.add_option("--type", o.type,
                 "MESSAGE, TOOL, GENERATION, AGENT, RETRIEVAL, ROUTER, SYSTEM, ...");
  cmd.add_option("--name", o.name, "A short label");
  cmd.add_option("--input", o.input, "What went in (text, or JSON with --json)");
  cmd.add_option("--output", o.output, "What came out (text, or JSON with --json)");
  cmd.add_flag("--json", o.json_values, "Parse --input and --output as JSON");
  cmd.add_option("--status", o.status, "ok or error");
  cmd.add_option("--error", o.error, "Error text");
  cmd.add_option("--ts", o.ts_ns, "When it happened, ns since the Unix epoch");
  cmd.add_option("--end-ts", o.end_ts_ns, "When it ended, ns since the Unix epoch");
  cmd.add_option("--latency-ms", o.latency_ms, "How long it took");
  cmd.add_option("--attrs", o.attrs_json, "Attributes as a JSON object");
  cmd.add_option("--conversation-id", o.conversation_id, "kind trace: the conversation");
  cmd.add_option("--session-id", o.session_id, "kind trace: the session");
  cmd.add_option("--user-id", o.user_id, "kind trace: the user's id");
  cmd.add_option("--tag", o.tag, "kind feedback: e.g. THUMBS_UP");
  cmd.add_option("--text", o.text, "kind feedback: free text");
  cmd.add_option("--target-id", o.target_id, "kind feedback: the event it is about");
  cmd.add_option("--score", o.score, "kind feedback: a number");
}

Config load_config(const std::string& file, const std::vector<std::string>& sets) {
  return sidetrace::config::load(file, sidetrace::config::process_environment(), sets);
}

}  // namespace

int main(int argc, char** argv) {
  // Few malloc arenas: RocksDB's and the agent's threads would otherwise each
  // keep freed memory in an arena of their own, and RSS would drift upwards.
  mallopt(M_ARENA_MAX, 2);
  // A fixed threshold (glibc otherwise raises it as large blocks are freed):
  // blocks of 256 KiB and more, such as the store's memtable arenas, are
  // mapped and unmapped on their own, so freeing them returns the memory.
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  CLI::App app{"sidetrace: a local sidecar agent for tracing LLM applications"};
  app.require_subcommand(1);

  std::string config_file;
  std::vector<std::string> sets;
  auto add_config_options = [&](CLI::App* cmd) {
    cmd->add_option("-c,--config", config_file, "TOML configuration file");
    cmd->add_option("--set", sets, "Override one key, section.key=value (repeatable)");
  };

  // sidetrace agent
  bool print = false;
  CLI::App* agent_cmd = app.add_subcommand("agent", "Run the agent in the foreground");
  add_config_options(agent_cmd);
  agent_cmd->add_flag("--print", print, "Also print every finished trace to stdout");

  // sidetrace config check FILE
  CLI::App* config_cmd = app.add_subcommand("config", "Configuration tools");
  config_cmd->require_subcommand(1);
  CLI::App* check_cmd = config_cmd->add_subcommand(
      "check", "Validate a configuration and print the effective one, secrets masked");
  std::string check_file;
  check_cmd->add_option("file", check_file, "TOML configuration file")->required();
  check_cmd->add_option("--set", sets, "Override one key, section.key=value (repeatable)");

  // sidetrace emit
  sidetrace::ipc::EmitOptions emit;
  CLI::App* emit_cmd = app.add_subcommand(
      "emit", "Send events to the agent: one from flags, or JSON lines from stdin");
  add_emit_flags(*emit_cmd, emit);

  // sidetrace status
  std::string admin_addr;
  bool status_metrics = false;
  CLI::App* status_cmd = app.add_subcommand("status", "Show the running agent's state");
  add_config_options(status_cmd);
  status_cmd->add_option("--admin", admin_addr, "Admin endpoint host:port (default: admin.listen)");
  status_cmd->add_flag("--metrics", status_metrics, "Print the raw Prometheus metrics instead");

  // sidetrace reload
  CLI::App* reload_cmd =
      app.add_subcommand("reload", "Ask the running agent to re-read its configuration");
  add_config_options(reload_cmd);
  reload_cmd->add_option("--admin", admin_addr, "Admin endpoint host:port (default: admin.listen)");
  int64_t reload_wait_s = sidetrace::agent::kReloadFollow.count();
  reload_cmd
      ->add_option("--wait", reload_wait_s,
                   "Seconds to wait for the agent to finish the reload (it goes on after)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  // sidetrace deadletter list|replay|purge
  CLI::App* dl_cmd = app.add_subcommand("deadletter", "Inspect, replay or purge dead letters");
  dl_cmd->require_subcommand(1);
  add_config_options(dl_cmd);
  CLI::App* dl_list = dl_cmd->add_subcommand("list", "List dead-lettered batches");
  CLI::App* dl_replay = dl_cmd->add_subcommand("replay", "Send dead-lettered batches again");
  CLI::App* dl_purge = dl_cmd->add_subcommand("purge", "Delete every dead-lettered batch");
  for (CLI::App* sub : {dl_list, dl_replay, dl_purge})
    add_config_options(sub);
  int64_t dl_wait_s = sidetrace::agent::kDeadLetterFollow.count();
  for (CLI::App* sub : {dl_replay, dl_purge}) {
    sub->add_option("--wait", dl_wait_s,
                    "Seconds to wait for a running agent to finish (it goes on after)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
  }

  // sidetrace quarantine list|release <trace id>
  CLI::App* q_cmd = app.add_subcommand(
      "quarantine", "List the traces set aside after failing to build, or release one");
  q_cmd->require_subcommand(1);
  add_config_options(q_cmd);
  CLI::App* q_list = q_cmd->add_subcommand("list", "List the traces set aside, with the reason");
  CLI::App* q_release = q_cmd->add_subcommand("release", "Build a trace that was set aside again");
  std::string q_trace;
  q_release->add_option("trace_id", q_trace, "The trace id")->required();
  for (CLI::App* sub : {q_list, q_release})
    add_config_options(sub);

  // sidetrace tail
  sidetrace::agent::TailOptions tail;
  int64_t tail_interval_ms = 1000;
  bool tail_no_color = false;
  CLI::App* tail_cmd =
      app.add_subcommand("tail", "Print the running agent's traces as they finish");
  add_config_options(tail_cmd);
  tail_cmd->add_option("--admin", tail.admin, "Admin endpoint host:port (default: admin.listen)");
  tail_cmd->add_option("--interval-ms", tail_interval_ms, "Time between polls")
      ->capture_default_str();
  tail_cmd->add_option("-n,--last", tail.last, "Print this many recent traces first")
      ->capture_default_str();
  tail_cmd->add_option("--count", tail.count, "Stop after this many traces (0: never)");
  tail_cmd->add_option("--session", tail.session, "Only this session");
  tail_cmd->add_option("--conversation", tail.conversation, "Only this conversation");
  tail_cmd->add_option("--user", tail.user, "Only this user id");
  tail_cmd->add_option("--query", tail.query,
                       "Only traces whose ids, names, inputs or outputs contain this text");
  tail_cmd->add_flag("--errors", tail.errors_only, "Only traces with an error");
  tail_cmd->add_flag("--no-color", tail_no_color, "Plain text, no ANSI colors");

  for (CLI::App* cmd : {status_cmd, reload_cmd, dl_cmd, tail_cmd}) {
    cmd->footer(
        "An agent with an admin token needs it: admin.token or admin.token_file (--config, "
        "--set), or SIDETRACE_ADMIN_TOKEN or SIDETRACE_ADMIN_TOKEN_FILE.");
  }

  CLI11_PARSE(app, argc, argv);

  try {
    if (*agent_cmd) {
      Config cfg = load_config(config_file, sets);
      if (print) cfg.exporter.print = true;
      sidetrace::agent::setup_logging(cfg.log.level);
      sidetrace::agent::AgentOptions opts;
      if (!config_file.empty() || !sets.empty()) {
        opts.reload = [config_file, sets, print] {
          Config next = load_config(config_file, sets);
          if (print) next.exporter.print = true;
          return next;
        };
      }
      sidetrace::agent::Agent agent(std::move(cfg), std::move(opts));
      int rc = agent.run();
      spdlog::shutdown();
      return rc;
    }
    if (*check_cmd) {
      Config cfg = load_config(check_file, sets);
      sidetrace::agent::make_redactor(cfg);  // rules and detectors must compile
      std::cout << "# " << check_file << ": valid\n" << sidetrace::config::to_toml(cfg);
      return 0;
    }
    if (*emit_cmd) {
      return sidetrace::ipc::run_emit(emit, std::cin, std::cerr);
    }
    // The tools that talk to the admin endpoint take its address and its
    // token from the configuration (file, environment, --set).
    if (*status_cmd) {
      Config cfg = load_config(config_file, sets);
      if (admin_addr.empty()) admin_addr = cfg.admin.listen;
      return sidetrace::agent::run_status(admin_addr, sidetrace::config::admin_token(cfg),
                                          status_metrics, std::cout, std::cerr);
    }
    if (*reload_cmd) {
      Config cfg = load_config(config_file, sets);
      if (admin_addr.empty()) admin_addr = cfg.admin.listen;
      return sidetrace::agent::run_reload(admin_addr, sidetrace::config::admin_token(cfg),
                                          std::cout, std::cerr,
                                          std::chrono::seconds(reload_wait_s));
    }
    if (*tail_cmd) {
      Config cfg = load_config(config_file, sets);
      if (tail.admin.empty()) tail.admin = cfg.admin.listen;
      tail.token = sidetrace::config::admin_token(cfg);
      tail.interval = std::chrono::milliseconds(tail_interval_ms);
      tail.color = !tail_no_color && ::isatty(STDOUT_FILENO) != 0;
      return sidetrace::agent::run_tail(tail, std::cout, std::cerr);
    }
    if (*q_cmd) {
      Config cfg = load_config(config_file, sets);
      return sidetrace::agent::run_quarantine(cfg, *q_list ? "list" : "release", q_trace, std::cout,
                                              std::cerr);
    }
    if (*dl_cmd) {
      Config cfg = load_config(config_file, sets);
      std::string action = *dl_list ? "list" : *dl_replay ? "replay" : "purge";
      return sidetrace::agent::run_deadletter(cfg, action, std::cout, std::cerr,
                                              std::chrono::seconds(dl_wait_s));
    }
  } catch (const ConfigError& e) {
    std::cerr << "sidetrace: configuration error: " << e.what() << "\n";
    return kExitConfig;
  } catch (const std::exception& e) {
    std::cerr << "sidetrace: " << e.what() << "\n";
    spdlog::shutdown();
    return 1;
  }
  return 0;
}
