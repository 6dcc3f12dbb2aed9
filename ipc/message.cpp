#include "ipc/message.h"

namespace sidetrace::ipc {

std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::kTrace:
      return "trace";
    case Kind::kStart:
      return "start";
    case Kind::kEnd:
      return "end";
    case Kind::kEvent:
      return "event";
    case Kind::kFeedback:
      return "feedback";
  }
  return "unknown";
}

std::string_view transport_name(Transport t) {
  switch (t) {
    case Transport::kUnixStream:
      return "unix_stream";
    case Transport::kUnixDgram:
      return "unix_dgram";
    case Transport::kUdp:
      return "udp";
  }
  return "unknown";
}

std::string_view outcome_name(Receipt::Outcome o) {
  switch (o) {
    case Receipt::Outcome::kStored:
      return "stored";
    case Receipt::Outcome::kFull:
      return "full";
    case Receipt::Outcome::kFailed:
      return "failed";
  }
  return "unknown";
}

}  // namespace sidetrace::ipc
