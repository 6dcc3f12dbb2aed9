// Event intake: receives protocol-v1 messages on a Unix stream socket, a Unix
// datagram socket and UDP, validates each one fully (ipc::decode_message) and
// hands the valid ones, in batches, to a bounded queue. See docs/protocol.md.
//
// Data path:
//  - Unix stream: one session per connection reads into a StreamSplitter; every
//    read yields at most one MessageBatch. A message over limits.max_message_bytes
//    is skipped (kTooLarge) and the connection keeps going; bytes that are not
//    msgpack close the connection (closed_garbage) after the messages before
//    them have been queued.
//  - Unix datagram and UDP: each datagram holds one or more whole messages;
//    datagrams are received in batches with recvmmsg() and every recvmmsg()
//    call yields at most one MessageBatch. A datagram larger than
//    max_datagram_bytes is truncated by the kernel and rejected as kTooLarge;
//    trailing bytes that are not a whole msgpack value are rejected as
//    kMalformed, the messages before them kept.
//
// Read delay (`read_delay`, 0 = off): a read that found only a few messages
// is not followed at once by a wait for readiness, which at an everyday load
// costs a wake-up of the receiving thread per message. The socket is released
// from the reactor instead (arrivals then wake nobody and wait in the kernel's
// buffer) and read again when a timer fires; a read that finds nothing goes
// back to waiting for readiness, so an idle socket costs nothing.
//  - datagrams: the linger follows a recvmmsg() that got fewer than half of
//    what the kernel can queue (half a batch, or for a Unix datagram socket
//    half of net.unix.max_dgram_qlen + 1). It lasts at most `read_delay`, and
//    at the rate just seen only as long as it takes that half, less the
//    largest burst lately found by a read on waking, to arrive, so that
//    senders are not made to wait for room (detail::datagram_linger()). Under
//    a sustained load reads fill and nothing lingers;
//  - a stream connection lingers after a read that did not fill its buffer,
//    at most `stream_read_delay`, and at the fastest rate lately seen only as
//    long as it takes its sender to fill half of its socket buffer
//    (`stream_linger_room`): a sender that finds that buffer full waits, or
//    drops what it writes (emitters write without blocking). The buffer (208
//    KiB by default) holds about 160 writes of 450 bytes or 48 of 2 KiB, so
//    at an everyday load a wake-up takes tens of messages instead of one,
//    while a fast sender is read at once. There is no linger after a
//    connection's first read, or after a quiet spell of more than two
//    lingers: a burst after silence is read as it comes; and the lingers
//    after it start at 1 ms and at most double from one to the next, so that
//    a sender that starts slowly and then speeds up finds room
//    (detail::stream_linger(), detail::ramp_stream_linger()). Nor, once a
//    linger has found nothing, after a read that came more than the delay
//    after the one before: the sender writes bursts further apart than a
//    linger can wait, and a linger would only add a wake-up to each.
// Messages are stamped (recv_ns) when read, so one may have waited up to the
// delay in the kernel's buffer before.
//
// Overflow of the output queue (weight = sum of Message::weight()):
//  - a datagram receiver keeps its batch and stops reading until the queue
//    takes it (retrying every `backpressure_retry`; each pause is counted in
//    backpressure_pauses). The socket's buffer then fills: the kernel refuses
//    further Unix datagrams (EAGAIN for a non-blocking sender, a wait for a
//    blocking one) and drops further UDP datagrams (kernel_drops). Reading
//    and validating datagrams that could not be kept would take CPU from the
//    writer that is behind. A batch still held at stop is counted in
//    queue_full_drops;
//  - a stream connection applies back-pressure: the session keeps its batch,
//    stops reading (the kernel socket buffer then fills and the sender's writes
//    block or fail with EAGAIN), and retries the push every
//    `backpressure_retry` until the queue takes it. Each pause is counted in
//    backpressure_pauses. Nothing from a stream is dropped, except a batch
//    still held when the intake stops (counted in queue_full_drops).
// Every refused message is counted per transport and reason, and logged at a
// limited rate with reason, transport and detail.
//
// Socket files: parent directories are created; an existing socket file is
// replaced only if nothing accepts a connection on it (a stale leftover); if a
// live process answers, or the path is not a socket, start() fails. The file
// gets `socket_mode` and is unlinked by stop() if it is still the one bound.
//
// Threading: handlers run on the io_context given at creation, which may be run
// by one or several threads (each connection and each socket has its own
// strand). stats() may be read from any thread at any time. start() and stop()
// must be called from a thread running the io_context or while no thread runs
// it. The queue and the clock must outlive the io_context's pending handlers.
#pragma once

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include "common/bounded_queue.h"
#include "common/clock.h"
#include "ipc/event.h"
#include "ipc/message.h"

namespace sidetrace::ipc {

// The documented UDP default: loopback only.
inline constexpr std::string_view kDefaultUdpAddress = "127.0.0.1:7717";

struct IntakeOptions {
  // Where to listen. An empty string disables the transport (unless the
  // matching *_fd is set).
  std::string unix_stream;      // socket file path
  std::string unix_dgram;       // socket file path
  std::string udp;              // "HOST:PORT", "[V6]:PORT"; port 0 picks a free port
  uint32_t socket_mode = 0660;  // permissions of the socket files
  int rcvbuf_bytes = 0;         // SO_RCVBUF of the datagram and UDP sockets; 0: system default
  DecodeLimits limits;
  size_t max_connections = 1024;         // further stream connections are closed and counted
  size_t conn_buffer_bytes = 64 * 1024;  // read size per stream connection; its buffer stays
                                         // below limits.max_message_bytes + this
  // What the partly received messages of all stream connections may hold
  // beyond their read buffers; a message that does not fit is dropped
  // (Reject::kNoMemory) and its connection goes on. 0: no bound beyond
  // max_connections x limits.max_message_bytes.
  size_t max_partial_bytes = 0;
  // A stream connection that sends nothing for this long is closed (counted in
  // closed_idle); 0: never. It is shut for reading first, so that whatever
  // the sender wrote before is still read and a later write fails at once.
  std::chrono::milliseconds idle_timeout{0};
  size_t max_datagram_bytes = 64 * 1024;  // largest datagram accepted whole
  size_t recv_batch = 64;                 // datagrams per recvmmsg() call
  std::chrono::milliseconds backpressure_retry{2};
  // The linger after a read that found only a few messages (see Read delay
  // above): `read_delay` for datagram sockets, `stream_read_delay` for stream
  // connections; 0 reads every arrival at once.
  std::chrono::microseconds read_delay{0};
  std::chrono::microseconds stream_read_delay{0};
  // What a lingering stream connection lets its sender queue in its socket
  // buffer, at most (bytes as the kernel counts them). 0: half of
  // net.core.wmem_default, a sender's buffer unless it set SO_SNDBUF.
  size_t stream_linger_room = 0;
  // Already-bound sockets to adopt instead of creating one (e.g. from systemd
  // socket activation): a listening AF_UNIX stream socket, a bound AF_UNIX
  // datagram socket, a bound UDP socket. -1: none. The intake takes ownership
  // and never unlinks an adopted socket's file.
  int stream_fd = -1;
  int dgram_fd = -1;
  int udp_fd = -1;
};

// Counters of one transport. Monotonic unless noted; relaxed atomics.
struct TransportStats {
  std::atomic<uint64_t> received{0};  // messages seen: accepted + rejected
  std::atomic<uint64_t> accepted{0};  // validated and queued
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Reject::kCount_)> rejected{};
  std::atomic<uint64_t> bytes{0};             // bytes read
  std::atomic<uint64_t> datagrams{0};         // datagrams read (datagram transports)
  std::atomic<uint64_t> reads{0};             // reads that returned data (recvmmsg() calls
                                              // with datagrams, stream reads)
  std::atomic<uint64_t> linger_reads{0};      // of those, made when a linger ended
  std::atomic<uint64_t> connections_open{0};  // gauge (stream)
  std::atomic<uint64_t> connections_total{0};
  std::atomic<uint64_t> connections_refused{0};  // over max_connections
  std::atomic<uint64_t> closed_garbage{0};       // closed for bytes that are not msgpack
  std::atomic<uint64_t> closed_idle{0};          // closed after listen.idle_timeout of silence
  std::atomic<uint64_t> queue_full_drops{0};     // valid messages dropped on a full queue
  std::atomic<uint64_t> backpressure_pauses{0};  // stream reads paused on a full queue
  std::atomic<uint64_t> kernel_drops{0};         // datagrams the kernel dropped (SO_RXQ_OVFL)
  std::atomic<uint64_t> read_errors{0};          // socket errors other than a normal close

  uint64_t rejected_of(Reject r) const {
    return rejected[static_cast<size_t>(r)].load(std::memory_order_relaxed);
  }
  uint64_t rejected_total() const {
    uint64_t n = 0;
    for (const auto& r : rejected)
      n += r.load(std::memory_order_relaxed);
    return n;
  }
};

struct IntakeStats {
  std::array<TransportStats, 3> transport;
  const TransportStats& of(Transport t) const { return transport[static_cast<size_t>(t)]; }
  TransportStats& of(Transport t) { return transport[static_cast<size_t>(t)]; }
};

class Intake {
 public:
  virtual ~Intake() = default;

  // Never throws; nothing is opened before start(). `out` and `clock` are
  // borrowed (see the threading note above).
  static std::unique_ptr<Intake> create(boost::asio::io_context& ioc, IntakeOptions options,
                                        BoundedQueue<MessageBatch>& out, const Clock& clock);

  // Opens every enabled transport and starts receiving. On failure nothing is
  // left open, and `err` (if given) names the transport and the cause.
  virtual std::error_code start(std::string* err) = 0;

  // Closes every socket and connection and unlinks the socket files this
  // intake created. Idempotent; also done by the destructor.
  virtual void stop() = 0;

  virtual const IntakeStats& stats() const = 0;

  // The bound UDP port (useful with port 0); 0 when UDP is off.
  virtual uint16_t udp_port() const = 0;
};

}  // namespace sidetrace::ipc
