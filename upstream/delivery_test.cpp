// Delivery against a real RocksDB store in a temp dir and a real HTTP(S)
// server on loopback.
#include <gtest/gtest.h>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "buffer/store.h"
#include "common/clock.h"
#include "otlp/proto/status.pb.h"
#include "otlp/proto/trace_service.pb.h"
#include "upstream/detail/encode.h"
#include "upstream/detail/records.h"
#include "upstream/testing/counting_store.h"
#include "upstream/testing/http_server.h"
#include "upstream/testing/observed_store.h"
#include "upstream/testing/store_helpers.h"
#include "upstream/testing/thread_wakes.h"
#include "upstream/testing/tls_files.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {
namespace {

using nlohmann::json;
using testing::emit_doc;
using testing::HttpServer;
using testing::make_doc;
using testing::RecordedRequest;
using testing::Reply;
using testing::wait_until;

class UpstreamDeliveryTest : public ::testing::Test {
 protected:
  void SetUp() override { store_ = testing::open_store(dir_.str()); }

  Options options(const std::string& endpoint) {
    Options o;
    o.endpoint = endpoint;
    o.flush_interval_ms = 0;
    o.retry_initial_ms = 1;
    o.retry_max_ms = 5;
    o.retry_after_max_ms = 100;
    o.connect_timeout_ms = 2000;
    o.request_timeout_ms = 2000;
    o.auth_probe_interval_ms = 60000;
    return o;
  }

  bool drained() { return store_->outbox_entries() == 0; }

  // Trace ids of the documents in a native body.
  static std::vector<std::string> traces_in(const RecordedRequest& r) {
    std::vector<std::string> ids;
    json j = json::parse(r.decoded, nullptr, false);
    if (j.is_discarded()) return ids;
    for (auto& t : j["traces"])
      ids.push_back(t["trace_id"].get<std::string>() + "#" +
                    std::to_string(t["revision"].get<int>()));
    return ids;
  }

  buffer::testing::TempDir dir_;
  std::unique_ptr<buffer::Store> store_;
};

TEST_F(UpstreamDeliveryTest, GzipBodyIsTheNativeBodyAndHeadersAreSet) {
  HttpServer server;
  std::string d1 = make_doc("t1", 1), d2 = make_doc("t2", 1);
  emit_doc(*store_, "t1", d1);
  emit_doc(*store_, "t2", d2);
  Options o = options(server.url() + "/base/");
  o.headers = {{"X-Tenant", "acme"}};
  ::setenv("SIDETRACE_TEST_KEY", "sekrit\n", 1);
  o.api_key_env = "SIDETRACE_TEST_KEY";
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  d.stop();
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  const auto& r = reqs[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/base/v1/traces");
  EXPECT_EQ(r.header("content-encoding"), "gzip");
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("authorization"), "Bearer sekrit");
  EXPECT_EQ(r.header("x-tenant"), "acme");
  EXPECT_EQ(r.header("idempotency-key").size(), 32u);
  ASSERT_TRUE(r.decode_ok);
  EXPECT_EQ(r.decoded, "{\"traces\":[" + d1 + "," + d2 + "]}");
  Stats s = d.stats();
  EXPECT_EQ(s.batches_sent, 1u);
  EXPECT_EQ(s.traces_delivered, 2u);
  EXPECT_EQ(s.events_delivered, 4u);
  EXPECT_EQ(s.bytes_sent, r.body.size());
  EXPECT_EQ(s.latency_count, 2u);
  EXPECT_GE(s.seconds_since_success, 0.0);
  // Persisted batch records are gone once acked.
  std::vector<std::pair<std::string, std::string>> rows;
  ASSERT_TRUE(store_->meta_scan(detail::kBatchPrefix, 100, &rows).ok());
  EXPECT_TRUE(rows.empty());
}

TEST_F(UpstreamDeliveryTest, ZstdAndApiKeyHeaderFromFile) {
  HttpServer server;
  std::string d1 = make_doc("t1", 1);
  emit_doc(*store_, "t1", d1);
  Options o = options(server.url());
  o.compression = Compression::kZstd;
  std::string key_file = dir_.str() + "/key";
  std::ofstream(key_file) << "k-123\n";
  o.api_key_file = key_file;
  o.api_key_header = "X-Api-Key";
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto r = server.requests().at(0);
  EXPECT_EQ(r.header("content-encoding"), "zstd");
  EXPECT_EQ(r.header("x-api-key"), "k-123");
  EXPECT_EQ(r.header("authorization"), "");
  EXPECT_EQ(r.decoded, "{\"traces\":[" + d1 + "]}");
}

TEST_F(UpstreamDeliveryTest, UpstreamDownAtStartThenUp) {
  uint16_t port;
  {
    HttpServer probe;
    port = probe.port();
  }
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(*store_, *store_, options("http://127.0.0.1:" + std::to_string(port)));
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.stats().failed_retryable >= 3; }));
  EXPECT_FALSE(drained());
  HttpServer server(port);
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_EQ(d.stats().traces_delivered, 1u);
}

TEST_F(UpstreamDeliveryTest, Honours503RetryAfterWithTheSameKey) {
  HttpServer server;
  std::atomic<int> n{0};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (n++ == 0) {
      r.status = 503;
      r.headers = {{"Retry-After", "1"}};  // 1 s, capped to retry_after_max_ms = 100
    }
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_GE(reqs[1].at - reqs[0].at, std::chrono::milliseconds(95));
  EXPECT_EQ(reqs[0].header("idempotency-key"), reqs[1].header("idempotency-key"));
  EXPECT_EQ(d.stats().batches_retried, 1u);
}

TEST_F(UpstreamDeliveryTest, Retries429) {
  HttpServer server;
  std::atomic<int> n{0};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (n++ < 3) r.status = 429;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_EQ(server.request_count(), 4u);
  EXPECT_EQ(d.stats().failed_retryable, 3u);
}

TEST_F(UpstreamDeliveryTest, SlowUpstreamHitsTheDeadlineThenRecovers) {
  HttpServer server;
  std::atomic<int> n{0};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (n++ == 0) r.delay_ms = 1000;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Options o = options(server.url());
  o.request_timeout_ms = 50;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_GE(d.stats().failed_retryable, 1u);
  EXPECT_EQ(server.request_count(), 2u);
}

TEST_F(UpstreamDeliveryTest, ConnectionResetMidBodyIsRetried) {
  HttpServer server;
  std::atomic<int> n{0};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (n++ == 0) {
      r.action = Reply::Action::kResetMidBody;
      r.body = std::string(2000, 'z');
    } else if (n == 2) {
      r.action = Reply::Action::kCloseBeforeReply;
    }
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_GE(d.stats().failed_retryable, 2u);
  EXPECT_EQ(d.stats().traces_delivered, 1u);
}

TEST_F(UpstreamDeliveryTest, TooLargeSplitsInHalvesWithNewKeys) {
  HttpServer server;
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (traces_in(req).size() > 1) r.status = 413;
    return r;
  });
  for (int i = 0; i < 4; ++i)
    emit_doc(*store_, "t" + std::to_string(i), make_doc("t" + std::to_string(i), 1));
  Options o = options(server.url());
  o.max_in_flight = 1;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  // 4 -> 413, 2 -> 413, 1, 1, 2 -> 413, 1, 1.
  ASSERT_EQ(reqs.size(), 7u);
  std::vector<std::string> delivered;
  std::set<std::string> keys;
  for (auto& r : reqs) {
    keys.insert(r.header("idempotency-key"));
    auto ids = traces_in(r);
    if (ids.size() == 1) delivered.push_back(ids[0]);
  }
  EXPECT_EQ(keys.size(), 7u);
  EXPECT_EQ(delivered, (std::vector<std::string>{"t0#1", "t1#1", "t2#1", "t3#1"}));
  EXPECT_EQ(d.stats().batches_split, 3u);
}

TEST_F(UpstreamDeliveryTest, SingleTooLargeDocumentIsTruncated) {
  HttpServer server;
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (req.decoded.size() > 4000) r.status = 413;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1, 1, std::string(10000, 'p')));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  json body = json::parse(reqs[1].decoded);
  EXPECT_EQ(body["traces"][0]["events"][0]["input"], "[truncated 10002 bytes]");
  EXPECT_EQ(d.stats().documents_truncated, 1u);
}

TEST_F(UpstreamDeliveryTest, BadRequestGoesToDeadLetterAndReplays) {
  HttpServer server;
  std::atomic<bool> reject{true};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (reject) r.status = 400;
    return r;
  });
  std::string doc = make_doc("t1", 1);
  emit_doc(*store_, "t1", doc);
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained() && d.stats().deadlettered == 1; }));
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].http_status, 400);
  EXPECT_EQ(dl[0].traces, 1u);
  EXPECT_EQ(dl[0].trace_ids, std::vector<std::string>{"t1"});
  EXPECT_EQ(d.stats().failed_permanent, 1u);
  reject = false;
  EXPECT_EQ(d.replay_deadletters(), 1u);
  ASSERT_TRUE(wait_until([&] { return d.stats().traces_delivered == 1; }));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].decoded, "{\"traces\":[" + doc + "]}");
  EXPECT_NE(reqs[0].header("idempotency-key"), reqs[1].header("idempotency-key"));
  dl.clear();
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  EXPECT_TRUE(dl.empty());
}

// An encoder that throws on one trace's document, every time: the batch is
// split until that document is alone, which is tried kExceptionTries times and
// dead-lettered with the exception as its reason; the other traces are
// delivered, each exception is counted, and the in-flight slot (the only one)
// is free again for what comes next.
TEST_F(UpstreamDeliveryTest, AnEncoderThatThrowsOnOneTraceDeadLettersOnlyThatTrace) {
  HttpServer server;
  for (const char* id : {"good1", "bad", "good2", "good3"})
    emit_doc(*store_, id, make_doc(id, 1));
  std::atomic<uint32_t> bad_alone{0};
  Options o = options(server.url());
  o.max_in_flight = 1;
  o.encode_hook = [&](const std::vector<std::string>& ids) {
    if (std::find(ids.begin(), ids.end(), "bad") == ids.end()) return;
    if (ids.size() == 1) ++bad_alone;
    throw std::runtime_error("injected encoder fault");
  };
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] {
    Stats s = d.stats();
    return drained() && s.deadlettered == 1 && s.traces_delivered == 3 && s.in_flight == 0;
  }));
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].trace_ids, std::vector<std::string>{"bad"});
  EXPECT_EQ(dl[0].http_status, 0);
  EXPECT_NE(dl[0].reason.find("injected encoder fault"), std::string::npos) << dl[0].reason;
  EXPECT_NE(dl[0].reason.find("upstream_encode"), std::string::npos) << dl[0].reason;
  EXPECT_EQ(bad_alone.load(), kExceptionTries);
  Stats s = d.stats();
  // The batch of four and the half holding "bad" threw once each, then
  // "bad" alone kExceptionTries times.
  EXPECT_EQ(s.internal_errors[static_cast<size_t>(Stage::kEncode)], kExceptionTries + 2);
  EXPECT_EQ(s.internal_errors[static_cast<size_t>(Stage::kSend)], 0u);
  EXPECT_EQ(s.internal_errors[static_cast<size_t>(Stage::kDispatch)], 0u);
  EXPECT_EQ(s.batches_split, 2u);
  std::multiset<std::string> sent;
  for (const auto& r : server.requests()) {
    for (const auto& id : traces_in(r))
      sent.insert(id);
  }
  EXPECT_EQ(sent, (std::multiset<std::string>{"good1#1", "good2#1", "good3#1"}));
  // The slot was released: the next revision goes out.
  emit_doc(*store_, "good4", make_doc("good4", 1));
  // Its slot is free once its acknowledgement is written, after the count.
  ASSERT_TRUE(wait_until([&] {
    Stats s = d.stats();
    return drained() && s.traces_delivered == 4 && s.in_flight == 0;
  }));
  d.stop();
  std::vector<std::pair<std::string, std::string>> rows;
  ASSERT_TRUE(store_->meta_scan(detail::kBatchPrefix, 100, &rows).ok());
  EXPECT_TRUE(rows.empty());
}

// An exception that does not recur costs one retry, not the document.
TEST_F(UpstreamDeliveryTest, AnEncoderExceptionThatPassesIsRetried) {
  HttpServer server;
  std::string doc = make_doc("t1", 1);
  emit_doc(*store_, "t1", doc);
  std::atomic<int> calls{0};
  Options o = options(server.url());
  o.encode_hook = [&](const std::vector<std::string>&) {
    if (calls++ == 0) throw std::runtime_error("injected once");
  };
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained() && d.stats().in_flight == 0; }));
  Stats s = d.stats();
  EXPECT_EQ(s.traces_delivered, 1u);
  EXPECT_EQ(s.deadlettered, 0u);
  EXPECT_EQ(s.internal_errors[static_cast<size_t>(Stage::kEncode)], 1u);
  EXPECT_EQ(calls.load(), 2);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].decoded, "{\"traces\":[" + doc + "]}");
}

// An in-flight batch keeps only its request; when it needs its documents again
// (here for the dead letters) it reads them from the outbox. One the quota
// dropped meanwhile (counted there) leaves the batch, and the batch still ends
// cleanly: nothing held, the trace free for its next revision.
TEST_F(UpstreamDeliveryTest, ADocumentDroppedForRoomWhileInFlightLeavesTheBatch) {
  HttpServer server;
  std::atomic<int> status{503};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    r.status = status;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return server.requests().size() >= 2; }));  // retrying
  EXPECT_FALSE(store_->ensure_room(uint64_t{1} << 62).ok());  // makes room: drops the outbox
  ASSERT_EQ(store_->outbox_entries(), 0u);
  EXPECT_EQ(store_->counters().dropped_outbox_entries, 1u);
  status = 400;
  ASSERT_TRUE(
      wait_until([&] { return d.stats().failed_permanent >= 1 && d.stats().in_flight == 0; }));
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  EXPECT_TRUE(dl.empty());
  EXPECT_EQ(d.stats().deadlettered, 0u);
  status = 200;
  emit_doc(*store_, "t1", make_doc("t1", 2));
  ASSERT_TRUE(wait_until([&] { return d.stats().traces_delivered == 1; }));
  // Counted when the upstream has it; the acknowledgement follows.
  EXPECT_TRUE(wait_until([&] { return drained(); }));
}

// One document the upstream refuses (400) goes to the dead letters alone; the
// batch is halved until it is, and its neighbours are delivered.
TEST_F(UpstreamDeliveryTest, BadRequestIsolatesTheRefusedDocument) {
  HttpServer server;
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (req.decoded.find("\"t2\"") != std::string::npos) r.status = 400;
    return r;
  });
  for (int i = 0; i < 5; ++i)
    emit_doc(*store_, "t" + std::to_string(i), make_doc("t" + std::to_string(i), 1));
  Options o = options(server.url());
  o.max_in_flight = 1;
  Delivery d(*store_, *store_, o);
  d.start();
  // The counters are updated after the outbox is acknowledged: wait for both.
  ASSERT_TRUE(wait_until([&] {
    return drained() && d.stats().deadlettered == 1 && d.stats().traces_delivered >= 4;
  })) << d.stats().traces_delivered;
  EXPECT_EQ(d.stats().traces_delivered, 4u);
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].trace_ids, std::vector<std::string>{"t2"});
  EXPECT_EQ(dl[0].http_status, 400);
  EXPECT_GE(d.stats().batches_split, 2u);
}

TEST_F(UpstreamDeliveryTest, DeadLetterStoreIsBoundedAndPurgeable) {
  HttpServer server;
  server.set_handler([](const RecordedRequest&) { return Reply{400}; });
  for (int i = 0; i < 5; ++i)
    emit_doc(*store_, "t" + std::to_string(i), make_doc("t" + std::to_string(i), 1));
  Options o = options(server.url());
  o.batch_max_events = 1;
  o.max_in_flight = 1;
  o.deadletter_max_count = 3;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained() && d.stats().deadlettered == 5; }));
  d.stop();
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  ASSERT_EQ(dl.size(), 3u);
  EXPECT_EQ(dl[0].trace_ids[0], "t2");  // the two oldest were evicted
  EXPECT_EQ(d.stats().deadletter_evicted, 2u);
  EXPECT_EQ(d.stats().dropped, 2u);
  size_t purged = 0;
  ASSERT_TRUE(deadletter_purge(*store_, &purged).ok());
  EXPECT_EQ(purged, 3u);
}

TEST_F(UpstreamDeliveryTest, OfflineReplayIsSentAtNextStart) {
  HttpServer server;
  std::atomic<bool> reject{true};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (reject) r.status = 422;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  {
    Delivery d(*store_, *store_, options(server.url()));
    d.start();
    ASSERT_TRUE(wait_until([&] { return d.stats().deadlettered == 1; }));
  }
  size_t n = 0;
  ASSERT_TRUE(deadletter_replay(*store_, &n).ok());
  EXPECT_EQ(n, 1u);
  reject = false;
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.stats().traces_delivered == 1; }));
}

TEST_F(UpstreamDeliveryTest, AuthFailurePausesUntilReset) {
  HttpServer server;
  std::atomic<bool> auth_ok{false};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (!auth_ok) r.status = 401;
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(*store_, *store_, options(server.url()));
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.stats().auth_failed; }));
  emit_doc(*store_, "t2", make_doc("t2", 1));  // keeps buffering
  EXPECT_EQ(server.request_count(), 1u);
  EXPECT_EQ(store_->outbox_entries(), 2u);
  auth_ok = true;
  d.reset_auth();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_FALSE(d.stats().auth_failed);
  EXPECT_EQ(d.stats().failed_auth, 1u);
}

TEST_F(UpstreamDeliveryTest, IdempotencyKeySurvivesARestart) {
  HttpServer server;
  std::atomic<bool> fail{true};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (fail) r.status = 503;
    return r;
  });
  for (int i = 0; i < 3; ++i)
    emit_doc(*store_, "t" + std::to_string(i), make_doc("t" + std::to_string(i), 1));
  Options o = options(server.url());
  o.retry_initial_ms = 20;
  o.retry_max_ms = 20;
  {
    Delivery d(*store_, *store_, o);
    d.start();
    ASSERT_TRUE(wait_until([&] { return server.request_count() >= 1; }));
  }
  emit_doc(*store_, "t9", make_doc("t9", 1));
  fail = false;
  size_t before = server.request_count();
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  ASSERT_GT(reqs.size(), before);
  // After the restart the batch goes again with its key and body, and the new
  // trace in a batch of its own: batches in flight side by side may arrive in
  // either order.
  const std::vector<std::string> first = traces_in(reqs[0]);
  ASSERT_EQ(first, (std::vector<std::string>{"t0#1", "t1#1", "t2#1"}));
  size_t again = 0, t9 = 0;
  for (size_t i = before; i < reqs.size(); ++i) {
    const std::vector<std::string> traces = traces_in(reqs[i]);
    if (traces == first) {
      ++again;
      EXPECT_EQ(reqs[i].header("idempotency-key"), reqs[0].header("idempotency-key"));
      EXPECT_EQ(reqs[i].decoded, reqs[0].decoded);
    } else {
      EXPECT_EQ(traces, std::vector<std::string>{"t9#1"});
      EXPECT_NE(reqs[i].header("idempotency-key"), reqs[0].header("idempotency-key"));
      ++t9;
    }
  }
  EXPECT_GE(again, 1u);  // once, or twice if the first agent's last try arrived late
  EXPECT_EQ(t9, 1u);
}

TEST_F(UpstreamDeliveryTest, RevisionsOfOneTraceArriveInOrder) {
  HttpServer server;
  std::atomic<int> n{0};
  std::mutex mu;
  std::map<std::string, int> in_flight;
  std::atomic<bool> overlap{false};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    r.delay_ms = static_cast<uint32_t>((n++ * 7) % 5);
    if (n % 3 == 0) r.status = 503;
    return r;
  });
  Options o = options(server.url());
  o.max_in_flight = 4;
  o.batch_max_events = 2;
  Delivery d(*store_, *store_, o);
  d.start();
  for (int rev = 1; rev <= 10; ++rev) {
    for (const char* t : {"a", "b", "c"})
      emit_doc(*store_, t, make_doc(t, static_cast<uint32_t>(rev)));
  }
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  std::map<std::string, int> last;
  for (auto& r : server.requests()) {
    // Only count 2xx deliveries: the handler replied 503 to every third.
    (void)r;
  }
  // Reconstruct successful deliveries from order of keys: the last request of
  // each key is its successful one.
  std::map<std::string, size_t> last_of_key;
  auto reqs = server.requests();
  for (size_t i = 0; i < reqs.size(); ++i)
    last_of_key[reqs[i].header("idempotency-key")] = i;
  std::vector<size_t> order;
  for (auto& [k, i] : last_of_key)
    order.push_back(i);
  std::sort(order.begin(), order.end());
  for (size_t i : order) {
    for (auto& id : traces_in(reqs[i])) {
      std::string t = id.substr(0, id.find('#'));
      int rev = std::stoi(id.substr(id.find('#') + 1));
      EXPECT_EQ(rev, last[t] + 1) << t;
      last[t] = rev;
    }
  }
  EXPECT_EQ(last["a"], 10);
  EXPECT_EQ(last["b"], 10);
  EXPECT_EQ(last["c"], 10);
  (void)overlap;
  (void)in_flight;
  (void)mu;
}

TEST_F(UpstreamDeliveryTest, OtlpFormatAndPartialSuccess) {
  HttpServer server;
  server.set_handler([](const RecordedRequest&) {
    Reply r;
    r.body = R"({"partialSuccess":{"rejectedSpans":"1","errorMessage":"nope"}})";
    return r;
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Options o = options(server.url());
  o.format = Format::kOtlp;
  o.otlp_encoding = OtlpEncoding::kJson;
  o.compression = Compression::kNone;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto r = server.requests().at(0);
  EXPECT_EQ(r.target, "/v1/traces");
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("content-encoding"), "");
  json body = json::parse(r.decoded);
  EXPECT_EQ(body["resourceSpans"][0]["scopeSpans"][0]["spans"].size(), 2u);
  EXPECT_EQ(d.stats().spans_rejected, 1u);
  EXPECT_EQ(server.request_count(), 1u);  // not retried
}

// ---- OTLP/HTTP protobuf -------------------------------------------------------

namespace coll = opentelemetry::proto::collector::trace::v1;

// The trace ids (sidetrace.trace_id) and span counts of an OTLP protobuf body.
std::vector<std::pair<std::string, int>> otlp_traces(const RecordedRequest& r) {
  coll::ExportTraceServiceRequest req;
  EXPECT_TRUE(req.ParseFromString(r.decoded)) << "not an ExportTraceServiceRequest";
  std::vector<std::pair<std::string, int>> out;
  for (const auto& rs : req.resource_spans()) {
    std::string id;
    for (const auto& kv : rs.resource().attributes()) {
      if (kv.key() == "sidetrace.trace_id") id = kv.value().string_value();
    }
    out.emplace_back(id, rs.scope_spans(0).spans_size());
  }
  return out;
}

// Captures what the delivery logs (through spdlog's default logger).
class LogCapture {
 public:
  LogCapture()
      : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000)),
        previous_(spdlog::default_logger()) {
    auto logger = std::make_shared<spdlog::logger>("capture", sink_);
    logger->set_level(spdlog::level::debug);
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const {
    std::string all;
    for (auto& line : sink_->last_formatted())
      all += line;
    return all;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> previous_;
};

// format = "otlp" sends protobuf by default, compressed as configured; the
// JSON encoding is the other choice.
TEST_F(UpstreamDeliveryTest, OtlpSendsProtobufCompressedAsConfigured) {
  HttpServer server;
  for (Compression c : {Compression::kGzip, Compression::kZstd, Compression::kNone}) {
    std::string id = std::string("t-") + std::string(detail::content_encoding(c));
    emit_doc(*store_, id, make_doc(id, 1, 3));
    Options o = options(server.url() + "/otlp");
    o.format = Format::kOtlp;
    o.compression = c;
    Delivery d(*store_, *store_, o);
    d.start();
    ASSERT_TRUE(wait_until([&] { return drained(); }));
    d.stop();
    RecordedRequest r = server.requests().back();
    EXPECT_EQ(r.target, "/otlp/v1/traces");
    EXPECT_EQ(r.header("content-type"), "application/x-protobuf");
    EXPECT_EQ(r.header("content-encoding"), detail::content_encoding(c));
    ASSERT_TRUE(r.decode_ok);
    EXPECT_EQ(otlp_traces(r), (std::vector<std::pair<std::string, int>>{{id, 3}}));
    EXPECT_EQ(d.stats().events_delivered, 3u);
  }
  emit_doc(*store_, "t-json", make_doc("t-json", 1));
  Options o = options(server.url());
  o.format = Format::kOtlp;
  o.otlp_encoding = OtlpEncoding::kJson;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  RecordedRequest r = server.requests().back();
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("content-encoding"), "gzip");
  json body = json::parse(r.decoded);
  EXPECT_EQ(body["resourceSpans"][0]["scopeSpans"][0]["spans"].size(), 2u);
}

// A 200 whose protobuf ExportTraceServiceResponse holds a partial_success:
// logged with its message, counted, and not sent again; a message without
// rejected spans is logged too.
TEST_F(UpstreamDeliveryTest, OtlpPartialSuccessInProtobufIsLoggedAndCounted) {
  LogCapture log;
  HttpServer server;
  std::atomic<int> n{0};
  server.set_handler([&](const RecordedRequest&) {
    coll::ExportTraceServiceResponse resp;
    if (n++ == 0) {
      resp.mutable_partial_success()->set_rejected_spans(2);
      resp.mutable_partial_success()->set_error_message("spans older than 7 days");
    } else {
      resp.mutable_partial_success()->set_error_message("attribute value truncated");
    }
    Reply r;
    r.headers = {{"Content-Type", "application/x-protobuf"}};
    r.body = resp.SerializeAsString();
    return r;
  });
  Options o = options(server.url());
  o.format = Format::kOtlp;
  o.max_in_flight = 1;
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  emit_doc(*store_, "t2", make_doc("t2", 1));
  ASSERT_TRUE(wait_until([&] { return drained() && d.stats().traces_delivered == 2; }));
  d.stop();
  EXPECT_EQ(server.request_count(), 2u);  // neither was retried
  EXPECT_EQ(d.stats().spans_rejected, 2u);
  EXPECT_EQ(d.stats().failed_retryable, 0u);
  std::string text = log.text();
  EXPECT_NE(text.find("partial success, 2 spans rejected: spans older than 7 days"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("partial success, 0 spans rejected: attribute value truncated"),
            std::string::npos)
      << text;
}

// A refusal's google.rpc.Status (protobuf or JSON) is decoded into the log
// line and the dead letter's reason.
TEST_F(UpstreamDeliveryTest, OtlpRefusalStatusIsDecodedIntoTheLogAndTheDeadLetter) {
  LogCapture log;
  HttpServer server;
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    r.status = 400;
    if (otlp_traces(req).at(0).first == "t-bin") {
      google::rpc::Status st;
      st.set_code(3);
      st.set_message("span t-bin has no name");
      r.headers = {{"Content-Type", "application/x-protobuf"}};
      r.body = st.SerializeAsString();
    } else {
      r.status = 500;
      r.headers = {{"Content-Type", "application/json"}};
      r.body = R"({"code":13,"message":"storage write failed"})";
    }
    return r;
  });
  Options o = options(server.url());
  o.format = Format::kOtlp;
  o.max_in_flight = 1;
  emit_doc(*store_, "t-bin", make_doc("t-bin", 1));
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained() && d.stats().deadlettered == 1; }));
  emit_doc(*store_, "t-json", make_doc("t-json", 1));
  ASSERT_TRUE(wait_until([&] { return drained() && d.stats().deadlettered == 2; }));
  d.stop();
  EXPECT_EQ(server.request_count(), 2u);  // 500 is not retried under OTLP
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  ASSERT_EQ(dl.size(), 2u);
  EXPECT_EQ(dl[0].http_status, 400);
  EXPECT_EQ(dl[0].reason, "400 Bad Request: code 3 (INVALID_ARGUMENT): span t-bin has no name");
  EXPECT_EQ(dl[1].http_status, 500);
  EXPECT_EQ(dl[1].reason, "500 Internal Server Error: code 13 (INTERNAL): storage write failed");
  std::string text = log.text();
  EXPECT_NE(text.find("code 3 (INVALID_ARGUMENT): span t-bin has no name"), std::string::npos)
      << text;
  EXPECT_NE(text.find("code 13 (INTERNAL): storage write failed"), std::string::npos) << text;
}

// OTLP retries 429, 502, 503, 504 (honouring Retry-After) and connection
// failures, and dead-letters every other refusal (kept, replayable); the
// native format retries 408 and 500 as before.
TEST_F(UpstreamDeliveryTest, OtlpRetriesThrottlingAndUnavailabilityOnly) {
  HttpServer server;
  std::mutex mu;
  std::map<std::string, int> seen;  // trace id -> requests
  std::map<std::string, int> status_of = {{"s429", 429}, {"s502", 502}, {"s503", 503},
                                          {"s504", 504}, {"s408", 408}, {"s500", 500},
                                          {"s404", 404}, {"s307", 307}, {"reset", 0}};
  server.set_handler([&](const RecordedRequest& req) {
    std::string id;
    if (req.header("content-type") == "application/x-protobuf") {
      id = otlp_traces(req).at(0).first;
    } else {
      id = json::parse(req.decoded)["traces"][0]["trace_id"];
    }
    std::lock_guard lock(mu);
    Reply r;
    if (seen[id]++ == 0) {
      r.status = status_of.at(id.substr(0, id.find('#')));
      if (r.status == 0) r.action = Reply::Action::kCloseBeforeReply;
      if (r.status == 503) r.headers = {{"Retry-After", "1"}};  // capped to 100 ms
    }
    return r;
  });
  Options o = options(server.url());
  o.format = Format::kOtlp;
  o.max_in_flight = 1;
  Delivery d(*store_, *store_, o);
  d.start();
  std::set<std::string> retried = {"s429", "s502", "s503", "s504", "reset"};
  for (auto& [id, status] : status_of) {
    emit_doc(*store_, id, make_doc(id, 1));
    ASSERT_TRUE(wait_until([&] { return drained(); })) << id;
    std::lock_guard lock(mu);
    EXPECT_EQ(seen[id], retried.count(id) ? 2 : 1) << id;
  }
  d.stop();
  std::vector<DeadLetter> dl;
  ASSERT_TRUE(deadletter_list(*store_, &dl).ok());
  std::set<std::string> dead;
  for (auto& l : dl)
    dead.insert(l.trace_ids.begin(), l.trace_ids.end());
  EXPECT_EQ(dead, (std::set<std::string>{"s307", "s404", "s408", "s500"}));
  EXPECT_EQ(d.stats().traces_delivered, 5u);
  // The native format retries what it always has.
  Options native = options(server.url());
  Delivery n(*store_, *store_, native);
  n.start();
  for (std::string id : {"s408#native", "s500#native"}) {
    emit_doc(*store_, id, make_doc(id, 1));
    ASSERT_TRUE(wait_until([&] { return drained(); })) << id;
    std::lock_guard lock(mu);
    EXPECT_EQ(seen[id], 2) << id;
  }
  EXPECT_EQ(n.stats().deadlettered, 0u);
}

// A revision after the first goes out in a request of its own (a batch ends
// before a second revision of a trace it holds), and under OTLP it carries
// only the spans that changed; the native format sends it whole.
TEST_F(UpstreamDeliveryTest, ARequestNeverCarriesTwoRevisionsOfATrace) {
  // Revision 2 of t1: e1 unchanged, e2 changed, trace context unchanged.
  json rev2 = json::parse(make_doc("t1", 2));
  rev2["trace_changed"] = false;
  rev2["events"][0]["changed"] = false;
  for (Format f : {Format::kNative, Format::kOtlp}) {
    HttpServer server;
    for (const char* t : {"t1", "t2"})
      emit_doc(*store_, t, make_doc(t, 1));
    emit_doc(*store_, "t1", rev2.dump());
    emit_doc(*store_, "t3", make_doc("t3", 1));
    Options o = options(server.url());
    o.format = f;
    o.max_in_flight = 4;
    Delivery d(*store_, *store_, o);
    d.start();
    ASSERT_TRUE(wait_until([&] { return drained(); }));
    d.stop();
    auto reqs = server.requests();
    ASSERT_EQ(reqs.size(), 2u);
    std::vector<std::vector<std::pair<std::string, int>>> got;
    for (auto& r : reqs) {
      if (f == Format::kOtlp) {
        got.push_back(otlp_traces(r));
      } else {
        std::vector<std::pair<std::string, int>> ids;
        const json body = json::parse(r.decoded);
        for (auto& t : body["traces"])
          ids.emplace_back(t["trace_id"], static_cast<int>(t["events"].size()));
        got.push_back(ids);
      }
    }
    // Under OTLP revision 2 of t1 holds only e2's span.
    const int t1_rev2_spans = f == Format::kOtlp ? 1 : 2;
    EXPECT_EQ(got, (std::vector<std::vector<std::pair<std::string, int>>>{
                       {{"t1", 2}, {"t2", 2}}, {{"t1", t1_rev2_spans}, {"t3", 2}}}))
        << (f == Format::kOtlp ? "otlp" : "native");
  }
}

using testing::CountingStore;

// Emissions before a batch is due cost no outbox read: each entry is read
// once, when its batch is due (here at the flush deadline, moved by hand),
// however many emissions woke the delivery meanwhile.
TEST_F(UpstreamDeliveryTest, TheOutboxIsReadOncePerEntry) {
  HttpServer server;
  CountingStore counting(*store_);
  ManualClock clock;
  Options o = options(server.url());
  o.flush_interval_ms = 60000;
  Delivery d(counting, counting, o, clock);
  d.start();
  const uint64_t t0 = clock.now_ns();
  emit_doc(*store_, "t0", make_doc("t0", 1), t0);
  // The first entry is read at once: it sets the flush deadline.
  ASSERT_TRUE(wait_until([&] { return counting.entries_read == 1; }));
  for (int i = 1; i < 10; ++i)
    emit_doc(*store_, "t" + std::to_string(i), make_doc("t" + std::to_string(i), 1), t0);
  clock.advance(std::chrono::seconds(61));
  // One more emission wakes the delivery after the deadline passed.
  emit_doc(*store_, "t10", make_doc("t10", 1), t0);
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  std::vector<std::string> delivered;
  for (auto& r : server.requests()) {
    for (auto& id : traces_in(r))
      delivered.push_back(id);
  }
  EXPECT_EQ(delivered.size(), 11u);
  EXPECT_EQ(counting.entries_read, 11u);
  std::lock_guard lock(counting.mu);
  for (auto& [seq, n] : counting.times_read)
    EXPECT_EQ(n, 1) << "seq " << seq;
  // The first read, the one at the deadline, and at most one more (for an
  // entry that arrived after it).
  EXPECT_LE(counting.reads, 3u);
  EXPECT_LE(server.request_count(), 2u);
}

// A batch that fills up (batch_max_events) goes at once, long before its
// flush deadline, though nothing but emissions wakes the delivery.
TEST_F(UpstreamDeliveryTest, AFullBatchGoesBeforeItsFlushDeadline) {
  HttpServer server;
  CountingStore counting(*store_);
  Options o = options(server.url());
  o.flush_interval_ms = 600000;
  o.batch_max_events = 5;
  o.max_in_flight = 1;
  Delivery d(counting, counting, o);
  d.start();
  for (int i = 0; i < 15; ++i)
    emit_doc(*store_, "t" + std::to_string(i), make_doc("t" + std::to_string(i), 1));
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  std::vector<std::string> delivered;
  for (auto& r : reqs) {
    EXPECT_EQ(traces_in(r).size(), 5u);
    for (auto& id : traces_in(r))
      delivered.push_back(id);
  }
  std::vector<std::string> want;
  for (int i = 0; i < 15; ++i)
    want.push_back("t" + std::to_string(i) + "#1");
  EXPECT_EQ(delivered, want);
  EXPECT_EQ(counting.entries_read, 15u);
}

// While a partial batch waits for its flush deadline, emissions that cannot
// fill it do not wake the delivery; the one that fills it sends it at once.
TEST_F(UpstreamDeliveryTest, EmissionsThatCannotFillTheBatchLeaveTheDeliveryAsleep) {
  HttpServer server;
  CountingStore counting(*store_);
  Options o = options(server.url());
  o.flush_interval_ms = 600000;
  o.batch_max_events = 40;
  Delivery d(counting, counting, o);
  d.start();
  emit_doc(*store_, "t0", make_doc("t0", 1));
  ASSERT_TRUE(wait_until([&] { return counting.entries_read == 1; }));
  const int64_t before = testing::thread_wakes("st-delivery");
  ASSERT_GE(before, 0);
  for (int i = 1; i < 39; ++i)
    emit_doc(*store_, "t" + std::to_string(i), make_doc("t" + std::to_string(i), 1));
  // Each emission woke it before (38 here, fewer where wake-ups merge); now
  // only its own settling after the first read may count.
  EXPECT_LE(testing::thread_wakes("st-delivery") - before, 3);
  EXPECT_EQ(server.request_count(), 0u);
  emit_doc(*store_, "t39", make_doc("t39", 1));
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(traces_in(reqs[0]).size(), 40u);
}

// Entries read while an earlier revision of their trace is in flight wait,
// read once, behind it; the batch is cut before them.
TEST_F(UpstreamDeliveryTest, AStagedRevisionWaitsForItsTraceInFlight) {
  HttpServer server;
  std::atomic<bool> hold{true};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (hold) r.status = 503;
    return r;
  });
  CountingStore counting(*store_);
  Options o = options(server.url());
  o.max_in_flight = 4;
  Delivery d(counting, counting, o);
  d.start();
  emit_doc(*store_, "a", make_doc("a", 1));
  ASSERT_TRUE(wait_until([&] { return server.request_count() >= 1; }));
  emit_doc(*store_, "b", make_doc("b", 1));
  emit_doc(*store_, "a", make_doc("a", 2));
  emit_doc(*store_, "c", make_doc("c", 1));
  // "b" goes alone (cut before a#2); a#2 and "c" wait for a#1.
  ASSERT_TRUE(wait_until([&] {
    for (auto& r : server.requests()) {
      if (traces_in(r) == std::vector<std::string>{"b#1"}) return true;
    }
    return false;
  }));
  hold = false;
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  auto reqs = server.requests();
  for (size_t i = 0; i < reqs.size(); ++i) {
    for (auto& id : traces_in(reqs[i])) {
      if (id == "a#2") {
        // Sent only after a#1 succeeded, i.e. after the last a#1 request.
        for (size_t j = i; j < reqs.size(); ++j) {
          for (auto& later : traces_in(reqs[j]))
            EXPECT_NE(later, "a#1");
        }
      }
    }
  }
  EXPECT_EQ(d.stats().traces_delivered, 4u);
  std::lock_guard lock(counting.mu);
  for (auto& [seq, n] : counting.times_read)
    EXPECT_EQ(n, 1) << "seq " << seq;
}

using testing::ObservedStore;

// Opens the store's gate when it goes out of scope: declared after the
// Delivery, so that a test that fails with the gate closed does not leave
// stop() waiting for a held call.
struct OpenGateAtExit {
  ObservedStore& store;
  ~OpenGateAtExit() { store.open_gate(); }
};

// The store is called from the store thread (st-delivery-io) only, never from
// the network thread (st-delivery): delivery and acknowledgement, retries,
// a resumed batch at start, a split, a dead letter with the documents read
// back, and a replay of the dead letters while running.
TEST_F(UpstreamDeliveryTest, TheNetworkThreadMakesNoStoreCall) {
  HttpServer server;
  std::atomic<bool> up{false};
  std::atomic<bool> refuse_bad{true};
  server.set_handler([&](const RecordedRequest& req) {
    Reply r;
    if (!up) r.status = 503;
    if (refuse_bad && req.decoded.find("\"bad\"") != std::string::npos) r.status = 400;
    return r;
  });
  ObservedStore observed(*store_);
  Options o = options(server.url());
  o.max_in_flight = 1;
  emit_doc(*store_, "t1", make_doc("t1", 1));
  {
    // Retried, then stopped: its batch record is resumed by the next start.
    Delivery d(observed, observed, o);
    d.start();
    ASSERT_TRUE(wait_until([&] { return server.request_count() >= 3; }));
    EXPECT_GE(d.stats().batches_retried, 2u);
  }
  up = true;
  for (const char* id : {"good1", "bad", "good2"})
    emit_doc(*store_, id, make_doc(id, 1));
  Delivery d(observed, observed, o);
  d.start();
  ASSERT_TRUE(wait_until([&] {
    Stats s = d.stats();
    return drained() && s.deadlettered == 1 && s.traces_delivered == 3 && s.in_flight == 0;
  }));
  EXPECT_GE(d.stats().batches_split, 1u);
  refuse_bad = false;
  EXPECT_EQ(d.replay_deadletters(), 1u);
  ASSERT_TRUE(wait_until([&] { return d.stats().traces_delivered == 4; }));
  d.stop();

  std::map<std::string, size_t> by_method;
  for (const auto& c : observed.calls()) {
    EXPECT_EQ(c.thread, "st-delivery-io") << c.method;
    ++by_method[c.method];
  }
  for (const char* m : {"read_outbox", "ack_outbox", "meta_put", "meta_delete", "meta_scan",
                        "meta_scan_after", "meta_write"}) {
    EXPECT_GT(by_method[m], 0u) << m;
  }
  std::vector<std::pair<std::string, std::string>> rows;
  ASSERT_TRUE(store_->meta_scan(detail::kBatchPrefix, 100, &rows).ok());
  EXPECT_TRUE(rows.empty());
}

// While the store is slow (a call held at the gate), the network thread goes
// on with the batches in flight: a retrying batch's timers fire, its
// requests go out and their answers are handled, up to its success (counted
// before its acknowledgement, which waits for the store). Were the store
// called from the network thread, the held call would stop all of it.
TEST_F(UpstreamDeliveryTest, ASlowStoreDoesNotHoldUpTheBatchesInFlight) {
  HttpServer server;
  std::atomic<bool> up{false};
  server.set_handler([&](const RecordedRequest&) {
    Reply r;
    if (!up) r.status = 503;
    return r;
  });
  ObservedStore observed(*store_);
  Options o = options(server.url());
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Delivery d(observed, observed, o);
  OpenGateAtExit open_at_exit{observed};
  d.start();
  ASSERT_TRUE(wait_until([&] { return server.request_count() >= 2; }));  // t1 retrying
  observed.close_gate();
  // The emission wakes the dispatcher, whose outbox read is held.
  emit_doc(*store_, "t2", make_doc("t2", 1));
  ASSERT_TRUE(wait_until([&] { return observed.held() == 1; }));
  const size_t before = server.request_count();
  EXPECT_TRUE(
      wait_until([&] { return server.request_count() >= before + 3; }, std::chrono::seconds(5)))
      << "retries stopped while the store was held";
  up = true;
  EXPECT_TRUE(wait_until([&] { return d.stats().traces_delivered == 1; }, std::chrono::seconds(5)))
      << "a success was not handled while the store was held";
  EXPECT_EQ(observed.held(), 1u);
  EXPECT_EQ(store_->outbox_entries(), 2u);  // t1's acknowledgement waits for the store
  observed.open_gate();
  ASSERT_TRUE(wait_until([&] { return drained() && d.stats().traces_delivered == 2; }));
}

// stop() while a store call is held and another queued behind it: the network
// thread stops at once, stop() waits for the store thread, and the calls
// issued before it (here the acknowledgement after a 2xx) are done, not cut
// short. The batch record whose deletion was not issued yet is cleared by the
// next start, without sending the batch again.
TEST_F(UpstreamDeliveryTest, StopFinishesTheStoreCallsInProgress) {
  HttpServer server;
  ObservedStore observed(*store_);
  server.set_handler([&](const RecordedRequest&) {
    observed.close_gate();  // whatever the store is asked next is held
    return Reply{};
  });
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Options o = options(server.url());
  {
    Delivery d(observed, observed, o);
    OpenGateAtExit open_at_exit{observed};
    d.start();
    ASSERT_TRUE(wait_until([&] { return d.stats().traces_delivered == 1; }));
    ASSERT_TRUE(wait_until([&] { return observed.held() == 1; }));
    EXPECT_EQ(store_->outbox_entries(), 1u);
    auto stopped = std::async(std::launch::async, [&] { d.stop(); });
    // stop() cannot finish before the held call does.
    EXPECT_EQ(stopped.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
    observed.open_gate();
    ASSERT_TRUE(wait_until([&] {
      return stopped.wait_for(std::chrono::milliseconds(0)) == std::future_status::ready;
    }));
  }
  EXPECT_EQ(store_->outbox_entries(), 0u);  // acknowledged
  ASSERT_EQ(server.request_count(), 1u);
  Delivery d(observed, observed, o);
  d.start();
  ASSERT_TRUE(wait_until([&] {
    std::vector<std::pair<std::string, std::string>> rows;
    return store_->meta_scan(detail::kBatchPrefix, 100, &rows).ok() && rows.empty();
  }));
  d.stop();
  EXPECT_EQ(server.request_count(), 1u);
}

class UpstreamDeliveryTlsTest : public UpstreamDeliveryTest {
 protected:
  void SetUp() override {
    UpstreamDeliveryTest::SetUp();
    pki_ = testing::make_test_pki(dir_.str());
  }
  testing::TestPki pki_;
};

TEST_F(UpstreamDeliveryTlsTest, VerifiedMutualTls) {
  HttpServer server(0, testing::ServerTls{pki_.server_cert, pki_.server_key, pki_.ca_cert});
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Options o = options(server.url());
  o.ca_file = pki_.ca_cert;
  o.client_cert = pki_.client_cert;
  o.client_key = pki_.client_key;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return drained(); }));
  EXPECT_EQ(server.tls_failures(), 0u);
}

TEST_F(UpstreamDeliveryTlsTest, WrongCaIsRejected) {
  HttpServer server(0, testing::ServerTls{pki_.server_cert, pki_.server_key, ""});
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Options o = options(server.url());
  o.ca_file = pki_.other_ca_cert;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.stats().failed_retryable >= 2; }));
  EXPECT_EQ(server.request_count(), 0u);
  EXPECT_FALSE(drained());
  // A reload with the right CA recovers.
  o.ca_file = pki_.ca_cert;
  d.update_options(o);
  ASSERT_TRUE(wait_until([&] { return drained(); }));
}

TEST_F(UpstreamDeliveryTlsTest, WrongHostNameIsRejected) {
  HttpServer server(0, testing::ServerTls{pki_.wrong_host_cert, pki_.wrong_host_key, ""});
  emit_doc(*store_, "t1", make_doc("t1", 1));
  Options o = options(server.url());
  o.ca_file = pki_.ca_cert;
  Delivery d(*store_, *store_, o);
  d.start();
  ASSERT_TRUE(wait_until([&] { return d.stats().failed_retryable >= 2; }));
  EXPECT_EQ(server.request_count(), 0u);
  EXPECT_GE(server.tls_failures(), 1u);
}

TEST_F(UpstreamDeliveryTest, BadConfigurationThrowsAtStart) {
  Options o = options("ftp://x");
  Delivery d(*store_, *store_, o);
  EXPECT_THROW(d.start(), std::invalid_argument);
  o = options("https://127.0.0.1:1");
  o.ca_file = "/nonexistent/ca.pem";
  Delivery d2(*store_, *store_, o);
  EXPECT_THROW(d2.start(), std::runtime_error);
  o = options("http://127.0.0.1:1");
  o.api_key_env = "SIDETRACE_TEST_UNSET_VARIABLE";
  Delivery d3(*store_, *store_, o);
  EXPECT_THROW(d3.start(), std::runtime_error);
}

}  // namespace
}  // namespace sidetrace::upstream
