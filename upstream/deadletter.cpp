// The dead-letter functions for the CLI (upstream/upstream.h).
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/detail/records.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {

buffer::Status deadletter_list(buffer::MetaStore& store, std::vector<DeadLetter>* out, size_t limit,
                               std::string_view after) {
  std::string from =
      after.empty() ? std::string() : std::string(detail::kDeadLetterPrefix) + std::string(after);
  size_t listed = 0;
  while (listed < limit) {
    std::vector<std::pair<std::string, std::string>> rows;
    buffer::Status s = store.meta_scan_after(
        detail::kDeadLetterPrefix, from, std::min(limit - listed, detail::kDeadLetterPage), &rows);
    if (!s.ok()) return s;
    if (rows.empty()) break;
    from = rows.back().first;
    for (auto& [k, v] : rows) {
      detail::DeadLetterRecord r;
      DeadLetter d;
      d.id = k.substr(detail::kDeadLetterPrefix.size());
      if (detail::decode_deadletter(v, &r)) {
        d.ts_ns = r.ts_ns;
        d.http_status = r.http_status;
        d.reason = std::move(r.reason);
        d.traces = r.docs.size();
        for (auto& doc : r.docs)
          d.bytes += doc.size();
        d.trace_ids = std::move(r.trace_ids);
      } else {
        d.reason = "malformed record";
      }
      out->push_back(std::move(d));
      ++listed;
    }
  }
  return buffer::Status::Ok();
}

buffer::Status deadletter_stats(buffer::MetaStore& store, uint64_t* count, uint64_t* bytes) {
  detail::DeadLetterTotals t;
  buffer::Status s = detail::deadletter_totals(store, &t);
  *count = t.count;
  *bytes = t.bytes;
  return s;
}

buffer::Status deadletter_replay(buffer::MetaStore& store, size_t* replayed,
                                 const DeadLetterProgress& progress) {
  uint64_t next = 0;
  buffer::Status s = detail::max_batch_id(store, &next);
  if (!s.ok()) return s;
  ++next;
  return detail::replay_deadletters(store, &next, nullptr, replayed, SIZE_MAX, progress);
}

buffer::Status deadletter_purge(buffer::MetaStore& store, size_t* purged,
                                const DeadLetterProgress& progress) {
  return detail::purge_deadletters(store, purged, progress);
}

}  // namespace sidetrace::upstream
