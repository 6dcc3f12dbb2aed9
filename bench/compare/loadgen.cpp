// Load generator of the side-by-side benchmark: realistic LLM-tracing
// messages over a Unix datagram socket, one message per datagram, or (with
// --transport stream, msgpack only) over a Unix stream socket, messages back
// to back, as the SDKs send them by default.
//
//   compare_loadgen --socket PATH --format msgpack|json --seconds S [--rate R]
//                   [--salt HEX] [--transport dgram|stream] [--nonblocking]
//
// A trace is five messages: its context (`trace`: conversation, session, user,
// metadata), a user MESSAGE, a GENERATION and a TOOL call under it, and a final
// GENERATION; every tenth trace also gets a feedback. `msgpack` sends protocol-v1
// maps (sidetrace); `json` sends the same message as one JSON line (the natural
// input of a log agent such as syslog-ng).
//
// Ids encode what the upstream sink needs to count unique messages: the trace
// id is 32 hex digits: 16 mixed from the run's salt and the trace number t
// (--salt, 16 hex digits; runs against one agent need salts of their own, or
// the second run's traces are late revisions of the first's), then t. The
// mixed half spreads the ids over their whole range, in no order, as the
// random ids of real emitters are: the agent's store sees the same key order
// as in production, not one that grows with t. An event id is the
// 16-hex-digit number t*8+k (k = 1..4); the context counts as t*8 and the
// feedback as t*8+5.
//
// The socket is blocking: the sender is paced by the receiver (a full receive
// queue makes sendto() wait) and the kernel loses nothing. With --rate the
// sender also never exceeds R messages per second. With --nonblocking it sends
// as protocol-v1 asks of emitters: a non-blocking socket with the system's
// default send buffer, and a message that would block is dropped and counted
// (`dropped`; on a stream, the rest of a message the socket took in part is
// still written, waiting for room, so that the stream stays whole). At the
// end one JSON line is printed:
//   {"sent":N,"traces":T,"seconds":S,"events_per_s":R,"eagain":0,"send_errors":0,
//    "dropped":0}
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <msgpack.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr uint64_t kRunSalt = 0x5eed0f00d0000001ull;

struct Args {
  std::string socket;
  bool json = false;
  double seconds = 10;
  double rate = 0;  // messages per second; 0: as fast as the receiver takes them
  uint64_t salt = kRunSalt;
  bool stream = false;
  bool nonblocking = false;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "compare_loadgen: %s\nusage: compare_loadgen --socket PATH --format msgpack|json "
               "--seconds S [--rate R] [--salt HEX] [--transport dgram|stream] "
               "[--nonblocking]\n",
               msg);
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string_view k = argv[i];
    if (k == "--nonblocking") {
      a.nonblocking = true;
      continue;
    }
    if (i + 1 >= argc) usage("missing value");
    std::string v = argv[++i];
    if (k == "--socket") {
      a.socket = v;
    } else if (k == "--format") {
      if (v != "msgpack" && v != "json") usage("bad --format");
      a.json = v == "json";
    } else if (k == "--seconds") {
      a.seconds = std::stod(v);
    } else if (k == "--rate") {
      a.rate = std::stod(v);
    } else if (k == "--salt") {
      a.salt = std::stoull(v, nullptr, 16);
    } else if (k == "--transport") {
      if (v != "dgram" && v != "stream") usage("bad --transport");
      a.stream = v == "stream";
    } else {
      usage("unknown option");
    }
  }
  if (a.socket.empty()) usage("--socket is required");
  if (a.stream && a.json) usage("--transport stream takes --format msgpack");
  return a;
}

// One message in a neutral form, written either as msgpack or as JSON.
// Values are plain ASCII without quotes or backslashes, so the JSON writer
// needs no escaping.
struct Field {
  enum Kind { kStr, kInt, kDouble, kMap, kArray } kind = kStr;
  std::string key;
  std::string str;
  int64_t i = 0;
  double d = 0;
  std::vector<Field> items;  // kMap: keyed fields; kArray: elements (keys unused)
};

Field field(Field::Kind kind, std::string k) {
  Field f;
  f.kind = kind;
  f.key = std::move(k);
  return f;
}
Field s(std::string k, std::string v) {
  Field f = field(Field::kStr, std::move(k));
  f.str = std::move(v);
  return f;
}
Field n(std::string k, int64_t v) {
  Field f = field(Field::kInt, std::move(k));
  f.i = v;
  return f;
}
Field dbl(std::string k, double v) {
  Field f = field(Field::kDouble, std::move(k));
  f.d = v;
  return f;
}
Field m(std::string k, std::vector<Field> items) {
  Field f = field(Field::kMap, std::move(k));
  f.items = std::move(items);
  return f;
}
Field arr(std::string k, std::vector<Field> items) {
  Field f = field(Field::kArray, std::move(k));
  f.items = std::move(items);
  return f;
}

void pack_value(msgpack::packer<msgpack::sbuffer>& p, const Field& f) {
  switch (f.kind) {
    case Field::kStr:
      p.pack_str(static_cast<uint32_t>(f.str.size()));
      p.pack_str_body(f.str.data(), static_cast<uint32_t>(f.str.size()));
      break;
    case Field::kInt:
      p.pack_int64(f.i);
      break;
    case Field::kDouble:
      p.pack_double(f.d);
      break;
    case Field::kMap:
      p.pack_map(static_cast<uint32_t>(f.items.size()));
      for (const Field& c : f.items) {
        p.pack_str(static_cast<uint32_t>(c.key.size()));
        p.pack_str_body(c.key.data(), static_cast<uint32_t>(c.key.size()));
        pack_value(p, c);
      }
      break;
    case Field::kArray:
      p.pack_array(static_cast<uint32_t>(f.items.size()));
      for (const Field& c : f.items)
        pack_value(p, c);
      break;
  }
}

void json_value(std::string& out, const Field& f) {
  switch (f.kind) {
    case Field::kStr:
      out += '"';
      out += f.str;
      out += '"';
      break;
    case Field::kInt:
      fmt::format_to(std::back_inserter(out), "{}", f.i);
      break;
    case Field::kDouble:
      fmt::format_to(std::back_inserter(out), "{}", f.d);
      break;
    case Field::kMap: {
      out += '{';
      bool first = true;
      for (const Field& c : f.items) {
        if (!first) out += ',';
        first = false;
        out += '"';
        out += c.key;
        out += "\":";
        json_value(out, c);
      }
      out += '}';
      break;
    }
    case Field::kArray: {
      out += '[';
      bool first = true;
      for (const Field& c : f.items) {
        if (!first) out += ',';
        first = false;
        json_value(out, c);
      }
      out += ']';
      break;
    }
  }
}

const char* const kQuestions[] = {
    "Where is my parcel for order {}? The tracking page has not changed for three days and I need "
    "it before the weekend. Can you check with the carrier and tell me when it will arrive?",
    "I was charged twice for order {} on my credit card. Please refund the duplicate payment and "
    "confirm by email once it is done, the statement shows both charges as settled.",
    "Can I change the delivery address of order {} to my office? It is in the same city, the "
    "building has a reception desk that accepts parcels on weekdays between nine and five.",
};

// A bijective 64-bit mix (the splitmix64 finaliser): neighbouring inputs
// land far apart.
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The five (or six) messages of trace t.
std::vector<Field> make_trace(uint64_t salt, uint64_t t, int64_t now_ns) {
  std::string trace_id = fmt::format("{:016x}{:016x}", mix(salt ^ mix(t)), t);
  auto eid = [&](int k) { return fmt::format("{:016x}", t * 8 + static_cast<uint64_t>(k)); };
  uint64_t order = 100000 + t * 7 % 900000;
  std::string question = fmt::format(fmt::runtime(kQuestions[t % 3]), order);
  auto base = [&](const char* kind) {
    return std::vector<Field>{n("v", 1), s("kind", kind), s("trace_id", trace_id)};
  };
  std::vector<Field> out;

  std::vector<Field> ctx = base("trace");
  ctx.push_back(s("conversation_id", fmt::format("conv-{}", t / 3)));
  ctx.push_back(s("session_id", fmt::format("sess-{}", t % 10000)));
  ctx.push_back(m("user", {s("id", fmt::format("u-{}", t % 50000)), s("plan", "pro")}));
  ctx.push_back(m("metadata", {s("environment", "prod"), s("app", "support-bot"),
                               s("version", "1.4.2"), s("region", "eu-west-1")}));
  ctx.push_back(n("ts", now_ns));
  out.push_back(m("", std::move(ctx)));

  std::vector<Field> msg = base("event");
  msg.push_back(s("id", eid(1)));
  msg.push_back(s("type", "MESSAGE"));
  msg.push_back(s("name", "user message"));
  msg.push_back(s("input", question));
  msg.push_back(n("ts", now_ns));
  msg.push_back(n("latency_ms", 0));
  out.push_back(m("", std::move(msg)));

  std::vector<Field> gen = base("event");
  gen.push_back(s("id", eid(2)));
  gen.push_back(s("parent_id", eid(1)));
  gen.push_back(s("type", "GENERATION"));
  gen.push_back(s("name", "plan"));
  gen.push_back(arr("input", {m("", {s("role", "system"),
                                     s("content",
                                       "You are the support assistant of an online shop. Use the "
                                       "tools to look orders up. Answer briefly and politely.")}),
                              m("", {s("role", "user"), s("content", question)})}));
  gen.push_back(s("output", fmt::format("Calling lookup_order for order {} to read the carrier "
                                        "status before answering the customer.",
                                        order)));
  gen.push_back(n("ts", now_ns + 1'000'000));
  gen.push_back(n("latency_ms", 640));
  gen.push_back(
      m("attrs", {s("model", "gpt-4o-mini"), n("input_tokens", 212), n("output_tokens", 31),
                  dbl("cost_usd", 0.00005), dbl("temperature", 0.2)}));
  out.push_back(m("", std::move(gen)));

  std::vector<Field> tool = base("event");
  tool.push_back(s("id", eid(3)));
  tool.push_back(s("parent_id", eid(1)));
  tool.push_back(s("type", "TOOL"));
  tool.push_back(s("name", "lookup_order"));
  tool.push_back(m("input", {s("order", fmt::format("{}", order)), s("fields", "status,eta")}));
  tool.push_back(s("output", fmt::format("order {} status in_transit carrier DHL eta 2 days last "
                                         "scan Leipzig hub",
                                         order)));
  tool.push_back(n("ts", now_ns + 650'000'000));
  tool.push_back(n("latency_ms", 85));
  out.push_back(m("", std::move(tool)));

  std::vector<Field> ans = base("event");
  ans.push_back(s("id", eid(4)));
  ans.push_back(s("parent_id", eid(1)));
  ans.push_back(s("type", "GENERATION"));
  ans.push_back(s("name", "answer"));
  ans.push_back(s("input", fmt::format("tool result: order {} in transit, eta 2 days", order)));
  ans.push_back(s(
      "output", fmt::format("Your parcel for order {} is on its way with DHL. It left the Leipzig "
                            "hub this morning and should reach you within two days. You will "
                            "get an email with the delivery slot the evening before.",
                            order)));
  ans.push_back(n("ts", now_ns + 740'000'000));
  ans.push_back(n("latency_ms", 910));
  ans.push_back(m("attrs", {s("model", "gpt-4o-mini"), n("input_tokens", 268),
                            n("output_tokens", 54), dbl("cost_usd", 0.00007)}));
  out.push_back(m("", std::move(ans)));

  if (t % 10 == 0) {
    std::vector<Field> fb = base("feedback");
    fb.push_back(s("target_id", eid(4)));
    fb.push_back(s("tag", "thumbs"));
    fb.push_back(s("text", "helpful"));
    fb.push_back(n("score", 1));
    fb.push_back(n("ts", now_ns + 5'000'000'000));
    out.push_back(m("", std::move(fb)));
  }
  return out;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  int fd = ::socket(AF_UNIX, (a.stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
  if (fd < 0) usage("socket() failed");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (a.socket.size() >= sizeof(addr.sun_path)) usage("socket path too long");
  std::memcpy(addr.sun_path, a.socket.data(), a.socket.size());
  if (!a.nonblocking) {
    int sndbuf = 4 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::fprintf(stderr, "compare_loadgen: connect %s: %s\n", a.socket.c_str(),
                 std::strerror(errno));
    return 1;
  }

  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  auto deadline =
      t0 + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(a.seconds));
  // Non-blocking from here on (the connect above waited).
  if (a.nonblocking) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  uint64_t sent = 0, traces = 0, eagain = 0, errors = 0, dropped = 0;
  msgpack::sbuffer buf;
  std::string line;
  while (clock::now() < deadline) {
    if (a.rate > 0) {
      double due = static_cast<double>(sent + dropped) / a.rate;
      double el = std::chrono::duration<double>(clock::now() - t0).count();
      if (el < due) std::this_thread::sleep_for(std::chrono::duration<double>(due - el));
    }
    std::vector<Field> msgs = make_trace(a.salt, traces, now_ns());
    for (const Field& f : msgs) {
      const char* data;
      size_t len;
      if (a.json) {
        line.clear();
        json_value(line, f);
        data = line.data();
        len = line.size();
      } else {
        buf.clear();
        msgpack::packer<msgpack::sbuffer> p(buf);
        pack_value(p, f);
        data = buf.data();
        len = buf.size();
      }
      bool started = false;  // a stream took part of this message
      for (;;) {
        ssize_t r = ::send(fd, data, len, MSG_NOSIGNAL);
        if (r == static_cast<ssize_t>(len)) {
          ++sent;
          break;
        }
        if (a.stream && r > 0) {  // a stream may take part of it
          data += r;
          len -= static_cast<size_t>(r);
          started = true;
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          ++eagain;
          if (a.nonblocking && !started) {
            ++dropped;
            break;
          }
          if (a.nonblocking) {
            pollfd p{fd, POLLOUT, 0};
            ::poll(&p, 1, 1000);
          }
          continue;  // a blocking socket: not expected; counted, then retried
        }
        ++errors;  // the receiver went away: counted, the message is not sent
        break;
      }
    }
    ++traces;
  }
  double secs = std::chrono::duration<double>(clock::now() - t0).count();
  std::printf(
      "{\"sent\":%llu,\"traces\":%llu,\"seconds\":%.3f,\"events_per_s\":%.0f,\"eagain\":%llu,"
      "\"send_errors\":%llu,\"dropped\":%llu}\n",
      static_cast<unsigned long long>(sent), static_cast<unsigned long long>(traces), secs,
      static_cast<double>(sent) / secs, static_cast<unsigned long long>(eagain),
      static_cast<unsigned long long>(errors), static_cast<unsigned long long>(dropped));
  ::close(fd);
  return errors == 0 ? 0 : 1;
}
