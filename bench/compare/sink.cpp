// Loopback HTTP upstream of the side-by-side benchmark.
//
//   compare_sink --ports-file FILE
//
// Listens on two loopback ports chosen by the kernel and written to FILE as
// "<data port> <control port>\n".
//
// Data port: accepts POSTs of any path (keep-alive, a thread per connection),
// inflates gzip bodies (Content-Encoding: gzip), and counts the messages they
// hold, both for sidetrace's native format ({"traces":[doc,...]}) and for one
// JSON message per line (syslog-ng). Each message is identified by the ids the
// load generator gave it (see loadgen.cpp): `"trace_id":"` sets the trace, a
// `"conversation_id":"` counts the trace context, an event `"id":"` counts that
// event, a `"target_id":"` counts the trace's feedback. Every request gets
// 200 {}.
//
// Control port (curl-friendly):
//   GET  /stats  {"requests":..,"bytes":..,"events":..,"unique":..,"duplicates":..,
//                 "last_unique_ns":..,"up":true}
//   POST /down   closes the data listener and every data connection: clients see
//                connection refused until /up
//   POST /up     listens again on the same data port
//   POST /reset  forgets every message counted so far
//   POST /quit   exits
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

constexpr size_t kBodyLimit = 512u << 20;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Counts of every message seen, by key (trace number * 8 + slot).
class Tally {
 public:
  void add(const std::vector<uint64_t>& keys, size_t bytes) {
    std::lock_guard lock(mu_);
    ++requests_;
    bytes_ += bytes;
    bool fresh = false;
    for (uint64_t k : keys) {
      if (k >= seen_.size()) seen_.resize(std::max<size_t>(k + 1, seen_.size() * 2), 0);
      ++events_;
      if (seen_[k]) {
        ++duplicates_;
      } else {
        seen_[k] = 1;
        ++unique_;
        fresh = true;
      }
    }
    if (fresh) last_unique_ns_ = now_ns();
  }
  void reset() {
    std::lock_guard lock(mu_);
    seen_.assign(seen_.size(), 0);
    requests_ = bytes_ = events_ = unique_ = duplicates_ = 0;
    last_unique_ns_ = 0;
  }
  std::string json(bool up) {
    std::lock_guard lock(mu_);
    return fmt::format(
        "{{\"requests\":{},\"bytes\":{},\"events\":{},\"unique\":{},\"duplicates\":{},"
        "\"last_unique_ns\":{},\"now_ns\":{},\"up\":{}}}",
        requests_, bytes_, events_, unique_, duplicates_, last_unique_ns_, now_ns(), up);
  }

 private:
  std::mutex mu_;
  std::vector<uint8_t> seen_;
  uint64_t requests_ = 0, bytes_ = 0, events_ = 0, unique_ = 0, duplicates_ = 0;
  int64_t last_unique_ns_ = 0;
};

bool parse_hex16(std::string_view s, size_t pos, uint64_t* out) {
  if (pos + 17 > s.size() || s[pos + 16] != '"') return false;
  uint64_t v = 0;
  for (size_t i = 0; i < 16; ++i) {
    char c = s[pos + i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = v << 4 | static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

bool ends_with_at(std::string_view s, size_t end, std::string_view what) {
  return end >= what.size() && s.substr(end - what.size(), what.size()) == what;
}

// Every `id":"` occurrence is classified by the key it ends.
void scan(std::string_view body, std::vector<uint64_t>* keys) {
  constexpr std::string_view kTail = "id\":\"";
  uint64_t trace = 0;
  bool have_trace = false;
  for (size_t p = body.find(kTail); p != std::string_view::npos; p = body.find(kTail, p + 1)) {
    size_t value = p + kTail.size();
    if (ends_with_at(body, p, "\"trace_")) {
      // 32 hex digits: the last 16 are the trace number.
      have_trace = parse_hex16(body, value + 16, &trace);
    } else if (!have_trace) {
      continue;
    } else if (ends_with_at(body, p, "\"conversation_")) {
      keys->push_back(trace * 8);
    } else if (ends_with_at(body, p, "\"target_")) {
      keys->push_back(trace * 8 + 5);
    } else if (ends_with_at(body, p, "\"") && !ends_with_at(body, p, "\"user\":{\"")) {
      uint64_t id;
      if (parse_hex16(body, value, &id)) keys->push_back(id);
    }
  }
}

bool gunzip(std::string_view in, std::string* out) {
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return false;
  out->clear();
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    size_t have = out->size();
    out->resize(have + std::max<size_t>(in.size() * 4, 1 << 16));
    z.next_out = reinterpret_cast<Bytef*>(out->data() + have);
    z.avail_out = static_cast<uInt>(out->size() - have);
    rc = inflate(&z, Z_NO_FLUSH);
    out->resize(out->size() - z.avail_out);
    if (rc != Z_OK && rc != Z_STREAM_END) break;
    if (out->size() > kBodyLimit * 8) break;
  }
  inflateEnd(&z);
  return rc == Z_STREAM_END;
}

int listen_on(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 1024) != 0) {
    std::fprintf(stderr, "compare_sink: bind/listen port %u: %s\n", port, std::strerror(errno));
    std::exit(1);
  }
  return fd;
}

uint16_t port_of(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

class Sink {
 public:
  Sink() {
    data_fd_ = listen_on(0);
    data_port_ = port_of(data_fd_);
    control_fd_ = listen_on(0);
    control_port_ = port_of(control_fd_);
    acceptor_ = std::thread([this, fd = data_fd_] { accept_loop(fd); });
  }

  uint16_t data_port() const { return data_port_; }
  uint16_t control_port() const { return control_port_; }

  // Serves the control port until /quit.
  void run_control() {
    for (;;) {
      int c = ::accept4(control_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      net::io_context io;
      tcp::socket sock(io);
      sock.assign(tcp::v4(), c);
      beast::flat_buffer buf;
      http::request<http::string_body> req;
      beast::error_code ec;
      http::read(sock, buf, req, ec);
      if (ec) continue;
      std::string target(req.target());
      std::string body;
      bool quit = false;
      if (target == "/down") {
        down();
      } else if (target == "/up") {
        up();
      } else if (target == "/reset") {
        tally_.reset();
      } else if (target == "/quit") {
        quit = true;
      }
      body = tally_.json(is_up());
      http::response<http::string_body> res{http::status::ok, req.version()};
      res.set(http::field::content_type, "application/json");
      res.keep_alive(false);
      res.body() = body + "\n";
      res.prepare_payload();
      http::write(sock, res, ec);
      sock.shutdown(tcp::socket::shutdown_both, ec);
      if (quit) {
        down();
        return;
      }
    }
  }

 private:
  bool is_up() {
    std::lock_guard lock(mu_);
    return data_fd_ >= 0;
  }

  void down() {
    std::thread old;
    {
      std::lock_guard lock(mu_);
      if (data_fd_ < 0) return;
      ::shutdown(data_fd_, SHUT_RDWR);  // wakes accept()
      for (int c : conns_)
        ::shutdown(c, SHUT_RDWR);
      old = std::move(acceptor_);
    }
    old.join();
    std::lock_guard lock(mu_);
    ::close(data_fd_);
    data_fd_ = -1;
  }

  void up() {
    std::lock_guard lock(mu_);
    if (data_fd_ >= 0) return;
    data_fd_ = listen_on(data_port_);
    acceptor_ = std::thread([this, fd = data_fd_] { accept_loop(fd); });
  }

  void accept_loop(int fd) {
    for (;;) {
      int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // the listener was shut down
      }
      std::lock_guard lock(mu_);
      if (data_fd_ != fd) {
        ::close(c);
        continue;
      }
      conns_.insert(c);
      std::thread([this, c] { serve(c); }).detach();
    }
  }

  void serve(int c) {
    net::io_context io;
    tcp::socket sock(io);
    sock.assign(tcp::v4(), c);
    beast::flat_buffer buf;
    std::string inflated;
    std::vector<uint64_t> keys;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(kBodyLimit);
      beast::error_code ec;
      http::read(sock, buf, parser, ec);
      if (ec) break;
      http::request<http::string_body>& req = parser.get();
      std::string_view body = req.body();
      if (req[http::field::content_encoding] == "gzip") {
        if (!gunzip(body, &inflated)) {
          std::fprintf(stderr, "compare_sink: bad gzip body\n");
          break;
        }
        body = inflated;
      }
      keys.clear();
      scan(body, &keys);
      tally_.add(keys, req.body().size());
      http::response<http::string_body> res{http::status::ok, req.version()};
      res.set(http::field::content_type, "application/json");
      res.keep_alive(req.keep_alive());
      res.body() = "{}";
      res.prepare_payload();
      http::write(sock, res, ec);
      if (ec || !req.keep_alive()) break;
    }
    std::lock_guard lock(mu_);
    conns_.erase(c);
    beast::error_code ignored;
    sock.close(ignored);
  }

  std::mutex mu_;
  int data_fd_ = -1;
  uint16_t data_port_ = 0;
  int control_fd_ = -1;
  uint16_t control_port_ = 0;
  std::set<int> conns_;
  std::thread acceptor_;
  Tally tally_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || std::string_view(argv[1]) != "--ports-file") {
    std::fprintf(stderr, "usage: compare_sink --ports-file FILE\n");
    return 2;
  }
  Sink sink;
  {
    std::string tmp = std::string(argv[2]) + ".tmp";
    std::ofstream(tmp) << sink.data_port() << ' ' << sink.control_port() << '\n';
    std::rename(tmp.c_str(), argv[2]);
  }
  sink.run_control();
  // Connection threads are detached and may still be reading: leave at once.
  std::fflush(nullptr);
  std::_Exit(0);
}
