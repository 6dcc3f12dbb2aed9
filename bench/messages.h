// Messages the benchmarks store: realistic protocol-v1 events.
#pragma once

#include <msgpack.hpp>

#include <cstdint>
#include <string>

namespace sidetrace::bench {

// A ~500-byte protocol-v1 `event` message with unique ids.
inline std::string event_bytes(uint64_t n, const std::string& trace_id) {
  std::string id = std::to_string(n);
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(11);
  pk.pack("v");
  pk.pack(1);
  pk.pack("kind");
  pk.pack("event");
  pk.pack("trace_id");
  pk.pack(trace_id);
  pk.pack("id");
  pk.pack(id);
  pk.pack("type");
  pk.pack("GENERATION");
  pk.pack("name");
  pk.pack("llm.call");
  pk.pack("input");
  pk.pack(
      "{\"role\":\"user\",\"content\":\"Summarise the following support ticket and propose a "
      "reply; customer " +
      id + " reports that the export job fails after the upgrade with error E1234.\"}");
  pk.pack("output");
  pk.pack(
      "The export fails because the new schema renames a column; re-run the migration "
      "and retry. Ticket " +
      id + " can be closed once confirmed.");
  pk.pack("attrs");
  pk.pack_map(3);
  pk.pack("model");
  pk.pack("gpt-4o-mini");
  pk.pack("input_tokens");
  pk.pack(300);
  pk.pack("output_tokens");
  pk.pack(90);
  pk.pack("status");
  pk.pack("ok");
  pk.pack("latency_ms");
  pk.pack(1000);
  return std::string(buf.data(), buf.size());
}

}  // namespace sidetrace::bench
