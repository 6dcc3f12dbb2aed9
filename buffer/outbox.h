// The outbox: finished trace revisions waiting for delivery, in emission
// order. The assembler fills it (TraceStore::emit()); delivery (upstream/)
// reads it and acknowledges what was delivered. Implemented by Store.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "buffer/status.h"

namespace sidetrace::buffer {

// A trace document, JSON (docs/trace-document.md). Shared, never changed: the
// one text built at emission serves the outbox, the viewer and the request
// that delivers it, without a copy for each.
using Document = std::shared_ptr<const std::string>;

// A Document holding `text`.
inline Document make_document(std::string text) {
  return std::make_shared<const std::string>(std::move(text));
}

struct OutboxEntry {
  uint64_t seq = 0;  // outbox sequence; strictly increasing in emission order
  std::string trace_id;
  uint32_t revision = 0;
  uint64_t emitted_ns = 0;  // wall clock at emission
  Document document;        // never null in an entry read_outbox() returns
};

// Thread safety: every method may be called from any thread. No method
// throws; NoSpace means the disk (or the quota) is full and the same call may
// succeed later.
class Outbox {
 public:
  virtual ~Outbox() = default;

  // Appends up to `max_entries` entries, stopping before `max_bytes` of
  // documents would be exceeded (at least one entry when any exists), whose
  // seq is >= `from_seq`, in seq order, to `out`. The document of an entry
  // written with a recipe is taken from memory (once: a second read builds
  // it again) or built by the document builder; IOError when there is none.
  virtual Status read_outbox(uint64_t from_seq, size_t max_entries, size_t max_bytes,
                             std::vector<OutboxEntry>* out) = 0;

  // Deletes delivered entries. Deleting an absent seq is not an error.
  // Like every write of delivery (MetaStore's too), it is not synced on its
  // own: it survives a crash of the agent at once, and a power loss once the
  // next synced write (the writer's next group commit) or flush has made it
  // durable. The WAL keeps a prefix of writes, so a power loss can only undo
  // the last of them, whole and in order: acknowledged entries are then
  // delivered again (at least once), and nothing stored is lost.
  virtual Status ack_outbox(std::span<const uint64_t> seqs) = 0;

  // Number of entries and document bytes currently in the outbox.
  virtual uint64_t outbox_entries() const = 0;
  virtual uint64_t outbox_bytes() const = 0;

  // Calls `fn` (from the emitting thread, so it must be quick and must not
  // call back into the store, but for outbox_entries() and outbox_bytes())
  // whenever entries are appended to the outbox.
  // One listener; setting another replaces it.
  virtual void set_outbox_listener(std::function<void()> fn) = 0;
};

}  // namespace sidetrace::buffer
