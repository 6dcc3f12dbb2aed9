// Cost of one emitted event on the caller's thread with the C++ SDK
// (sdk/cpp), with the agent up (a Unix stream socket drained by another
// thread) and down (nothing listens: events queue up to the bound, then are
// dropped and counted). One JSON object per line:
// {"bench":"emit","sdk":"cpp","agent":"up","p50_us":...,"p99_us":...}
//
// The SDK is compiled into this benchmark (it is not one of the libraries
// every bench links), through its single source file.
#include "sdk/cpp/src/client.cpp"

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace sc = sidetrace::client;
using Clock = std::chrono::steady_clock;

// Accepts connections on `path` and discards what arrives until `stop`.
class Drain {
 public:
  explicit Drain(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
    if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd_, 4) != 0) {
      std::perror("emit_bench: bind");
      std::exit(1);
    }
    thread_ = std::thread([this] {
      std::vector<char> buf(1 << 20);
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (poll(&p, 1, 20) != 1) continue;
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0) continue;
        while (!stop_) {
          pollfd pc{c, POLLIN, 0};
          if (poll(&pc, 1, 20) != 1) continue;
          if (recv(c, buf.data(), buf.size(), 0) <= 0) break;
        }
        ::close(c);
      }
    });
  }
  ~Drain() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }

 private:
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

long max_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

void run(const char* agent, const std::string& endpoint, int events) {
  sc::Options o;
  o.endpoint = endpoint;
  o.max_queue = 10000;
  o.close_timeout = std::chrono::milliseconds(std::string(agent) == "up" ? 2000 : 0);
  sc::Client client(o);
  sc::TraceContext ctx;
  ctx.conversation_id = "bench";
  sc::Trace trace = client.trace(ctx);
  constexpr int kWarmup = 5000;
  std::vector<int64_t> ns;
  ns.reserve(events);
  long rss_before = max_rss_kb();
  for (int i = 0; i < kWarmup + events; ++i) {
    auto t0 = Clock::now();
    sc::Finished f;
    f.type = "TOOL";
    f.input = "What's the weather in Paris?";
    f.output = "sunny, 21C";
    f.latency_ms = 12;
    trace.send(std::move(f));
    auto dt = Clock::now() - t0;
    if (i >= kWarmup)
      ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count());
  }
  long rss_growth = max_rss_kb() - rss_before;
  sc::Stats s = client.stats();
  std::sort(ns.begin(), ns.end());
  double p50 = ns[ns.size() / 2] / 1000.0;
  double p99 = ns[ns.size() * 99 / 100] / 1000.0;
  std::printf(
      "{\"bench\":\"emit\",\"sdk\":\"cpp\",\"agent\":\"%s\",\"p50_us\":%.3f,\"p99_us\":%.3f,"
      "\"events\":%d,\"sent\":%llu,\"dropped\":%llu,\"max_rss_growth_kb\":%ld}\n",
      agent, p50, p99, kWarmup + events, static_cast<unsigned long long>(s.sent),
      static_cast<unsigned long long>(s.dropped()), rss_growth);
  std::fflush(stdout);
}

}  // namespace

int main() {
  const char* env = std::getenv("SIDETRACE_BENCH_EVENTS");
  int events = env != nullptr ? std::max(1000, std::atoi(env)) : 200000;
  char tmpl[] = "/tmp/st-emit-bench-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  {
    Drain drain(dir + "/agent.sock");
    run("up", "unix://" + dir + "/agent.sock", events);
  }
  run("down", "unix://" + dir + "/absent.sock", events);
  std::filesystem::remove_all(dir);
  return 0;
}
