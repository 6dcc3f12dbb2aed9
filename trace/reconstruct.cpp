// build_trace(): decode, canonicalise, fold, link, write.
//
// Determinism: the result depends only on the set of distinct message bytes
// (and, for messages without `ts`, the earliest receive time of each). The
// messages are deduplicated by their raw bytes, then sorted by (effective ts,
// kind, raw bytes); every fold below walks that order, and every tie is broken
// by bytes or ids, never by arrival order or store sequence. The one
// exception is the "changed" flags, which say which distinct messages have no
// copy at or below BuildOptions::changed_after_seq.
#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>
#include <vector>

#include "ipc/event.h"
#include "trace/document.h"
#include "trace/reconstruct.h"

namespace sidetrace::trace {
namespace {

using ipc::Kind;

struct Decoded {
  ipc::Event ev;
  uint64_t eff_ts = 0;  // ts, or else the earliest receive time of these bytes
  std::string_view raw;
  bool fresh = true;  // no copy was folded into the previous revision
};

// One event of the trace, folded from its start/end/event messages.
struct Node {
  std::string_view id;
  const std::string* type = nullptr;
  const std::string* name = nullptr;
  const std::string* parent_id = nullptr;
  const std::string* error_text = nullptr;
  std::string_view input, output;
  std::optional<uint64_t> start_ts, end_ts;
  bool has_start = false, has_end = false;
  bool error = false;
  // attrs: the only source's bytes, or the merge of several.
  std::string_view attrs_one;
  uint32_t attrs_sources = 0;
  std::vector<MapEntry> attrs_merged;
  int64_t parent = -1;  // index into the node vector; -1 at the root
  bool orphan = false;
  bool changed = false;  // one of its messages is fresh
  std::vector<uint32_t> children;
};

uint64_t sat_add(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<uint64_t>::max() : r;
}

uint64_t latency_ns(int64_t ms) {
  if (ms <= 0) return 0;
  uint64_t r = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(ms), uint64_t{1'000'000}, &r)) {
    return std::numeric_limits<uint64_t>::max();
  }
  return r;
}

void merge_attrs(Node& n, std::string_view attrs) {
  if (attrs.empty()) return;
  if (n.attrs_sources == 0) {
    n.attrs_one = attrs;
    n.attrs_sources = 1;
    return;
  }
  if (n.attrs_sources == 1) {
    if (attrs == n.attrs_one) return;
    merge_msgpack_map(n.attrs_one, &n.attrs_merged);
  }
  merge_msgpack_map(attrs, &n.attrs_merged);
  ++n.attrs_sources;
}

// Folds the fields every event-carrying kind may set: a present value replaces
// an earlier one.
void fold_common(Node& n, const ipc::Event& ev) {
  if (!ev.type.empty()) n.type = &ev.type;
  if (!ev.name.empty()) n.name = &ev.name;
  if (!ev.parent_id.empty()) n.parent_id = &ev.parent_id;
  if (!ev.input.empty()) n.input = ev.input;
  if (!ev.output.empty()) n.output = ev.output;
  if (ev.error.has_value()) n.error = *ev.error;
  if (ev.error_text.has_value()) n.error_text = &*ev.error_text;
  merge_attrs(n, ev.attrs);
}

void set_min(std::optional<uint64_t>& slot, uint64_t v) {
  if (!slot || v < *slot) slot = v;
}
void set_max(std::optional<uint64_t>& slot, uint64_t v) {
  if (!slot || v > *slot) slot = v;
}

// Duration in milliseconds (fractional), or null when either end is unknown.
void write_duration(JsonWriter& w, std::optional<uint64_t> start, std::optional<uint64_t> end) {
  if (!start || !end) return w.null();
  const uint64_t ns = *end > *start ? *end - *start : 0;
  w.number(static_cast<double>(ns) / 1e6);
}

void write_ts(JsonWriter& w, std::optional<uint64_t> ts) {
  ts ? w.uint64(*ts) : w.null();
}

bool is_map(std::string_view b) {
  if (b.empty()) return false;
  const auto c = static_cast<unsigned char>(b[0]);
  return (c & 0xf0) == 0x80 || c == 0xde || c == 0xdf;
}

uint64_t sort_ts(const Node& n) {
  if (n.start_ts) return *n.start_ts;
  if (n.end_ts) return *n.end_ts;
  return 0;
}

}  // namespace

BuildResult build_trace(std::string_view trace_id, std::span<const StoredMessage> messages,
                        const BuildOptions& options) {
  BuildResult result;

  // 1. Distinct raw bytes, each with its earliest receive time.
  std::vector<const StoredMessage*> by_raw;
  by_raw.reserve(messages.size());
  for (const auto& m : messages)
    by_raw.push_back(&m);
  std::sort(by_raw.begin(), by_raw.end(), [](const StoredMessage* a, const StoredMessage* b) {
    // Any total order on the bytes groups duplicates; comparing sizes first
    // avoids most byte comparisons of messages that share a long prefix.
    if (a->raw.size() != b->raw.size()) return a->raw.size() < b->raw.size();
    if (const int c = a->raw.compare(b->raw); c != 0) return c < 0;
    return a->recv_ns < b->recv_ns;
  });

  // 2. Decode each distinct message once. Stored messages already passed
  // intake validation; the size limits are lifted here so that a lowered
  // limit in a newer configuration cannot make a stored trace unreadable.
  ipc::DecodeLimits limits;
  limits.max_message_bytes = std::numeric_limits<size_t>::max();
  limits.max_id_bytes = std::numeric_limits<size_t>::max();
  std::vector<Decoded> decoded;
  decoded.reserve(by_raw.size());
  std::string detail;
  size_t raw_bytes = 0;
  const uint64_t changed_after = options.changed_after_seq;
  for (size_t next = 0; next < by_raw.size();) {
    // by_raw[k] is the earliest copy of a group of equal bytes; the group is
    // fresh when every copy's seq is above changed_after.
    const size_t k = next;
    bool fresh = changed_after == 0 || by_raw[k]->seq > changed_after;
    for (++next; next < by_raw.size() && by_raw[next]->raw == by_raw[k]->raw; ++next)
      fresh = fresh && (changed_after == 0 || by_raw[next]->seq > changed_after);
    Decoded& d = decoded.emplace_back();  // decoded in place: no Event copy
    ipc::Reject reason{};
    if (!ipc::decode_event(by_raw[k]->raw, limits, &d.ev, &reason, &detail)) {
      ++result.undecodable;
      decoded.pop_back();
      continue;
    }
    if (d.ev.trace_id != trace_id) {
      ++result.foreign;
      decoded.pop_back();
      continue;
    }
    if (d.ev.kind != Kind::kTrace && d.ev.kind != Kind::kFeedback && d.ev.id.empty()) {
      ++result.undecodable;  // an event-carrying kind without an event id
      decoded.pop_back();
      continue;
    }
    d.raw = by_raw[k]->raw;
    d.eff_ts = d.ev.ts_ns.value_or(by_raw[k]->recv_ns);
    d.fresh = fresh;
    raw_bytes += d.raw.size();
  }

  // 3. Canonical order.
  std::vector<uint32_t> order(decoded.size());
  for (uint32_t k = 0; k < order.size(); ++k)
    order[k] = k;
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    const Decoded& x = decoded[a];
    const Decoded& y = decoded[b];
    if (x.eff_ts != y.eff_ts) return x.eff_ts < y.eff_ts;
    if (x.ev.kind != y.ev.kind) return x.ev.kind < y.ev.kind;
    return x.raw < y.raw;
  });

  // 4. Fold. Events first take their start/event messages, then their end
  // messages, so that what an end says wins whatever the clocks said.
  std::vector<Node> nodes;
  nodes.reserve(decoded.size());
  std::unordered_map<std::string_view, uint32_t> index;
  index.reserve(decoded.size());
  const auto node_for = [&](const std::string& id) -> Node& {
    auto [it, inserted] = index.emplace(id, static_cast<uint32_t>(nodes.size()));
    if (inserted) {
      nodes.emplace_back();
      nodes.back().id = id;
    }
    return nodes[it->second];
  };
  const std::string* conversation_id = nullptr;
  const std::string* session_id = nullptr;
  const std::string* interaction_id = nullptr;
  const std::string* channel_id = nullptr;
  std::vector<MapEntry> user, metadata;
  std::vector<const Decoded*> feedback;
  bool trace_changed = changed_after == 0;

  for (uint32_t k : order) {
    const Decoded& d = decoded[k];
    const ipc::Event& ev = d.ev;
    switch (ev.kind) {
      case Kind::kStart: {
        Node& n = node_for(ev.id);
        n.has_start = true;
        n.changed = n.changed || d.fresh;
        set_min(n.start_ts, d.eff_ts);
        fold_common(n, ev);
        break;
      }
      case Kind::kEvent: {
        Node& n = node_for(ev.id);
        n.has_start = n.has_end = true;
        n.changed = n.changed || d.fresh;
        set_min(n.start_ts, d.eff_ts);
        uint64_t end = d.eff_ts;
        if (ev.end_ts_ns) {
          end = *ev.end_ts_ns;
        } else if (ev.latency_ms) {
          end = sat_add(d.eff_ts, latency_ns(*ev.latency_ms));
        }
        set_max(n.end_ts, end);
        fold_common(n, ev);
        break;
      }
      case Kind::kTrace:
        trace_changed = trace_changed || d.fresh;
        if (ev.conversation_id) conversation_id = &*ev.conversation_id;
        if (ev.session_id) session_id = &*ev.session_id;
        if (ev.interaction_id) interaction_id = &*ev.interaction_id;
        if (ev.channel_id) channel_id = &*ev.channel_id;
        if (!ev.user.empty()) merge_msgpack_map(ev.user, &user);
        if (!ev.metadata.empty()) merge_msgpack_map(ev.metadata, &metadata);
        break;
      case Kind::kFeedback:
        feedback.push_back(&d);
        break;
      case Kind::kEnd:
        break;
    }
  }
  for (uint32_t k : order) {
    const Decoded& d = decoded[k];
    const ipc::Event& ev = d.ev;
    if (ev.kind != Kind::kEnd) continue;
    Node& n = node_for(ev.id);
    n.has_end = true;
    n.changed = n.changed || d.fresh;
    uint64_t end = d.eff_ts;
    if (!ev.ts_ns) {
      if (ev.end_ts_ns) {
        end = *ev.end_ts_ns;
      } else if (ev.latency_ms && n.start_ts) {
        end = sat_add(*n.start_ts, latency_ns(*ev.latency_ms));
      }
    }
    set_max(n.end_ts, end);
    fold_common(n, ev);
  }

  // 5. Link. Parents are resolved by id; an unknown parent makes an orphan.
  for (auto& n : nodes) {
    if (n.parent_id == nullptr) continue;
    auto it = index.find(*n.parent_id);
    if (it == index.end()) {
      n.orphan = true;
    } else {
      n.parent = it->second;
    }
  }
  // Break cycles: every node has at most one parent, so each cycle is found by
  // walking parent links; its member with the smallest id is detached to the
  // root and marked orphan. The rule does not depend on where the walk began.
  std::vector<uint32_t> by_id(nodes.size());
  for (uint32_t k = 0; k < by_id.size(); ++k)
    by_id[k] = k;
  std::sort(by_id.begin(), by_id.end(),
            [&](uint32_t a, uint32_t b) { return nodes[a].id < nodes[b].id; });
  {
    enum : uint8_t { kNew, kOnPath, kDone };
    std::vector<uint8_t> state(nodes.size(), kNew);
    std::vector<uint32_t> path;
    for (uint32_t start : by_id) {
      path.clear();
      int64_t cur = start;
      while (cur >= 0 && state[cur] == kNew) {
        state[cur] = kOnPath;
        path.push_back(static_cast<uint32_t>(cur));
        cur = nodes[cur].parent;
      }
      if (cur >= 0 && state[cur] == kOnPath) {
        // nodes from `cur` to the end of `path` form the cycle
        auto from = std::find(path.begin(), path.end(), static_cast<uint32_t>(cur));
        uint32_t cut = *from;
        for (auto it = from; it != path.end(); ++it) {
          if (nodes[*it].id < nodes[cut].id) cut = *it;
        }
        nodes[cut].parent = -1;
        nodes[cut].orphan = true;
      }
      for (uint32_t p : path)
        state[p] = kDone;
    }
  }
  std::vector<uint32_t> roots;
  for (uint32_t k : by_id) {
    if (nodes[k].parent >= 0) {
      nodes[nodes[k].parent].children.push_back(k);
    } else {
      roots.push_back(k);
    }
  }
  const auto child_less = [&](uint32_t a, uint32_t b) {
    const uint64_t ta = sort_ts(nodes[a]), tb = sort_ts(nodes[b]);
    if (ta != tb) return ta < tb;
    return nodes[a].id < nodes[b].id;
  };
  std::sort(roots.begin(), roots.end(), child_less);
  for (auto& n : nodes) {
    if (n.children.size() > 1) std::sort(n.children.begin(), n.children.end(), child_less);
  }

  // 6. Totals.
  bool any_error = false;
  std::optional<uint64_t> trace_start, trace_end;
  for (const auto& n : nodes) {
    if (n.orphan) ++result.orphans;
    if (n.has_start && !n.has_end) ++result.unfinished;
    if (n.error) any_error = true;
    if (n.changed) ++result.changed;
    if (n.start_ts) {
      set_min(trace_start, *n.start_ts);
      set_max(trace_end, *n.start_ts);
    }
    if (n.end_ts) {
      set_min(trace_start, *n.end_ts);
      set_max(trace_end, *n.end_ts);
    }
  }
  result.events = nodes.size();
  result.complete = !nodes.empty() && std::all_of(nodes.begin(), nodes.end(), [](const Node& n) {
    return n.has_start && n.has_end;
  });
  result.start_ts_ns = trace_start.value_or(0);
  result.end_ts_ns = trace_end.value_or(0);
  const bool mark = options.mark_unfinished;
  const char* status = (mark && result.unfinished > 0) ? "unfinished" : any_error ? "error" : "ok";

  // 7. Write.
  std::string& doc = result.document;
  doc.reserve(raw_bytes + raw_bytes / 2 + 512);
  JsonWriter w(&doc);
  w.begin_object();
  w.key_literal("trace_id");
  w.string(trace_id);
  w.key_literal("revision");
  w.uint64(options.revision);
  w.key_literal("conversation_id");
  w.optional_string(conversation_id);
  w.key_literal("session_id");
  w.optional_string(session_id);
  w.key_literal("interaction_id");
  w.optional_string(interaction_id);
  w.key_literal("channel_id");
  w.optional_string(channel_id);
  w.key_literal("user");
  write_entries(w, user);
  w.key_literal("metadata");
  write_entries(w, metadata);
  w.key_literal("start_ts");
  write_ts(w, trace_start);
  w.key_literal("end_ts");
  write_ts(w, trace_end);
  w.key_literal("duration_ms");
  write_duration(w, trace_start, trace_end);
  w.key_literal("status");
  w.string(status);
  w.key_literal("partial");
  w.boolean(options.partial);
  w.key_literal("part");
  if (options.part > 0) {
    w.uint64(options.part);
  } else {
    w.null();
  }
  w.key_literal("trace_changed");
  w.boolean(trace_changed);
  w.key_literal("events");
  w.begin_array();
  // Depth-first without recursion: a chain of any length cannot exhaust the
  // call stack.
  struct Frame {
    const std::vector<uint32_t>* list;
    size_t next;
  };
  std::vector<Frame> stack;
  stack.push_back(Frame{&roots, 0});
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (f.next == f.list->size()) {
      stack.pop_back();
      if (!stack.empty()) {
        w.end_array();   // children
        w.end_object();  // the event
      }
      continue;
    }
    const Node& n = nodes[(*f.list)[f.next++]];
    w.begin_object();
    w.key_literal("id");
    w.string(n.id);
    w.key_literal("parent_id");
    w.optional_string(n.parent_id);
    w.key_literal("type");
    w.optional_string(n.type);
    w.key_literal("name");
    w.optional_string(n.name);
    w.key_literal("input");
    n.input.empty() ? w.null() : static_cast<void>(w.append_msgpack(n.input));
    w.key_literal("output");
    n.output.empty() ? w.null() : static_cast<void>(w.append_msgpack(n.output));
    w.key_literal("start_ts");
    write_ts(w, n.start_ts);
    w.key_literal("end_ts");
    write_ts(w, n.end_ts);
    w.key_literal("duration_ms");
    write_duration(w, n.start_ts, n.end_ts);
    w.key_literal("status");
    w.string(n.error ? "error" : "ok");
    w.key_literal("error");
    w.optional_string(n.error_text);
    w.key_literal("attrs");
    if (n.attrs_sources == 1) {
      // One source: written as it is (the decoder guarantees a map).
      is_map(n.attrs_one) ? static_cast<void>(w.append_msgpack(n.attrs_one)) : write_entries(w, {});
    } else {
      write_entries(w, n.attrs_merged);
    }
    w.key_literal("orphan");
    w.boolean(n.orphan);
    w.key_literal("unfinished");
    w.boolean(mark && n.has_start && !n.has_end);
    w.key_literal("changed");
    w.boolean(n.changed);
    w.key_literal("children");
    w.begin_array();
    stack.push_back(Frame{&n.children, 0});
  }
  w.end_array();
  w.key_literal("feedback");
  w.begin_array();
  for (const Decoded* d : feedback) {
    const ipc::Event& ev = d->ev;
    w.begin_object();
    w.key_literal("tag");
    w.optional_string(ev.tag ? &*ev.tag : nullptr);
    w.key_literal("text");
    w.optional_string(ev.text ? &*ev.text : nullptr);
    w.key_literal("score");
    ev.score ? w.number(*ev.score) : w.null();
    w.key_literal("target_id");
    w.optional_string(ev.target_id ? &*ev.target_id : nullptr);
    w.key_literal("ts");
    w.uint64(d->eff_ts);
    w.key_literal("changed");
    w.boolean(d->fresh);
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return result;
}

}  // namespace sidetrace::trace
