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

#include "bench/trace_docs.h"
#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"
#include "upstream/detail/encode.h"
#include "upstream/testing/http_server.h"
#include "upstream/upstream.h"

using namespace sidetrace;

namespace {

constexpr int kEventsPerTrace = 4;

void fill(buffer::Store& store, uint64_t traces) {
  uint64_t now = system_clock().now_ns();
  for (uint64_t n = 0; n < traces; ++n) {
    buffer::Emission e;
    e.trace_id = fmt::format("bench-{}", n);
    e.state.revision = 1;
    e.state.first_emit_ns = e.state.last_emit_ns = now;
    e.document = buffer::make_document(bench::make_trace_document(n, kEventsPerTrace));
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
  upstream::Delivery d(*store, *store, o);
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
