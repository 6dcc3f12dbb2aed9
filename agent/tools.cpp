#include "agent/tools.h"

#include <fmt/format.h>

#include <cctype>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <thread>

#include "agent/admin.h"
#include "agent/wiring.h"
#include "buffer/store.h"
#include "trace/assembler.h"
#include "upstream/upstream.h"

namespace sidetrace::agent {

namespace {

// How often a tool following an operation asks for its state (fast for the
// first second), and reports the progress of a long one.
constexpr std::chrono::milliseconds kPollFast{20};
constexpr std::chrono::milliseconds kPollSlow{250};
constexpr std::chrono::seconds kProgressEvery{2};

// Whether the admin endpoint refused the request itself (rather than a route
// answering it), and if so says why on `err`.
bool refused(const char* tool, unsigned status, const std::string& body, std::ostream& err) {
  if (status != 400 && status != 401 && status != 403 && status != 421) return false;
  err << tool << ": the agent refused the request (" << status << "): " << body;
  if (status == 401) {
    err << tool
        << ": give the admin token through SIDETRACE_ADMIN_TOKEN or "
           "SIDETRACE_ADMIN_TOKEN_FILE, or admin.token or admin.token_file in --config\n";
  }
  return true;
}

// Follows the background operation that a POST started (its answer:
// `status`, `body`) until it ends or `wait` passes. While it takes long, its
// progress goes to `err` every few seconds; at the end its message goes to
// `out` (ok) or `err` (failed). Returns 0 when it ended ok, `failed` when it
// failed or was still running at the deadline, `unreachable` when the agent
// stopped answering; nullopt when the answer is not an operation (an agent
// that answered at once), for the caller to print as it is.
std::optional<int> follow_operation(const std::string& addr, const std::string& token,
                                    const char* tool, unsigned status, const std::string& body,
                                    std::chrono::milliseconds wait, std::ostream& out,
                                    std::ostream& err, int failed, int unreachable) {
  if (status != 200 && status != 202) return std::nullopt;
  auto op = nlohmann::json::parse(body, nullptr, false);
  if (!op.is_object() || !op.contains("id") || !op.contains("state")) return std::nullopt;
  const std::string id = op.value("id", "");
  const std::string kind = op.value("kind", "");
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  while (op.value("state", "") == "running") {
    const auto now = std::chrono::steady_clock::now();
    if (now - start >= wait) {
      err << tool << ": the agent is still at it after "
          << std::chrono::duration_cast<std::chrono::seconds>(wait).count()
          << "s; it goes on, and GET /operations/" << id << " on the admin endpoint follows it\n";
      return failed;
    }
    if (op.contains("done") && now - last_report >= kProgressEvery) {
      err << tool << ": " << op.value("done", uint64_t{0}) << " of "
          << op.value("total", uint64_t{0}) << " done\n";
      last_report = now;
    }
    // Often at first, so that a quick one ends the tool at once.
    std::this_thread::sleep_for(now - start < std::chrono::seconds(1) ? kPollFast : kPollSlow);
    unsigned st = 0;
    std::string text, error;
    if (!admin_get(addr, "/operations/" + id, &st, &text, &error, token)) {
      err << tool << ": lost the agent while it was at it: " << error << "\n";
      return unreachable;
    }
    if (refused(tool, st, text, err)) return unreachable;
    auto next = nlohmann::json::parse(text, nullptr, false);
    if (st != 200 || !next.is_object() || next.value("kind", "") != kind) {
      err << tool << ": the agent no longer knows operation " << id
          << " (it restarted?); see its log\n";
      return failed;
    }
    op = std::move(next);
  }
  const std::string message = op.value("message", "");
  if (op.value("state", "") == "ok") {
    out << message << "\n";
    return 0;
  }
  err << tool << ": " << message << "\n";
  return failed;
}

}  // namespace

int run_status(const std::string& admin_addr, const std::string& token, bool raw_metrics,
               std::ostream& out, std::ostream& err) {
  unsigned status = 0;
  std::string body, error;
  if (!admin_get(admin_addr, raw_metrics ? "/metrics" : "/status", &status, &body, &error, token)) {
    err << "sidetrace status: " << error << "\n";
    return 3;
  }
  if (refused("sidetrace status", status, body, err)) return 3;
  out << body;
  if (status != 200) return 1;
  if (raw_metrics) return 0;
  unsigned ready = 0;
  std::string why;
  if (!admin_get(admin_addr, "/readyz", &ready, &why, &error, token)) return 3;
  return ready == 200 ? 0 : 1;
}

bool deadletter_action(buffer::Store& store, const std::string& action, std::string* text) {
  if (action == "list") {
    std::vector<upstream::DeadLetter> records;
    uint64_t count = 0, bytes = 0;
    buffer::Status s = upstream::deadletter_list(store, &records, kDeadLetterListMax);
    if (s.ok()) s = upstream::deadletter_stats(store, &count, &bytes);
    if (!s.ok()) {
      *text = "cannot list dead letters: " + s.ToString() + "\n";
      return false;
    }
    std::string out;
    for (const auto& r : records) {
      std::string ids;
      for (size_t i = 0; i < r.trace_ids.size() && i < 3; ++i) {
        ids += (i ? "," : "") + r.trace_ids[i];
      }
      if (r.trace_ids.size() > 3) ids += ",...";
      out += fmt::format("{}  ts={}  status={}  traces={}  bytes={}  reason={}  trace_ids={}\n",
                         r.id, r.ts_ns, r.http_status, r.traces, r.bytes, r.reason, ids);
    }
    if (count > records.size()) {
      out += fmt::format("... the {} oldest shown\n", records.size());
    }
    out += fmt::format("{} dead-lettered batch(es), {} bytes\n",
                       std::max<uint64_t>(count, records.size()), bytes);
    *text = std::move(out);
    return true;
  }
  size_t n = 0;
  buffer::Status s = action == "replay" ? upstream::deadletter_replay(store, &n)
                                        : upstream::deadletter_purge(store, &n);
  if (!s.ok()) {
    *text = fmt::format("cannot {} dead letters: {}\n", action, s.ToString());
    return false;
  }
  *text =
      fmt::format("{} {} dead-lettered batch(es)\n", action == "replay" ? "replayed" : "purged", n);
  return true;
}

namespace {

// Runs `offline` on the store when no agent holds it; otherwise asks the
// running agent's admin endpoint (`method` `target`) to do the same.
int on_store_or_agent(const config::Config& cfg, const char* tool,
                      const std::function<bool(buffer::Store&, std::string*)>& offline,
                      const std::string& method, const std::string& target, std::ostream& out,
                      std::ostream& err,
                      std::chrono::milliseconds wait = std::chrono::milliseconds::zero()) {
  std::unique_ptr<buffer::Store> store;
  buffer::Status s = buffer::Store::open(store_options(cfg), &store);
  if (s.ok()) {
    std::string text;
    bool ok = offline(*store, &text);
    (ok ? out : err) << text;
    return ok ? 0 : 1;
  }
  if (s.code() != buffer::Status::Code::kBusy || cfg.admin.listen.empty()) {
    err << tool << ": cannot open the store in " << cfg.data_dir << ": " << s.ToString() << "\n";
    return 1;
  }
  // A running agent holds the store: ask it.
  unsigned status = 0;
  std::string body, error;
  if (!admin_request(cfg.admin.listen, method, target, &status, &body, &error,
                     config::admin_token(cfg))) {
    err << tool << ": the store is in use and the agent's admin endpoint is unreachable: " << error
        << "\n";
    return 1;
  }
  if (refused(tool, status, body, err)) return 1;
  if (method == "POST") {
    if (auto rc = follow_operation(cfg.admin.listen, config::admin_token(cfg), tool, status, body,
                                   wait, out, err, 1, 1)) {
      return *rc;
    }
  }
  (status == 200 ? out : err) << body;
  return status == 200 ? 0 : 1;
}

// Percent-encodes everything but unreserved characters (RFC 3986).
std::string url_encode(std::string_view in) {
  std::string out;
  for (unsigned char c : in) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

}  // namespace

int run_deadletter(const config::Config& cfg, const std::string& action, std::ostream& out,
                   std::ostream& err, std::chrono::milliseconds wait) {
  return on_store_or_agent(
      cfg, "sidetrace deadletter",
      [&](buffer::Store& store, std::string* text) {
        return deadletter_action(store, action, text);
      },
      action == "list" ? "GET" : "POST", action == "list" ? "/deadletter" : "/deadletter/" + action,
      out, err, wait);
}

bool quarantine_action(buffer::Store& store, const std::string& action, const std::string& trace_id,
                       std::string* text) {
  if (action == "list") {
    std::vector<std::pair<std::string, std::string>> aside;
    buffer::Status s = trace::quarantine_list(store, &aside, kQuarantineListMax);
    if (!s.ok()) {
      *text = "cannot list the traces set aside: " + s.ToString() + "\n";
      return false;
    }
    std::string out;
    for (const auto& [id, reason] : aside)
      out += fmt::format("{}  reason={}\n", id, reason);
    out += fmt::format("{} trace(s) set aside{}\n", aside.size(),
                       aside.size() == kQuarantineListMax ? " (or more)" : "");
    *text = std::move(out);
    return true;
  }
  buffer::Status s = trace::quarantine_release(store, trace_id);
  if (s.IsNotFound()) {
    *text = fmt::format("trace {} is not set aside\n", trace_id);
    return false;
  }
  if (!s.ok()) {
    *text = fmt::format("cannot release trace {}: {}\n", trace_id, s.ToString());
    return false;
  }
  *text = fmt::format("released trace {}: the agent builds it at its next start\n", trace_id);
  return true;
}

int run_quarantine(const config::Config& cfg, const std::string& action,
                   const std::string& trace_id, std::ostream& out, std::ostream& err) {
  return on_store_or_agent(
      cfg, "sidetrace quarantine",
      [&](buffer::Store& store, std::string* text) {
        return quarantine_action(store, action, trace_id, text);
      },
      action == "list" ? "GET" : "POST",
      action == "list" ? "/quarantine" : "/quarantine/release/" + url_encode(trace_id), out, err);
}

int run_reload(const std::string& admin_addr, const std::string& token, std::ostream& out,
               std::ostream& err, std::chrono::milliseconds wait) {
  unsigned status = 0;
  std::string body, error;
  if (!admin_request(admin_addr, "POST", "/reload", &status, &body, &error, token)) {
    err << "sidetrace reload: " << error << "\n";
    return 3;
  }
  if (refused("sidetrace reload", status, body, err)) return 3;
  if (auto rc = follow_operation(admin_addr, token, "sidetrace reload", status, body, wait, out,
                                 err, 1, 3)) {
    return *rc;
  }
  (status == 200 ? out : err) << body;
  return status == 200 ? 0 : 1;
}

}  // namespace sidetrace::agent
