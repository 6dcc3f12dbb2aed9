// A store that forwards to another and counts what is read from it: the
// outbox entries (how often each), and the rows of meta scans; it can also
// make reads of pending records find nothing, as when the log's front has
// moved their messages. For tests that assert what a consumer reads, not
// only what it ends up with.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "buffer/store.h"

namespace sidetrace::upstream::testing {

class CountingStore final : public buffer::Store {
 public:
  explicit CountingStore(buffer::Store& s) : s_(s) {}
  std::atomic<uint64_t> reads{0};         // read_outbox calls that returned entries
  std::atomic<uint64_t> entries_read{0};  // entries they returned
  std::mutex mu;
  std::map<uint64_t, int> times_read;       // seq -> how often it was read
  std::atomic<uint64_t> meta_rows_read{0};  // rows returned by meta scans
  std::atomic<bool> records_moved{false};   // read_records finds nothing where recorded

  buffer::Status read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                             std::vector<buffer::OutboxEntry>* out) override {
    size_t before = out->size();
    buffer::Status st = s_.read_outbox(from_seq, max_entries, max_bytes, out);
    if (out->size() > before) {
      ++reads;
      entries_read += out->size() - before;
      std::lock_guard lock(mu);
      for (size_t i = before; i < out->size(); ++i)
        ++times_read[(*out)[i].seq];
    }
    return st;
  }
  buffer::Status ack_outbox(std::span<const uint64_t> seqs) override { return s_.ack_outbox(seqs); }
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
    return s_.meta_put(k, v);
  }
  buffer::Status meta_get(std::string_view k, std::string* v) override { return s_.meta_get(k, v); }
  buffer::Status meta_delete(std::string_view k) override { return s_.meta_delete(k); }
  buffer::Status meta_scan(std::string_view p, size_t limit,
                           std::vector<std::pair<std::string, std::string>>* out) override {
    size_t before = out->size();
    buffer::Status st = s_.meta_scan(p, limit, out);
    meta_rows_read += out->size() - before;
    return st;
  }
  buffer::Status meta_scan_after(std::string_view p, std::string_view after, size_t limit,
                                 std::vector<std::pair<std::string, std::string>>* out) override {
    size_t before = out->size();
    buffer::Status st = s_.meta_scan_after(p, after, limit, out);
    meta_rows_read += out->size() - before;
    return st;
  }
  buffer::Status meta_write(const MetaWrite& w) override { return s_.meta_write(w); }
  buffer::Status append(std::span<const ipc::Message> m,
                        std::vector<buffer::Committed>* out) override {
    return s_.append(m, out);
  }
  buffer::Status ensure_room(uint64_t bytes) override { return s_.ensure_room(bytes); }
  buffer::Status resume() override { return s_.resume(); }
  bool needs_resume() const override { return s_.needs_resume(); }
  using buffer::Store::read_trace;
  buffer::Status read_trace(std::string_view id, const buffer::TraceRange& range,
                            std::vector<buffer::StoredEvent>* out, bool* more) override {
    return s_.read_trace(id, range, out, more);
  }
  buffer::Status read_records(std::string_view id, std::span<const buffer::RecordRef> records,
                              size_t max_bytes, std::vector<buffer::StoredEvent>* out) override {
    // As after the log's front moved every message it was asked for.
    if (records_moved) return buffer::Status::NotFound("moved");
    return s_.read_records(id, records, max_bytes, out);
  }
  buffer::Status scan_pending(uint64_t from, size_t limit,
                              std::vector<buffer::Committed>* out) override {
    return s_.scan_pending(from, limit, out);
  }
  buffer::Status release_pending(std::string_view id, std::span<const uint64_t> seqs) override {
    return s_.release_pending(id, seqs);
  }
  buffer::Status get_state(std::string_view id, buffer::TraceState* out) override {
    return s_.get_state(id, out);
  }
  buffer::Status emit(const buffer::Emission& e, uint64_t* seq) override { return s_.emit(e, seq); }
  buffer::Status emit_many(std::span<const buffer::Emission> es, std::span<buffer::Status> results,
                           std::span<uint64_t> seqs) override {
    return s_.emit_many(es, results, seqs);
  }
  buffer::Status expire(uint64_t before, uint64_t forget, size_t max) override {
    return s_.expire(before, forget, max);
  }
  buffer::Status compact() override { return s_.compact(); }
  buffer::StoreCounters counters() const override { return s_.counters(); }

 private:
  buffer::Store& s_;
};

}  // namespace sidetrace::upstream::testing
