// A store that forwards to another and observes its callers: the name of the
// thread each call that reads or writes the database came from, and a gate
// that holds such calls (in their calling thread) while it is closed, as a
// slow disk would. For tests that assert which thread does a consumer's store
// I/O, and what goes on while the store is slow.
//
// The in-memory calls (outbox_entries(), outbox_bytes(), needs_resume(),
// counters()) and set_outbox_listener() are neither recorded nor held.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <pthread.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "buffer/store.h"

namespace sidetrace::upstream::testing {

class ObservedStore final : public buffer::Store {
 public:
  explicit ObservedStore(buffer::Store& s) : s_(s) {}

  struct Call {
    std::string method;  // "read_outbox", "meta_put", ...
    std::string thread;  // the calling thread's name
  };
  std::vector<Call> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }

  // While closed, calls wait at the gate (after being recorded).
  void close_gate() {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  void open_gate() {
    {
      std::lock_guard lock(mu_);
      closed_ = false;
    }
    cv_.notify_all();
  }
  // Calls waiting at the gate now.
  size_t held() const {
    std::lock_guard lock(mu_);
    return held_;
  }

  buffer::Status read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                             std::vector<buffer::OutboxEntry>* out) override {
    enter("read_outbox");
    return s_.read_outbox(from_seq, max_entries, max_bytes, out);
  }
  buffer::Status ack_outbox(std::span<const uint64_t> seqs) override {
    enter("ack_outbox");
    return s_.ack_outbox(seqs);
  }
  uint64_t outbox_entries() const override { return s_.outbox_entries(); }
  uint64_t outbox_bytes() const override { return s_.outbox_bytes(); }
  uint64_t undelivered_bytes() const override { return s_.undelivered_bytes(); }
  void set_outbox_listener(std::function<void()> fn) override {
    s_.set_outbox_listener(std::move(fn));
  }
  void set_document_builder(buffer::DocumentBuilder fn) override {
    s_.set_document_builder(std::move(fn));
  }
  buffer::Status meta_put(std::string_view k, std::string_view v) override {
    enter("meta_put");
    return s_.meta_put(k, v);
  }
  buffer::Status meta_get(std::string_view k, std::string* v) override {
    enter("meta_get");
    return s_.meta_get(k, v);
  }
  buffer::Status meta_delete(std::string_view k) override {
    enter("meta_delete");
    return s_.meta_delete(k);
  }
  buffer::Status meta_scan(std::string_view p, size_t limit,
                           std::vector<std::pair<std::string, std::string>>* out) override {
    enter("meta_scan");
    return s_.meta_scan(p, limit, out);
  }
  buffer::Status meta_scan_after(std::string_view p, std::string_view after, size_t limit,
                                 std::vector<std::pair<std::string, std::string>>* out) override {
    enter("meta_scan_after");
    return s_.meta_scan_after(p, after, limit, out);
  }
  buffer::Status meta_write(const MetaWrite& w) override {
    enter("meta_write");
    return s_.meta_write(w);
  }
  buffer::Status append(std::span<const ipc::Message> m,
                        std::vector<buffer::Committed>* out) override {
    enter("append");
    return s_.append(m, out);
  }
  buffer::Status ensure_room(uint64_t bytes) override {
    enter("ensure_room");
    return s_.ensure_room(bytes);
  }
  buffer::Status resume() override {
    enter("resume");
    return s_.resume();
  }
  bool needs_resume() const override { return s_.needs_resume(); }
  using buffer::Store::read_trace;
  buffer::Status read_trace(std::string_view id, const buffer::TraceRange& range,
                            std::vector<buffer::StoredEvent>* out, bool* more) override {
    enter("read_trace");
    return s_.read_trace(id, range, out, more);
  }
  buffer::Status read_records(std::string_view id, std::span<const buffer::RecordRef> records,
                              size_t max_bytes, std::vector<buffer::StoredEvent>* out) override {
    enter("read_records");
    return s_.read_records(id, records, max_bytes, out);
  }
  buffer::Status scan_pending(uint64_t from, size_t limit,
                              std::vector<buffer::Committed>* out) override {
    enter("scan_pending");
    return s_.scan_pending(from, limit, out);
  }
  buffer::Status release_pending(std::string_view id, std::span<const uint64_t> seqs) override {
    enter("release_pending");
    return s_.release_pending(id, seqs);
  }
  buffer::Status get_state(std::string_view id, buffer::TraceState* out) override {
    enter("get_state");
    return s_.get_state(id, out);
  }
  buffer::Status emit(const buffer::Emission& e, uint64_t* seq) override {
    enter("emit");
    return s_.emit(e, seq);
  }
  buffer::Status emit_many(std::span<const buffer::Emission> es, std::span<buffer::Status> results,
                           std::span<uint64_t> seqs) override {
    enter("emit_many");
    return s_.emit_many(es, results, seqs);
  }
  buffer::Status expire(uint64_t before, uint64_t forget, size_t max) override {
    enter("expire");
    return s_.expire(before, forget, max);
  }
  buffer::Status compact() override {
    enter("compact");
    return s_.compact();
  }
  buffer::StoreCounters counters() const override { return s_.counters(); }

 private:
  void enter(const char* method) {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof name);
    std::unique_lock lock(mu_);
    calls_.push_back({method, name});
    if (!closed_) return;
    ++held_;
    cv_.wait(lock, [&] { return !closed_; });  // the injected slowness, not a test's wait
    --held_;
  }

  buffer::Store& s_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Call> calls_;
  bool closed_ = false;
  size_t held_ = 0;
};

}  // namespace sidetrace::upstream::testing
