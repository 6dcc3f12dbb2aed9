// The unit that leaves intake: one protocol-v1 message that passed validation.
//
// The message keeps its original msgpack bytes (`raw`): the durable store
// persists them as they are, and trace reconstruction decodes them again with
// ipc::decode_event(). The few fields that route a message (kind, trace id,
// event id) are copied out so that later stages need not decode to route.
//
// A receiver that must tell its sender when a message is durable (the
// OTLP/HTTP receiver answers only then) attaches a Receipt; the writer
// (buffer/writer.h) settles it once per message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sidetrace::ipc {

enum class Kind : uint8_t { kTrace = 0, kStart = 1, kEnd = 2, kEvent = 3, kFeedback = 4 };

std::string_view kind_name(Kind k);

enum class Transport : uint8_t { kUnixStream = 0, kUnixDgram = 1, kUdp = 2 };

std::string_view transport_name(Transport t);

// What became of messages that carry a receipt. Usually one receipt is
// shared by all the messages of one request, and counts them down.
class Receipt {
 public:
  enum class Outcome : uint8_t {
    kStored,  // committed to the store (synced in fsync mode)
    kFull,    // refused: the store's quota is reached (when_full = drop_newest)
    kFailed,  // not stored: the disk is full or failing, or the message is not storable
  };

  virtual ~Receipt() = default;

  // `n` messages carrying this receipt met `outcome`. Called by the writer on
  // its thread, once per message in all (several messages at a time); must
  // neither block nor throw. A message destroyed without being settled (the
  // agent stopped before the writer took it) is never reported here: an
  // implementation learns of it in its destructor, when the count it expected
  // was not reached.
  virtual void settle(Outcome outcome, size_t n) noexcept = 0;
};

std::string_view outcome_name(Receipt::Outcome o);

struct Message {
  Kind kind = Kind::kEvent;
  std::string trace_id;  // 1..128 bytes
  std::string id;        // event id; empty when the message has none
  uint64_t recv_ns = 0;  // wall-clock receive time, ns since the Unix epoch
  std::string raw;       // the whole msgpack map, exactly as received
  // Who waits for this message to be durable; null for the socket transports.
  std::shared_ptr<Receipt> receipt;

  // Approximate memory held, used as the weight in bounded queues.
  size_t weight() const { return sizeof(Message) + trace_id.size() + id.size() + raw.size(); }
};

using MessageBatch = std::vector<Message>;

}  // namespace sidetrace::ipc
