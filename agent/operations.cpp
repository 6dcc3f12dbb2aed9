#include "agent/operations.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>

#include "common/thread.h"

namespace sidetrace::agent {

namespace {

constexpr std::string_view kOperationsPath = "/operations";

nlohmann::json to_json(const OperationSnapshot& op) {
  nlohmann::json j = nlohmann::json::object();
  j["id"] = std::to_string(op.id);
  j["kind"] = op.kind;
  j["state"] = operation_state_name(op.state);
  if (op.counted) {
    j["done"] = op.done;
    j["total"] = op.total;
  }
  j["message"] = op.message;
  j["started_unix_ms"] = op.started_unix_ms;
  j["elapsed_ms"] = op.elapsed_ms;
  return j;
}

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

std::string_view operation_state_name(OperationState s) {
  switch (s) {
    case OperationState::kRunning:
      return "running";
    case OperationState::kOk:
      return "ok";
    case OperationState::kFailed:
      return "failed";
  }
  return "unknown";
}

std::string operation_json(const OperationSnapshot& op) {
  return dump(to_json(op));
}

void OperationProgress::set_total(uint64_t n) {
  total_.store(n, std::memory_order_relaxed);
  counted_.store(true, std::memory_order_relaxed);
}

void OperationProgress::set_done(uint64_t n) {
  done_.store(n, std::memory_order_relaxed);
  counted_.store(true, std::memory_order_relaxed);
}

struct Operations::Record {
  uint64_t id = 0;
  std::string kind;
  uint64_t started_unix_ms = 0;
  uint64_t started_mono_ns = 0;
  OperationProgress progress;
  // Guarded by Operations::mu_.
  OperationState state = OperationState::kRunning;
  std::string message;
  uint64_t finished_mono_ns = 0;
};

Operations::Operations(size_t keep_finished, const Clock& clock)
    : keep_finished_(std::max<size_t>(keep_finished, 1)), clock_(clock) {}

Operations::~Operations() {
  close();
}

OperationSnapshot Operations::snapshot(const Record& r) const {
  OperationSnapshot s;
  s.id = r.id;
  s.kind = r.kind;
  s.state = r.state;
  s.counted = r.progress.counted_.load(std::memory_order_relaxed);
  s.done = r.progress.done_.load(std::memory_order_relaxed);
  // Records added while the work runs are done too: the total grows with them.
  s.total = std::max(s.done, r.progress.total_.load(std::memory_order_relaxed));
  s.message = r.message;
  s.started_unix_ms = r.started_unix_ms;
  const uint64_t end = r.state == OperationState::kRunning ? clock_.mono_ns() : r.finished_mono_ns;
  s.elapsed_ms = end > r.started_mono_ns ? (end - r.started_mono_ns) / 1'000'000 : 0;
  return s;
}

std::optional<Operations::Started> Operations::start(std::string_view kind, OperationBody body) {
  std::lock_guard lock(mu_);
  if (closed_) return std::nullopt;
  for (const auto& r : running_) {
    if (r->kind == kind) return Started{snapshot(*r), false};
  }
  auto rec = std::make_shared<Record>();
  rec->id = next_id_++;
  rec->kind = std::string(kind);
  rec->started_unix_ms = clock_.now_ns() / 1'000'000;
  rec->started_mono_ns = clock_.mono_ns();
  // The last thread of this kind has ended its body (none of the kind runs);
  // join it before it is replaced.
  auto it = threads_.find(kind);
  if (it != threads_.end()) {
    if (it->second.joinable()) it->second.join();
    threads_.erase(it);
  }
  running_.push_back(rec);
  Started started{snapshot(*rec), true};
  try {
    threads_.emplace(std::string(kind), std::thread([this, rec, body = std::move(body)] {
                       set_thread_name("st-op-" + rec->kind);
                       OperationOutcome outcome;
                       try {
                         outcome = body(rec->progress);
                       } catch (const std::exception& e) {
                         outcome = {false, e.what()};
                       } catch (...) {
                         outcome = {false, "an exception that is not a std::exception"};
                       }
                       finish(rec, std::move(outcome));
                     }));
  } catch (const std::system_error& e) {
    // No thread to be had: the operation ends before it began.
    running_.pop_back();
    spdlog::error("admin: cannot start a thread for the {} operation: {}", rec->kind, e.what());
    rec->state = OperationState::kFailed;
    rec->message = std::string("cannot start a thread: ") + e.what();
    rec->finished_mono_ns = clock_.mono_ns();
    finished_.push_back(rec);
    if (finished_.size() > keep_finished_) finished_.erase(finished_.begin());
    started.op = snapshot(*rec);
  }
  spdlog::info("admin: operation {} ({}) started", started.op.id, started.op.kind);
  return started;
}

void Operations::finish(const std::shared_ptr<Record>& r, OperationOutcome outcome) {
  std::lock_guard lock(mu_);
  r->state = outcome.ok ? OperationState::kOk : OperationState::kFailed;
  r->message = std::move(outcome.message);
  r->finished_mono_ns = clock_.mono_ns();
  running_.erase(std::remove(running_.begin(), running_.end(), r), running_.end());
  finished_.push_back(r);
  if (finished_.size() > keep_finished_) finished_.erase(finished_.begin());
  const auto level = outcome.ok ? spdlog::level::info : spdlog::level::err;
  spdlog::log(level, "admin: operation {} ({}) {}: {}", r->id, r->kind,
              operation_state_name(r->state), r->message);
}

std::optional<OperationSnapshot> Operations::get(uint64_t id) const {
  std::lock_guard lock(mu_);
  for (const auto* list : {&running_, &finished_}) {
    for (const auto& r : *list) {
      if (r->id == id) return snapshot(*r);
    }
  }
  return std::nullopt;
}

std::vector<OperationSnapshot> Operations::list() const {
  std::lock_guard lock(mu_);
  std::vector<OperationSnapshot> out;
  for (const auto& r : running_)
    out.push_back(snapshot(*r));
  const size_t first_finished = out.size();
  for (const auto& r : finished_)
    out.push_back(snapshot(*r));
  std::sort(out.begin() + static_cast<std::ptrdiff_t>(first_finished), out.end(),
            [](const OperationSnapshot& a, const OperationSnapshot& b) { return a.id > b.id; });
  return out;
}

void Operations::close() {
  std::map<std::string, std::thread, std::less<>> threads;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    threads.swap(threads_);
  }
  for (auto& [kind, t] : threads) {
    if (t.joinable()) t.join();
  }
}

AdminResponse operation_started(const std::optional<Operations::Started>& started) {
  AdminResponse r;
  r.content_type = "application/json";
  if (!started) {
    r.status = 503;
    r.body = dump({{"error", "the agent is stopping"}});
    return r;
  }
  r.status = started->created ? 202 : 200;
  r.headers.emplace_back("Location", fmt::format("{}/{}", kOperationsPath, started->op.id));
  r.body = operation_json(started->op);
  return r;
}

bool handle_operations(const Operations& ops, const std::string& method, const std::string& target,
                       AdminResponse* r) {
  const std::string_view path = std::string_view(target).substr(0, target.find('?'));
  if (path != kOperationsPath && !path.starts_with(std::string(kOperationsPath) + "/")) {
    return false;
  }
  r->content_type = "application/json";
  if (method != "GET") {
    r->status = 405;
    r->body = dump({{"error", "operations are read with GET"}});
    return true;
  }
  if (path == kOperationsPath) {
    nlohmann::json all = nlohmann::json::array();
    for (const auto& op : ops.list())
      all.push_back(to_json(op));
    r->body = dump({{"operations", std::move(all)}});
    return true;
  }
  const std::string_view id_text = path.substr(kOperationsPath.size() + 1);
  uint64_t id = 0;
  const auto [end, ec] = std::from_chars(id_text.data(), id_text.data() + id_text.size(), id);
  std::optional<OperationSnapshot> op;
  if (ec == std::errc() && end == id_text.data() + id_text.size()) op = ops.get(id);
  if (!op) {
    r->status = 404;
    r->body = dump(
        {{"error", fmt::format("no operation \"{}\" (unknown, or finished long ago)", id_text)}});
    return true;
  }
  r->body = operation_json(*op);
  return true;
}

}  // namespace sidetrace::agent
