// Intake throughput: several senders push realistic ~500-byte events over each
// transport into an in-process Intake running on its own io_context thread;
// events are counted where they leave the queue. One JSON line per result.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "ipc/intake.h"
#include "ipc/test_support.h"

namespace {

using namespace sidetrace;
using namespace std::chrono_literals;
namespace asio = boost::asio;

constexpr int kSenders = 4;

struct Run {
  std::string transport;
  size_t batch = 0;  // events per datagram; 0 for the stream
  size_t per_sender = 0;
};

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

void sender(const Run& run, const std::string& dir, uint16_t udp_port, int index) {
  // Pre-encoded events; every sender has distinct ids.
  std::vector<std::string> events;
  for (size_t i = 0; i < 64; ++i) {
    events.push_back(ipc::testing::realistic_event(static_cast<uint64_t>(index) * 1'000'000 + i));
  }
  if (run.transport == "unix_stream") {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    auto a = unix_addr(dir + "/s.sock");
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) std::abort();
    std::string chunk;
    for (auto& e : events)
      chunk += e;
    for (size_t sent = 0; sent < run.per_sender; sent += events.size()) {
      std::string_view rest(chunk);
      while (!rest.empty()) {
        ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
        if (n <= 0) std::abort();
        rest.remove_prefix(static_cast<size_t>(n));
      }
    }
    ::close(fd);
    return;
  }
  std::vector<std::string> dgrams;
  for (size_t i = 0; i < events.size(); i += run.batch) {
    std::string d;
    for (size_t j = 0; j < run.batch; ++j)
      d += events[(i + j) % events.size()];
    dgrams.push_back(std::move(d));
  }
  int fd;
  if (run.transport == "unix_dgram") {
    fd = ::socket(AF_UNIX, SOCK_DGRAM, 0);
    auto a = unix_addr(dir + "/d.sock");
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) std::abort();
  } else {
    fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(udp_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) std::abort();
  }
  // Unix datagram sends block while the agent's queue is full; UDP sends do
  // not, so UDP pacing yields to the receiver now and then.
  size_t k = 0;
  for (size_t sent = 0; sent < run.per_sender; sent += run.batch, ++k) {
    const auto& d = dgrams[k % dgrams.size()];
    while (::send(fd, d.data(), d.size(), 0) < 0) {
      if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) std::abort();
      std::this_thread::yield();
    }
    if (run.transport == "udp" && k % 64 == 63) std::this_thread::yield();
  }
  ::close(fd);
}

void bench(const Run& run) {
  char tmpl[] = "/tmp/st-bench-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  asio::io_context ioc;
  BoundedQueue<ipc::MessageBatch> queue(256 << 20);
  ipc::IntakeOptions o;
  if (run.transport == "unix_stream") o.unix_stream = dir + "/s.sock";
  if (run.transport == "unix_dgram") o.unix_dgram = dir + "/d.sock";
  if (run.transport == "udp") o.udp = "127.0.0.1:0";
  o.rcvbuf_bytes = 8 << 20;
  auto intake = ipc::Intake::create(ioc, o, queue, system_clock());
  std::string err;
  if (intake->start(&err)) {
    std::fprintf(stderr, "intake start failed: %s\n", err.c_str());
    std::exit(1);
  }
  // CPU time of the intake thread: the cost of intake on one core, whatever
  // else the machine is doing.
  std::atomic<double> io_cpu_s{0};
  std::thread io([&] {
    ioc.run();
    timespec ts;
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    io_cpu_s = static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  });

  const uint64_t expected = static_cast<uint64_t>(kSenders) * run.per_sender;
  uint64_t got = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  std::vector<std::thread> senders;
  for (int i = 0; i < kSenders; ++i) {
    senders.emplace_back(sender, std::cref(run), std::cref(dir), intake->udp_port(), i);
  }
  std::vector<ipc::MessageBatch> batches;
  // Until everything arrived, or (datagrams may be lost) nothing came for 300 ms.
  while (got < expected && std::chrono::steady_clock::now() - last < 300ms) {
    batches.clear();
    queue.pop_all(batches, 50ms);
    for (auto& b : batches) {
      if (!b.empty()) last = std::chrono::steady_clock::now();
      got += b.size();
    }
  }
  for (auto& t : senders)
    t.join();
  const double secs = std::chrono::duration<double>(last - t0).count();
  const auto& s = intake->stats().of(run.transport == "unix_stream"  ? ipc::Transport::kUnixStream
                                     : run.transport == "unix_dgram" ? ipc::Transport::kUnixDgram
                                                                     : ipc::Transport::kUdp);
  asio::post(ioc, [&] { intake->stop(); });
  io.join();
  std::printf(
      "{\"bench\":\"intake\",\"transport\":\"%s\",\"senders\":%d,%s\"events\":%llu,"
      "\"sent\":%llu,\"kernel_drops\":%llu,\"events_per_s\":%.0f,"
      "\"intake_cpu_s\":%.3f,\"events_per_intake_cpu_s\":%.0f}\n",
      run.transport.c_str(), kSenders,
      run.batch ? ("\"batch\":" + std::to_string(run.batch) + ",").c_str() : "",
      static_cast<unsigned long long>(got), static_cast<unsigned long long>(expected),
      static_cast<unsigned long long>(s.kernel_drops.load()), got / secs, io_cpu_s.load(),
      got / io_cpu_s.load());
  std::fflush(stdout);
  std::filesystem::remove_all(dir);
}

}  // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  bench({"unix_stream", 0, 256'000});
  bench({"unix_dgram", 1, 100'000});
  bench({"unix_dgram", 8, 200'000});
  bench({"udp", 1, 100'000});
  bench({"udp", 8, 200'000});
  return 0;
}
