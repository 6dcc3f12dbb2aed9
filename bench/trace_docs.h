// Realistic trace documents for the delivery benchmarks: `events` events of
// about 500 bytes (a user message, then chat completions with a model and
// token counts), as the assembler writes them (docs/trace-document.md).
//
// Thread safety: a free function without shared state.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace sidetrace::bench {

// Trace number `n`, revision 1 (every change flag true).
inline std::string make_trace_document(uint64_t n, int events) {
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
  for (int i = 0; i < events; ++i) {
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

}  // namespace sidetrace::bench
