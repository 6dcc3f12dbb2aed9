// Delivery throughput: an outbox pre-filled with realistic trace documents
// (~500-byte events, 4 per trace) delivered with gzip to an in-process
// loopback upstream that decompresses every body. Prints
//   {"bench":"deliver","compression":"gzip","events_per_s":...}
//   {"bench":"drain","events":1000000,"seconds":...,"peak_rss_mib":...}
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"
#include "upstream/detail/encode.h"
#include "upstream/testing/http_server.h"
#include "upstream/upstream.h"

using namespace sidetrace;

namespace {

constexpr int kEventsPerTrace = 4;

std::string make_trace(uint64_t n) {
  nlohmann::json d;
  std::string id = fmt::format("{:032x}", n * 2654435761ull + 1);
  d["trace_id"] = id;
  d["revision"] = 1;
  d["conversation_id"] = fmt::format("conv-{}", n % 1000);
  d["session_id"] = fmt::format("sess-{}", n % 100);
  d["interaction_id"] = nullptr;
  d["channel_id"] = "web";
  d["user"] = {{"id", fmt::format("user-{}", n % 5000)}};
  d["metadata"] = {{"environment", "prod"}};
  uint64_t t0 = 1'700'000'000'000'000'000ull + n * 1'000'000;
  d["start_ts"] = t0;
  d["end_ts"] = t0 + 900'000'000;
  d["duration_ms"] = 900;
  d["status"] = "ok";
  d["partial"] = false;
  d["part"] = nullptr;
  d["trace_changed"] = true;
  nlohmann::json evs = nlohmann::json::array();
  for (int i = 0; i < kEventsPerTrace; ++i) {
    nlohmann::json e;
    e["id"] = fmt::format("{:016x}", n * 16 + static_cast<uint64_t>(i));
    e["type"] = i == 0 ? "MESSAGE" : "GENERATION";
    e["name"] = i == 0 ? "user message" : "chat completion";
    e["input"] = fmt::format(
        "User {} asks about order {}: where is my parcel and when will it arrive? Please check "
        "the tracking number and the carrier status for the latest update.",
        n % 5000, n * 7 + static_cast<uint64_t>(i));
    e["output"] = fmt::format("The parcel for order {} is in transit and should arrive in {} days.",
                              n * 7 + static_cast<uint64_t>(i), 1 + n % 5);
    e["start_ts"] = t0 + static_cast<uint64_t>(i) * 100'000'000;
    e["end_ts"] = t0 + static_cast<uint64_t>(i) * 100'000'000 + 80'000'000;
    e["duration_ms"] = 80;
    e["status"] = "ok";
    e["error"] = nullptr;
    e["attrs"] = {{"model", "gpt-4o-mini"}, {"input_tokens", 100 + i}, {"output_tokens", 40 + i}};
    e["orphan"] = false;
    e["unfinished"] = false;
    e["changed"] = true;
    e["children"] = nlohmann::json::array();
    evs.push_back(e);
  }
  d["events"] = evs;
  d["feedback"] = nlohmann::json::array();
  return d.dump();
}

void fill(buffer::Store& store, uint64_t traces) {
  uint64_t now = system_clock().now_ns();
  for (uint64_t n = 0; n < traces; ++n) {
    buffer::Emission e;
    e.trace_id = fmt::format("bench-{}", n);
    e.state.revision = 1;
    e.state.first_emit_ns = e.state.last_emit_ns = now;
    e.document = make_trace(n);
    e.emitted_ns = now;
    uint64_t seq;
    buffer::Status s = store.emit(e, &seq);
    if (!s.ok()) throw std::runtime_error("emit: " + s.message());
  }
}

double rss_mib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

struct Result {
  double seconds;
  double peak_rss;
};

Result drain(uint64_t traces) {
  buffer::testing::TempDir dir;
  buffer::StoreOptions so;
  so.data_dir = dir.str();
  so.sync = buffer::SyncMode::kOs;
  so.max_bytes = 8ull << 30;
  std::unique_ptr<buffer::Store> store;
  buffer::Status s = buffer::Store::open(so, &store);
  if (!s.ok()) throw std::runtime_error("open: " + s.message());
  fill(*store, traces);

  upstream::testing::HttpServer server;
  server.set_recording(false);
  std::atomic<uint64_t> received{0};
  server.set_handler([&](const upstream::testing::RecordedRequest& r) {
    received += upstream::detail::count_events(r.decoded);
    return upstream::testing::Reply{};
  });
  upstream::Options o;
  o.endpoint = server.url();
  o.flush_interval_ms = 0;
  upstream::Delivery d(*store, o);
  std::atomic<bool> done{false};
  double peak = rss_mib();
  std::thread sampler([&] {
    while (!done) {
      peak = std::max(peak, rss_mib());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  auto t0 = std::chrono::steady_clock::now();
  d.start();
  uint64_t want = traces * kEventsPerTrace;
  while (received.load() < want)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  done = true;
  sampler.join();
  d.stop();
  return {secs, peak};
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  uint64_t drain_events = argc > 1 ? std::stoull(argv[1]) : 1'000'000;
  Result r = drain(50'000);
  fmt::print("{{\"bench\":\"deliver\",\"compression\":\"gzip\",\"events_per_s\":{:.0f}}}\n",
             50'000.0 * kEventsPerTrace / r.seconds);
  r = drain(drain_events / kEventsPerTrace);
  fmt::print("{{\"bench\":\"drain\",\"events\":{},\"seconds\":{:.2f},\"peak_rss_mib\":{:.1f}}}\n",
             drain_events, r.seconds, r.peak_rss);
  return 0;
}
