// Helpers for tests and benchmarks: building protocol-v1 messages.
// Not used by the agent itself.
#pragma once

#include <msgpack.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace sidetrace::ipc::testing {

// Builds one msgpack map entry by entry, in order.
class MapBuilder {
 public:
  using Packer = msgpack::packer<msgpack::sbuffer>;

  MapBuilder& str(std::string_view key, std::string_view v) {
    return add(key, [v](Packer& p, msgpack::sbuffer&) {
      p.pack_str(static_cast<uint32_t>(v.size()))
          .pack_str_body(v.data(), static_cast<uint32_t>(v.size()));
    });
  }
  MapBuilder& uint(std::string_view key, uint64_t v) {
    return add(key, [v](Packer& p, msgpack::sbuffer&) { p.pack_uint64(v); });
  }
  MapBuilder& sint(std::string_view key, int64_t v) {
    return add(key, [v](Packer& p, msgpack::sbuffer&) { p.pack_int64(v); });
  }
  MapBuilder& dbl(std::string_view key, double v) {
    return add(key, [v](Packer& p, msgpack::sbuffer&) { p.pack_double(v); });
  }
  MapBuilder& nil(std::string_view key) {
    return add(key, [](Packer& p, msgpack::sbuffer&) { p.pack_nil(); });
  }
  // Appends `bytes` as the value, verbatim (must be valid msgpack to be valid).
  MapBuilder& raw(std::string_view key, std::string_view bytes) {
    std::string copy(bytes);
    return add(key, [copy](Packer&, msgpack::sbuffer& b) { b.write(copy.data(), copy.size()); });
  }
  // A raw key (any msgpack value) with a raw value.
  MapBuilder& raw_entry(std::string_view key_bytes, std::string_view value_bytes) {
    entries_.push_back({std::string(key_bytes), true,
                        [v = std::string(value_bytes)](Packer&, msgpack::sbuffer& b) {
                          b.write(v.data(), v.size());
                        }});
    return *this;
  }

  std::string build() const {
    msgpack::sbuffer buf;
    Packer p(buf);
    p.pack_map(static_cast<uint32_t>(entries_.size()));
    for (const auto& e : entries_) {
      if (e.raw_key) {
        buf.write(e.key.data(), e.key.size());
      } else {
        p.pack_str(static_cast<uint32_t>(e.key.size()));
        p.pack_str_body(e.key.data(), static_cast<uint32_t>(e.key.size()));
      }
      e.value(p, buf);
    }
    return std::string(buf.data(), buf.size());
  }

 private:
  struct Entry {
    std::string key;
    bool raw_key;
    std::function<void(Packer&, msgpack::sbuffer&)> value;
  };
  MapBuilder& add(std::string_view key, std::function<void(Packer&, msgpack::sbuffer&)> f) {
    entries_.push_back({std::string(key), false, std::move(f)});
    return *this;
  }
  std::vector<Entry> entries_;
};

// Encodes one msgpack value with msgpack-cxx.
template <typename T>
std::string pack(const T& v) {
  msgpack::sbuffer buf;
  msgpack::pack(buf, v);
  return std::string(buf.data(), buf.size());
}

// A realistic `event` message of about `approx_bytes` bytes, with text input
// and output, attrs and timestamps.
inline std::string realistic_event(uint64_t n, size_t approx_bytes = 500) {
  char trace[33];
  char id[17];
  std::snprintf(trace, sizeof trace, "%032llx", static_cast<unsigned long long>(n / 8 + 1));
  std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(n + 1));
  const size_t text = approx_bytes > 300 ? (approx_bytes - 300) / 2 : 16;
  std::string input(text, 'q');
  std::string output(text, 'a');
  msgpack::sbuffer attrs;
  {
    msgpack::packer<msgpack::sbuffer> p(attrs);
    p.pack_map(4);
    p.pack(std::string("model")).pack(std::string("gpt-4o-mini"));
    p.pack(std::string("input_tokens")).pack(412);
    p.pack(std::string("output_tokens")).pack(128);
    p.pack(std::string("cost_usd")).pack(0.00042);
  }
  return MapBuilder()
      .uint("v", 1)
      .str("kind", "event")
      .str("trace_id", trace)
      .str("id", id)
      .str("parent_id", "00000000000000aa")
      .str("type", "GENERATION")
      .str("name", "chat.completions")
      .str("input", input)
      .str("output", output)
      .uint("ts", 1'700'000'000'000'000'000ull + n)
      .uint("latency_ms", 842)
      .str("status", "ok")
      .raw("attrs", std::string_view(attrs.data(), attrs.size()))
      .build();
}

}  // namespace sidetrace::ipc::testing
