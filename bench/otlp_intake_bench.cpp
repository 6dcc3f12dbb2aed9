// OTLP/HTTP intake: how many spans per second the agent takes durably, and
// its CPU per span.
//
// Runs the real agent binary (listen.otlp_http only, the local file
// exporter, buffer.sync as given) and drives it from this process: several
// keep-alive connections each send OTLP/protobuf export requests of 512
// spans (an OpenTelemetry SDK's default batch) back to back, each after the
// answer to the previous one, as an SDK's batch processor does. A span counts
// once its request is answered 200, which the agent does only when the span
// is in the store (synced in fsync mode). Spans are those of an LLM
// application: traces of 8 spans (an agent, two chat completions with their
// prompt, completion, model and token counts, three tool calls, two HTTP
// calls), 64 traces per request, every request with new trace ids.
//
// Figures (one JSON line per sync mode):
//   spans_per_s            acknowledged spans / the measured window
//   cpu_us_per_span        the agent's CPU (user + system) in the window /
//                          the spans acknowledged in it: receiving, storing,
//                          and what assembly and export got done meanwhile
//   cpu_us_per_span_all    (pipeline) the agent's CPU from its start until
//                          every acknowledged trace was written by the
//                          exporter / all acknowledged spans: the whole
//                          pipeline
//   p50_ms, p99_ms         request latency (send to answer)
//   client_cpu_us_per_span this load generator's CPU (it shares the machine)
//
// Environment: OTLP_BENCH_SECONDS (10), OTLP_BENCH_WARMUP_S (2),
// OTLP_BENCH_CONNECTIONS (4), OTLP_BENCH_SYNCS ("fsync,os"; "none" runs no
// agent), OTLP_BENCH_MODES ("intake,pipeline", see run()), OTLP_BENCH_DIR
// (the system's temporary directory).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/arena.h>

#include "ipc/otlp_map.h"
#include "otlp/proto/trace_service.pb.h"

namespace {

namespace fs = std::filesystem;
namespace pbc = opentelemetry::proto::common::v1;
namespace pbt = opentelemetry::proto::trace::v1;
using Clock = std::chrono::steady_clock;

constexpr int kTracesPerRequest = 64;
constexpr int kSpansPerTrace = 8;
constexpr int kSpansPerRequest = kTracesPerRequest * kSpansPerTrace;

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : dflt;
}

std::string env_str(const char* name, const char* dflt) {
  const char* v = std::getenv(name);
  return v && *v ? v : dflt;
}

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool send_all(int fd, const std::string& head, const std::string& body) {
  iovec iov[2] = {{const_cast<char*>(head.data()), head.size()},
                  {const_cast<char*>(body.data()), body.size()}};
  size_t total = head.size() + body.size(), sent = 0;
  int first = 0;
  while (sent < total) {
    ssize_t n = ::writev(fd, iov + first, 2 - first);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
    size_t left = static_cast<size_t>(n);
    while (first < 2 && left >= iov[first].iov_len) {
      left -= iov[first].iov_len;
      iov[first].iov_len = 0;
      ++first;
    }
    if (first < 2) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return true;
}

// Reads one HTTP response; returns its status, or 0 when the connection
// failed. `buf` keeps bytes read beyond it.
int read_response(int fd, std::string& buf) {
  size_t end;
  while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
    char tmp[4096];
    ssize_t n = ::read(fd, tmp, sizeof tmp);
    if (n <= 0) return 0;
    buf.append(tmp, static_cast<size_t>(n));
  }
  const int status = std::atoi(buf.c_str() + 9);
  size_t length = 0;
  std::string head = buf.substr(0, end);
  for (auto& c : head)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (size_t p = head.find("content-length:"); p != std::string::npos) {
    length = static_cast<size_t>(std::atoll(head.c_str() + p + 15));
  }
  while (buf.size() < end + 4 + length) {
    char tmp[4096];
    ssize_t n = ::read(fd, tmp, sizeof tmp);
    if (n <= 0) return 0;
    buf.append(tmp, static_cast<size_t>(n));
  }
  buf.erase(0, end + 4 + length);
  return status;
}

// A plain GET; the body, or "" on failure.
std::string http_get(uint16_t port, const std::string& target) {
  int fd = connect_to(port);
  if (fd < 0) return {};
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return {};
  }
  std::string out;
  char tmp[16384];
  for (ssize_t n; (n = ::read(fd, tmp, sizeof tmp)) > 0;)
    out.append(tmp, static_cast<size_t>(n));
  ::close(fd);
  size_t body = out.find("\r\n\r\n");
  if (out.rfind("HTTP/1.1 200", 0) != 0 || body == std::string::npos) return {};
  return out.substr(body + 4);
}

// A sample's value in Prometheus text ("name{labels} value"); -1 if absent.
double metric(const std::string& text, const std::string& sample) {
  size_t p = text.find("\n" + sample + " ");
  if (p == std::string::npos) return -1;
  return std::atof(text.c_str() + p + sample.size() + 2);
}

void attr(pbt::Span* s, const char* k, const std::string& v) {
  auto* kv = s->add_attributes();
  kv->set_key(k);
  kv->mutable_value()->set_string_value(v);
}
void attr(pbt::Span* s, const char* k, int64_t v) {
  auto* kv = s->add_attributes();
  kv->set_key(k);
  kv->mutable_value()->set_int_value(v);
}

// One request of kTracesPerRequest traces, and the offsets of every trace id
// in its encoding (patched for each request sent).
struct Template {
  std::string body;
  std::vector<std::pair<size_t, int>> trace_id_at;  // offset, trace index
  size_t span_bytes = 0;                            // average encoded span
};

Template make_template() {
  opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest req;
  auto* rs = req.add_resource_spans();
  for (auto [k, v] :
       {std::pair{"service.name", "support-bot"}, std::pair{"service.version", "1.4.2"},
        std::pair{"deployment.environment", "production"},
        std::pair{"telemetry.sdk.language", "python"},
        std::pair{"telemetry.sdk.name", "opentelemetry"},
        std::pair{"telemetry.sdk.version", "1.27.0"}}) {
    auto* kv = rs->mutable_resource()->add_attributes();
    kv->set_key(k);
    kv->mutable_value()->set_string_value(v);
  }
  auto* ss = rs->add_scope_spans();
  ss->mutable_scope()->set_name("opentelemetry.instrumentation.openai");
  ss->mutable_scope()->set_version("0.33.1");
  std::mt19937_64 rng(42);
  const uint64_t t0 = 1'700'000'000'000'000'000ull;
  std::vector<std::string> trace_ids;
  for (int t = 0; t < kTracesPerRequest; ++t) {
    std::string tid(16, '\0');
    for (auto& c : tid)
      c = static_cast<char>(rng());
    trace_ids.push_back(tid);
    std::vector<std::string> ids;
    for (int s = 0; s < kSpansPerTrace; ++s) {
      std::string sid(8, '\0');
      for (auto& c : sid)
        c = static_cast<char>(rng() | 1);
      ids.push_back(sid);
    }
    auto span = [&](int i, int parent, const char* name, uint64_t start_ms, uint64_t dur_ms) {
      pbt::Span* s = ss->add_spans();
      s->set_trace_id(tid);
      s->set_span_id(ids[static_cast<size_t>(i)]);
      if (parent >= 0) s->set_parent_span_id(ids[static_cast<size_t>(parent)]);
      s->set_name(name);
      s->set_kind(parent < 0 ? pbt::Span::SPAN_KIND_SERVER : pbt::Span::SPAN_KIND_INTERNAL);
      s->set_start_time_unix_nano(t0 + start_ms * 1'000'000);
      s->set_end_time_unix_nano(t0 + (start_ms + dur_ms) * 1'000'000);
      return s;
    };
    pbt::Span* root = span(0, -1, "support_agent", 0, 2400);
    attr(root, "openinference.span.kind", "AGENT");
    attr(root, "input.value", "My order 4711 has not arrived yet, can you check where it is?");
    attr(root, "output.value",
         "Your order 4711 left our warehouse yesterday and arrives on Thursday.");
    attr(root, "session.id", "sess-8f2c1a");
    attr(root, "user.id", "user-20931");
    for (int g = 0; g < 2; ++g) {
      pbt::Span* chat = span(1 + g, 0, "chat gpt-4o-mini", 10 + g * 1200, 900);
      chat->set_kind(pbt::Span::SPAN_KIND_CLIENT);
      attr(chat, "gen_ai.operation.name", "chat");
      attr(chat, "gen_ai.system", "openai");
      attr(chat, "gen_ai.request.model", "gpt-4o-mini");
      attr(chat, "gen_ai.usage.input_tokens", int64_t{412 + g});
      attr(chat, "gen_ai.usage.output_tokens", int64_t{37 + g});
      attr(chat, "gen_ai.prompt.0.role", "system");
      attr(chat, "gen_ai.prompt.0.content", "You are a support agent. Use the tools.");
      attr(chat, "gen_ai.prompt.1.role", "user");
      attr(chat, "gen_ai.prompt.1.content", "My order 4711 has not arrived yet.");
      attr(chat, "gen_ai.completion.0.role", "assistant");
      attr(chat, "gen_ai.completion.0.content", "Let me look up order 4711.");
      attr(chat, "gen_ai.response.finish_reason", "tool_calls");
    }
    for (int k = 0; k < 3; ++k) {
      pbt::Span* tool = span(3 + k, 0, "lookup_order", 920 + k * 60, 50);
      attr(tool, "gen_ai.operation.name", "execute_tool");
      attr(tool, "gen_ai.tool.name", "lookup_order");
      attr(tool, "input.value", "{\"order_id\":4711}");
      attr(tool, "output.value", "{\"status\":\"shipped\",\"eta\":\"2024-05-02\"}");
    }
    for (int h = 0; h < 2; ++h) {
      pbt::Span* call = span(6 + h, 3 + h, "GET", 925 + h * 60, 30);
      call->set_kind(pbt::Span::SPAN_KIND_CLIENT);
      attr(call, "http.request.method", "GET");
      attr(call, "url.full", "http://orders.internal/v1/orders/4711");
      attr(call, "http.response.status_code", int64_t{200});
    }
  }
  Template t;
  t.body = req.SerializeAsString();
  t.span_bytes = t.body.size() / kSpansPerRequest;
  for (int i = 0; i < kTracesPerRequest; ++i) {
    for (size_t p = t.body.find(trace_ids[static_cast<size_t>(i)]); p != std::string::npos;
         p = t.body.find(trace_ids[static_cast<size_t>(i)], p + 16)) {
      t.trace_id_at.emplace_back(p, i);
    }
  }
  return t;
}

struct Stats {
  std::mutex mu;
  std::vector<double> latencies_ms;  // acknowledged requests in the window
  std::atomic<uint64_t> ok_total{0}, ok_window{0}, busy{0}, unavailable{0}, other{0};
};

// user + system CPU of `pid`, in µs.
double cpu_us(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t p = s.rfind(')');
  if (p == std::string::npos) return 0;
  std::istringstream in(s.substr(p + 2));
  std::string field;
  double ut = 0, st = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) ut = std::atof(field.c_str());
    if (i == 15) st = std::atof(field.c_str());
  }
  return (ut + st) * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double peak_rss_mib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0;
}

double self_cpu_us() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// mode "pipeline": the agent as configured by default, assembling and
// exporting traces while it takes spans in; "intake": assembly deferred (a
// quiet period longer than the run), so that the figures are those of taking
// spans in and storing them.
bool run(const std::string& sync, const std::string& mode, const Template& tmpl) {
  const bool pipeline = mode == "pipeline";
  const int seconds = env_int("OTLP_BENCH_SECONDS", 10);
  const int warmup = env_int("OTLP_BENCH_WARMUP_S", 2);
  const int connections = env_int("OTLP_BENCH_CONNECTIONS", 4);
  const fs::path base = env_str("OTLP_BENCH_DIR", fs::temp_directory_path().c_str());
  const fs::path dir =
      base / ("sidetrace-otlp-bench-" + std::to_string(::getpid()) + "-" + sync + "-" + mode);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const uint16_t port = free_port(), admin = free_port();
  {
    std::ofstream cfg(dir / "agent.toml");
    cfg << "data_dir = \"" << (dir / "data").string() << "\"\n\n[listen]\nunix_stream = \"\"\n"
        << "unix_dgram = \"\"\nudp = \"\"\notlp_http = \"127.0.0.1:" << port << "\"\n\n"
        << "[admin]\nlisten = \"127.0.0.1:" << admin << "\"\n\n[buffer]\nsync = \"" << sync
        << "\"\nmax_bytes = \"64GiB\"\n\n[trace]\nquiet_period_ms = "
        << (pipeline ? 1000 : 3'600'000) << "\n\n[log]\nlevel = \"warn\"\n";
  }
  const std::string config = (dir / "agent.toml").string();
  const std::string log = (dir / "agent.log").string();
  pid_t pid = ::fork();
  if (pid == 0) {
    std::freopen(log.c_str(), "w", stderr);
    std::freopen("/dev/null", "w", stdout);
    ::execl(SIDETRACE_BIN, SIDETRACE_BIN, "agent", "--config", config.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  auto stop_agent = [&] {
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    fs::remove_all(dir);
  };
  const auto start_deadline = Clock::now() + std::chrono::seconds(30);
  while (http_get(admin, "/readyz").empty()) {
    if (Clock::now() > start_deadline || ::waitpid(pid, nullptr, WNOHANG) == pid) {
      std::fprintf(stderr, "otlp_intake_bench: the agent did not start (see %s)\n", log.c_str());
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  Stats st;
  std::atomic<bool> stop{false}, measuring{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < connections; ++c) {
    clients.emplace_back([&, c] {
      int fd = connect_to(port);
      if (fd < 0) return;
      std::string body = tmpl.body, buf;
      const std::string head =
          "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
          "application/x-protobuf\r\nContent-Length: " +
          std::to_string(body.size()) + "\r\n\r\n";
      for (uint64_t n = 1; !stop.load(); ++n) {
        // New trace ids: the connection and the request number in the first
        // eight bytes, the template's in the rest.
        const uint64_t tag = (static_cast<uint64_t>(c + 1) << 40) | n;
        for (auto [at, i] : tmpl.trace_id_at)
          std::memcpy(body.data() + at, &tag, sizeof tag);
        const auto sent = Clock::now();
        if (!send_all(fd, head, body)) break;
        const int status = read_response(fd, buf);
        if (status == 0) break;
        if (status == 200) {
          st.ok_total.fetch_add(1);
          if (measuring.load()) {
            st.ok_window.fetch_add(1);
            std::lock_guard lock(st.mu);
            st.latencies_ms.push_back(
                std::chrono::duration<double, std::milli>(Clock::now() - sent).count());
          }
        } else if (status == 429) {
          st.busy.fetch_add(1);
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        } else if (status == 503) {
          st.unavailable.fetch_add(1);
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        } else {
          st.other.fetch_add(1);
        }
      }
      ::close(fd);
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(warmup));
  const double agent_cpu0 = cpu_us(pid), self_cpu0 = self_cpu_us();
  const auto t0 = Clock::now();
  measuring = true;
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  measuring = false;
  const double window_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const double agent_cpu1 = cpu_us(pid), self_cpu1 = self_cpu_us();
  stop = true;
  for (auto& t : clients)
    t.join();

  // Drain: every acknowledged trace is assembled and written by the exporter.
  const uint64_t traces = st.ok_total.load() * kTracesPerRequest;
  const auto drain_deadline = Clock::now() + std::chrono::seconds(pipeline ? 600 : 0);
  double emitted = 0;
  while (Clock::now() < drain_deadline) {
    emitted = metric(http_get(admin, "/metrics"), "sidetrace_traces_emitted_total{kind=\"all\"}");
    if (emitted >= static_cast<double>(traces)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const double agent_cpu_all = cpu_us(pid);
  const double rss = peak_rss_mib(pid);
  stop_agent();

  const uint64_t spans_window = st.ok_window.load() * kSpansPerRequest;
  const uint64_t spans_all = st.ok_total.load() * kSpansPerRequest;
  std::sort(st.latencies_ms.begin(), st.latencies_ms.end());
  auto q = [&](double p) {
    if (st.latencies_ms.empty()) return 0.0;
    return st.latencies_ms[std::min(
        st.latencies_ms.size() - 1,
        static_cast<size_t>(p * static_cast<double>(st.latencies_ms.size())))];
  };
  std::printf(
      "{\"bench\":\"otlp_intake\",\"mode\":\"%s\",\"encoding\":\"protobuf\",\"sync\":\"%s\","
      "\"batch_spans\":%d,"
      "\"connections\":%d,\"span_bytes\":%zu,\"seconds\":%.1f,\"spans\":%llu,"
      "\"spans_per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"cpu_us_per_span\":%.2f,"
      "\"cpu_us_per_span_all\":%.2f,\"client_cpu_us_per_span\":%.2f,\"busy_429\":%llu,"
      "\"unavailable_503\":%llu,\"other\":%llu,\"traces_written\":%.0f,\"traces_acked\":%llu,"
      "\"peak_rss_mib\":%.1f}\n",
      mode.c_str(), sync.c_str(), kSpansPerRequest, connections, tmpl.span_bytes, window_s,
      static_cast<unsigned long long>(spans_window), static_cast<double>(spans_window) / window_s,
      q(0.5), q(0.99),
      spans_window ? (agent_cpu1 - agent_cpu0) / static_cast<double>(spans_window) : 0.0,
      spans_all && pipeline ? agent_cpu_all / static_cast<double>(spans_all) : 0.0,
      spans_window ? (self_cpu1 - self_cpu0) / static_cast<double>(spans_window) : 0.0,
      static_cast<unsigned long long>(st.busy.load()),
      static_cast<unsigned long long>(st.unavailable.load()),
      static_cast<unsigned long long>(st.other.load()), emitted,
      static_cast<unsigned long long>(traces), rss);
  std::fflush(stdout);
  return true;
}

// The receiver's own work per span, in this process: decoding a request
// and mapping its spans into validated messages (no sockets, no store).
void decode_and_map(const Template& tmpl) {
  constexpr int kRounds = 200;
  size_t messages = 0, bytes = 0;
  const auto t0 = Clock::now();
  const double cpu0 = self_cpu_us();
  for (int i = 0; i < kRounds; ++i) {
    // As the receiver decodes: into an arena.
    google::protobuf::ArenaOptions options;
    options.start_block_size = 64 << 10;
    options.max_block_size = 1 << 20;
    google::protobuf::Arena arena(options);
    auto* req = google::protobuf::Arena::CreateMessage<sidetrace::ipc::OtlpRequest>(&arena);
    std::string err;
    if (!sidetrace::ipc::parse_otlp_protobuf(tmpl.body, req, &err)) std::abort();
    sidetrace::ipc::OtlpMapped mapped;
    sidetrace::ipc::map_otlp_request(*req, {}, 1, &mapped);
    messages += mapped.messages.size();
    for (const auto& m : mapped.messages)
      bytes += m.raw.size();
  }
  const double cpu = self_cpu_us() - cpu0;
  const double wall = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  const double spans = static_cast<double>(kRounds) * kSpansPerRequest;
  std::printf(
      "{\"bench\":\"otlp_decode_map\",\"batch_spans\":%d,\"span_bytes\":%zu,"
      "\"message_bytes\":%.0f,\"messages_per_span\":%.3f,\"us_per_span\":%.3f,"
      "\"cpu_us_per_span\":%.3f}\n",
      kSpansPerRequest, tmpl.span_bytes, static_cast<double>(bytes) / static_cast<double>(messages),
      static_cast<double>(messages) / spans, wall / spans, cpu / spans);
  std::fflush(stdout);
}

}  // namespace

int main() {
  ::signal(SIGPIPE, SIG_IGN);
  const Template tmpl = make_template();
  decode_and_map(tmpl);
  std::string syncs = env_str("OTLP_BENCH_SYNCS", "fsync,os");
  if (syncs == "none") return 0;  // the decoding figure only
  auto split = [](const std::string& list) {
    std::vector<std::string> out;
    std::stringstream in(list);
    for (std::string item; std::getline(in, item, ',');)
      if (!item.empty()) out.push_back(item);
    return out;
  };
  bool ok = true;
  for (const auto& mode : split(env_str("OTLP_BENCH_MODES", "intake,pipeline"))) {
    for (const auto& sync : split(syncs))
      ok = run(sync, mode, tmpl) && ok;
  }
  return ok ? 0 : 1;
}
