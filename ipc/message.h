// The unit that leaves intake: one protocol-v1 message that passed validation.
//
// The message keeps its original msgpack bytes (`raw`): the durable store
// persists them as they are, and trace reconstruction decodes them again with
// ipc::decode_event(). The few fields that route a message (kind, trace id,
// event id) are copied out so that later stages need not decode to route.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sidetrace::ipc {

enum class Kind : uint8_t { kTrace = 0, kStart = 1, kEnd = 2, kEvent = 3, kFeedback = 4 };

std::string_view kind_name(Kind k);

enum class Transport : uint8_t { kUnixStream = 0, kUnixDgram = 1, kUdp = 2 };

std::string_view transport_name(Transport t);

struct Message {
  Kind kind = Kind::kEvent;
  std::string trace_id;  // 1..128 bytes
  std::string id;        // event id; empty when the message has none
  uint64_t recv_ns = 0;  // wall-clock receive time, ns since the Unix epoch
  std::string raw;       // the whole msgpack map, exactly as received

  // Approximate memory held, used as the weight in bounded queues.
  size_t weight() const { return sizeof(Message) + trace_id.size() + id.size() + raw.size(); }
};

using MessageBatch = std::vector<Message>;

}  // namespace sidetrace::ipc
