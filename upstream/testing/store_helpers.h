// Test helpers around the real RocksDB store: open one in a temp dir, append
// trace revisions to its outbox, make realistic trace documents.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"

namespace sidetrace::upstream::testing {

inline std::unique_ptr<buffer::Store> open_store(const std::string& dir) {
  buffer::StoreOptions o;
  o.data_dir = dir;
  o.sync = buffer::SyncMode::kOs;
  std::unique_ptr<buffer::Store> s;
  buffer::Status st = buffer::Store::open(o, &s);
  if (!st.ok()) throw std::runtime_error("store open: " + st.message());
  return s;
}

// A trace document with `events` sibling events whose input is `payload`.
inline std::string make_doc(const std::string& trace_id, uint32_t revision, int events = 2,
                            const std::string& payload = "hello") {
  nlohmann::json d;
  d["trace_id"] = trace_id;
  d["revision"] = revision;
  d["conversation_id"] = "conv-1";
  d["session_id"] = "sess-1";
  d["interaction_id"] = nullptr;
  d["channel_id"] = nullptr;
  d["user"] = {{"id", "u-1"}};
  d["metadata"] = {{"environment", "test"}};
  d["start_ts"] = 1700000000000000000ull;
  d["end_ts"] = 1700000001000000000ull;
  d["duration_ms"] = 1000;
  d["status"] = "ok";
  d["partial"] = false;
  d["part"] = nullptr;
  d["trace_changed"] = true;
  nlohmann::json evs = nlohmann::json::array();
  for (int i = 0; i < events; ++i) {
    nlohmann::json e;
    e["id"] = "e" + std::to_string(i);
    e["type"] = "GENERATION";
    e["name"] = "llm";
    e["input"] = payload;
    e["output"] = "out";
    e["start_ts"] = 1700000000000000000ull + static_cast<uint64_t>(i);
    e["end_ts"] = 1700000000500000000ull;
    e["duration_ms"] = 500;
    e["status"] = "ok";
    e["error"] = nullptr;
    e["attrs"] = {{"model", "m"}};
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

// Appends one revision of `trace_id` to the outbox; returns its seq.
inline uint64_t emit_doc(buffer::Store& store, const std::string& trace_id, const std::string& doc,
                         uint64_t emitted_ns = 0) {
  for (;;) {
    buffer::TraceState cur;
    buffer::Status s = store.get_state(trace_id, &cur);
    buffer::Emission e;
    e.trace_id = trace_id;
    e.expected_generation = s.ok() ? cur.generation : 0;
    e.state = cur;
    e.state.revision = cur.revision + 1;
    uint64_t now = emitted_ns != 0 ? emitted_ns : system_clock().now_ns();
    if (e.state.first_emit_ns == 0) e.state.first_emit_ns = now;
    e.state.last_emit_ns = now;
    e.document = buffer::make_document(doc);
    e.emitted_ns = now;
    uint64_t seq = 0;
    s = store.emit(e, &seq);
    if (s.ok()) return seq;
    if (!s.retryable()) throw std::runtime_error("emit: " + s.message());
  }
}

}  // namespace sidetrace::upstream::testing
