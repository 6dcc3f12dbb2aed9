// Delivery: the HTTP(S) exporter. One io_context thread (st-delivery) runs a
// dispatcher coroutine (forms batches from persisted records and the outbox)
// and one worker coroutine per in-flight batch (send, classify, retry, ack).
//
// The io thread never calls the store: every store call (outbox reads and
// acknowledgements, batch records, dead letters, the recovery at start) runs
// on the store thread (st-delivery-io) through on_store(), which suspends the
// calling coroutine until the result is posted back to the io thread. In
// buffer.sync = fsync mode a write waits for the disk; the io thread meanwhile
// serves the other batches' responses and timers. A coroutine awaits its own
// store call, so the order of its steps is as if the call were synchronous
// (the batch record is written before the request is sent, the dead letter
// before the acknowledgement, ...); and the store thread runs the calls one
// at a time in the order they were made, so calls of different coroutines
// reach the store in the order the io thread issued them. At most one call
// per coroutine waits: max_in_flight + 2 (the dispatcher, a replay).
//
// Exceptions: the dispatcher, each worker and the io thread catch what is
// thrown inside them (count it in Stats::internal_errors, log it) and carry
// on: the dispatcher after a backoff, a worker by retrying its batch,
// splitting it, or dead-lettering it (kExceptionTries), and always releasing
// its in-flight slot. Encoding runs on the encoder thread inside a worker's
// co_spawn, whose exceptions reach the worker.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>

#include "common/rate_limited_log.h"
#include "common/thread.h"
#include "upstream/detail/encode.h"
#include "upstream/detail/http_client.h"
#include "upstream/detail/neuraltrust.h"
#include "upstream/detail/otlp.h"
#include "upstream/detail/policy.h"
#include "upstream/detail/records.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {

namespace net = boost::asio;
namespace http = boost::beast::http;
using detail::BatchRecord;
using detail::Outcome;
using detail::OutcomeKind;

Format parse_format(const std::string& s) {
  if (s == "native") return Format::kNative;
  if (s == "otlp") return Format::kOtlp;
  if (s == "neuraltrust") return Format::kNeuralTrust;
  throw std::invalid_argument("upstream.format must be native, otlp or neuraltrust, not '" + s +
                              "'");
}

OtlpEncoding parse_otlp_encoding(const std::string& s) {
  if (s == "protobuf") return OtlpEncoding::kProtobuf;
  if (s == "json") return OtlpEncoding::kJson;
  throw std::invalid_argument("upstream.otlp_encoding must be protobuf or json, not '" + s + "'");
}

Compression parse_compression(const std::string& s) {
  if (s == "gzip") return Compression::kGzip;
  if (s == "zstd") return Compression::kZstd;
  if (s == "none") return Compression::kNone;
  throw std::invalid_argument("upstream.compression must be gzip, zstd or none, not '" + s + "'");
}

namespace {

// Everything derived from Options that can fail; built before it replaces
// the running configuration.
struct Config {
  Options options;
  std::shared_ptr<const detail::ConnectionConfig> connection;
  std::vector<std::pair<std::string, std::string>> headers;  // includes the API key header
};

std::string trim_key(std::string s) {
  while (!s.empty() &&
         (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) {
    s.pop_back();
  }
  return s;
}

std::shared_ptr<const Config> build_config(const Options& o) {
  auto c = std::make_shared<Config>();
  c->options = o;
  if (o.batch_max_events == 0 || o.batch_max_bytes == 0) {
    throw std::invalid_argument("upstream.batch_max_events and batch_max_bytes must be positive");
  }
  if (c->options.max_in_flight == 0) c->options.max_in_flight = 1;
  // neuraltrust sends each document as requests of its own, so each is a
  // batch of its own: documents of different traces then go out side by side
  // (up to max_in_flight), and a failure holds back only its own trace.
  if (c->options.format == Format::kNeuralTrust) c->options.batch_max_events = 1;
  auto conn = std::make_shared<detail::ConnectionConfig>();
  conn->endpoint = detail::parse_endpoint(
      o.endpoint, o.format == Format::kNeuralTrust ? detail::kNeuralTrustPath : "/v1/traces");
  if (conn->endpoint.tls) conn->tls = detail::make_tls_context(o);
  conn->tls_verify = o.tls_verify;
  conn->connect_timeout_ms = o.connect_timeout_ms;
  conn->request_timeout_ms = o.request_timeout_ms;
  conn->format = o.format;
  c->connection = std::move(conn);
  std::string key;
  if (!o.api_key_env.empty()) {
    const char* v = std::getenv(o.api_key_env.c_str());
    if (v != nullptr) key = trim_key(v);
  }
  if (key.empty() && !o.api_key_file.empty()) {
    std::ifstream in(o.api_key_file);
    if (!in) throw std::runtime_error("upstream.api_key_file " + o.api_key_file + " unreadable");
    key = trim_key(std::string(std::istreambuf_iterator<char>(in), {}));
  }
  if (key.empty() && (!o.api_key_env.empty() || !o.api_key_file.empty())) {
    throw std::runtime_error("upstream API key configured but empty (api_key_env " + o.api_key_env +
                             ", api_key_file " + o.api_key_file + ")");
  }
  c->headers = o.headers;
  if (!key.empty()) {
    if (o.api_key_header.empty() && o.format == Format::kNeuralTrust) {
      c->headers.emplace_back("token", key);  // as the NeuralTrust SDK sends it
    } else if (o.api_key_header.empty()) {
      c->headers.emplace_back("Authorization", "Bearer " + key);
    } else {
      c->headers.emplace_back(o.api_key_header, key);
    }
  }
  return c;
}

// A batch being delivered (at most max_in_flight). Its documents are held
// until its request is built; then only the compressed request stays, and
// the documents are read again from the outbox if they are needed (a rebuild
// after a reload, truncation, dead letters). Inline batches keep theirs.
struct Batch {
  BatchRecord record;
  std::vector<buffer::Document> docs;  // not null
  std::vector<uint64_t> emitted_ns;    // 0 when unknown (inline)
  size_t events = 0;
  // Outbox entries and document bytes (0: unknown) it accounts for in the
  // dispatcher's Impl::inflight_entries / inflight_bytes.
  uint64_t held_entries = 0;
  uint64_t held_bytes = 0;
  // When it was first sent (Clock::mono_ns(); 0: not yet), for
  // retry_deadline_s, which a retry after an exception does not restart.
  uint64_t first_try_mono = 0;
  // neuraltrust: the requests of the batch's one document, built once, and
  // how many of them the upstream has accepted; a retry (after a failure or
  // an exception) resumes at the first one not accepted.
  std::optional<detail::NeuralTrustRequests> requests;
  size_t requests_done = 0;
  uint64_t requests_bytes = 0;  // body bytes of the accepted ones
};

// What delivery reaches of the store: the outbox it delivers from, and its
// records (batches, dead letters) in meta.
struct DeliveryStore {
  buffer::Outbox& outbox;
  buffer::MetaStore& meta;
};

}  // namespace

struct Delivery::Impl {
  Impl(buffer::Outbox& outbox, buffer::MetaStore& meta, Options o, const Clock& c)
      : store{outbox, meta}, pending_options(std::move(o)), clock(c) {}

  DeliveryStore store;
  Options pending_options;  // used by start()
  const Clock& clock;
  RateLimitedLog log{10, std::chrono::seconds(10)};
  RateLimitedLog auth_log{3, std::chrono::seconds(60)};

  mutable std::mutex stats_mu;
  Stats stats_;
  std::atomic<uint64_t> last_success_mono{0};  // written by the io thread, read by stats()

  // Wakes the dispatcher from the store's emitting thread.
  struct Waker {
    std::mutex mu;
    Impl* impl = nullptr;
    net::io_context* io = nullptr;
    std::atomic<bool> pending{false};
    // While `gated` (see gate_wakes()), only an emission that brings the
    // outbox to a fill mark, or comes after `due_ns`, wakes the dispatcher.
    std::atomic<bool> gated{false};
    std::atomic<uint64_t> fill_entries{0}, fill_bytes{0}, due_ns{0};

    bool wanted(const buffer::Outbox& s, const Clock& c) const {
      return !gated.load() || s.outbox_entries() >= fill_entries.load() ||
             s.outbox_bytes() >= fill_bytes.load() || c.now_ns() >= due_ns.load();
    }
  };
  std::shared_ptr<Waker> waker = std::make_shared<Waker>();

  std::mutex life_mu;  // serialises start/stop
  std::unique_ptr<net::io_context> io;
  std::unique_ptr<net::thread_pool> encoder;   // one thread: body encoding + compression
  std::unique_ptr<net::thread_pool> store_io;  // one thread: every store call (on_store())
  std::thread thread;
  bool running = false;

  // ---- io thread state ----
  std::shared_ptr<const Config> config;
  uint64_t config_generation = 0;
  bool stopping = false;
  bool woken = false;
  // Whether the persisted batches were read at start (load_persisted()); a
  // replay of dead letters takes batch ids only after that, and waits on
  // load_gate until then.
  bool loaded = false;
  std::unique_ptr<net::steady_timer> load_gate;
  std::unique_ptr<net::steady_timer> wake_timer;
  std::unique_ptr<net::steady_timer> auth_timer;
  std::deque<BatchRecord> pending;  // persisted batches waiting, in order
  // Outbox entries read but not yet in a batch, in seq order: at most
  // batch_max_events, and batch_max_bytes of documents plus one. Each entry
  // is read once; `cursor` is the seq after the last one read.
  std::deque<buffer::OutboxEntry> staged;
  size_t staged_bytes = 0;
  uint64_t cursor = 0;  // next outbox seq to read
  // Outbox entries (and their document bytes, where known) of the batches in
  // flight; with `staged` and `pending`, what the dispatcher knows of the
  // outbox (see may_fill()).
  uint64_t inflight_entries = 0;
  uint64_t inflight_bytes = 0;
  // Request bodies of finished batches, kept for the next ones (their pages
  // stay mapped); at most max_in_flight.
  std::vector<std::string> spare_bodies;
  detail::BodyEncoder body_encoder;  // used on the encoder thread only
  uint64_t next_id = 1;              // next batch record id
  uint32_t in_flight = 0;
  std::unordered_map<std::string, uint32_t> busy_traces;  // trace ids in flight
  bool auth_failed = false;
  std::vector<std::pair<uint64_t, std::unique_ptr<detail::HttpConnection>>>
      idle;  // (generation, conn)
  std::mt19937_64 rng{std::random_device{}()};

  void update_stats(const std::function<void(Stats&)>& fn) {
    std::lock_guard lock(stats_mu);
    fn(stats_);
  }

  void wake() {
    woken = true;
    if (wake_timer) wake_timer->cancel();
  }

  void log_line(spdlog::level::level_enum lvl, const std::string& msg) { log.log(lvl, msg); }

  // Counts an exception caught at `stage` and logs it (rate limited) with
  // what happens next.
  void internal_error(Stage stage, const std::string& what, const std::string& next) {
    update_stats([&](Stats& s) { ++s.internal_errors[static_cast<size_t>(stage)]; });
    log_line(spdlog::level::err,
             fmt::format("upstream: internal error ({}): {}; {}", stage_name(stage), what, next));
  }

  // ---- the store thread -----------------------------------------------------

  // Runs `op(store)` on the store thread and resumes the calling coroutine on
  // its own executor (the io thread) with what `op` returned, by value; what
  // `op` throws is caught there and rethrown in the coroutine. `op` must
  // touch only the store, what it captured by value, and data of the
  // suspended coroutine that nothing else changes; never the Impl's state of
  // the io thread (config, pending, staged, busy_traces, ...).
  //
  // `op` is copied; callers pass a named one: GCC 12 destroys a temporary of
  // a co_await expression twice (a lambda's captures would be freed twice).
  //
  // Until the result is back, the coroutine holds the io_context's work
  // count, so that run() does not return under it. On stop() the io thread
  // is joined first, then the store thread, which finishes the calls in
  // progress and queued; their results are discarded with the suspended
  // coroutines.
  template <typename Op>
  auto on_store(const Op& op) -> net::awaitable<std::invoke_result_t<Op&, DeliveryStore&>> {
    using R = std::invoke_result_t<Op&, DeliveryStore&>;
    static_assert(std::is_default_constructible_v<R> && std::is_move_constructible_v<R>);
    return net::async_initiate<const net::use_awaitable_t<>&, void(std::exception_ptr, R)>(
        [pool = store_io.get(), st = &store](auto handler, Op op) {
          auto home = net::prefer(net::get_associated_executor(handler),
                                  net::execution::outstanding_work.tracked);
          net::post(*pool, [st, op = std::move(op), handler = std::move(handler),
                            home = std::move(home)]() mutable {
            std::exception_ptr error;
            R result{};
            try {
              result = op(*st);
            } catch (...) {
              error = std::current_exception();
            }
            net::post(home,
                      [handler = std::move(handler), error, result = std::move(result)]() mutable {
                        std::move(handler)(error, std::move(result));
                      });
          });
        },
        net::use_awaitable, op);
  }

  // ---- start-up -------------------------------------------------------------

  // The persisted batches as the store thread reads them (recover()).
  struct Recovered {
    buffer::Status status;               // of the scan
    std::vector<BatchRecord> resume;     // in id order
    std::vector<std::string> malformed;  // keys of records deleted as malformed
    size_t superseded = 0;               // split parents deleted
    uint64_t next_id = 1;                // after the highest record id
    uint64_t cursor = 0;                 // after the highest seq of a resumed record
  };

  // Runs on the store thread.
  static Recovered recover(DeliveryStore& st) {
    Recovered out;
    std::vector<std::pair<std::string, std::string>> rows;
    out.status = st.meta.meta_scan(detail::kBatchPrefix, SIZE_MAX, &rows);
    if (!out.status.ok()) return out;
    std::vector<BatchRecord> records;
    for (auto& [k, v] : rows) {
      BatchRecord r;
      if (!detail::decode_batch(k, v, &r)) {
        out.malformed.push_back(k);
        st.meta.meta_delete(k);  // best effort: a record left is dropped again at the next start
        continue;
      }
      out.next_id = std::max(out.next_id, r.id + 1);
      records.push_back(std::move(r));
    }
    // A split writes the halves before deleting the parent: a record whose
    // seqs all belong to later records is such a parent.
    std::map<uint64_t, uint64_t> owner;  // seq -> latest record id
    for (auto& r : records) {
      for (uint64_t seq : r.seqs)
        owner[seq] = r.id;
    }
    for (auto& r : records) {
      bool superseded = !r.is_inline();
      for (uint64_t seq : r.seqs)
        superseded = superseded && owner[seq] != r.id;
      if (superseded) {
        st.meta.meta_delete(detail::batch_meta_key(r.id));  // best effort, as above
        ++out.superseded;
        continue;
      }
      for (uint64_t seq : r.seqs)
        out.cursor = std::max(out.cursor, seq + 1);
      out.resume.push_back(std::move(r));
    }
    return out;
  }

  net::awaitable<void> load_persisted() {
    const auto op = [](DeliveryStore& st) { return recover(st); };
    Recovered r = co_await on_store(op);
    if (!r.status.ok()) {
      log_line(spdlog::level::err,
               "upstream: cannot read persisted batches: " + r.status.message());
      co_return;
    }
    for (const auto& k : r.malformed)
      log_line(spdlog::level::err, "upstream: deleting malformed batch record " + k);
    next_id = std::max(next_id, r.next_id);
    cursor = std::max(cursor, r.cursor);
    for (auto& b : r.resume)
      pending.push_back(std::move(b));
    if (!pending.empty()) {
      spdlog::info("upstream: resuming {} persisted batches", pending.size());
    }
  }

  // Lets a dead-letter replay waiting on load_gate go on.
  void mark_loaded() {
    loaded = true;
    if (load_gate) load_gate->cancel();
  }

  // ---- dispatcher -----------------------------------------------------------

  bool conflicts(const std::vector<std::string>& ids, const std::set<std::string>& blocked) const {
    for (auto& id : ids) {
      if (busy_traces.count(id) != 0 || blocked.count(id) != 0) return true;
    }
    return false;
  }

  static size_t events_in(const std::vector<buffer::Document>& docs) {
    size_t n = 0;
    for (const auto& d : docs)
      n += detail::count_events(*d);
    return n;
  }

  // The documents of an inline batch record, as a batch holds them.
  static std::vector<buffer::Document> inline_docs(const BatchRecord& rec) {
    std::vector<buffer::Document> docs;
    docs.reserve(rec.docs.size());
    for (const std::string& d : rec.docs)
      docs.push_back(buffer::make_document(d));
    return docs;
  }

  // A batch's documents as the store thread reads them (read_docs_op()).
  struct DocsRead {
    buffer::Status status;  // of the read that failed; ok otherwise
    BatchRecord record;     // the batch's record without the entries no longer there
    std::vector<buffer::Document> docs;
    std::vector<uint64_t> emitted_ns;
    std::vector<std::string> removed;  // trace ids of the entries no longer there
    size_t events = 0;
  };

  // Runs on the store thread: reads the documents of the (not inline) batch
  // `rec` from the outbox. Entries no longer there (acknowledged, or dropped
  // for room by the quota) leave the record, which is written back (or
  // deleted when none is left).
  static DocsRead read_docs_op(DeliveryStore& st, const BatchRecord& rec) {
    DocsRead out;
    out.record.id = rec.id;
    out.record.key = rec.key;
    for (size_t i = 0; i < rec.seqs.size(); ++i) {
      std::vector<buffer::OutboxEntry> got;
      out.status = st.outbox.read_outbox(rec.seqs[i], 1, SIZE_MAX, &got);
      if (!out.status.ok()) return out;
      if (got.empty() || got[0].seq != rec.seqs[i]) {
        out.removed.push_back(rec.trace_ids[i]);
        continue;
      }
      out.record.seqs.push_back(rec.seqs[i]);
      out.record.trace_ids.push_back(rec.trace_ids[i]);
      out.emitted_ns.push_back(got[0].emitted_ns);
      out.docs.push_back(std::move(got[0].document));
    }
    // Best effort: a stale record lists entries already gone, which the next
    // read drops again.
    if (!out.removed.empty()) {
      if (out.record.seqs.empty()) {
        st.meta.meta_delete(detail::batch_meta_key(rec.id));
      } else {
        st.meta.meta_put(detail::batch_meta_key(rec.id), detail::encode_batch(out.record));
      }
    }
    out.events = events_in(out.docs);
    return out;
  }

  // Reads the documents of a (not inline) batch from the outbox (on the
  // store thread). Entries no longer there leave the batch and its persisted
  // record; `removed` receives their trace ids. False when the read failed
  // (logged; the batch is unchanged).
  net::awaitable<bool> read_docs(Batch* b, std::vector<std::string>* removed) {
    const auto op = [rec = b->record](DeliveryStore& st) { return read_docs_op(st, rec); };
    DocsRead r = co_await on_store(op);
    if (!r.status.ok()) {
      log_line(spdlog::level::err, "upstream: outbox read failed: " + r.status.message());
      co_return false;
    }
    b->record.seqs = std::move(r.record.seqs);
    b->record.trace_ids = std::move(r.record.trace_ids);
    b->docs = std::move(r.docs);
    b->emitted_ns = std::move(r.emitted_ns);
    b->events = r.events;
    *removed = std::move(r.removed);
    co_return true;
  }

  // Loads the documents of a persisted batch (b->record). Entries already
  // acked are dropped from it. Sets *empty when none is left; false when the
  // read failed.
  net::awaitable<bool> load_batch(Batch* b, bool* empty) {
    *empty = false;
    if (b->record.is_inline()) {
      b->docs = inline_docs(b->record);
      b->emitted_ns.assign(b->docs.size(), 0);
      b->events = events_in(b->docs);
      co_return true;
    }
    std::vector<std::string> removed;
    if (!co_await read_docs(b, &removed)) co_return false;
    *empty = b->record.seqs.empty();
    co_return true;
  }

  // Reads an in-flight batch's documents back (see Batch), retrying a failed
  // read. False when the delivery stops or none of its entries is left.
  net::awaitable<bool> reload_docs(Batch& b) {
    if (b.record.is_inline()) {
      // Loading a persisted inline batch may have thrown before its
      // documents were copied (next_batch()).
      if (b.docs.size() != b.record.docs.size()) {
        b.docs = inline_docs(b.record);
        b.emitted_ns.assign(b.docs.size(), 0);
        b.events = events_in(b.docs);
      }
      co_return true;
    }
    if (!b.docs.empty()) co_return true;
    for (uint32_t attempt = 0; !stopping; ++attempt) {
      std::vector<std::string> removed;
      if (co_await read_docs(&b, &removed)) {
        for (const auto& id : removed) {
          auto it = busy_traces.find(id);
          if (it != busy_traces.end() && --it->second == 0) busy_traces.erase(it);
        }
        co_return !b.record.seqs.empty();
      }
      co_await sleep_ms(detail::backoff_ms(attempt, 100, 5000, rng));
    }
    co_return false;
  }

  static void drop_docs(Batch& b) {
    if (!b.record.is_inline()) std::vector<buffer::Document>().swap(b.docs);
  }

  // The outbox totals (entries, document bytes) from which its unread
  // entries may fill the staged batch: an estimate from the store's counters
  // (entries dropped for room while staged or in flight, or acknowledged a
  // moment ago, make it low). Reading on a wrong guess costs one read, and
  // not reading delays the batch at most until its flush deadline.
  std::pair<uint64_t, uint64_t> fill_marks(const Options& o) const {
    uint64_t known_entries = staged.size() + inflight_entries;
    uint64_t known_bytes = staged_bytes + inflight_bytes;
    for (const auto& r : pending)
      known_entries += r.seqs.size();
    const uint64_t half = o.batch_max_bytes / 2;
    if (staged.size() >= o.batch_max_events || staged_bytes >= half) return {0, 0};
    return {known_entries + (o.batch_max_events - staged.size()),
            known_bytes + (half - staged_bytes)};
  }

  // Whether the outbox may hold enough unread entries to fill the staged
  // batch. The store's counters are in memory: the one store call the io
  // thread makes itself.
  bool may_fill(const Options& o) const {
    auto [entries, bytes] = fill_marks(o);
    return store.outbox.outbox_entries() >= entries || store.outbox.outbox_bytes() >= bytes;
  }

  // Has emissions wake the dispatcher, while it waits for the staged batch's
  // flush deadline, only when the outbox may fill the batch or the deadline
  // has passed. False when it may fill already (nothing is gated).
  bool gate_wakes(const Options& o) {
    auto [entries, bytes] = fill_marks(o);
    Waker& w = *waker;
    w.fill_entries.store(entries);
    w.fill_bytes.store(bytes);
    w.due_ns.store(staged.front().emitted_ns + o.flush_interval_ms * 1'000'000);
    w.gated.store(true);
    // An emission that saw the gate open has posted its wake-up; one that
    // comes after this sees the marks.
    if (!may_fill(o)) return true;
    w.gated.store(false);
    return false;
  }

  // Milliseconds until the oldest staged entry is flush_interval_ms old; 0
  // when it is (or nothing is staged).
  uint64_t flush_wait_ms(const Options& o) const {
    if (staged.empty()) return 0;
    uint64_t now = clock.now_ns();
    uint64_t emitted = staged.front().emitted_ns;
    uint64_t age_ms = now > emitted ? (now - emitted) / 1'000'000 : 0;
    return age_ms < o.flush_interval_ms ? o.flush_interval_ms - age_ms : 0;
  }

  // Reads the outbox entries after the staged ones, up to the batch bounds.
  // False when the read failed (logged). Only the dispatcher changes
  // `staged` and `cursor`, so they are as it left them when the read is back.
  net::awaitable<bool> stage(const Options& o) {
    if (staged.size() >= o.batch_max_events || staged_bytes >= o.batch_max_bytes) co_return true;
    struct Read {
      buffer::Status status;
      std::vector<buffer::OutboxEntry> got;
    };
    const auto op = [from = cursor, max_entries = o.batch_max_events - staged.size(),
                     max_bytes = o.batch_max_bytes - staged_bytes](DeliveryStore& st) {
      Read out;
      out.status = st.outbox.read_outbox(from, max_entries, max_bytes, &out.got);
      return out;
    };
    Read r = co_await on_store(op);
    if (!r.status.ok()) {
      log_line(spdlog::level::err, "upstream: outbox read failed: " + r.status.message());
      co_return false;
    }
    for (auto& e : r.got) {
      cursor = e.seq + 1;
      staged_bytes += e.document->size();
      staged.push_back(std::move(e));
    }
    co_return true;
  }

  // Picks the next batch to send, or sets *wait_ms (0: until woken). While
  // it awaits the store, the workers run: they may put batches in front of
  // `pending` (split()) and free traces, so what it decided before an await
  // it checks again after.
  net::awaitable<std::optional<Batch>> next_batch(uint64_t* wait_ms) {
    *wait_ms = 0;
    // A reload must not pull the options away mid-await.
    std::shared_ptr<const Config> cfg = config;
    const Options& o = cfg->options;
    std::set<std::string> blocked;
    for (auto it = pending.begin(); it != pending.end();) {
      if (conflicts(it->trace_ids, blocked)) {
        blocked.insert(it->trace_ids.begin(), it->trace_ids.end());
        ++it;
        continue;
      }
      Batch b;
      b.record = std::move(*it);
      pending.erase(it);
      b.held_entries = b.record.seqs.size();
      bool read = false, empty = false;
      std::string error;
      try {
        read = co_await load_batch(&b, &empty);
      } catch (...) {
        error = detail::current_exception_text();
      }
      if (!error.empty()) {
        // The worker reads the documents again (reload_docs()) under its own
        // handling of exceptions, which cannot wedge the dispatcher.
        internal_error(Stage::kDispatch, error,
                       fmt::format("batch {} loads its documents again when sent", b.record.id));
        b.docs.clear();
        b.emitted_ns.clear();
        b.events = 0;
        co_return std::move(b);
      }
      if (read && !empty) co_return std::move(b);
      if (!read) {
        // The batch stays first in line; reading is tried again in a while.
        pending.push_front(std::move(b.record));
        *wait_ms = 1000;
        co_return std::nullopt;
      }
      // Nothing of it is left. `pending` may have changed during the read:
      // look at it again from the start.
      blocked.clear();
      it = pending.begin();
    }
    // New entries are read when they may complete a batch: with nothing
    // staged (the first gives the flush deadline), at the flush deadline, or
    // when the outbox may hold enough to fill one. Between these, the wake-up
    // an emission causes costs no read.
    if (staged.empty() || flush_wait_ms(o) == 0 || may_fill(o)) {
      if (!co_await stage(o)) {
        *wait_ms = 1000;
        co_return std::nullopt;
      }
    }
    if (staged.empty()) co_return std::nullopt;
    // The batch: the staged entries up to the first whose trace is in flight
    // or behind a waiting batch, or already in the batch (a request never
    // carries two revisions of one trace: an OTLP revision after the first
    // holds only its changes, to be applied after the one before), and
    // within the bounds. Each of these is a cut: the batch cannot grow past it.
    size_t bytes = 0;
    size_t n = 0;
    bool full = false;
    std::unordered_set<std::string_view> in_batch;
    for (; n < staged.size(); ++n) {
      const buffer::OutboxEntry& e = staged[n];
      if (busy_traces.count(e.trace_id) != 0 || blocked.count(e.trace_id) != 0 ||
          n >= o.batch_max_events || (n > 0 && bytes + e.document->size() > o.batch_max_bytes) ||
          !in_batch.insert(e.trace_id).second) {
        full = true;
        break;
      }
      bytes += e.document->size();
    }
    if (n == 0) co_return std::nullopt;  // woken when the conflicting batch finishes
    full = full || n >= o.batch_max_events || bytes >= o.batch_max_bytes / 2;
    if (!full) {
      *wait_ms = flush_wait_ms(o);
      if (*wait_ms > 0) {
        // Emissions that cannot fill it leave the dispatcher asleep.
        if (!gate_wakes(o)) woken = true;
        co_return std::nullopt;
      }
    }
    Batch b;
    b.record.id = next_id++;
    b.record.key = detail::new_idempotency_key();
    for (size_t i = 0; i < n; ++i) {
      b.record.seqs.push_back(staged[i].seq);
      b.record.trace_ids.push_back(staged[i].trace_id);
    }
    // Persist the composition and key before the first send. Meanwhile the
    // staged entries stay (only the dispatcher takes them), and their traces
    // stay free: only the dispatcher makes traces busy.
    const auto persist = [key = detail::batch_meta_key(b.record.id),
                          value = detail::encode_batch(b.record)](DeliveryStore& st) {
      return st.meta.meta_put(key, value);
    };
    buffer::Status s = co_await on_store(persist);
    if (!s.ok()) {
      log_line(spdlog::level::err, "upstream: cannot persist batch record: " + s.message());
      *wait_ms = 1000;
      co_return std::nullopt;
    }
    b.docs.reserve(n);
    b.emitted_ns.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      buffer::OutboxEntry& e = staged.front();
      b.emitted_ns.push_back(e.emitted_ns);
      b.events += detail::count_events(*e.document);
      b.docs.push_back(std::move(e.document));
      staged.pop_front();
    }
    staged_bytes -= bytes;
    b.held_entries = n;
    b.held_bytes = bytes;
    co_return std::move(b);
  }

  // Starts the dispatcher (after reading the persisted batches when
  // `resume`). Should an exception escape it, it is counted and the
  // dispatcher started again.
  void spawn_dispatcher(bool resume) {
    net::co_spawn(*io, dispatcher(resume), [this](std::exception_ptr e) {
      if (!e) return;
      internal_error(Stage::kDispatch, detail::exception_text(e), "dispatcher restarted");
      if (!stopping) spawn_dispatcher(false);
    });
  }

  net::awaitable<void> dispatcher(bool resume) {
    if (resume) {
      std::string error;
      try {
        co_await load_persisted();
      } catch (...) {
        error = detail::current_exception_text();
      }
      if (!error.empty()) {
        // As when the records cannot be read: their outbox entries are read
        // again into new batches, and the stale records are dropped at the
        // next start, once their entries are acknowledged.
        pending.clear();
        cursor = 0;
        internal_error(Stage::kDispatch, error,
                       "persisted batches are not resumed; the outbox is read from its start");
      }
      mark_loaded();
    }
    uint32_t errors = 0;
    while (!stopping) {
      std::string error;
      try {
        co_await dispatch_step();
        errors = 0;
        continue;
      } catch (...) {
        error = detail::current_exception_text();
      }
      uint64_t delay = detail::backoff_ms(errors++, 100, 5000, rng);
      internal_error(Stage::kDispatch, error, fmt::format("dispatching again in {} ms", delay));
      co_await sleep_ms(delay);
    }
  }

  // Starts the next batch, or waits until woken (or its flush deadline).
  net::awaitable<void> dispatch_step() {
    woken = false;
    waker->gated.store(false);
    uint64_t wait_ms = 0;
    if (!auth_failed && in_flight < config->options.max_in_flight) {
      std::optional<Batch> b = co_await next_batch(&wait_ms);
      if (b) {
        ++in_flight;
        inflight_entries += b->held_entries;
        inflight_bytes += b->held_bytes;
        for (auto& id : b->record.trace_ids)
          ++busy_traces[id];
        update_stats([&](Stats& s) { s.in_flight = in_flight; });
        // worker() catches what its batch throws and releases the slot;
        // only a failure of that handling itself reaches this handler.
        net::co_spawn(*io, worker(std::move(*b)), [this](std::exception_ptr e) {
          if (e) internal_error(Stage::kSend, detail::exception_text(e), "worker ended");
        });
        co_return;
      }
    }
    if (woken) co_return;
    if (wait_ms == 0) {
      wake_timer->expires_at(net::steady_timer::time_point::max());
    } else {
      wake_timer->expires_after(std::chrono::milliseconds(wait_ms));
    }
    boost::system::error_code ec;
    co_await wake_timer->async_wait(net::redirect_error(net::use_awaitable, ec));
  }

  // ---- worker ---------------------------------------------------------------

  std::unique_ptr<detail::HttpConnection> take_connection() {
    while (!idle.empty()) {
      auto [gen, c] = std::move(idle.back());
      idle.pop_back();
      if (gen == config_generation) return std::move(c);
    }
    return std::make_unique<detail::HttpConnection>(io->get_executor(), config->connection);
  }

  void give_connection(std::unique_ptr<detail::HttpConnection> c, uint64_t gen) {
    if (gen == config_generation && !stopping) idle.emplace_back(gen, std::move(c));
  }

  // Encodes and compresses into `body` (whose capacity is reused); runs on
  // the encoder thread, the only user of body_encoder.
  bool build_request(const Config& c, const Batch& b, std::string body,
                     http::request<http::string_body>* req, std::string* error) {
    const Options& o = c.options;
    if (o.encode_hook) o.encode_hook(b.record.trace_ids);
    std::vector<std::string_view> views;
    views.reserve(b.docs.size());
    for (const buffer::Document& d : b.docs)
      views.emplace_back(*d);
    const bool protobuf = o.format == Format::kOtlp && o.otlp_encoding == OtlpEncoding::kProtobuf;
    if (o.format == Format::kNative) {
      if (!body_encoder.native(o.compression, o.compression_level, views, &body)) {
        *error = "compression failed";
        return false;
      }
    } else if (!body_encoder.otlp(o.otlp_encoding, o.compression, o.compression_level, views, &body,
                                  error)) {
      return false;
    }
    *req = http::request<http::string_body>(http::verb::post, c.connection->endpoint.target, 11);
    req->set(http::field::host, c.connection->endpoint.host_header);
    req->set(http::field::user_agent, "sidetrace/0.1");
    req->set(http::field::content_type, protobuf ? "application/x-protobuf" : "application/json");
    auto enc = detail::content_encoding(c.options.compression);
    if (!enc.empty()) req->set(http::field::content_encoding, std::string(enc));
    req->set("Idempotency-Key", b.record.key);
    for (auto& [k, v] : c.headers)
      req->set(k, v);
    req->keep_alive(true);
    req->body() = std::move(body);
    req->prepare_payload();
    return true;
  }

  net::awaitable<void> sleep_ms(uint64_t ms) {
    net::steady_timer t(*io, std::chrono::milliseconds(ms));
    boost::system::error_code ec;
    co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
  }

  // A buffer for a request body: the request's own (a rebuild), or a spare.
  std::string take_body(http::request<http::string_body>& req) {
    if (req.body().capacity() > 0 || spare_bodies.empty()) return std::move(req.body());
    std::string body = std::move(spare_bodies.back());
    spare_bodies.pop_back();
    return body;
  }

  void give_body(std::string body) {
    if (spare_bodies.size() < config->options.max_in_flight) {
      spare_bodies.push_back(std::move(body));
    }
  }

  void finish(Batch& b) {
    inflight_entries -= b.held_entries;
    inflight_bytes -= b.held_bytes;
    b.held_entries = b.held_bytes = 0;
    for (auto& id : b.record.trace_ids) {
      auto it = busy_traces.find(id);
      if (it != busy_traces.end() && --it->second == 0) busy_traces.erase(it);
    }
    --in_flight;
    update_stats([&](Stats& s) { s.in_flight = in_flight; });
    wake();
  }

  // Runs a store write, op(store) -> Status, on the store thread
  // (on_store()), retrying it until it succeeds or the delivery stops. `op`
  // lives in this coroutine's frame, suspended while it runs; see on_store()
  // for what it may touch. Named by the caller (see on_store()).
  template <typename Op>
  net::awaitable<bool> store_retry(const Op& op, const char* what) {
    for (uint32_t attempt = 0; !stopping; ++attempt) {
      const auto call = [&op](DeliveryStore& st) { return op(st); };
      buffer::Status s = co_await on_store(call);
      if (s.ok()) co_return true;
      log_line(spdlog::level::err, fmt::format("upstream: {} failed: {}", what, s.message()));
      co_await sleep_ms(detail::backoff_ms(attempt, 100, 5000, rng));
    }
    co_return false;
  }

  net::awaitable<void> on_success(Batch& b, const Outcome& o, size_t body_bytes) {
    if (config->options.format == Format::kOtlp) {
      // Spans the upstream rejected are not sent again: it said why.
      detail::PartialSuccess ps;
      if (!detail::decode_partial_success(o.body, o.content_type, &ps)) {
        log_line(spdlog::level::debug,
                 fmt::format("upstream: {} answer of {} bytes ({}) is not an OTLP response",
                             o.http_status, o.body.size(), o.content_type));
      } else if (ps.any()) {
        const uint64_t rejected = static_cast<uint64_t>(std::max<int64_t>(ps.rejected_spans, 0));
        log_line(spdlog::level::warn,
                 fmt::format("upstream: partial success, {} spans rejected: {}", rejected,
                             detail::log_safe(ps.error_message)));
        update_stats([&](Stats& s) { s.spans_rejected += rejected; });
      }
    }
    // Counted when the upstream has it, before the acknowledgement is written:
    // whoever sees the outbox drained also sees the counters.
    uint64_t now = clock.now_ns();
    last_success_mono = clock.mono_ns();
    if (auth_failed) {
      auth_failed = false;
      spdlog::info("upstream: authentication accepted again, sending resumed");
      wake();
    }
    update_stats([&](Stats& s) {
      ++s.batches_sent;
      if (!b.requests) ++s.requests_sent;  // neuraltrust counts each of its own
      s.traces_delivered += b.record.trace_ids.size();
      s.events_delivered += b.events;
      s.bytes_sent += body_bytes;
      s.auth_failed = false;
      for (uint64_t e : b.emitted_ns) {
        if (e == 0) continue;
        uint64_t ms = now > e ? (now - e) / 1'000'000 : 0;
        size_t i = 0;
        while (ms > kLatencyBoundsMs[i])
          ++i;
        ++s.latency_buckets[i];
        s.latency_sum_ms += ms;
        ++s.latency_count;
      }
    });
    co_await ack(b);
  }

  // Acknowledges a delivered (or dead-lettered) batch: its outbox entries,
  // then its record.
  net::awaitable<void> ack(const Batch& b) {
    if (!b.record.is_inline()) {
      const auto ack_entries = [seqs = b.record.seqs](DeliveryStore& st) {
        return st.outbox.ack_outbox(seqs);
      };
      if (!co_await store_retry(ack_entries, "outbox ack")) co_return;
    }
    const auto delete_record = [key = detail::batch_meta_key(b.record.id)](DeliveryStore& st) {
      return st.meta.meta_delete(key);
    };
    co_await store_retry(delete_record, "batch record delete");
  }

  net::awaitable<void> deadletter(Batch& b, int status, const std::string& reason) {
    if (!co_await reload_docs(b)) co_return;
    detail::DeadLetterRecord d;
    d.ts_ns = clock.now_ns();
    d.http_status = status;
    d.reason = reason;
    d.key = b.record.key;
    d.trace_ids = b.record.trace_ids;
    d.docs.reserve(b.docs.size());
    for (const buffer::Document& doc : b.docs)
      d.docs.push_back(*doc);
    // `d`, `evicted` and `evicted_docs` belong to this coroutine, suspended
    // while the store thread uses them; the bounds are copied.
    uint64_t evicted = 0, evicted_docs = 0;
    const auto add = [&d, &evicted, &evicted_docs, max_bytes = config->options.deadletter_max_bytes,
                      max_count = config->options.deadletter_max_count](DeliveryStore& st) {
      return detail::deadletter_add(st.meta, d, max_bytes, max_count, &evicted, &evicted_docs);
    };
    if (!co_await store_retry(add, "dead-letter write")) co_return;
    co_await ack(b);
    log_line(spdlog::level::err,
             fmt::format("upstream: {} trace documents dead-lettered ({})", b.docs.size(), reason));
    if (evicted > 0) {
      log_line(spdlog::level::err,
               fmt::format("upstream: dead-letter store full, {} oldest records ({} documents) "
                           "evicted and lost",
                           evicted, evicted_docs));
    }
    update_stats([&](Stats& s) {
      s.deadlettered += b.docs.size();
      s.deadletter_evicted += evicted;
      s.dropped += evicted_docs;
    });
  }

  // Persists `parts` (each a batch record of its own), then deletes the
  // record `parent_id` they replace: after a crash in between, the parts are
  // sent and the parent's record is deleted at the next start. False when
  // delivery stopped first. (The ops are named locals: GCC 12 destroys a
  // temporary in a co_await expression twice.)
  net::awaitable<bool> replace_record(uint64_t parent_id, std::span<const BatchRecord> parts) {
    for (const BatchRecord& r : parts) {
      const auto write = [key = detail::batch_meta_key(r.id), value = detail::encode_batch(r)](
                             DeliveryStore& st) { return st.meta.meta_put(key, value); };
      if (!co_await store_retry(write, "batch record write")) co_return false;
    }
    const auto delete_parent = [key = detail::batch_meta_key(parent_id)](DeliveryStore& st) {
      return st.meta.meta_delete(key);
    };
    co_await store_retry(delete_parent, "batch record delete");
    co_return true;
  }

  // 413 (or content refused with 400/422) on a multi-document batch: two
  // halves with new keys, persisted, first in line.
  net::awaitable<void> split(Batch& b) {
    BatchRecord halves[2];
    size_t mid = b.record.trace_ids.size() / 2;
    for (int h = 0; h < 2; ++h) {
      size_t lo = h == 0 ? 0 : mid, hi = h == 0 ? mid : b.record.trace_ids.size();
      BatchRecord& r = halves[h];
      r.id = next_id++;
      r.key = detail::new_idempotency_key();
      r.trace_ids.assign(b.record.trace_ids.begin() + lo, b.record.trace_ids.begin() + hi);
      if (b.record.is_inline()) {
        r.docs.assign(b.record.docs.begin() + lo, b.record.docs.begin() + hi);
      } else {
        r.seqs.assign(b.record.seqs.begin() + lo, b.record.seqs.begin() + hi);
      }
    }
    const std::span<const BatchRecord> written(halves);
    if (!co_await replace_record(b.record.id, written)) co_return;
    pending.push_front(std::move(halves[1]));
    pending.push_front(std::move(halves[0]));
    update_stats([](Stats& s) { ++s.batches_split; });
  }

  // ---- neuraltrust: one request per event and feedback item ----------------

  // Makes every document of a batch a batch of its own (new keys, persisted
  // before the parent record is deleted, as split() does), first in line and
  // in order.
  net::awaitable<void> split_documents(Batch& b) {
    const size_t n = b.record.trace_ids.size();
    std::vector<BatchRecord> parts(n);
    for (size_t i = 0; i < n; ++i) {
      BatchRecord& r = parts[i];
      r.id = next_id++;
      r.key = detail::new_idempotency_key();
      r.trace_ids = {b.record.trace_ids[i]};
      if (b.record.is_inline()) {
        r.docs = {b.record.docs[i]};
      } else {
        r.seqs = {b.record.seqs[i]};
      }
    }
    const std::span<const BatchRecord> written(parts);
    if (!co_await replace_record(b.record.id, written)) co_return;
    for (size_t i = n; i-- > 0;)
      pending.push_front(std::move(parts[i]));
    update_stats([](Stats& s) { ++s.batches_split; });
  }

  static http::request<http::string_body> event_request(const Config& c, std::string body) {
    http::request<http::string_body> req(http::verb::post, c.connection->endpoint.target, 11);
    req.set(http::field::host, c.connection->endpoint.host_header);
    req.set(http::field::user_agent, "sidetrace/0.1");
    req.set(http::field::content_type, "application/json");
    for (auto& [k, v] : c.headers)
      req.set(k, v);
    req.keep_alive(true);
    req.body() = std::move(body);
    req.prepare_payload();
    return req;
  }

  // A request was accepted: the last success, and the end of an auth pause.
  void note_accepted() {
    last_success_mono = clock.mono_ns();
    if (auth_failed) {
      auth_failed = false;
      spdlog::info("upstream: authentication accepted again, sending resumed");
      wake();
    }
    update_stats([](Stats& s) {
      ++s.requests_sent;
      s.auth_failed = false;
    });
  }

  // 401/403: counts it, pauses sending and waits for the next probe (the
  // auth timer, which the workers share; the first to fail arms it).
  net::awaitable<void> auth_pause(const Outcome& out, const Options& o) {
    update_stats([](Stats& s) {
      ++s.failed_auth;
      s.auth_failed = true;
    });
    auth_failed = true;
    auth_log.log(spdlog::level::err,
                 fmt::format("upstream: authentication rejected ({}); sending paused, data "
                             "kept on disk; fix the API key and reload",
                             out.detail));
    if (auth_timer->expiry() <= net::steady_timer::clock_type::now()) {
      auth_timer->expires_after(std::chrono::milliseconds(o.auth_probe_interval_ms));
    }
    boost::system::error_code ec;
    co_await auth_timer->async_wait(net::redirect_error(net::use_awaitable, ec));
  }

  // A retryable failure: counts it and waits the backoff (raised to a
  // Retry-After, up to retry_after_max_ms). False when the batch's retry
  // deadline has passed instead: it is then dead-lettered. `what` names what
  // failed in the log and the dead letter's reason.
  net::awaitable<bool> retry_wait(Batch& b, const Outcome& out, const Options& o, uint32_t* attempt,
                                  const std::string& what) {
    update_stats([](Stats& s) {
      ++s.failed_retryable;
      ++s.batches_retried;
    });
    uint64_t elapsed_ms = (clock.mono_ns() - b.first_try_mono) / 1'000'000;
    if (o.retry_deadline_s > 0 && elapsed_ms >= uint64_t{o.retry_deadline_s} * 1000) {
      const std::string reason = fmt::format("retry deadline passed: {} ({})", out.detail, what);
      co_await deadletter(b, out.http_status, reason);
      co_return false;
    }
    uint64_t delay = detail::backoff_ms((*attempt)++, o.retry_initial_ms, o.retry_max_ms, rng);
    if (out.retry_after_ms) {
      delay = std::max(delay, std::min<uint64_t>(*out.retry_after_ms, o.retry_after_max_ms));
    }
    log_line(spdlog::level::warn,
             fmt::format("upstream: {} failed ({}), retry in {} ms", what, out.detail, delay));
    co_await sleep_ms(delay);
    co_return true;
  }

  // Delivers a neuraltrust batch: its document's requests
  // (detail/neuraltrust.h) one after another, in order, each with the
  // outcomes of a batch. A retry resumes at the request that failed: what the
  // upstream accepted is not sent again while the agent runs (after a restart
  // the document is sent from its first request). The batch is acknowledged
  // once every request is accepted; a refusal or the retry deadline
  // dead-letters the whole document. Returns false when a reload changed the
  // format (deliver() then sends the batch in the new one), true otherwise.
  net::awaitable<bool> deliver_events(Batch& b, Stage* stage) {
    if (b.record.trace_ids.size() > 1) {
      // Persisted under another format, or replayed dead letters.
      co_await split_documents(b);
      co_return true;
    }
    if (!b.requests) {
      if (!co_await reload_docs(b)) co_return true;
      std::shared_ptr<const Config> cfg = config;
      detail::NeuralTrustRequests requests;
      std::string error;
      *stage = Stage::kEncode;
      bool built = co_await net::co_spawn(
          encoder->get_executor(),
          [&]() -> net::awaitable<bool> {
            if (cfg->options.encode_hook) cfg->options.encode_hook(b.record.trace_ids);
            co_return detail::neuraltrust_requests(*b.docs.at(0), &requests, &error);
          },
          net::use_awaitable);
      *stage = Stage::kSend;
      if (stopping) co_return true;
      if (!built) {
        const std::string reason = "unencodable document: " + error;
        co_await deadletter(b, 0, reason);
        co_return true;
      }
      b.requests = std::move(requests);
      b.requests_done = 0;
      b.requests_bytes = 0;
      drop_docs(b);
    }
    uint32_t attempt = 0;
    const size_t total = b.requests->bodies.size();
    while (!stopping && b.requests_done < total) {
      std::shared_ptr<const Config> cfg = config;  // a reload must not pull it away mid-await
      const Options& o = cfg->options;
      if (o.format != Format::kNeuralTrust) co_return false;
      const size_t i = b.requests_done;
      std::string& body = b.requests->bodies[i];
      http::request<http::string_body> req = event_request(*cfg, std::move(body));
      uint64_t gen = config_generation;
      std::unique_ptr<detail::HttpConnection> conn = take_connection();
      Outcome out = co_await conn->post(req, clock.now_ns());
      body = std::move(req.body());
      if (stopping) break;
      give_connection(std::move(conn), gen);
      if (out.kind == OutcomeKind::kSuccess) {
        note_accepted();
        b.requests_bytes += body.size();
        ++b.requests_done;
        attempt = 0;
        continue;
      }
      // Names the request in the logs and the dead-letter reason.
      const std::string what = fmt::format("request {} of {} (id {}) of trace {}", i + 1, total,
                                           b.requests->ids[i], b.record.trace_ids.at(0));
      switch (out.kind) {
        case OutcomeKind::kSuccess:  // above
        case OutcomeKind::kRetryable:
          break;
        case OutcomeKind::kPermanent: {
          update_stats([](Stats& s) { ++s.failed_permanent; });
          const std::string reason = fmt::format("{} ({})", out.detail, what);
          co_await deadletter(b, out.http_status, reason);
          co_return true;
        }
        case OutcomeKind::kTooLarge: {
          update_stats([](Stats& s) { ++s.failed_too_large; });
          if (detail::truncate_neuraltrust_body(&body)) {
            update_stats([](Stats& s) { ++s.documents_truncated; });
            continue;
          }
          const std::string reason =
              fmt::format("{} ({}; cannot shrink further)", out.detail, what);
          co_await deadletter(b, out.http_status, reason);
          co_return true;
        }
        case OutcomeKind::kAuth:
          co_await auth_pause(out, o);
          continue;
      }
      if (!co_await retry_wait(b, out, o, &attempt, what)) co_return true;
    }
    if (stopping) co_return true;  // the batch record stays; the next start resends it
    b.events = b.requests->events;
    const Outcome accepted;  // named: GCC 12 destroys a temporary argument of a coroutine twice
    co_await on_success(b, accepted, b.requests_bytes);
    co_return true;
  }

  // Delivers a batch: builds its request, sends it, and acts on the outcome
  // until the batch is acknowledged, dead-lettered or split, or the delivery
  // stops. `*stage` tells where an exception it throws came from.
  net::awaitable<void> deliver(Batch& b, Stage* stage) {
    if (b.first_try_mono == 0) b.first_try_mono = clock.mono_ns();
    uint32_t attempt = 0;
    http::request<http::string_body> req;
    bool need_build = true;
    uint64_t built_gen = 0;  // the configuration the request was built with
    while (!stopping) {
      std::shared_ptr<const Config> cfg = config;  // a reload must not pull it away mid-await
      const uint64_t cfg_gen = config_generation;
      const Options& o = cfg->options;
      if (o.format == Format::kNeuralTrust) {
        if (co_await deliver_events(b, stage)) co_return;
        continue;  // a reload changed the format: the batch goes out whole in the new one
      }
      // Headers (the API key above all) may have changed with a reload.
      if (built_gen != cfg_gen) need_build = true;
      if (need_build) {
        if (!co_await reload_docs(b)) {
          co_return;
        }
        // Encoding and compression run on the encoder thread so that the
        // io thread keeps reading the outbox and serving other batches.
        std::string error;
        std::string body = take_body(req);
        *stage = Stage::kEncode;
        bool built = co_await net::co_spawn(
            encoder->get_executor(),
            [&]() -> net::awaitable<bool> {
              co_return build_request(*cfg, b, std::move(body), &req, &error);
            },
            net::use_awaitable);
        *stage = Stage::kSend;
        if (stopping) break;
        if (!built) {
          const std::string reason = "unencodable batch: " + error;  // named: see on_store()
          co_await deadletter(b, 0, reason);
          co_return;
        }
        need_build = false;
        built_gen = cfg_gen;
        drop_docs(b);
      }
      uint64_t gen = config_generation;
      std::unique_ptr<detail::HttpConnection> conn = take_connection();
      Outcome out = co_await conn->post(req, clock.now_ns());
      if (stopping) break;
      give_connection(std::move(conn), gen);
      if (gen != config_generation) need_build = true;
      switch (out.kind) {
        case OutcomeKind::kSuccess:
          co_await on_success(b, out, req.body().size());
          give_body(std::move(req.body()));
          co_return;
        case OutcomeKind::kPermanent:
          update_stats([](Stats& s) { ++s.failed_permanent; });
          // The upstream refused the content: halve the batch until the
          // documents it refuses are alone, so that one bad document does not
          // take its neighbours to the dead letters.
          if ((out.http_status == 400 || out.http_status == 422) && b.record.trace_ids.size() > 1) {
            co_await split(b);
            co_return;
          }
          co_await deadletter(b, out.http_status, out.detail);
          co_return;
        case OutcomeKind::kTooLarge: {
          update_stats([](Stats& s) { ++s.failed_too_large; });
          if (b.record.trace_ids.size() > 1) {
            co_await split(b);
            co_return;
          }
          if (!co_await reload_docs(b)) {
            co_return;
          }
          // The document may be shared (the viewer's): truncate a copy.
          if (std::string doc = *b.docs[0]; detail::truncate_largest_field(&doc)) {
            b.docs[0] = buffer::make_document(std::move(doc));
            update_stats([](Stats& s) { ++s.documents_truncated; });
            need_build = true;
            continue;
          }
          const std::string reason = out.detail + " (cannot shrink further)";  // named
          co_await deadletter(b, out.http_status, reason);
          co_return;
        }
        case OutcomeKind::kAuth:
          co_await auth_pause(out, o);
          continue;
        case OutcomeKind::kRetryable:
          break;
      }
      const std::string what = fmt::format("batch of {}", b.record.trace_ids.size());
      if (!co_await retry_wait(b, out, o, &attempt, what)) co_return;
    }
    // Stopping: the batch record stays; the next start resends it.
  }

  // A batch's worker: deliver() it, and release its in-flight slot however
  // that ends. An exception (kExceptionTries in upstream.h) is counted and
  // logged; a batch of several documents is then split in halves at once, so
  // that a document that throws ends up alone, and a single document is tried
  // again after a backoff, then dead-lettered with the exception as reason.
  net::awaitable<void> worker(Batch b) {
    for (uint32_t tries = 1;; ++tries) {
      Stage stage = Stage::kSend;
      std::string error;
      try {
        co_await deliver(b, &stage);
        break;
      } catch (...) {
        error = detail::current_exception_text();
      }
      const size_t traces = b.record.trace_ids.size();
      if (stopping) {
        internal_error(stage, error, "stopping; the batch is sent again at the next start");
        break;
      }
      if (traces > 1) {
        internal_error(stage, error,
                       fmt::format("splitting the batch of {} documents in halves", traces));
        co_await set_aside(b, error);
        break;
      }
      if (tries >= kExceptionTries) {
        internal_error(stage, error,
                       fmt::format("dead-lettering the document after {} tries", tries));
        co_await set_aside(
            b, fmt::format("internal error ({}) {} times: {}", stage_name(stage), tries, error));
        break;
      }
      const Options& o = config->options;
      uint64_t delay = detail::backoff_ms(tries - 1, o.retry_initial_ms, o.retry_max_ms, rng);
      internal_error(stage, error, fmt::format("retrying the batch in {} ms", delay));
      co_await sleep_ms(delay);
    }
    finish(b);
  }

  // After exceptions: splits a batch of several documents in halves, or
  // dead-letters a single one with `reason`. When that throws as well, the
  // batch stays in the store as it is (its record and outbox entries) and is
  // sent again at the next start.
  net::awaitable<void> set_aside(Batch& b, std::string reason) {
    std::string error;
    try {
      if (b.record.trace_ids.size() > 1) {
        co_await split(b);
      } else {
        co_await deadletter(b, 0, reason);
      }
      co_return;
    } catch (...) {
      error = detail::current_exception_text();
    }
    internal_error(Stage::kSend, error,
                   fmt::format("batch {} of {} documents left in the store until the next start",
                               b.record.id, b.record.trace_ids.size()));
  }

  // ---- dead-letter replay ---------------------------------------------------

  // Moves the dead letters back into delivery (as pending batches), a page at
  // a time: each page runs on the store thread with batch ids reserved for
  // it here, so that the ids the workers and the dispatcher take meanwhile
  // (split(), next_batch()) never collide with them. Waits until the
  // persisted batches are loaded (their ids come first). Returns the records
  // replayed.
  // `progress` (may be empty) hears the count after each page, on this
  // thread; `error` (may be null) gets why the replay stopped early.
  net::awaitable<size_t> replay(const DeadLetterProgress* progress, std::string* failure) {
    while (!loaded && !stopping) {
      boost::system::error_code ec;
      co_await load_gate->async_wait(net::redirect_error(net::use_awaitable, ec));
    }
    struct Page {
      buffer::Status status;
      std::vector<BatchRecord> created;
      size_t replayed = 0;
    };
    size_t total = 0;
    std::string error;
    try {
      while (!stopping) {
        const uint64_t first = next_id;
        next_id += detail::kDeadLetterPage;
        const auto op = [first](DeliveryStore& st) {
          Page out;
          uint64_t id = first;
          out.status = detail::replay_deadletters(st.meta, &id, &out.created, &out.replayed,
                                                  detail::kDeadLetterPage);
          return out;
        };
        Page p = co_await on_store(op);
        total += p.replayed;
        for (auto& r : p.created)
          pending.push_back(std::move(r));
        if (!p.created.empty()) wake();
        if (p.replayed > 0 && progress && *progress) (*progress)(total);
        if (!p.status.ok()) {
          log_line(spdlog::level::err, "upstream: replay failed: " + p.status.message());
          if (failure) *failure = p.status.ToString();
          break;
        }
        if (p.replayed < detail::kDeadLetterPage) break;
      }
    } catch (...) {
      error = detail::current_exception_text();
    }
    if (!error.empty()) {
      // The pages already replayed are pending batches (and persisted).
      internal_error(Stage::kDispatch, error, "dead-letter replay stopped");
      if (failure) *failure = "dead-letter replay stopped: " + error;
    }
    co_return total;
  }

  // ---- control (io thread) --------------------------------------------------

  void do_reset_auth() {
    if (auth_failed) spdlog::info("upstream: probing the upstream after an auth reset");
    if (auth_timer) auth_timer->expires_at(net::steady_timer::time_point::min());
    wake();
  }

  void shutdown() {
    stopping = true;
    if (wake_timer) wake_timer->cancel();
    if (auth_timer) auth_timer->cancel();
    idle.clear();
    io->stop();
  }
};

Delivery::Delivery(buffer::Outbox& outbox, buffer::MetaStore& meta, Options options,
                   const Clock& clock)
    : impl_(std::make_shared<Impl>(outbox, meta, std::move(options), clock)) {}

Delivery::~Delivery() {
  stop();
}

void Delivery::start() {
  std::lock_guard lock(impl_->life_mu);
  if (impl_->running) return;
  Impl& m = *impl_;
  m.config = build_config(m.pending_options);
  ++m.config_generation;
  m.io = std::make_unique<net::io_context>(1);
  m.encoder = std::make_unique<net::thread_pool>(1);
  net::post(*m.encoder, [] { set_thread_name("st-encoder"); });
  m.store_io = std::make_unique<net::thread_pool>(1);
  net::post(*m.store_io, [] { set_thread_name("st-delivery-io"); });
  m.load_gate = std::make_unique<net::steady_timer>(*m.io);
  m.load_gate->expires_at(net::steady_timer::time_point::max());
  m.loaded = false;
  m.wake_timer = std::make_unique<net::steady_timer>(*m.io);
  m.auth_timer = std::make_unique<net::steady_timer>(*m.io);
  m.stopping = false;
  m.pending.clear();
  m.staged.clear();
  m.staged_bytes = 0;
  m.busy_traces.clear();
  m.in_flight = 0;
  m.inflight_entries = 0;
  m.inflight_bytes = 0;
  m.cursor = 0;
  m.auth_failed = false;
  {
    std::lock_guard wl(m.waker->mu);
    m.waker->impl = &m;
    m.waker->io = m.io.get();
  }
  std::weak_ptr<Impl::Waker> weak = m.waker;
  m.store.outbox.set_outbox_listener([weak, &outbox = m.store.outbox, &clock = m.clock] {
    auto w = weak.lock();
    if (!w || !w->wanted(outbox, clock) || w->pending.exchange(true)) return;
    std::lock_guard wl(w->mu);
    if (w->io == nullptr) return;
    Impl* impl = w->impl;
    net::post(*w->io, [impl, w] {
      w->pending.store(false);
      impl->wake();
    });
  });
  m.spawn_dispatcher(true);
  m.thread = std::thread([&m] {
    set_thread_name("st-delivery");
    // A handler that throws leaves run(); it is counted, and run() goes on
    // with the other handlers until the delivery stops.
    for (;;) {
      try {
        m.io->run();
        return;
      } catch (...) {
        m.internal_error(Stage::kDispatch, detail::current_exception_text(), "io thread resumed");
      }
    }
  });
  m.running = true;
}

void Delivery::stop() {
  std::lock_guard lock(impl_->life_mu);
  Impl& m = *impl_;
  if (!m.running) return;
  {
    std::lock_guard wl(m.waker->mu);
    m.waker->io = nullptr;
  }
  m.store.outbox.set_outbox_listener({});
  net::post(*m.io, [&m] { m.shutdown(); });
  m.thread.join();
  // Store calls in progress and queued finish (an acknowledgement is not cut
  // short); their results, like the encodings', are discarded: the
  // coroutines waiting for them are destroyed with the io_context below.
  // Neither thread waits for the io thread, so joining cannot deadlock.
  m.store_io->join();
  m.encoder->join();  // encodings in progress finish; their results are discarded
  // Destroys the suspended coroutines (and their connections) while the rest
  // of the state is still alive.
  m.idle.clear();
  m.wake_timer.reset();
  m.auth_timer.reset();
  m.load_gate.reset();
  m.io.reset();
  m.encoder.reset();
  m.store_io.reset();
  m.running = false;
  m.update_stats([](Stats& s) { s.in_flight = 0; });
}

Stats Delivery::stats() const {
  std::lock_guard lock(impl_->stats_mu);
  Stats s = impl_->stats_;
  if (uint64_t last = impl_->last_success_mono.load(); last != 0) {
    s.seconds_since_success = static_cast<double>(impl_->clock.mono_ns() - last) / 1e9;
  }
  return s;
}

void Delivery::reset_auth() {
  std::lock_guard lock(impl_->life_mu);
  if (!impl_->running) return;
  Impl* m = impl_.get();
  net::post(*m->io, [m] { m->do_reset_auth(); });
}

void Delivery::update_options(const Options& options) {
  std::shared_ptr<const Config> c = build_config(options);  // throws, keeping the old one
  std::lock_guard lock(impl_->life_mu);
  impl_->pending_options = options;
  if (!impl_->running) return;
  Impl* m = impl_.get();
  net::post(*m->io, [m, c] {
    m->config = c;
    ++m->config_generation;
    m->idle.clear();
    m->do_reset_auth();
  });
}

size_t Delivery::replay_deadletters(const DeadLetterProgress& progress, std::string* error) {
  std::lock_guard lock(impl_->life_mu);
  Impl* m = impl_.get();
  if (!m->running) {
    size_t n = 0;
    buffer::Status s = deadletter_replay(m->store.meta, &n, progress);
    if (!s.ok() && error) *error = s.ToString();
    return n;
  }
  // The replay runs on the io thread, its store calls on the store thread;
  // this thread waits. stop() cannot run meanwhile (life_mu), so the
  // coroutine ends; should it be destroyed unfinished all the same, the
  // promise is broken rather than never set. `progress` and `error` outlive
  // it: this thread waits for the promise.
  auto done = std::make_shared<std::promise<size_t>>();
  auto fut = done->get_future();
  net::post(*m->io, [m, done, &progress, error] {
    net::co_spawn(*m->io, m->replay(&progress, error),
                  [m, done, error](std::exception_ptr e, size_t n) {
                    if (e) {
                      m->internal_error(Stage::kDispatch, detail::exception_text(e),
                                        "dead-letter replay stopped");
                      if (error)
                        *error = "dead-letter replay stopped: " + detail::exception_text(e);
                    }
                    m->wake();
                    done->set_value(n);
                  });
  });
  try {
    return fut.get();
  } catch (const std::future_error&) {
    return 0;
  }
}

std::unique_ptr<Exporter> make_exporter(buffer::Outbox& outbox, buffer::MetaStore& meta,
                                        const Options& options, const Clock& clock) {
  if (options.endpoint.empty()) return std::make_unique<FileExporter>(outbox, options, clock);
  return std::make_unique<Delivery>(outbox, meta, options, clock);
}

}  // namespace sidetrace::upstream
