// The OTLP/HTTP receiver against real sockets on loopback, a real writer and
// a real store in a temporary directory: every answer the specification
// defines, and that a 200 comes only once the spans are in the store.
#include "ipc/otlp_http.h"
#include "ipc/otlp_map.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <future>
#include <optional>
#include <thread>

#include "buffer/store.h"
#include "buffer/testing/fault_env.h"
#include "buffer/testing/held_transform.h"
#include "buffer/testing/temp_dir.h"
#include "buffer/writer.h"
#include "common/wait_until.h"
#include "otlp/proto/status.pb.h"
#include "otlp/proto/trace_service.pb.h"

namespace sidetrace::ipc {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace pbt = opentelemetry::proto::trace::v1;
using tcp = asio::ip::tcp;
using ExportResponse = opentelemetry::proto::collector::trace::v1::ExportTraceServiceResponse;

constexpr uint64_t kStart = 1'700'000'000'000'000'000ull;

// Trace ids "<n>" padded to 32 hex digits; span ids to 16.
std::string trace_bytes(int n) {
  std::string b(16, '\0');
  b[15] = static_cast<char>(n);
  b[0] = 1;
  return b;
}
std::string trace_hex(int n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : trace_bytes(n)) {
    out += kHex[static_cast<uint8_t>(c) >> 4];
    out += kHex[static_cast<uint8_t>(c) & 15];
  }
  return out;
}

// `spans` spans of trace `trace`, the first one bad (a zero span id) when
// `bad_first` is set.
OtlpRequest spans_request(int trace, int spans, bool bad_first = false, size_t input_bytes = 16) {
  OtlpRequest req;
  auto* ss = req.add_resource_spans()->add_scope_spans();
  for (int i = 0; i < spans; ++i) {
    pbt::Span* s = ss->add_spans();
    s->set_trace_id(trace_bytes(trace));
    std::string id(8, '\0');
    id[7] = static_cast<char>(i + 1);
    if (bad_first && i == 0) id[7] = 0;
    s->set_span_id(id);
    s->set_name("step");
    s->set_start_time_unix_nano(kStart + static_cast<uint64_t>(i));
    s->set_end_time_unix_nano(kStart + static_cast<uint64_t>(i) + 1000);
    auto* kv = s->add_attributes();
    kv->set_key("input.value");
    kv->mutable_value()->set_string_value(std::string(input_bytes, 'x'));
  }
  return req;
}

std::string gzip(std::string_view in) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, static_cast<uLong>(in.size())) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

struct Reply {
  unsigned status = 0;
  std::string content_type;
  std::string retry_after;
  std::string connection;
  std::string body;
};

// A keep-alive HTTP/1.1 client on one connection.
class Client {
 public:
  explicit Client(uint16_t port, const std::string& address = "127.0.0.1") : stream_(io_) {
    stream_.expires_after(std::chrono::seconds(20));
    stream_.connect(tcp::endpoint(asio::ip::make_address(address), port));
  }

  // Headers of the next requests ("Host" replaces the default 127.0.0.1).
  std::vector<std::pair<std::string, std::string>> headers;

  // POSTs `body`; nullopt when the connection failed or closed first.
  std::optional<Reply> post(const std::string& body, const std::string& content_type,
                            const std::string& encoding = {},
                            const std::string& target = "/v1/traces",
                            http::verb verb = http::verb::post, bool expect_continue = false) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [name, value] : headers)
      req.set(name, value);
    if (!content_type.empty()) req.set(http::field::content_type, content_type);
    if (!encoding.empty()) req.set(http::field::content_encoding, encoding);
    if (expect_continue) req.set(http::field::expect, "100-continue");
    req.body() = body;
    req.prepare_payload();
    beast::error_code ec;
    stream_.expires_after(std::chrono::seconds(20));
    if (expect_continue) {
      http::request_serializer<http::string_body> sr(req);
      http::write_header(stream_, sr, ec);
      if (ec) return std::nullopt;
      http::response<http::empty_body> cont;
      http::read(stream_, buffer_, cont, ec);
      if (ec || cont.result() != http::status::continue_) return std::nullopt;
      http::write(stream_, sr, ec);
    } else {
      http::write(stream_, req, ec);
    }
    if (ec) return std::nullopt;
    http::response<http::string_body> res;
    http::read(stream_, buffer_, res, ec);
    if (ec) return std::nullopt;
    Reply r;
    r.status = res.result_int();
    r.content_type = std::string(res[http::field::content_type]);
    r.retry_after = std::string(res[http::field::retry_after]);
    r.connection = std::string(res[http::field::connection]);
    r.body = std::move(res.body());
    return r;
  }

  // Whether the server closed the connection (a read sees its end).
  bool closed_by_server() {
    stream_.expires_after(std::chrono::seconds(10));
    char c;
    beast::error_code ec;
    stream_.socket().read_some(asio::buffer(&c, 1), ec);
    return ec == asio::error::eof || ec == asio::error::connection_reset;
  }

 private:
  asio::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

std::optional<Reply> post_proto(uint16_t port, const OtlpRequest& req) {
  Client c(port);
  return c.post(req.SerializeAsString(), "application/x-protobuf");
}

google::rpc::Status status_of(const Reply& r) {
  google::rpc::Status st;
  EXPECT_TRUE(st.ParseFromString(r.body));
  return st;
}

// A receiver on a free loopback port in front of a real writer and store.
class OtlpHttpTest : public ::testing::Test {
 protected:
  void SetUp() override { store_opts.data_dir = dir.str(); }

  void TearDown() override {
    if (receiver) receiver->stop();
    stop_writer();
    work.reset();
    if (io_thread.joinable()) io_thread.join();
  }

  void start(OtlpHttpOptions o = {}, bool start_writer = true,
             const std::string& listen = "127.0.0.1:0") {
    ASSERT_TRUE(buffer::Store::open(store_opts, &store).ok());
    queue = std::make_unique<BoundedQueue<MessageBatch>>(queue_bytes);
    writer = std::make_unique<buffer::Writer>(*store, *queue, nullptr, system_clock(), writer_opts);
    if (start_writer) writer->start();
    o.listen = listen;
    receiver = OtlpHttpReceiver::create(io, o, *queue, system_clock());
    std::string err;
    ASSERT_FALSE(receiver->start(&err)) << err;
    port = receiver->port();
    ASSERT_NE(port, 0);
    io_thread = std::thread([this] { io.run(); });
  }

  void stop_writer() {
    if (writer) writer->stop();
  }

  // Messages the store holds for trace `n`.
  size_t stored(int n) {
    std::vector<buffer::StoredEvent> ev;
    EXPECT_TRUE(store->read_trace(trace_hex(n), &ev).ok());
    return ev.size();
  }

  buffer::testing::TempDir dir;
  buffer::StoreOptions store_opts;
  buffer::WriterOptions writer_opts;
  size_t queue_bytes = 8 << 20;
  std::unique_ptr<buffer::Store> store;
  std::unique_ptr<BoundedQueue<MessageBatch>> queue;
  std::unique_ptr<buffer::Writer> writer;
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{
      asio::make_work_guard(io)};
  std::thread io_thread;
  std::unique_ptr<OtlpHttpReceiver> receiver;
  uint16_t port = 0;
};

TEST_F(OtlpHttpTest, ProtobufSpansAreAcknowledgedOnlyOnceTheStoreHasThem) {
  buffer::testing::HeldTransform held;
  writer_opts.transform = held.transform();
  start();
  std::promise<std::optional<Reply>> answered;
  auto reply = answered.get_future();
  std::thread client([&] { answered.set_value(post_proto(port, spans_request(1, 3))); });
  // The writer holds the request's group before its commit: no answer yet.
  ASSERT_TRUE(held.wait_entered());
  EXPECT_EQ(receiver->waiting(), 1u);
  EXPECT_EQ(reply.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  EXPECT_EQ(stored(1), 0u);
  held.release();
  const auto r = reply.get();
  client.join();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(r->content_type, "application/x-protobuf");
  ExportResponse resp;
  ASSERT_TRUE(resp.ParseFromString(r->body));
  EXPECT_FALSE(resp.has_partial_success());
  // Answered: the three spans are in the store (fsync mode: synced).
  EXPECT_EQ(stored(1), 3u);
  const auto& st = receiver->stats();
  EXPECT_EQ(st.requests_of(OtlpOutcome::kOk), 1u);
  EXPECT_EQ(st.spans_received.load(), 3u);
  EXPECT_EQ(st.spans_stored.load(), 3u);
  EXPECT_EQ(st.bytes.load(), spans_request(1, 3).SerializeAsString().size());
  EXPECT_TRUE(wait_until([&] { return receiver->waiting() == 0; }));
  EXPECT_EQ(st.pending_bytes.load(), 0u);
}

TEST_F(OtlpHttpTest, GzipJsonIsAnsweredInJsonAndTheConnectionServesMoreRequests) {
  start();
  Client c(port);
  const std::string body = R"({"resourceSpans":[{"scopeSpans":[{"spans":[
      {"traceId":")" + trace_hex(2) +
                           R"(","spanId":"00000000000000a1","name":"one",
       "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000000001000"}]}]}]})";
  auto r = c.post(gzip(body), "application/json; charset=utf-8", "gzip");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(r->content_type, "application/json");
  EXPECT_EQ(r->body, "{}");
  EXPECT_EQ(stored(2), 1u);
  // The same connection, protobuf this time.
  r = c.post(spans_request(3, 2).SerializeAsString(), "application/x-protobuf");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(stored(3), 2u);
  EXPECT_EQ(receiver->stats().connections_total.load(), 1u);
}

TEST_F(OtlpHttpTest, SpansThatFailValidationAreReportedAsPartialSuccess) {
  start();
  Client c(port);
  auto r =
      c.post(spans_request(4, 3, /*bad_first=*/true).SerializeAsString(), "application/x-protobuf");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  ExportResponse resp;
  ASSERT_TRUE(resp.ParseFromString(r->body));
  EXPECT_EQ(resp.partial_success().rejected_spans(), 1);
  EXPECT_NE(resp.partial_success().error_message().find("span_id must be 8 bytes"),
            std::string::npos)
      << resp.partial_success().error_message();
  EXPECT_EQ(stored(4), 2u);
  // In JSON, the same.
  std::string json_body = R"({"resourceSpans":[{"scopeSpans":[{"spans":[
      {"traceId":")" + trace_hex(5) +
                          R"(","spanId":"0000000000000000","name":"bad"}]}]}]})";
  r = c.post(json_body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_NE(r->body.find(R"("rejectedSpans":"1")"), std::string::npos) << r->body;
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kPartial), 2u);
  EXPECT_EQ(receiver->stats().spans_rejected.load(), 2u);
}

TEST_F(OtlpHttpTest, BodiesThatDoNotDecodeAre400AndTheConnectionStaysUsable) {
  start();
  Client c(port);
  auto r = c.post("\xff\xff\xff\xff not protobuf", "application/x-protobuf");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400u);
  EXPECT_EQ(r->content_type, "application/x-protobuf");
  EXPECT_EQ(status_of(*r).code(), 3);
  EXPECT_FALSE(status_of(*r).message().empty());
  r = c.post("{oops", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400u);
  EXPECT_EQ(r->content_type, "application/json");
  EXPECT_NE(r->body.find("\"message\""), std::string::npos) << r->body;
  r = c.post("not gzip at all", "application/x-protobuf", "gzip");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400u);
  EXPECT_NE(status_of(*r).message().find("gzip"), std::string::npos);
  r = c.post(spans_request(6, 1).SerializeAsString(), "application/x-protobuf");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kBadRequest), 3u);
}

TEST_F(OtlpHttpTest, OtherContentTypesAndEncodingsAre415) {
  start();
  {
    Client c(port);
    auto r = c.post("hello", "text/plain");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 415u);
    EXPECT_NE(status_of(*r).message().find("text/plain"), std::string::npos);
    EXPECT_EQ(r->connection, "close");
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Client c(port);
    auto r = c.post(spans_request(7, 1).SerializeAsString(), "application/x-protobuf", "br");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 415u);
  }
  {
    Client c(port);
    auto r = c.post(spans_request(7, 1).SerializeAsString(), "");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 415u);
  }
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kUnsupported), 3u);
  EXPECT_EQ(stored(7), 0u);
}

TEST_F(OtlpHttpTest, OtherPathsAre404AndOtherMethods405) {
  start();
  {
    Client c(port);
    auto r =
        c.post(spans_request(8, 1).SerializeAsString(), "application/x-protobuf", {}, "/v1/logs");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404u);
  }
  {
    Client c(port);
    auto r = c.post({}, {}, {}, "/v1/traces", http::verb::get);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 405u);
  }
  {
    Client c(port);
    auto r = c.post(spans_request(8, 1).SerializeAsString(), "application/x-protobuf", {},
                    "/v1/traces?x=1");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200u) << "a query string is ignored";
  }
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kNotFound), 1u);
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kBadMethod), 1u);
}

TEST_F(OtlpHttpTest, BodiesAboveTheLimitAre413AsSentOrInflated) {
  OtlpHttpOptions o;
  o.max_body_bytes = 4096;
  start(o);
  const std::string big = spans_request(9, 1, false, 8000).SerializeAsString();
  {
    Client c(port);
    auto r = c.post(big, "application/x-protobuf");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413u);
    EXPECT_NE(status_of(*r).message().find("listen.otlp_max_body_bytes"), std::string::npos);
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    // Small when sent, too large inflated: the connection stays open.
    const std::string packed = gzip(big);
    ASSERT_LT(packed.size(), 4096u);
    Client c(port);
    auto r = c.post(packed, "application/x-protobuf", "gzip");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413u);
    r = c.post(spans_request(9, 1).SerializeAsString(), "application/x-protobuf");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200u);
  }
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kTooLarge), 2u);
  EXPECT_EQ(stored(9), 1u);
}

TEST_F(OtlpHttpTest, AFullIntakeQueueIs429WithRetryAfter) {
  queue_bytes = 1;
  OtlpHttpOptions o;
  o.queue_wait = std::chrono::milliseconds(50);
  start(o, /*start_writer=*/false);
  // The writer is not running: a batch already queued fills the queue.
  MessageBatch filler(1);
  filler[0].trace_id = "filler";
  ASSERT_TRUE(queue->try_push(filler, 1));
  auto r = post_proto(port, spans_request(10, 2));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429u);
  EXPECT_EQ(r->retry_after, "1");
  EXPECT_EQ(status_of(*r).code(), 8);
  const auto& st = receiver->stats();
  EXPECT_EQ(st.requests_of(OtlpOutcome::kBusy), 1u);
  EXPECT_EQ(st.spans_refused.load(), 2u);
  EXPECT_EQ(st.queue_waits.load(), 1u);
  EXPECT_TRUE(wait_until([&] { return receiver->waiting() == 0; }));
}

TEST_F(OtlpHttpTest, ARequestWaitingForRoomGetsInWhenTheQueueDrains) {
  queue_bytes = 1;
  OtlpHttpOptions o;
  o.queue_wait = std::chrono::seconds(20);
  start(o, /*start_writer=*/false);
  MessageBatch filler(1);
  filler[0].trace_id = "filler";
  ASSERT_TRUE(queue->try_push(filler, 1));
  std::promise<std::optional<Reply>> answered;
  auto reply = answered.get_future();
  std::thread client([&] { answered.set_value(post_proto(port, spans_request(12, 2))); });
  ASSERT_TRUE(wait_until([&] { return receiver->stats().queue_waits.load() == 1; }));
  writer->start();
  client.join();
  const auto r = reply.get();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(stored(12), 2u);
}

TEST_F(OtlpHttpTest, RequestsBeyondThePendingBoundsAre429) {
  buffer::testing::HeldTransform held;
  writer_opts.transform = held.transform();
  OtlpHttpOptions o;
  o.max_pending_requests = 1;
  start(o);
  std::promise<std::optional<Reply>> answered;
  auto reply = answered.get_future();
  std::thread client([&] { answered.set_value(post_proto(port, spans_request(13, 1))); });
  ASSERT_TRUE(held.wait_entered());
  auto r = post_proto(port, spans_request(14, 1));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429u);
  EXPECT_EQ(r->retry_after, "1");
  EXPECT_NE(status_of(*r).message().find("listen.otlp_max_pending_requests"), std::string::npos);
  held.release();
  client.join();
  ASSERT_TRUE(reply.get());
  EXPECT_EQ(stored(13), 1u);
  EXPECT_EQ(stored(14), 0u);
}

// What the messages of `req` weigh in the receiver's pending bytes.
size_t weight_of(const OtlpRequest& req) {
  OtlpMapped mapped;
  map_otlp_request(req, {}, 1, &mapped);
  return mapped.weight;
}

TEST_F(OtlpHttpTest, RequestsBeyondThePendingBytesAre429AndOneLargerThanAllOf413) {
  buffer::testing::HeldTransform held;
  writer_opts.transform = held.transform();
  OtlpHttpOptions o;
  const size_t one = weight_of(spans_request(15, 12));
  o.max_pending_bytes = one + one / 2;  // room for one such request, not two
  start(o);
  std::promise<std::optional<Reply>> answered;
  auto reply = answered.get_future();
  std::thread client([&] { answered.set_value(post_proto(port, spans_request(15, 12))); });
  ASSERT_TRUE(held.wait_entered());
  EXPECT_EQ(receiver->stats().pending_bytes.load(), one);
  // A second one does not fit beside it: later.
  auto r = post_proto(port, spans_request(16, 12));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429u);
  EXPECT_EQ(r->retry_after, "1");
  EXPECT_NE(status_of(*r).message().find("listen.otlp_max_pending_bytes"), std::string::npos);
  held.release();
  client.join();
  ASSERT_TRUE(reply.get());
  // Once the first is answered, the second gets in.
  r = post_proto(port, spans_request(16, 12));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  // One that would not fit even alone: never.
  ASSERT_TRUE(wait_until([&] { return receiver->stats().pending_bytes.load() == 0; }));
  r = post_proto(port, spans_request(17, 30));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413u);
  EXPECT_NE(status_of(*r).message().find("send smaller batches"), std::string::npos);
  EXPECT_EQ(stored(15), 12u);
  EXPECT_EQ(stored(16), 12u);
  EXPECT_EQ(stored(17), 0u);
  EXPECT_TRUE(wait_until([&] { return receiver->stats().pending_bytes.load() == 0; }));
}

TEST_F(OtlpHttpTest, SpansTheQuotaRefusesAre503WithRetryAfter) {
  store_opts.sync = buffer::SyncMode::kOs;
  store_opts.max_bytes = 20000;
  store_opts.when_full = buffer::WhenFull::kDropNewest;
  start();
  unsigned last = 0;
  int n = 0;
  // Fill the quota: the first requests are stored, then refused.
  for (; n < 100 && last != 503; ++n) {
    auto r = post_proto(port, spans_request(16, 4, false, 1000));
    ASSERT_TRUE(r);
    last = r->status;
    if (last == 503) {
      EXPECT_EQ(r->retry_after, "1");
      EXPECT_EQ(status_of(*r).code(), 14);
      EXPECT_NE(status_of(*r).message().find("full"), std::string::npos);
    } else {
      EXPECT_EQ(last, 200u);
    }
  }
  EXPECT_EQ(last, 503u);
  const auto& st = receiver->stats();
  EXPECT_EQ(st.requests_of(OtlpOutcome::kUnavailable), 1u);
  EXPECT_EQ(st.spans_stored.load(), static_cast<uint64_t>(4 * (n - 1)));
  EXPECT_EQ(stored(16), static_cast<size_t>(4 * (n - 1)));
}

TEST_F(OtlpHttpTest, SpansAFullDiskLosesAre503) {
  auto fs = std::make_shared<buffer::testing::NoSpaceFileSystem>();
  auto env = buffer::testing::make_env(fs);
  store_opts.env = env.get();
  writer_opts.resume_interval = std::chrono::milliseconds(1);
  start();
  fs->set_full(true);
  auto r = post_proto(port, spans_request(17, 2));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503u);
  EXPECT_NE(status_of(*r).message().find("disk"), std::string::npos);
  fs->set_full(false);
  // Once the store resumes, the client's retry is stored.
  ASSERT_TRUE(wait_until([&] {
    auto again = post_proto(port, spans_request(17, 2));
    return again && again->status == 200;
  }));
  EXPECT_EQ(stored(17), 2u);
  receiver->stop();
  stop_writer();
  store.reset();
}

TEST_F(OtlpHttpTest, ExpectContinueIsAnswered) {
  start();
  Client c(port);
  auto r = c.post(spans_request(18, 1).SerializeAsString(), "application/x-protobuf", {},
                  "/v1/traces", http::verb::post, /*expect_continue=*/true);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(stored(18), 1u);
}

TEST_F(OtlpHttpTest, StopAcceptingStillAnswersARequestWaitingForTheStore) {
  buffer::testing::HeldTransform held;
  writer_opts.transform = held.transform();
  start();
  Client idle(port);
  ASSERT_TRUE(wait_until([&] { return receiver->stats().connections_open.load() == 1; }));
  std::promise<std::optional<Reply>> answered;
  auto reply = answered.get_future();
  std::thread client([&] { answered.set_value(post_proto(port, spans_request(19, 2))); });
  ASSERT_TRUE(held.wait_entered());
  asio::post(io, [&] { receiver->stop_accepting(); });
  // The idle connection is closed; the waiting request is not.
  EXPECT_TRUE(idle.closed_by_server());
  EXPECT_EQ(receiver->waiting(), 1u);
  held.release();
  client.join();
  const auto r = reply.get();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(r->connection, "close") << "the receiver is stopping";
  EXPECT_EQ(stored(19), 2u);
  EXPECT_TRUE(wait_until([&] { return receiver->waiting() == 0; }));
  // No new connections.
  asio::io_context cio;
  tcp::socket s(cio);
  beast::error_code ec;
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
  EXPECT_TRUE(ec) << "connected after stop_accepting()";
}

TEST_F(OtlpHttpTest, ConnectionsBeyondTheBoundAreClosed) {
  OtlpHttpOptions o;
  o.max_connections = 1;
  start(o);
  Client first(port);
  ASSERT_TRUE(wait_until([&] { return receiver->stats().connections_open.load() == 1; }));
  Client second(port);
  EXPECT_TRUE(second.closed_by_server());
  EXPECT_EQ(receiver->stats().connections_refused.load(), 1u);
  auto r = first.post(spans_request(20, 1).SerializeAsString(), "application/x-protobuf");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
}

// The answer to one request with `headers` on a new connection to `address`,
// and whether the server closed the connection after it.
struct Answer {
  std::optional<Reply> reply;
  bool closed = false;
};
Answer post_with(uint16_t port, int trace, std::vector<std::pair<std::string, std::string>> headers,
                 const std::string& address = "127.0.0.1") {
  Client c(port, address);
  c.headers = std::move(headers);
  Answer a;
  a.reply = c.post(spans_request(trace, 1).SerializeAsString(), "application/x-protobuf");
  if (a.reply && a.reply->status != 200) a.closed = c.closed_by_server();
  return a;
}

TEST_F(OtlpHttpTest, AHostThatIsNotThisAgentsIs421AndNothingIsStored) {
  start();
  // What a page reached through DNS rebinding sends.
  for (const char* host : {"evil.example.com:4318", "evil.example.com", "192.0.2.77:4318",
                           "localhost.evil.example.com", "[fd00::1]:4318"}) {
    Answer a = post_with(port, 30, {{"Host", host}});
    ASSERT_TRUE(a.reply) << host;
    EXPECT_EQ(a.reply->status, 421u) << host;
    EXPECT_TRUE(a.closed) << host;
    EXPECT_EQ(status_of(*a.reply).code(), 7) << host;  // PERMISSION_DENIED
    EXPECT_NE(status_of(*a.reply).message().find("listen.otlp_allowed_hosts"), std::string::npos);
  }
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kMisdirected), 5u);
  EXPECT_EQ(receiver->stats().spans_received.load(), 0u);
  EXPECT_EQ(stored(30), 0u);

  // Loopback names and addresses are this agent.
  int trace = 31;
  for (const std::string& host :
       {std::string("localhost:4318"), std::string("LocalHost."), std::string("app.localhost"),
        "127.0.0.1:" + std::to_string(port), std::string("127.0.0.2"), std::string("[::1]:4318")}) {
    Answer a = post_with(port, trace, {{"Host", host}});
    ASSERT_TRUE(a.reply) << host;
    EXPECT_EQ(a.reply->status, 200u) << host;
    EXPECT_EQ(stored(trace), 1u) << host;
    ++trace;
  }
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kMisdirected), 5u);
}

TEST_F(OtlpHttpTest, TheAllowedHostsAreAccepted) {
  OtlpHttpOptions o;
  o.allowed_hosts = {"sidetrace", ".svc.example", "Agent.Example."};
  start(o);
  int trace = 40;
  for (const char* host :
       {"sidetrace:4318", "SIDETRACE", "svc.example", "otlp.svc.example:4318", "agent.example"}) {
    Answer a = post_with(port, trace, {{"Host", host}});
    ASSERT_TRUE(a.reply) << host;
    EXPECT_EQ(a.reply->status, 200u) << host;
    EXPECT_EQ(stored(trace), 1u) << host;
    ++trace;
  }
  for (const char* host : {"sidetrace.evil.example", "evilsvc.example", "other.example"}) {
    Answer a = post_with(port, 49, {{"Host", host}});
    ASSERT_TRUE(a.reply) << host;
    EXPECT_EQ(a.reply->status, 421u) << host;
  }
  EXPECT_EQ(stored(49), 0u);
}

// The first IPv4 address of this machine that is not loopback, if any.
std::optional<std::string> non_loopback_address() {
  asio::io_context io;
  beast::error_code ec;
  // A UDP "connection" picks the address a packet out would leave from.
  asio::ip::udp::socket probe(io);
  probe.open(asio::ip::udp::v4(), ec);
  if (!ec) probe.connect({asio::ip::make_address("192.0.2.1"), 9}, ec);
  if (ec) return std::nullopt;
  const auto local = probe.local_endpoint(ec);
  if (ec || local.address().is_loopback() || local.address().is_unspecified()) return std::nullopt;
  return local.address().to_string();
}

TEST_F(OtlpHttpTest, AListenerBeyondLoopbackAcceptsTheAddressARequestCameInOn) {
  const auto address = non_loopback_address();
  if (!address) GTEST_SKIP() << "this machine has no address beyond loopback";
  start({}, true, "0.0.0.0:0");
  Answer a = post_with(port, 50, {{"Host", *address + ":" + std::to_string(port)}}, *address);
  ASSERT_TRUE(a.reply);
  EXPECT_EQ(a.reply->status, 200u);
  EXPECT_EQ(stored(50), 1u);
  // Another address in the Host header is refused, whatever it came in on.
  a = post_with(port, 51, {{"Host", "198.51.100.7:4318"}}, *address);
  ASSERT_TRUE(a.reply);
  EXPECT_EQ(a.reply->status, 421u);
  EXPECT_EQ(stored(51), 0u);
}

TEST_F(OtlpHttpTest, RequestsFromWebPagesOnOtherSitesAre403) {
  start();
  const std::string self = "127.0.0.1:" + std::to_string(port);
  const std::vector<std::vector<std::pair<std::string, std::string>>> refused = {
      {{"Host", self}, {"Origin", "http://evil.example.com"}},
      {{"Host", self}, {"Origin", "null"}},
      {{"Host", self}, {"Origin", "http://localhost:3000"}},
      {{"Host", self}, {"Sec-Fetch-Site", "cross-site"}},
      {{"Host", self}, {"Sec-Fetch-Site", "same-site"}},
  };
  for (const auto& headers : refused) {
    Answer a = post_with(port, 60, headers);
    ASSERT_TRUE(a.reply) << headers[1].second;
    EXPECT_EQ(a.reply->status, 403u) << headers[1].second;
    EXPECT_TRUE(a.closed) << headers[1].second;
    EXPECT_EQ(status_of(*a.reply).code(), 7);
  }
  EXPECT_EQ(receiver->stats().requests_of(OtlpOutcome::kForbidden), refused.size());
  EXPECT_EQ(stored(60), 0u);
  // The page's own origin, and what exporters outside a browser send (no
  // Origin at all), are served.
  const std::vector<std::vector<std::pair<std::string, std::string>>> served = {
      {{"Host", self}, {"Origin", "http://" + self}},
      {{"Host", self}, {"Sec-Fetch-Site", "same-origin"}},
      {{"Host", self}, {"Sec-Fetch-Site", "none"}},
      {{"Host", self}, {"User-Agent", "OTel-OTLP-Exporter-JavaScript/1.26.0"}},
  };
  int trace = 61;
  for (const auto& headers : served) {
    Answer a = post_with(port, trace, headers);
    ASSERT_TRUE(a.reply) << headers[1].second;
    EXPECT_EQ(a.reply->status, 200u) << headers[1].second;
    EXPECT_EQ(stored(trace), 1u);
    ++trace;
  }
}

TEST_F(OtlpHttpTest, APortInUseIsAStartUpErrorThatSaysSo) {
  start();
  OtlpHttpOptions o;
  o.listen = "127.0.0.1:" + std::to_string(port);
  auto second = OtlpHttpReceiver::create(io, o, *queue, system_clock());
  std::string err;
  EXPECT_TRUE(second->start(&err));
  EXPECT_NE(err.find("cannot listen on 127.0.0.1:" + std::to_string(port)), std::string::npos)
      << err;
  EXPECT_NE(err.find("in use"), std::string::npos) << err;
  o.listen = "not an address";
  auto third = OtlpHttpReceiver::create(io, o, *queue, system_clock());
  EXPECT_TRUE(third->start(&err));
  EXPECT_NE(err.find("HOST:PORT"), std::string::npos) << err;
}

}  // namespace
}  // namespace sidetrace::ipc
