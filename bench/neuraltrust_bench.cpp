// Delivery in the neuraltrust format: an outbox pre-filled with trace
// documents (4 events and 1 feedback item each, ~500-byte events) sent as
// one request per event and feedback item to an in-process loopback
// upstream, which answers at once or after a delay standing for the round
// trip to a remote API. Prints one line per setting:
//   {"bench":"neuraltrust","upstream_delay_ms":..,"max_in_flight":..,
//    "traces":..,"requests_per_s":..,"events_per_s":..}
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"
#include "upstream/testing/http_server.h"
#include "upstream/upstream.h"

using namespace sidetrace;

namespace {

constexpr int kEventsPerTrace = 4;
constexpr int kRequestsPerTrace = kEventsPerTrace + 1;  // and one feedback item

std::string make_trace(uint64_t n) {
  nlohmann::json d;
  d["trace_id"] = fmt::format("{:032x}", n * 2654435761ull + 1);
  d["revision"] = 1;
  d["conversation_id"] = fmt::format("conv-{}", n % 1000);
  d["session_id"] = fmt::format("sess-{}", n % 100);
  d["interaction_id"] = nullptr;
  d["channel_id"] = "web";
  d["user"] = {{"id", fmt::format("user-{}", n % 5000)}};
  d["metadata"] = {{"environment", "production"}};
  uint64_t t0 = 1700000000000000000ull + n * 1'000'000'000ull;
  nlohmann::json root;
  nlohmann::json children = nlohmann::json::array();
  for (int i = 0; i < kEventsPerTrace; ++i) {
    nlohmann::json e;
    e["id"] = fmt::format("{:016x}", n * 16 + static_cast<uint64_t>(i));
    e["parent_id"] =
        i == 0 ? nlohmann::json(nullptr) : nlohmann::json(fmt::format("{:016x}", n * 16));
    e["type"] = i == 0 ? "MESSAGE" : "GENERATION";
    e["name"] = nullptr;
    e["input"] = fmt::format(
        "Customer {} asks: where is my order {}? It was placed last week and the tracking page "
        "has not changed since Tuesday. Please check the carrier status and reply politely.",
        n, n * 7 + static_cast<uint64_t>(i));
    e["output"] = fmt::format("The parcel for order {} is in transit and should arrive in {} days.",
                              n * 7 + static_cast<uint64_t>(i), 1 + i);
    e["start_ts"] = t0 + static_cast<uint64_t>(i) * 1'000'000;
    e["end_ts"] = t0 + 500'000'000;
    e["status"] = "ok";
    e["error"] = nullptr;
    e["attrs"] = nlohmann::json::object();
    e["children"] = nlohmann::json::array();
    if (i == 0) {
      root = e;
    } else {
      children.push_back(e);
    }
  }
  root["children"] = children;
  d["events"] = nlohmann::json::array({root});
  d["feedback"] = nlohmann::json::array({{{"tag", "THUMBS_UP"},
                                          {"text", nullptr},
                                          {"score", 1},
                                          {"target_id", nullptr},
                                          {"ts", t0 + 900'000'000}}});
  return d.dump();
}

void run(uint64_t traces, uint32_t delay_ms, uint32_t max_in_flight) {
  buffer::testing::TempDir dir;
  buffer::StoreOptions so;
  so.data_dir = dir.str();
  so.sync = buffer::SyncMode::kOs;
  std::unique_ptr<buffer::Store> store;
  buffer::Status s = buffer::Store::open(so, &store);
  if (!s.ok()) throw std::runtime_error("open: " + s.message());
  uint64_t now = system_clock().now_ns();
  for (uint64_t n = 0; n < traces; ++n) {
    buffer::Emission e;
    e.trace_id = fmt::format("bench-{}", n);
    e.state.revision = 1;
    e.state.first_emit_ns = e.state.last_emit_ns = now;
    e.document = buffer::make_document(make_trace(n));
    e.emitted_ns = now;
    uint64_t seq;
    s = store->emit(e, &seq);
    if (!s.ok()) throw std::runtime_error("emit: " + s.message());
  }

  upstream::testing::HttpServer server;
  server.set_recording(false);
  server.set_handler([&](const upstream::testing::RecordedRequest&) {
    upstream::testing::Reply r;
    r.delay_ms = delay_ms;
    return r;
  });
  upstream::Options o;
  o.endpoint = server.url();
  o.format = upstream::Format::kNeuralTrust;
  o.max_in_flight = max_in_flight;
  upstream::Delivery d(*store, *store, o);
  const uint64_t want = traces * kRequestsPerTrace;
  auto t0 = std::chrono::steady_clock::now();
  d.start();
  while (server.request_count() < want)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  d.stop();
  fmt::print(
      "{{\"bench\":\"neuraltrust\",\"upstream_delay_ms\":{},\"max_in_flight\":{},\"traces\":{},"
      "\"requests_per_s\":{:.0f},\"events_per_s\":{:.0f}}}\n",
      delay_ms, max_in_flight, traces, static_cast<double>(want) / secs,
      static_cast<double>(traces * kEventsPerTrace) / secs);
}

}  // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  run(5'000, 0, config::defaults::kUpstreamMaxInFlight);
  run(200, 20, config::defaults::kUpstreamMaxInFlight);
  run(200, 20, 16);
  return 0;
}
