#include "ipc/intake.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "common/wait_until.h"
#include "ipc/detail/linger.h"
#include "ipc/test_support.h"

namespace sidetrace::ipc {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

int connect_unix(const std::string& path, int type = SOCK_STREAM) {
  int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  auto a = unix_addr(path);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    ASSERT_GT(n, 0) << std::strerror(errno);
    data.remove_prefix(static_cast<size_t>(n));
  }
}

void send_udp(uint16_t port, std::string_view data) {
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::sendto(fd, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
            static_cast<ssize_t>(data.size()));
  ::close(fd);
}

void send_dgram(const std::string& path, std::string_view data) {
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  auto a = unix_addr(path);
  ASSERT_EQ(::sendto(fd, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
            static_cast<ssize_t>(data.size()))
      << std::strerror(errno);
  ::close(fd);
}

class IntakeFixture : public ::testing::Test {
 protected:
  IntakeFixture() {
    char tmpl[] = "/tmp/st-ipc-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  ~IntakeFixture() override {
    stop();
    std::filesystem::remove_all(dir_);
  }

  IntakeOptions options() {
    IntakeOptions o;
    o.unix_stream = dir_ + "/run/stream.sock";
    o.unix_dgram = dir_ + "/run/dgram.sock";
    o.udp = "127.0.0.1:0";
    o.read_delay = read_delay_;
    o.stream_read_delay = read_delay_;
    // Senders of these tests write a few messages: a connection lingers
    // `read_delay_` whatever their rate (the rate rule has tests of its own).
    o.stream_linger_room = size_t{1} << 40;
    return o;
  }

  // options() with only `t` listening; with none, none of the three (a test
  // then gives the intake a socket to adopt).
  IntakeOptions only(std::optional<Transport> t) {
    IntakeOptions o = options();
    if (t != Transport::kUnixStream) o.unix_stream.clear();
    if (t != Transport::kUnixDgram) o.unix_dgram.clear();
    if (t != Transport::kUdp) o.udp.clear();
    return o;
  }

  void start(IntakeOptions o, size_t queue_bytes = 0) {
    if (queue_bytes > 0) queue_ = std::make_unique<BoundedQueue<MessageBatch>>(queue_bytes);
    opts_ = o;
    intake_ = Intake::create(ioc_, std::move(o), *queue_, clock_);
    std::string err;
    ASSERT_FALSE(intake_->start(&err)) << err;
    thread_ = std::thread([this] { ioc_.run(); });
  }

  void stop() {
    if (!thread_.joinable()) return;
    asio::post(ioc_, [this] { intake_->stop(); });
    thread_.join();
  }

  // Collects messages from the queue until `n` have arrived or time is up.
  std::vector<Message> take(size_t n, std::chrono::milliseconds limit = 10s) {
    std::vector<Message> out;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      std::vector<MessageBatch> batches;
      queue_->pop_all(batches, 20ms);
      for (auto& b : batches) {
        for (auto& m : b)
          out.push_back(std::move(m));
      }
    }
    return out;
  }

  // Collects batches from the queue until they hold `n` messages or time is up.
  std::vector<MessageBatch> take_batches(size_t n, std::chrono::milliseconds limit = 10s) {
    std::vector<MessageBatch> out;
    size_t got = 0;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (got < n && std::chrono::steady_clock::now() < deadline) {
      const size_t before = out.size();
      queue_->pop_all(out, 20ms);
      for (size_t i = before; i < out.size(); ++i)
        got += out[i].size();
    }
    return out;
  }

  const TransportStats& st(Transport t) { return intake_->stats().of(t); }

  std::chrono::microseconds read_delay_{0};
  std::string dir_;
  ManualClock clock_;
  asio::io_context ioc_;
  std::unique_ptr<BoundedQueue<MessageBatch>> queue_ =
      std::make_unique<BoundedQueue<MessageBatch>>(64 << 20);
  IntakeOptions opts_;
  std::unique_ptr<Intake> intake_;
  std::thread thread_;
};

// Every behaviour holds with reads at once and with the agent's read delay.
class IntakeTest : public IntakeFixture,
                   public ::testing::WithParamInterface<std::chrono::microseconds> {
 protected:
  IntakeTest() { read_delay_ = GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(ReadDelay, IntakeTest, ::testing::Values(0us, 2000us),
                         [](const ::testing::TestParamInfo<std::chrono::microseconds>& p) {
                           return p.param.count() == 0 ? std::string("AtOnce")
                                                       : std::to_string(p.param.count()) + "us";
                         });

std::string msg(uint64_t n) {
  return testing::realistic_event(n, 300);
}

std::vector<std::string> every_kind() {
  using testing::MapBuilder;
  auto base = [](std::string_view k) {
    MapBuilder b;
    b.uint("v", 1).str("kind", k).str("trace_id", "abc");
    return b;
  };
  return {base("trace").str("session_id", "s").build(),
          base("start").str("id", "e1").str("type", "TOOL").build(),
          base("end").str("id", "e1").build(), msg(1), base("feedback").dbl("score", 1).build()};
}

TEST_P(IntakeTest, EveryKindThroughEveryTransport) {
  start(options());
  const auto kinds = every_kind();
  std::string all;
  for (auto& k : kinds)
    all += k;
  int fd = connect_unix(opts_.unix_stream);
  ASSERT_GE(fd, 0);
  write_all(fd, all);
  send_dgram(opts_.unix_dgram, all);  // several messages in one datagram
  send_udp(intake_->udp_port(), all);
  auto got = take(15);
  ::close(fd);
  ASSERT_EQ(got.size(), 15u);
  size_t per_kind[5] = {};
  for (auto& m : got) {
    ++per_kind[static_cast<size_t>(m.kind)];
    if (m.kind != Kind::kEvent) {
      EXPECT_EQ(m.trace_id, "abc");
    }
    EXPECT_EQ(m.recv_ns, clock_.now_ns());
    EXPECT_NE(std::find(kinds.begin(), kinds.end(), m.raw), kinds.end());
  }
  for (size_t k : per_kind)
    EXPECT_EQ(k, 3u);
  for (auto t : {Transport::kUnixStream, Transport::kUnixDgram, Transport::kUdp}) {
    EXPECT_TRUE(wait_until([&] { return st(t).accepted == 5; })) << transport_name(t);
    EXPECT_EQ(st(t).received.load(), 5u);
    EXPECT_EQ(st(t).bytes.load(), all.size());
  }
  EXPECT_EQ(st(Transport::kUnixDgram).datagrams.load(), 1u);
  EXPECT_EQ(st(Transport::kUdp).datagrams.load(), 1u);
  EXPECT_TRUE(wait_until([&] { return st(Transport::kUnixStream).connections_open == 0; }));
  EXPECT_EQ(st(Transport::kUnixStream).connections_total.load(), 1u);
}

TEST_P(IntakeTest, ManyConnectionsWritingInTinyPieces) {
  start(options());
  constexpr int kConns = 24, kPerConn = 40;
  std::vector<std::thread> senders;
  for (int c = 0; c < kConns; ++c) {
    senders.emplace_back([&, c] {
      int fd = connect_unix(opts_.unix_stream);
      ASSERT_GE(fd, 0);
      std::string stream;
      for (int i = 0; i < kPerConn; ++i)
        stream += msg(static_cast<uint64_t>(c * 1000 + i));
      // Pieces of 1..13 bytes: messages are split at every kind of boundary.
      size_t pos = 0, piece = 1 + static_cast<size_t>(c) % 13;
      while (pos < stream.size()) {
        write_all(fd, std::string_view(stream).substr(pos, piece));
        pos += piece;
        piece = piece % 13 + 1;
      }
      ::close(fd);
    });
  }
  for (auto& t : senders)
    t.join();
  auto got = take(kConns * kPerConn);
  EXPECT_EQ(got.size(), static_cast<size_t>(kConns * kPerConn));
  std::set<std::string> ids;
  for (auto& m : got)
    ids.insert(m.id);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kConns * kPerConn));
  EXPECT_EQ(st(Transport::kUnixStream).connections_total.load(), static_cast<uint64_t>(kConns));
  EXPECT_EQ(st(Transport::kUnixStream).rejected_total(), 0u);
}

TEST_P(IntakeTest, GarbageClosesTheStreamAndKeepsEarlierMessages) {
  start(options());
  int fd = connect_unix(opts_.unix_stream);
  write_all(fd, msg(1) + msg(2) + std::string("\xc1\xc1 not msgpack") + msg(3));
  // The agent closes the connection: the client reads EOF.
  char c;
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  EXPECT_LE(::recv(fd, &c, 1, 0), 0);
  ::close(fd);
  auto got = take(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].raw, msg(1));
  EXPECT_EQ(got[1].raw, msg(2));
  EXPECT_EQ(st(Transport::kUnixStream).closed_garbage.load(), 1u);
  EXPECT_EQ(st(Transport::kUnixStream).rejected_of(Reject::kMalformed), 1u);
}

TEST_P(IntakeTest, FloodOfOversizedAndRandomBytesLeavesTheIntakeServing) {
  IntakeOptions o = options();
  o.limits.max_message_bytes = 4096;
  o.conn_buffer_bytes = 4096;
  o.max_datagram_bytes = 2048;
  start(o);
  std::mt19937_64 rng(11);
  const std::string big = testing::MapBuilder().str("blob", std::string(100'000, 'b')).build();
  std::vector<std::thread> flooders;
  for (int c = 0; c < 6; ++c) {
    flooders.emplace_back([&, c] {
      int fd = connect_unix(opts_.unix_stream);
      std::mt19937_64 r(static_cast<uint64_t>(c));
      for (int i = 0; i < 20; ++i) {
        if (c % 2 == 0) {
          if (::send(fd, big.data(), big.size(), MSG_NOSIGNAL) < 0) break;  // closed: fine
        } else {
          std::string junk(8192, '\0');
          for (auto& ch : junk)
            ch = static_cast<char>(r());
          if (::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL) < 0) break;
        }
      }
      ::close(fd);
    });
  }
  for (int i = 0; i < 50; ++i) {
    std::string junk(1 + rng() % 1500, '\0');
    for (auto& ch : junk)
      ch = static_cast<char>(rng());
    send_udp(intake_->udp_port(), junk);
    send_dgram(opts_.unix_dgram, junk);
  }
  send_udp(intake_->udp_port(), std::string(4000, 'x'));  // over max_datagram_bytes
  for (auto& t : flooders)
    t.join();
  const auto& s = st(Transport::kUnixStream);
  EXPECT_TRUE(wait_until([&] { return s.connections_open == 0; }));
  EXPECT_GE(s.rejected_of(Reject::kTooLarge), 20u);  // every oversized message counted
  // The datagrams are read after the flooders are done, later still with a
  // read delay.
  EXPECT_TRUE(wait_until([&] { return st(Transport::kUdp).datagrams.load() >= 51u; }));
  EXPECT_EQ(st(Transport::kUdp).datagrams.load(), 51u);
  EXPECT_TRUE(wait_until([&] { return st(Transport::kUdp).rejected_of(Reject::kTooLarge) >= 1u; }));
  EXPECT_GT(st(Transport::kUdp).rejected_total(), 0u);
  // Nothing from the flood was a valid message; a good one afterwards is.
  int fd = connect_unix(opts_.unix_stream);
  write_all(fd, msg(77));
  send_udp(intake_->udp_port(), msg(78));
  send_dgram(opts_.unix_dgram, msg(79));
  auto got = take(3);
  ::close(fd);
  std::set<std::string> ids;
  for (auto& m : got)
    ids.insert(m.raw);
  EXPECT_EQ(ids, (std::set<std::string>{msg(77), msg(78), msg(79)}));
}

TEST_P(IntakeTest, StaleSocketIsReplacedLiveOneRefused) {
  IntakeOptions o = options();
  std::filesystem::create_directories(dir_ + "/run");
  // A stale socket file: bound, then its owner went away without unlinking.
  for (const auto& [path, type] :
       {std::pair{o.unix_stream, SOCK_STREAM}, {o.unix_dgram, SOCK_DGRAM}}) {
    int fd = ::socket(AF_UNIX, type, 0);
    auto a = unix_addr(path);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ::close(fd);
    ASSERT_TRUE(std::filesystem::exists(path));
  }
  start(o);
  int fd = connect_unix(o.unix_stream);
  ASSERT_GE(fd, 0);
  write_all(fd, msg(5));
  send_dgram(o.unix_dgram, msg(6));
  EXPECT_EQ(take(2).size(), 2u);
  ::close(fd);

  // A second intake on the same live paths must refuse to start.
  for (bool stream : {true, false}) {
    IntakeOptions o2;
    (stream ? o2.unix_stream : o2.unix_dgram) = stream ? o.unix_stream : o.unix_dgram;
    asio::io_context ioc2;
    BoundedQueue<MessageBatch> q2(1 << 20);
    auto second = Intake::create(ioc2, o2, q2, clock_);
    std::string err;
    EXPECT_TRUE(second->start(&err));
    EXPECT_NE(err.find("in use"), std::string::npos) << err;
  }
  // The live intake is unaffected, and stop() removes its files.
  send_dgram(o.unix_dgram, msg(7));
  EXPECT_EQ(take(1).size(), 1u);
  stop();
  EXPECT_FALSE(std::filesystem::exists(o.unix_stream));
  EXPECT_FALSE(std::filesystem::exists(o.unix_dgram));
}

TEST_P(IntakeTest, RefusesToReplaceAFileThatIsNotASocket) {
  IntakeOptions o;
  o.unix_stream = dir_ + "/plain";
  std::ofstream(o.unix_stream) << "keep me";
  auto intake = Intake::create(ioc_, o, *queue_, clock_);
  std::string err;
  EXPECT_TRUE(intake->start(&err));
  EXPECT_NE(err.find("not a socket"), std::string::npos) << err;
  EXPECT_TRUE(std::filesystem::exists(o.unix_stream));
}

TEST_P(IntakeTest, SocketModeIsApplied) {
  IntakeOptions o = options();
  o.socket_mode = 0600;
  start(o);
  struct stat s1, s2;
  ASSERT_EQ(::stat(o.unix_stream.c_str(), &s1), 0);
  ASSERT_EQ(::stat(o.unix_dgram.c_str(), &s2), 0);
  EXPECT_EQ(s1.st_mode & 0777, 0600u);
  EXPECT_EQ(s2.st_mode & 0777, 0600u);
}

// A full queue pauses a datagram receiver: it keeps its batch and stops
// reading, so the kernel refuses further Unix datagrams (EAGAIN for this
// non-blocking sender) and drops further UDP ones (counted); once there is
// room again, everything the kernel took is delivered.
TEST_P(IntakeTest, FullQueuePausesDatagramReceiversUntilThereIsRoom) {
  IntakeOptions o = options();
  o.unix_stream.clear();
  start(o, /*queue_bytes=*/1);  // holds one batch at a time
  constexpr int kN = 200;
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  ASSERT_GE(fd, 0);
  auto addr = unix_addr(opts_.unix_dgram);
  uint64_t dgram_taken = 0;
  for (int i = 0; i < kN; ++i) {
    send_udp(intake_->udp_port(), msg(static_cast<uint64_t>(i)));
    const std::string m = msg(static_cast<uint64_t>(i));
    ssize_t n =
        ::sendto(fd, m.data(), m.size(), 0, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (n == static_cast<ssize_t>(m.size())) {
      ++dgram_taken;
    } else {
      ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << std::strerror(errno);
    }
  }
  ::close(fd);
  const auto& udp = st(Transport::kUdp);
  const auto& dgram = st(Transport::kUnixDgram);
  EXPECT_TRUE(wait_until([&] { return dgram.backpressure_pauses > 0; }));
  // Draining the queue lets the receivers go on until the sockets are empty.
  size_t taken = 0;
  ASSERT_TRUE(wait_until([&] {
    taken += take(1000, 20ms).size();
    return dgram.accepted == dgram_taken;
  })) << "dgram accepted="
      << dgram.accepted << " of " << dgram_taken;
  // The kernel reports its drop count with the next datagram read: one more.
  send_udp(intake_->udp_port(), msg(kN));
  ASSERT_TRUE(wait_until([&] {
    taken += take(1000, 20ms).size();
    return udp.accepted + udp.kernel_drops == static_cast<uint64_t>(kN + 1);
  })) << "udp accepted="
      << udp.accepted << " kernel_drops=" << udp.kernel_drops;
  taken += take(1000, 50ms).size();
  EXPECT_EQ(taken, udp.accepted + dgram.accepted);
  EXPECT_EQ(dgram.queue_full_drops.load(), 0u);
  EXPECT_EQ(udp.queue_full_drops.load(), 0u);
}

TEST_P(IntakeTest, FullQueuePausesAStreamWithoutLosingAnything) {
  IntakeOptions o = only(Transport::kUnixStream);
  o.conn_buffer_bytes = 1024;
  start(o, /*queue_bytes=*/4096);
  constexpr int kN = 300;
  std::thread sender([&] {
    int fd = connect_unix(opts_.unix_stream);
    for (int i = 0; i < kN; ++i)
      write_all(fd, msg(static_cast<uint64_t>(i)));
    ::close(fd);
  });
  const auto& s = st(Transport::kUnixStream);
  ASSERT_TRUE(wait_until([&] { return s.backpressure_pauses > 0; }));
  auto got = take(kN);
  sender.join();
  ASSERT_EQ(got.size(), static_cast<size_t>(kN));
  for (int i = 0; i < kN; ++i)
    EXPECT_EQ(got[static_cast<size_t>(i)].raw, msg(static_cast<uint64_t>(i)));
  EXPECT_TRUE(wait_until([&] { return s.accepted == static_cast<uint64_t>(kN); }));
  EXPECT_EQ(s.queue_full_drops.load(), 0u);
}

TEST_P(IntakeTest, RejectionsAreCountedPerReason) {
  start(options());
  using testing::MapBuilder;
  send_udp(intake_->udp_port(), testing::pack(std::vector<int>{1}));
  send_udp(intake_->udp_port(),
           MapBuilder().uint("v", 9).str("kind", "trace").str("trace_id", "t").build());
  send_udp(intake_->udp_port(),
           MapBuilder().uint("v", 1).str("kind", "nope").str("trace_id", "t").build());
  send_udp(intake_->udp_port(), msg(1) + "\xc1");
  const auto& s = st(Transport::kUdp);
  // `accepted` is counted once the batch is queued, after `received`.
  ASSERT_TRUE(wait_until([&] { return s.received == 5 && s.accepted == 1; }));
  EXPECT_EQ(s.rejected_of(Reject::kNotMap), 1u);
  EXPECT_EQ(s.rejected_of(Reject::kBadVersion), 1u);
  EXPECT_EQ(s.rejected_of(Reject::kBadKind), 1u);
  EXPECT_EQ(s.rejected_of(Reject::kMalformed), 1u);
  EXPECT_EQ(s.accepted.load(), 1u);
}

// Input that carries no complete message is still an outcome: an empty
// datagram, and a stream closed in the middle of a message, are counted.
TEST_P(IntakeTest, EmptyDatagramsAndMessagesCutByADisconnectAreCounted) {
  start(options());
  send_udp(intake_->udp_port(), "");
  send_udp(intake_->udp_port(), msg(1));
  const auto& u = st(Transport::kUdp);
  ASSERT_TRUE(wait_until([&] { return u.received == 2 && u.accepted == 1; }));
  EXPECT_EQ(u.rejected_of(Reject::kMalformed), 1u);
  ASSERT_EQ(take(1).size(), 1u);  // the valid datagram, out of the queue

  int fd = connect_unix(opts_.unix_stream);
  const std::string whole = msg(2), cut = msg(3).substr(0, 40);
  write_all(fd, whole + cut);
  ASSERT_EQ(take(1).size(), 1u);
  ::close(fd);
  const auto& s = st(Transport::kUnixStream);
  ASSERT_TRUE(wait_until([&] { return s.rejected_of(Reject::kMalformed) == 1; }));
  EXPECT_EQ(s.received.load(), 2u);
  EXPECT_EQ(s.accepted.load(), 1u);
}

TEST_P(IntakeTest, AStreamMessagePastThePartialMemoryBoundIsSkippedAndCounted) {
  IntakeOptions o = options();
  o.max_partial_bytes = 32 << 10;  // less than the message below needs beyond its read buffer
  start(o);
  const std::string big = testing::realistic_event(7, 200'000);
  int fd = connect_unix(o.unix_stream);
  write_all(fd, msg(1) + big + msg(2));
  const auto got = take(2);
  ASSERT_EQ(got.size(), 2u);
  const auto& s = st(Transport::kUnixStream);
  // Counted just after the queue took them.
  ASSERT_TRUE(wait_until([&] { return s.rejected_of(Reject::kNoMemory) == 1 && s.accepted == 2; }));
  EXPECT_EQ(s.connections_open.load(), 1u);  // the connection goes on
  ::close(fd);
}

TEST_P(IntakeTest, AnIdleStreamIsClosedAfterReadingWhatItSent) {
  IntakeOptions o = options();
  o.idle_timeout = 1s;
  start(o);
  int fd = connect_unix(o.unix_stream);
  write_all(fd, msg(1));
  ASSERT_EQ(take(1).size(), 1u);
  const auto& s = st(Transport::kUnixStream);
  ASSERT_TRUE(wait_until([&] { return s.closed_idle == 1 && s.connections_open == 0; }));
  // The sender learns at once: its next write fails instead of vanishing.
  const std::string m = msg(2);
  EXPECT_LT(::send(fd, m.data(), m.size(), MSG_NOSIGNAL), 0);
  EXPECT_EQ(s.accepted.load(), 1u);
  ::close(fd);
  // A connection that keeps sending stays open past the timeout.
  int busy = connect_unix(o.unix_stream);
  ASSERT_TRUE(wait_until([&] { return s.connections_open == 1; }));
  const auto until = std::chrono::steady_clock::now() + 5 * o.idle_timeout / 2;
  size_t sent = 0;
  while (std::chrono::steady_clock::now() < until) {
    write_all(busy, msg(10 + sent++));
    ASSERT_EQ(take(1).size(), 1u);
  }
  EXPECT_EQ(s.closed_idle.load(), 1u);
  EXPECT_EQ(s.connections_open.load(), 1u);
  ::close(busy);
}

TEST_P(IntakeTest, ConnectionsOverTheLimitAreRefused) {
  IntakeOptions o = options();
  o.max_connections = 2;
  start(o);
  int a = connect_unix(o.unix_stream), b = connect_unix(o.unix_stream);
  const auto& s = st(Transport::kUnixStream);
  ASSERT_TRUE(wait_until([&] { return s.connections_open == 2; }));
  int c = connect_unix(o.unix_stream);
  ASSERT_TRUE(wait_until([&] { return s.connections_refused == 1; }));
  char ch;
  pollfd p{c, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  EXPECT_LE(::recv(c, &ch, 1, 0), 0);
  for (int fd : {a, b, c})
    ::close(fd);
}

TEST_P(IntakeTest, AdoptsAlreadyBoundSockets) {
  IntakeOptions o;
  const std::string path = dir_ + "/adopted.sock";
  int lfd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  auto a = unix_addr(path);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(lfd, 16), 0);
  int ufd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(ufd, reinterpret_cast<sockaddr*>(&in), sizeof in), 0);
  o.stream_fd = lfd;
  o.udp_fd = ufd;
  start(o);
  ASSERT_NE(intake_->udp_port(), 0);
  int fd = connect_unix(path);
  write_all(fd, msg(1));
  send_udp(intake_->udp_port(), msg(2));
  EXPECT_EQ(take(2).size(), 2u);
  ::close(fd);
  stop();
  EXPECT_TRUE(std::filesystem::exists(path));  // an adopted socket's file is not ours
}

TEST_P(IntakeTest, BadUdpAddressFailsAtStart) {
  IntakeOptions o;
  o.udp = "127.0.0.1";
  auto intake = Intake::create(ioc_, o, *queue_, clock_);
  std::string err;
  EXPECT_TRUE(intake->start(&err));
  EXPECT_NE(err.find("udp"), std::string::npos);
}

// ---- the read delay

// Open sockets of this process (each test's own intake included).
size_t open_sockets() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string().rfind("socket:", 0) == 0) ++n;
  }
  return n;
}

class IntakeReadDelayTest : public IntakeFixture {
 protected:
  // Reads a connection makes before its lingers reach a delay of a second:
  // they start at detail::kFirstStreamLinger and at most double.
  static constexpr uint64_t kRampReads = 12;

  // Starts the intake, connects to its stream socket and sends messages one
  // after the other, each read by a read of its own (a connection's first
  // read does not linger, and each linger after it at most doubles the one
  // before), until the connection's linger is the whole delay (up to a
  // second); returns the connection, which now lingers.
  int start_with_a_lingering_stream(const IntakeOptions& o) {
    start(o);
    int fd = connect_unix(opts_.unix_stream);
    EXPECT_GE(fd, 0);
    for (uint64_t i = 0; i < kRampReads; ++i) {
      write_all(fd, msg(1000 + i));
      EXPECT_EQ(take(1).size(), 1u);
    }
    EXPECT_EQ(st(Transport::kUnixStream).reads.load(), kRampReads);
    return fd;
  }
};

// After a read that found one datagram the receiver lingers: datagrams sent
// one by one meanwhile are read by one recvmmsg() and queued as one batch.
TEST_F(IntakeReadDelayTest, DatagramsSentDuringTheDelayAreQueuedAsOneBatch) {
  read_delay_ = 1s;
  IntakeOptions o = options();
  o.unix_stream.clear();
  start(o);
  send_dgram(opts_.unix_dgram, msg(0));
  send_udp(intake_->udp_port(), msg(100));
  ASSERT_EQ(take(2).size(), 2u);  // read at once: nothing lingered before them
  // Each socket now lingers the whole delay (its first read came long after
  // the one before it, which is none).
  const auto lingering = std::chrono::steady_clock::now();
  const auto& dgram = st(Transport::kUnixDgram);
  const auto& udp = st(Transport::kUdp);
  EXPECT_EQ(dgram.reads.load(), 1u);
  EXPECT_EQ(udp.reads.load(), 1u);
  EXPECT_EQ(dgram.linger_reads.load(), 0u);
  // Four each, fewer than half of what the kernel queues for a Unix
  // datagram socket (11 by default), one sendto() each.
  for (uint64_t i = 1; i <= 4; ++i) {
    send_dgram(opts_.unix_dgram, msg(i));
    send_udp(intake_->udp_port(), msg(100 + i));
  }
  const bool sent_while_lingering = std::chrono::steady_clock::now() - lingering < 500ms;
  auto batches = take_batches(8);
  size_t from_dgram = 0, from_udp = 0;
  for (const auto& b : batches) {
    ASSERT_FALSE(b.empty());
    const bool is_udp = b.front().raw == msg(101) || b.front().raw == msg(102) ||
                        b.front().raw == msg(103) || b.front().raw == msg(104);
    EXPECT_EQ(b.size(), 4u) << (is_udp ? "udp" : "unix_dgram");
    (is_udp ? from_udp : from_dgram) += b.size();
  }
  EXPECT_EQ(from_dgram, 4u);
  EXPECT_EQ(from_udp, 4u);
  EXPECT_EQ(dgram.reads.load(), 2u);
  EXPECT_EQ(udp.reads.load(), 2u);
  // Read when the linger ended: the datagrams woke nothing. (Unless this
  // thread stalled past the linger on a busy machine: the socket is then
  // watched again, and a wake-up may still find all four.)
  if (sent_while_lingering) {
    EXPECT_EQ(dgram.linger_reads.load(), 1u);
    EXPECT_EQ(udp.linger_reads.load(), 1u);
  }
  EXPECT_EQ(dgram.datagrams.load(), 5u);
  EXPECT_EQ(udp.datagrams.load(), 5u);
}

// With no read delay every datagram is read as soon as it arrives.
TEST_F(IntakeReadDelayTest, WithoutADelayEachDatagramIsReadAtOnce) {
  read_delay_ = 0us;
  IntakeOptions o = only(Transport::kUnixDgram);
  start(o);
  const auto& s = st(Transport::kUnixDgram);
  for (uint64_t i = 1; i <= 5; ++i) {
    send_dgram(opts_.unix_dgram, msg(i));
    // Far below the delay of the other tests: no timer stands in between.
    ASSERT_TRUE(wait_until([&] { return s.accepted == i; }, 900ms)) << "datagram " << i;
  }
  EXPECT_EQ(s.reads.load(), 5u);
  EXPECT_EQ(s.linger_reads.load(), 0u);
  auto batches = take_batches(5);
  ASSERT_EQ(batches.size(), 5u);
  for (const auto& b : batches)
    EXPECT_EQ(b.size(), 1u);
}

// A read that found half of what the kernel can queue means datagrams come
// fast: the receiver waits for readiness instead of lingering, and reads the
// next one as soon as it arrives.
TEST_F(IntakeReadDelayTest, AReadOfHalfABatchDoesNotLinger) {
  read_delay_ = 1s;
  IntakeOptions o = only(Transport::kUdp);
  o.recv_batch = 8;  // half a batch: 4 datagrams
  start(o);
  const auto& s = st(Transport::kUdp);
  send_udp(intake_->udp_port(), msg(0));
  ASSERT_TRUE(wait_until([&] { return s.accepted == 1; }));
  for (uint64_t i = 1; i <= 4; ++i)
    send_udp(intake_->udp_port(), msg(i));  // read together after the linger
  ASSERT_TRUE(wait_until([&] { return s.accepted == 5; }));
  EXPECT_EQ(s.reads.load(), 2u);
  send_udp(intake_->udp_port(), msg(5));
  ASSERT_TRUE(wait_until([&] { return s.accepted == 6; }, 900ms));
  EXPECT_EQ(s.reads.load(), 3u);
}

// A stream connection lingers after a read that did not fill its buffer:
// writes made meanwhile are read together.
TEST_F(IntakeReadDelayTest, StreamWritesDuringTheDelayAreReadTogether) {
  read_delay_ = 1s;
  IntakeOptions o = only(Transport::kUnixStream);
  int fd = start_with_a_lingering_stream(o);
  ASSERT_GE(fd, 0);
  const auto& s = st(Transport::kUnixStream);
  const uint64_t linger_reads = s.linger_reads.load();
  const auto lingering = std::chrono::steady_clock::now();
  for (uint64_t i = 1; i <= 4; ++i)
    write_all(fd, msg(i));
  const bool written_while_lingering = std::chrono::steady_clock::now() - lingering < 500ms;
  auto batches = take_batches(4);
  ASSERT_EQ(batches.size(), 1u);
  ASSERT_EQ(batches[0].size(), 4u);
  for (uint64_t i = 1; i <= 4; ++i)
    EXPECT_EQ(batches[0][i - 1].raw, msg(i));
  EXPECT_EQ(s.reads.load(), kRampReads + 1);
  // Read when the linger ended: the writes woke nothing (see the datagrams'
  // test above for a stall of this thread).
  if (written_while_lingering) {
    EXPECT_EQ(s.linger_reads.load(), linger_reads + 1);
  }
  // A close while the connection lingers is seen at its next read.
  ::close(fd);
  EXPECT_TRUE(wait_until([&] { return s.connections_open == 0; }));
  EXPECT_EQ(s.rejected_total(), 0u);
}

// Writes made while a connection lingers that fill its buffer many times over
// are read on, buffer after buffer, whole and in order.
TEST_F(IntakeReadDelayTest, MoreThanABufferWrittenDuringTheDelayIsReadWhole) {
  read_delay_ = 500ms;
  IntakeOptions o = only(Transport::kUnixStream);
  o.conn_buffer_bytes = 4096;
  int fd = start_with_a_lingering_stream(o);
  ASSERT_GE(fd, 0);
  const auto& s = st(Transport::kUnixStream);
  size_t bytes = 0;
  constexpr uint64_t kMessages = 200;
  for (uint64_t i = 1; i <= kMessages; ++i) {
    write_all(fd, msg(i));
    bytes += msg(i).size();
  }
  std::vector<Message> got = take(kMessages);
  ASSERT_EQ(got.size(), kMessages);
  for (uint64_t i = 1; i <= kMessages; ++i)
    EXPECT_EQ(got[i - 1].raw, msg(i)) << i;
  EXPECT_GE(s.reads.load(), kRampReads + bytes / o.conn_buffer_bytes);
  EXPECT_EQ(s.rejected_total(), 0u);
  ::close(fd);
  EXPECT_TRUE(wait_until([&] { return s.connections_open == 0; }));
}

// A stream connection lingers its own delay: with none for datagrams, each
// datagram is read at once while a connection's writes are read together.
TEST_F(IntakeReadDelayTest, StreamsAndDatagramsLingerEachTheirOwnDelay) {
  read_delay_ = 0us;
  IntakeOptions o = options();
  o.stream_read_delay = 1s;
  o.udp.clear();
  int fd = start_with_a_lingering_stream(o);
  ASSERT_GE(fd, 0);
  const auto& stream = st(Transport::kUnixStream);
  const auto& dgram = st(Transport::kUnixDgram);
  for (uint64_t i = 1; i <= 3; ++i)
    write_all(fd, msg(i));
  for (uint64_t i = 1; i <= 3; ++i) {
    send_dgram(opts_.unix_dgram, msg(100 + i));
    // Far below the stream's delay: no timer stands in between.
    ASSERT_TRUE(wait_until([&] { return dgram.accepted == i; }, 900ms)) << "datagram " << i;
  }
  EXPECT_EQ(dgram.reads.load(), 3u);
  ASSERT_TRUE(wait_until([&] { return stream.accepted == kRampReads + 3; }));
  EXPECT_EQ(stream.reads.load(), kRampReads + 1);
  ::close(fd);
}

// A connection lingers only as long as its sender can go on writing: a
// sender that writes without blocking (as emitters do) at 2,000 messages a
// second finds room for every write, where a linger of the whole delay (1 s)
// would fill its socket buffer (about 160 such writes) within 0.1 s. Its
// reads still take many messages each.
TEST_F(IntakeReadDelayTest, ALingeringConnectionLeavesItsSenderRoom) {
  read_delay_ = 1s;
  IntakeOptions o = only(Transport::kUnixStream);
  o.stream_linger_room = 0;  // half of the system's default send buffer
  start(o);
  int fd = connect_unix(opts_.unix_stream);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
  constexpr uint64_t kMessages = 1000;
  constexpr auto kInterval = 500us;
  std::vector<std::string> sent;
  uint64_t refused = 0;
  // The sender's pace, never faster: after a stall of its own (a busy
  // machine) it goes on from where it is rather than catching up in a burst,
  // whose rate the connection would rightly linger less for.
  auto next = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < kMessages; ++i) {
    std::this_thread::sleep_until(next);
    next = std::max(next, std::chrono::steady_clock::now()) + kInterval;
    const std::string m = msg(i);
    const ssize_t n = ::send(fd, m.data(), m.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN) {
      ++refused;  // dropped, as an emitter drops a write that would block
      continue;
    }
    ASSERT_EQ(n, static_cast<ssize_t>(m.size())) << "a partial write: " << n;
    sent.push_back(m);
  }
  // A stall of the receiving thread on a busy machine may cost a few.
  EXPECT_LE(refused, kMessages / 20);
  std::vector<Message> got = take(sent.size());
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i)
    ASSERT_EQ(got[i].raw, sent[i]) << i;
  const auto& s = st(Transport::kUnixStream);
  EXPECT_LE(s.reads.load(), kMessages / 4);
  // The sender's writes came while the connection lingered: read when each
  // linger ended, not by a wake-up of the socket (some, after a stall of the
  // sender, may be).
  EXPECT_GE(s.linger_reads.load() * 2, s.reads.load());
  ::close(fd);
}

// A sender that writes bursts further apart than the delay: once a linger
// has found nothing, a burst is not followed by a linger (which would only
// add a wake-up), so what the sender writes soon after it is read at once.
TEST_F(IntakeReadDelayTest, BurstsFurtherApartThanTheDelayAreReadAsTheyCome) {
  read_delay_ = 1s;
  IntakeOptions o = only(Transport::kUnixStream);
  int fd = start_with_a_lingering_stream(o);  // its last read lingers a second, in vain
  ASSERT_GE(fd, 0);
  const auto& s = st(Transport::kUnixStream);
  const uint64_t linger_reads = s.linger_reads.load();
  const auto ramped = std::chrono::steady_clock::now();
  std::this_thread::sleep_until(ramped + 1500ms);  // the sender's next burst
  std::string burst;
  for (uint64_t i = 0; i < 5; ++i)
    burst += msg(i);
  write_all(fd, burst);
  ASSERT_EQ(take(5).size(), 5u);
  // And a message soon after it.
  std::this_thread::sleep_until(std::chrono::steady_clock::now() + 100ms);
  const auto written = std::chrono::steady_clock::now();
  write_all(fd, msg(5));
  ASSERT_EQ(take(1).size(), 1u);
  // A linger after the burst would have held it until a second after the burst.
  EXPECT_LT(std::chrono::steady_clock::now() - written, 500ms);
  // After the linger that found nothing the socket was watched: both were
  // read when they came, woken by the socket, the second with no linger
  // before it.
  EXPECT_EQ(s.reads.load(), kRampReads + 2);
  EXPECT_EQ(s.linger_reads.load(), linger_reads);
  ::close(fd);
}

// Datagrams that came together leave the next linger room for as many: a
// read on waking that found three on a Unix datagram socket (which queues 11
// by default; a linger waits for at most half) means that a linger could not
// take a burst like it with what arrives meanwhile, so the next datagram is
// read as it comes.
TEST_F(IntakeReadDelayTest, ADatagramBurstLeavesRoomForTheNext) {
  read_delay_ = 1s;
  IntakeOptions o = only(std::nullopt);
  // A bound socket adopted by the intake: the burst waits in it before the
  // first read.
  const std::string path = dir_ + "/adopted.dgram.sock";
  int dfd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  auto a = unix_addr(path);
  ASSERT_EQ(::bind(dfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  for (uint64_t i = 0; i < 3; ++i)
    send_dgram(path, msg(i));
  o.dgram_fd = dfd;
  start(o);
  const auto& s = st(Transport::kUnixDgram);
  ASSERT_TRUE(wait_until([&] { return s.accepted == 3; }));
  EXPECT_EQ(s.reads.load(), 1u);
  send_dgram(path, msg(3));
  // Far below the delay: no timer stands in between.
  ASSERT_TRUE(wait_until([&] { return s.accepted == 4; }, 900ms));
  EXPECT_EQ(s.reads.load(), 2u);
}

// How fast a new connection's sender writes is not known: its first read
// does not linger, and what follows at once is read as it comes.
TEST_F(IntakeReadDelayTest, AConnectionsFirstReadDoesNotLinger) {
  read_delay_ = 60s;
  IntakeOptions o = only(Transport::kUnixStream);
  start(o);
  int fd = connect_unix(opts_.unix_stream);
  ASSERT_GE(fd, 0);
  const auto& s = st(Transport::kUnixStream);
  write_all(fd, msg(0));
  ASSERT_TRUE(wait_until([&] { return s.accepted == 1; }));
  write_all(fd, msg(1));
  // Far below the delay: no timer stands in between.
  ASSERT_TRUE(wait_until([&] { return s.accepted == 2; }, 10s));
  EXPECT_EQ(s.reads.load(), 2u);
  ::close(fd);
}

// Stopping while sockets linger (released from the reactor) closes them all.
TEST_F(IntakeReadDelayTest, StopWhileLingeringClosesEverySocket) {
  read_delay_ = 60s;
  const size_t before = open_sockets();
  int fd = start_with_a_lingering_stream(options());  // it lingers for seconds now
  ASSERT_GE(fd, 0);
  send_dgram(opts_.unix_dgram, msg(1));
  send_udp(intake_->udp_port(), msg(2));
  ASSERT_EQ(take(2).size(), 2u);  // the datagram sockets now linger for a minute
  const auto start_stop = std::chrono::steady_clock::now();
  stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start_stop, 30s);
  // The agent's end of the connection is closed: the client reads EOF.
  char c;
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  EXPECT_EQ(::recv(fd, &c, 1, 0), 0);
  ::close(fd);
  intake_.reset();
  EXPECT_EQ(open_sockets(), before);
}

// The stream linger rule alone (detail::stream_linger()).

constexpr std::chrono::nanoseconds kMaxLinger = 50ms;
constexpr size_t kRoom = 100'000;

// How much of the sender's buffer a linger lets it fill at `rate` (buffer
// bytes per ns).
double filled(std::chrono::nanoseconds linger, double rate) {
  return rate * static_cast<double>(linger.count());
}

TEST(StreamLingerTest, LastsUntilTheSenderCouldFillTheRoom) {
  // 10 messages of 450 bytes in 5 ms: 2,000 a second.
  double peak = 0;
  const int64_t elapsed = 5'000'000;
  const auto linger = detail::stream_linger(4500, 10, elapsed, kMaxLinger, kRoom, &peak);
  const double rate = detail::stream_send_weight(4500, 10) / static_cast<double>(elapsed);
  EXPECT_GT(linger, 1ms);
  EXPECT_LT(linger, kMaxLinger);
  EXPECT_NEAR(filled(linger, rate), static_cast<double>(kRoom), 1.0);
  EXPECT_DOUBLE_EQ(peak, rate);
  // The same messages twice as fast: half as long.
  double peak2 = 0;
  const auto faster = detail::stream_linger(4500, 10, elapsed / 2, kMaxLinger, kRoom, &peak2);
  EXPECT_NEAR(static_cast<double>(faster.count()), static_cast<double>(linger.count()) / 2, 2.0);
}

TEST(StreamLingerTest, AWriteWeighsAboutWhatTheKernelCharges) {
  // A 450-byte write takes 1,280 bytes of its sender's buffer, a 2,000-byte
  // one 4,352 (measured on Linux 6.x): never counted as less.
  EXPECT_GE(detail::stream_send_weight(450, 1), 1280);
  EXPECT_GE(detail::stream_send_weight(2000, 1), 4352);
  EXPECT_GE(detail::stream_send_weight(100, 1), 766);
  // Bytes without a whole message still count as one write.
  EXPECT_EQ(detail::stream_send_weight(300, 0), detail::stream_send_weight(300, 1));
}

TEST(StreamLingerTest, IsBoundedByTheDelay) {
  double peak = 0;
  // One message in 60 ms: the room would last minutes.
  EXPECT_EQ(detail::stream_linger(450, 1, 60'000'000, kMaxLinger, kRoom, &peak), kMaxLinger);
  EXPECT_EQ(detail::stream_linger(450, 1, 60'000'000, 0ms, kRoom, &peak),
            std::chrono::nanoseconds{});
}

TEST(StreamLingerTest, NoneAfterAQuietSpell) {
  double peak = 1.0;
  // Longer than two lingers since the previous read: the rate is unknown.
  EXPECT_EQ(detail::stream_linger(450, 1, 2 * kMaxLinger.count() + 1, kMaxLinger, kRoom, &peak),
            std::chrono::nanoseconds{});
  EXPECT_EQ(peak, 0.0);
  EXPECT_EQ(detail::stream_linger(450, 1, 2 * kMaxLinger.count(), kMaxLinger, kRoom, &peak),
            kMaxLinger);
}

// After a linger that found nothing, a read that came more than a linger
// after the one before does not linger: the sender writes in bursts further
// apart than a linger can wait. Closer reads still do.
TEST(StreamLingerTest, NoneAfterALingerThatFoundNothingForBurstsFurtherApart) {
  double peak = 0;
  const int64_t apart = kMaxLinger.count() + 1;
  EXPECT_EQ(detail::stream_linger(2000, 5, apart, kMaxLinger, kRoom, &peak, true),
            std::chrono::nanoseconds{});
  EXPECT_GT(peak, 0.0);  // the rate is known, and kept
  EXPECT_EQ(detail::stream_linger(2000, 5, apart, kMaxLinger, kRoom, &peak, false), kMaxLinger);
  EXPECT_EQ(detail::stream_linger(2000, 5, kMaxLinger.count(), kMaxLinger, kRoom, &peak, true),
            kMaxLinger);
}

TEST(StreamLingerTest, NoneWhenTheRoomFillsAtOnce) {
  double peak = 0;
  // 60 KB in 10 us: the room would fill in about 8 us.
  EXPECT_EQ(detail::stream_linger(60'000, 130, 10'000, kMaxLinger, kRoom, &peak),
            std::chrono::nanoseconds{});
}

// A sender that paused during one linger and catches up in the next: the
// linger after the slow interval follows the rate seen before it, which
// fades by half each second (detail::kPeakHalfLifeNs).
TEST(StreamLingerTest, KeepsTheFastestRecentRate) {
  double peak = 0;
  const int64_t interval = 10'000'000;  // 10 ms between reads
  detail::stream_linger(45'000, 100, interval, kMaxLinger, kRoom, &peak);
  const double fast_rate = peak;
  const auto after_pause = detail::stream_linger(4500, 10, interval, kMaxLinger, kRoom, &peak);
  const double faded =
      fast_rate * std::exp2(-static_cast<double>(interval) / detail::kPeakHalfLifeNs);
  EXPECT_NEAR(peak, faded, faded * 1e-9);
  EXPECT_NEAR(filled(after_pause, peak), static_cast<double>(kRoom), 1.0);
  double alone = 0;
  EXPECT_GT(detail::stream_linger(4500, 10, interval, kMaxLinger, kRoom, &alone), after_pause);
  // Slow reads for five half-lives: the linger grows back to what the slow
  // rate allows (the fast one, ten times as high, has faded below it).
  std::chrono::nanoseconds last{};
  for (int i = 0; i < 500; ++i)
    last = detail::stream_linger(4500, 10, interval, kMaxLinger, kRoom, &peak);
  EXPECT_EQ(peak, alone);
  EXPECT_EQ(last, detail::stream_linger(4500, 10, interval, kMaxLinger, kRoom, &alone));
}

// A connection's lingers start short and at most double.
TEST(StreamLingerTest, GrowsFromAShortFirstLinger) {
  using detail::kFirstStreamLinger;
  EXPECT_EQ(detail::ramp_stream_linger(kMaxLinger, std::chrono::nanoseconds{}), kFirstStreamLinger);
  EXPECT_EQ(detail::ramp_stream_linger(kMaxLinger, 3ms), 6ms);
  EXPECT_EQ(detail::ramp_stream_linger(5ms, 3ms), 5ms);
  EXPECT_EQ(detail::ramp_stream_linger(std::chrono::nanoseconds{}, 3ms),
            std::chrono::nanoseconds{});
  // From none to the bound of 50 ms in seven lingers: 1, 2, 4, ... 32, 50 ms.
  std::chrono::nanoseconds linger{};
  int steps = 0;
  for (; linger < kMaxLinger; ++steps)
    linger = detail::ramp_stream_linger(kMaxLinger, linger);
  EXPECT_EQ(steps, 7);
}

// The datagram linger rule alone (detail::datagram_linger()).

TEST(DatagramLingerTest, WaitsForTheTargetAtTheRateJustSeen) {
  // One datagram 2 ms after the previous read; 5 may wait: 10 ms, capped.
  EXPECT_EQ(detail::datagram_linger(1, 2'000'000, 50ms, 5, 0), 10ms);
  EXPECT_EQ(detail::datagram_linger(1, 2'000'000, 4ms, 5, 0), 4ms);
  EXPECT_EQ(detail::datagram_linger(1, 2'000'000, 0ms, 5, 0), std::chrono::nanoseconds{});
  // A read that got the target: datagrams come fast.
  EXPECT_EQ(detail::datagram_linger(5, 2'000'000, 50ms, 5, 0), std::chrono::nanoseconds{});
  // Nothing read: nothing to measure (the socket waits for readiness).
  EXPECT_EQ(detail::datagram_linger(0, 2'000'000, 50ms, 5, 0), std::chrono::nanoseconds{});
}

TEST(DatagramLingerTest, LeavesRoomForTheLargestBurst) {
  // Bursts of 2: only 3 of the 5 may arrive during the linger.
  EXPECT_EQ(detail::datagram_linger(1, 2'000'000, 50ms, 5, 2), 6ms);
  // A read of 3 (the target less the burst): none.
  EXPECT_EQ(detail::datagram_linger(3, 2'000'000, 50ms, 5, 2), std::chrono::nanoseconds{});
  // Bursts that fill the target leave no linger at all.
  EXPECT_EQ(detail::datagram_linger(1, 2'000'000, 50ms, 5, 5), std::chrono::nanoseconds{});
  EXPECT_EQ(detail::datagram_linger(1, 2'000'000, 50ms, 5, 9), std::chrono::nanoseconds{});
}

TEST(DatagramLingerTest, NoneShorterThanAWakeUpIsWorth) {
  EXPECT_EQ(detail::datagram_linger(1, 10'000, 50ms, 5, 0), std::chrono::nanoseconds{});
  EXPECT_EQ(detail::datagram_linger(1, 20'000, 50ms, 5, 0), detail::kMinLinger);
}

}  // namespace
}  // namespace sidetrace::ipc
