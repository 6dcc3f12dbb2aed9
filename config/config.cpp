#include "config/config.h"

#include <fmt/format.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "common/host_port.h"

extern char** environ;

namespace sidetrace::config {
namespace {

enum class Type { kString, kBool, kInt, kSize, kMode, kEnum, kStringMap, kStringList, kRules };

struct Key {
  Key(std::string_view n, Type t, std::function<void*(Config&)> f)
      : name(n), type(t), field(std::move(f)) {}
  Key&& range(int64_t lo, int64_t hi) && {
    min = lo;
    max = hi;
    return std::move(*this);
  }
  Key&& one_of(std::vector<std::string_view> c) && {
    choices = std::move(c);
    return std::move(*this);
  }
  // Masks the credentials of a URL ("https://user:***@host").
  Key&& secret() && {
    is_secret = true;
    return std::move(*this);
  }
  // Masks the whole value.
  Key&& secret_value() && {
    is_secret = true;
    mask_whole = true;
    return std::move(*this);
  }
  Key&& restart() && {
    needs_restart = true;
    return std::move(*this);
  }

  std::string_view name;  // "section.key" or "key"
  Type type;
  std::function<void*(Config&)> field;
  int64_t min = 0;
  int64_t max = std::numeric_limits<int64_t>::max();
  std::vector<std::string_view> choices;
  bool is_secret = false;      // the value is masked by to_toml()
  bool mask_whole = false;     // ... entirely, not only a URL's credentials
  bool needs_restart = false;  // a change takes effect only after a restart
};

template <typename F>
std::function<void*(Config&)> at(F f) {
  return [f](Config& c) -> void* { return f(c); };
}

constexpr int64_t kMaxMs = 7LL * 24 * 3600 * 1000;
constexpr int64_t kMaxS = 3650LL * 24 * 3600;

const std::vector<Key>& keys() {
  static const std::vector<Key> table = {
      Key("data_dir", Type::kString, at([](Config& c) { return &c.data_dir; })).restart(),
      Key("listen.unix_stream", Type::kString, at([](Config& c) { return &c.listen.unix_stream; }))
          .restart(),
      Key("listen.unix_dgram", Type::kString, at([](Config& c) { return &c.listen.unix_dgram; }))
          .restart(),
      Key("listen.udp", Type::kString, at([](Config& c) { return &c.listen.udp; })).restart(),
      Key("listen.socket_mode", Type::kMode, at([](Config& c) { return &c.listen.socket_mode; }))
          .range(0, 07777)
          .restart(),
      Key("listen.rcvbuf_bytes", Type::kSize, at([](Config& c) { return &c.listen.rcvbuf_bytes; }))
          .range(4096, (1LL << 31) - 1)  // SO_RCVBUF takes an int
          .restart(),
      Key("listen.max_message_bytes", Type::kSize,
          at([](Config& c) { return &c.listen.max_message_bytes; }))
          .range(256, 64LL << 20)
          .restart(),
      Key("listen.max_connections", Type::kInt,
          at([](Config& c) { return &c.listen.max_connections; }))
          .range(1, 1 << 20)
          .restart(),
      Key("listen.read_delay_ms", Type::kInt, at([](Config& c) { return &c.listen.read_delay_ms; }))
          .range(0, 100)
          .restart(),
      Key("listen.stream_read_delay_ms", Type::kInt,
          at([](Config& c) { return &c.listen.stream_read_delay_ms; }))
          .range(0, 100)
          .restart(),
      Key("listen.max_partial_bytes", Type::kSize,
          at([](Config& c) { return &c.listen.max_partial_bytes; }))
          .range(256, 1LL << 34)
          .restart(),
      Key("listen.idle_timeout_s", Type::kInt,
          at([](Config& c) { return &c.listen.idle_timeout_s; }))
          .range(0, 7 * 86400)
          .restart(),
      Key("listen.otlp_http", Type::kString, at([](Config& c) { return &c.listen.otlp_http; }))
          .restart(),
      Key("listen.otlp_max_body_bytes", Type::kSize,
          at([](Config& c) { return &c.listen.otlp_max_body_bytes; }))
          .range(1024, 1LL << 30)
          .restart(),
      Key("listen.otlp_max_pending_requests", Type::kInt,
          at([](Config& c) { return &c.listen.otlp_max_pending_requests; }))
          .range(1, 1 << 20)
          .restart(),
      Key("listen.otlp_max_pending_bytes", Type::kSize,
          at([](Config& c) { return &c.listen.otlp_max_pending_bytes; }))
          .range(1024, 1LL << 40)
          .restart(),
      Key("listen.otlp_allowed_hosts", Type::kStringList,
          at([](Config& c) { return &c.listen.otlp_allowed_hosts; }))
          .restart(),
      Key("intake.queue_bytes", Type::kSize, at([](Config& c) { return &c.intake.queue_bytes; }))
          .range(1 << 20, 1LL << 34)
          .restart(),
      Key("admin.listen", Type::kString, at([](Config& c) { return &c.admin.listen; })).restart(),
      Key("admin.token", Type::kString, at([](Config& c) { return &c.admin.token; }))
          .secret_value()
          .restart(),
      Key("admin.token_file", Type::kString, at([](Config& c) { return &c.admin.token_file; }))
          .restart(),
      Key("admin.allowed_hosts", Type::kStringList,
          at([](Config& c) { return &c.admin.allowed_hosts; }))
          .restart(),
      Key("upstream.endpoint", Type::kString, at([](Config& c) { return &c.upstream.endpoint; }))
          .secret(),
      Key("upstream.format", Type::kEnum, at([](Config& c) { return &c.upstream.format; }))
          .one_of({"native", "otlp", "neuraltrust"}),
      Key("upstream.otlp_encoding", Type::kEnum,
          at([](Config& c) { return &c.upstream.otlp_encoding; }))
          .one_of({"protobuf", "json"}),
      Key("upstream.compression", Type::kEnum,
          at([](Config& c) { return &c.upstream.compression; }))
          .one_of({"gzip", "zstd", "none"}),
      Key("upstream.api_key_env", Type::kString,
          at([](Config& c) { return &c.upstream.api_key_env; })),
      Key("upstream.api_key_file", Type::kString,
          at([](Config& c) { return &c.upstream.api_key_file; })),
      Key("upstream.api_key_header", Type::kString,
          at([](Config& c) { return &c.upstream.api_key_header; })),
      Key("upstream.headers", Type::kStringMap, at([](Config& c) { return &c.upstream.headers; }))
          .secret(),
      Key("upstream.ca_file", Type::kString, at([](Config& c) { return &c.upstream.ca_file; })),
      Key("upstream.client_cert", Type::kString,
          at([](Config& c) { return &c.upstream.client_cert; })),
      Key("upstream.client_key", Type::kString,
          at([](Config& c) { return &c.upstream.client_key; })),
      Key("upstream.tls_verify", Type::kBool, at([](Config& c) { return &c.upstream.tls_verify; })),
      Key("upstream.batch_max_events", Type::kInt,
          at([](Config& c) { return &c.upstream.batch_max_events; }))
          .range(1, 1'000'000),
      Key("upstream.batch_max_bytes", Type::kSize,
          at([](Config& c) { return &c.upstream.batch_max_bytes; }))
          .range(1024, 1LL << 30),
      Key("upstream.flush_interval_ms", Type::kInt,
          at([](Config& c) { return &c.upstream.flush_interval_ms; }))
          .range(0, kMaxMs),
      Key("upstream.max_in_flight", Type::kInt,
          at([](Config& c) { return &c.upstream.max_in_flight; }))
          .range(1, 64),
      Key("upstream.connect_timeout_ms", Type::kInt,
          at([](Config& c) { return &c.upstream.connect_timeout_ms; }))
          .range(1, kMaxMs),
      Key("upstream.request_timeout_ms", Type::kInt,
          at([](Config& c) { return &c.upstream.request_timeout_ms; }))
          .range(1, kMaxMs),
      Key("upstream.retry_initial_ms", Type::kInt,
          at([](Config& c) { return &c.upstream.retry_initial_ms; }))
          .range(1, kMaxMs),
      Key("upstream.retry_max_ms", Type::kInt,
          at([](Config& c) { return &c.upstream.retry_max_ms; }))
          .range(1, kMaxMs),
      Key("upstream.retry_deadline_s", Type::kInt,
          at([](Config& c) { return &c.upstream.retry_deadline_s; }))
          .range(0, kMaxS),
      Key("upstream.retry_after_max_ms", Type::kInt,
          at([](Config& c) { return &c.upstream.retry_after_max_ms; }))
          .range(0, kMaxMs),
      Key("upstream.auth_probe_interval_ms", Type::kInt,
          at([](Config& c) { return &c.upstream.auth_probe_interval_ms; }))
          .range(1, kMaxMs),
      Key("upstream.compression_level", Type::kInt,
          at([](Config& c) { return &c.upstream.compression_level; }))
          .range(1, 19),
      Key("upstream.deadletter_max_bytes", Type::kSize,
          at([](Config& c) { return &c.upstream.deadletter_max_bytes; }))
          .range(0, 1LL << 40),
      Key("trace.quiet_period_ms", Type::kInt,
          at([](Config& c) { return &c.trace.quiet_period_ms; }))
          .range(0, kMaxMs),
      Key("trace.max_open_s", Type::kInt, at([](Config& c) { return &c.trace.max_open_s; }))
          .range(1, kMaxS),
      Key("trace.retain_s", Type::kInt, at([](Config& c) { return &c.trace.retain_s; }))
          .range(0, kMaxS),
      Key("trace.max_open_traces", Type::kInt,
          at([](Config& c) { return &c.trace.max_open_traces; }))
          .range(16, 100'000'000)
          .restart(),
      Key("trace.max_events", Type::kInt, at([](Config& c) { return &c.trace.max_events; }))
          .range(100, 10'000'000)
          .restart(),
      Key("trace.max_bytes", Type::kSize, at([](Config& c) { return &c.trace.max_bytes; }))
          .range(64 << 10, 1LL << 30)
          .restart(),
      Key("buffer.max_bytes", Type::kSize, at([](Config& c) { return &c.buffer.max_bytes; }))
          .range(1 << 20, std::numeric_limits<int64_t>::max()),
      Key("buffer.sync", Type::kEnum, at([](Config& c) { return &c.buffer.sync; }))
          .one_of({"fsync", "os"})
          .restart(),
      Key("buffer.commit_delay_ms", Type::kInt,
          at([](Config& c) { return &c.buffer.commit_delay_ms; }))
          .range(0, 1000)
          .restart(),
      Key("buffer.commit_bytes", Type::kSize, at([](Config& c) { return &c.buffer.commit_bytes; }))
          .range(1, 2 << 20)
          .restart(),
      Key("buffer.when_full", Type::kEnum, at([](Config& c) { return &c.buffer.when_full; }))
          .one_of({"drop_oldest", "drop_newest"}),
      Key("exporter.file", Type::kString, at([](Config& c) { return &c.exporter.file; })).restart(),
      Key("exporter.rotate_bytes", Type::kSize,
          at([](Config& c) { return &c.exporter.rotate_bytes; }))
          .range(4096, 1LL << 40)
          .restart(),
      Key("exporter.keep_files", Type::kInt, at([](Config& c) { return &c.exporter.keep_files; }))
          .range(1, 1000)
          .restart(),
      Key("exporter.print", Type::kBool, at([](Config& c) { return &c.exporter.print; })).restart(),
      Key("redact.detectors", Type::kStringList, at([](Config& c) { return &c.redact.detectors; })),
      Key("redact.fields", Type::kStringList, at([](Config& c) { return &c.redact.fields; })),
      Key("redact.max_field_bytes", Type::kSize,
          at([](Config& c) { return &c.redact.max_field_bytes; }))
          .range(0, 1LL << 30),
      Key("redact.rules", Type::kRules, at([](Config& c) { return &c.redact.rules; })),
      Key("log.level", Type::kEnum, at([](Config& c) { return &c.log.level; }))
          .one_of({"trace", "debug", "info", "warn", "error", "critical", "off"}),
  };
  return table;
}

const Key* find_key(std::string_view name) {
  for (const auto& k : keys()) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

[[noreturn]] void fail(std::string_view source, std::string_view key, std::string_view what) {
  throw ConfigError(fmt::format("{}: {}: {}", source, key, what));
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& ch : out)
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b])))
    ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1])))
    --e;
  return std::string(s.substr(b, e - b));
}

std::optional<int64_t> parse_int(std::string_view s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

void check_range(const Key& k, int64_t v, std::string_view source) {
  if (v < k.min || v > k.max) {
    fail(source, k.name, fmt::format("{} is out of range [{}, {}]", v, k.min, k.max));
  }
}

// Sets an integer-like key from an already-typed integer.
void set_integer(Config& c, const Key& k, int64_t v, std::string_view source) {
  check_range(k, v, source);
  void* f = k.field(c);
  switch (k.type) {
    case Type::kInt:
      *static_cast<int64_t*>(f) = v;
      break;
    case Type::kSize:
      *static_cast<uint64_t*>(f) = static_cast<uint64_t>(v);
      break;
    case Type::kMode:
      *static_cast<uint32_t*>(f) = static_cast<uint32_t>(v);
      break;
    default:
      fail(source, k.name, "expected a string");
  }
}

void set_text(Config& c, const Key& k, std::string_view text, std::string_view source) {
  void* f = k.field(c);
  switch (k.type) {
    case Type::kString:
      *static_cast<std::string*>(f) = std::string(text);
      return;
    case Type::kEnum: {
      if (std::find(k.choices.begin(), k.choices.end(), text) == k.choices.end()) {
        std::string allowed;
        for (auto ch : k.choices)
          allowed += fmt::format("{}\"{}\"", allowed.empty() ? "" : ", ", ch);
        fail(source, k.name, fmt::format("\"{}\" is not one of {}", text, allowed));
      }
      *static_cast<std::string*>(f) = std::string(text);
      return;
    }
    case Type::kBool: {
      std::string t = lower(trim(text));
      if (t == "true" || t == "1" || t == "yes" || t == "on") {
        *static_cast<bool*>(f) = true;
      } else if (t == "false" || t == "0" || t == "no" || t == "off") {
        *static_cast<bool*>(f) = false;
      } else {
        fail(source, k.name, fmt::format("expected a boolean, got \"{}\"", text));
      }
      return;
    }
    case Type::kInt: {
      auto v = parse_int(trim(text));
      if (!v) fail(source, k.name, fmt::format("expected an integer, got \"{}\"", text));
      set_integer(c, k, *v, source);
      return;
    }
    case Type::kSize: {
      auto v = parse_size(text);
      if (!v || *v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(source, k.name,
             fmt::format("expected a size such as 2GiB, 512MiB or 4096, got \"{}\"", text));
      }
      set_integer(c, k, static_cast<int64_t>(*v), source);
      return;
    }
    case Type::kMode: {
      std::string t = trim(text);
      if (t.starts_with("0o")) t = t.substr(2);
      uint32_t v = 0;
      auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v, 8);
      if (t.empty() || ec != std::errc() || p != t.data() + t.size()) {
        fail(source, k.name,
             fmt::format("expected an octal mode such as \"0660\", got \"{}\"", text));
      }
      set_integer(c, k, v, source);
      return;
    }
    case Type::kStringList: {
      // "a,b,c"
      std::vector<std::string> items;
      std::string_view rest = text;
      while (!rest.empty()) {
        size_t comma = rest.find(',');
        std::string item = trim(rest.substr(0, comma));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
        if (!item.empty()) items.push_back(std::move(item));
      }
      *static_cast<std::vector<std::string>*>(f) = std::move(items);
      return;
    }
    case Type::kRules:
      fail(source, k.name, "rules can only be set in the configuration file ([[redact.rules]])");
    case Type::kStringMap: {
      // "Name=value,Other=value"
      std::map<std::string, std::string> m;
      std::string_view rest = text;
      while (!rest.empty()) {
        size_t comma = rest.find(',');
        std::string_view item = rest.substr(0, comma);
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
        if (trim(item).empty()) continue;
        size_t eq = item.find('=');
        if (eq == std::string_view::npos) {
          fail(source, k.name, "expected Name=value pairs separated by commas");
        }
        m[trim(item.substr(0, eq))] = trim(item.substr(eq + 1));
      }
      *static_cast<std::map<std::string, std::string>*>(f) = std::move(m);
      return;
    }
  }
}

std::string_view toml_type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date/time";
    default:
      return "nothing";
  }
}

std::string file_source(const std::string& path, const toml::source_region& where) {
  return fmt::format("{}:{}", path, where.begin.line);
}

void set_from_toml(Config& c, const Key& k, const toml::node& node, const std::string& path) {
  std::string source = file_source(path, node.source());
  auto type_error = [&](std::string_view expected) {
    fail(source, k.name, fmt::format("expected {}, got {}", expected, toml_type_name(node)));
  };
  switch (k.type) {
    case Type::kString:
    case Type::kEnum:
      if (!node.is_string()) type_error("a string");
      set_text(c, k, *node.value<std::string>(), source);
      return;
    case Type::kBool:
      if (!node.is_boolean()) type_error("a boolean");
      *static_cast<bool*>(k.field(c)) = *node.value<bool>();
      return;
    case Type::kInt:
      if (!node.is_integer()) type_error("an integer");
      set_integer(c, k, *node.value<int64_t>(), source);
      return;
    case Type::kSize:
    case Type::kMode:
      if (node.is_integer()) {
        set_integer(c, k, *node.value<int64_t>(), source);
      } else if (node.is_string()) {
        set_text(c, k, *node.value<std::string>(), source);
      } else {
        type_error(k.type == Type::kSize ? "a size (integer or string)" : "an octal string");
      }
      return;
    case Type::kStringList: {
      const toml::array* a = node.as_array();
      if (!a) type_error("an array of strings");
      std::vector<std::string> items;
      for (const auto& v : *a) {
        if (!v.is_string()) {
          fail(file_source(path, v.source()), k.name, "expected an array of strings");
        }
        items.push_back(*v.value<std::string>());
      }
      *static_cast<std::vector<std::string>*>(k.field(c)) = std::move(items);
      return;
    }
    case Type::kRules: {
      const toml::array* a = node.as_array();
      if (!a) type_error("an array of tables ([[redact.rules]])");
      std::vector<Config::RedactRule> rules;
      for (const auto& v : *a) {
        const toml::table* t = v.as_table();
        std::string where = file_source(path, v.source());
        if (!t) fail(where, k.name, "expected tables with name, pattern and replacement");
        Config::RedactRule r;
        for (const auto& [name, value] : *t) {
          std::string field(name.str());
          std::string full = fmt::format("{}.{}", k.name, field);
          if (!value.is_string())
            fail(file_source(path, value.source()), full, "expected a string");
          std::string text = *value.value<std::string>();
          if (field == "name") {
            r.name = text;
          } else if (field == "pattern") {
            r.pattern = text;
          } else if (field == "replacement") {
            r.replacement = text;
          } else {
            fail(file_source(path, value.source()), full, "unknown key");
          }
        }
        if (r.name.empty() || r.pattern.empty()) {
          fail(where, k.name, "every rule needs a name and a pattern");
        }
        rules.push_back(std::move(r));
      }
      *static_cast<std::vector<Config::RedactRule>*>(k.field(c)) = std::move(rules);
      return;
    }
    case Type::kStringMap: {
      const toml::table* t = node.as_table();
      if (!t) type_error("a table of strings");
      std::map<std::string, std::string> m;
      for (const auto& [name, value] : *t) {
        if (!value.is_string()) {
          fail(file_source(path, value.source()), fmt::format("{}.{}", k.name, name.str()),
               "expected a string");
        }
        m[std::string(name.str())] = *value.value<std::string>();
      }
      *static_cast<std::map<std::string, std::string>*>(k.field(c)) = std::move(m);
      return;
    }
  }
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        // TOML allows no control character in a basic string: C0 and DEL.
        if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
          out += fmt::format("\\u{:04x}", static_cast<int>(ch));
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

// Hides credentials in a URL ("https://user:secret@host" → "https://user:***@host").
std::string mask_url(std::string_view url) {
  size_t scheme = url.find("://");
  size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
  size_t at = url.find('@', start);
  size_t slash = url.find('/', start);
  if (at == std::string_view::npos || (slash != std::string_view::npos && at > slash)) {
    return std::string(url);
  }
  size_t colon = url.find(':', start);
  if (colon == std::string_view::npos || colon > at) {
    return fmt::format("{}***{}", url.substr(0, start), url.substr(at));
  }
  return fmt::format("{}***{}", url.substr(0, colon + 1), url.substr(at));
}

bool looks_secret(std::string_view header) {
  std::string h = lower(header);
  for (std::string_view word : {"auth", "key", "token", "secret", "cookie", "password"}) {
    if (h.find(word) != std::string::npos) return true;
  }
  return false;
}

std::string render_value(Config& c, const Key& k, bool mask) {
  void* f = k.field(c);
  switch (k.type) {
    case Type::kString:
    case Type::kEnum: {
      const auto& s = *static_cast<std::string*>(f);
      if (!mask || !k.is_secret) return quote(s);
      if (k.mask_whole) return quote(s.empty() ? "" : "***");
      return quote(mask_url(s));
    }
    case Type::kBool:
      return *static_cast<bool*>(f) ? "true" : "false";
    case Type::kInt:
      return std::to_string(*static_cast<int64_t*>(f));
    case Type::kSize:
      return std::to_string(*static_cast<uint64_t*>(f));
    case Type::kMode:
      return quote(fmt::format("{:04o}", *static_cast<uint32_t*>(f)));
    case Type::kStringList: {
      std::string out = "[";
      bool first = true;
      for (const auto& item : *static_cast<std::vector<std::string>*>(f)) {
        out += fmt::format("{}{}", first ? "" : ", ", quote(item));
        first = false;
      }
      return out + "]";
    }
    case Type::kRules: {
      std::string out = "[";
      bool first = true;
      for (const auto& r : *static_cast<std::vector<Config::RedactRule>*>(f)) {
        out += fmt::format("{}\n  {{ name = {}, pattern = {}, replacement = {} }}",
                           first ? "" : ",", quote(r.name), quote(r.pattern), quote(r.replacement));
        first = false;
      }
      return out + (first ? "]" : "\n]");
    }
    case Type::kStringMap: {
      std::string out = "{";
      bool first = true;
      for (const auto& [name, value] : *static_cast<std::map<std::string, std::string>*>(f)) {
        out += fmt::format("{} {} = {}", first ? "" : ",", quote(name),
                           quote(mask && looks_secret(name) ? "***" : value));
        first = false;
      }
      return out + (first ? "}" : " }");
    }
  }
  return {};
}

}  // namespace

std::optional<uint64_t> parse_size(std::string_view text) {
  std::string t = trim(text);
  size_t i = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i])))
    ++i;
  if (i == 0) return std::nullopt;
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(t.data(), t.data() + i, n);
  if (ec != std::errc()) return std::nullopt;
  std::string unit = lower(trim(std::string_view(t).substr(i)));
  uint64_t mult = 0;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kb" || unit == "kib") {
    mult = 1ull << 10;
  } else if (unit == "m" || unit == "mb" || unit == "mib") {
    mult = 1ull << 20;
  } else if (unit == "g" || unit == "gb" || unit == "gib") {
    mult = 1ull << 30;
  } else if (unit == "t" || unit == "tb" || unit == "tib") {
    mult = 1ull << 40;
  } else {
    return std::nullopt;
  }
  if (n > std::numeric_limits<uint64_t>::max() / mult) return std::nullopt;
  return n * mult;
}

void set_value(Config& config, std::string_view key, std::string_view value,
               std::string_view source) {
  const Key* k = find_key(key);
  if (!k) fail(source, key, "unknown key");
  set_text(config, *k, value, source);
}

namespace {

// Applies a parsed document; `path` names it in error messages.
void apply_table(Config& config, const toml::table& root, const std::string& path) {
  for (const auto& [name, node] : root) {
    std::string top(name.str());
    const Key* k = find_key(top);
    if (k) {
      set_from_toml(config, *k, node, path);
      continue;
    }
    const toml::table* section = node.as_table();
    bool known_section = false;
    for (const auto& key : keys()) {
      if (key.name.starts_with(top + ".")) known_section = true;
    }
    if (!section || !known_section) {
      fail(file_source(path, node.source()), top, section ? "unknown section" : "unknown key");
    }
    for (const auto& [sub, value] : *section) {
      std::string full = fmt::format("{}.{}", top, sub.str());
      const Key* sk = find_key(full);
      if (!sk) fail(file_source(path, value.source()), full, "unknown key");
      set_from_toml(config, *sk, value, path);
    }
  }
}

ConfigError parse_failure(const std::string& path, const toml::parse_error& e) {
  const auto& where = e.source();
  if (where.path) {
    return ConfigError(fmt::format("{}:{}: {}", path, where.begin.line, e.description()));
  }
  return ConfigError(fmt::format("{}: {}", path, e.description()));
}

}  // namespace

void apply_file(Config& config, const std::string& path) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw parse_failure(path, e);
  }
  apply_table(config, root, path);
}

void apply_toml_string(Config& config, std::string_view text, std::string_view source_name) {
  const std::string path(source_name);
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    throw parse_failure(path, e);
  }
  apply_table(config, root, path);
}

void apply_env(Config& config, const std::vector<std::string>& environment) {
  for (const auto& entry : environment) {
    if (!entry.starts_with("SIDETRACE_")) continue;
    size_t eq = entry.find('=');
    if (eq == std::string::npos) continue;
    std::string var = entry.substr(0, eq);
    std::string name = lower(std::string_view(var).substr(std::string_view("SIDETRACE_").size()));
    // SIDETRACE_LISTEN_UNIX_STREAM → listen.unix_stream: the section is the
    // part before the first underscore when such a section exists.
    const Key* match = find_key(name);
    if (!match) {
      size_t us = name.find('_');
      if (us != std::string::npos) {
        std::string dotted = name.substr(0, us) + "." + name.substr(us + 1);
        match = find_key(dotted);
      }
    }
    if (!match) continue;
    set_text(config, *match, std::string_view(entry).substr(eq + 1),
             fmt::format("environment variable {}", var));
  }
}

std::vector<std::string> process_environment() {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e)
    out.emplace_back(*e);
  return out;
}

void apply_override(Config& config, std::string_view assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string_view::npos) {
    throw ConfigError(fmt::format("--set {}: expected section.key=value", assignment));
  }
  std::string key = trim(assignment.substr(0, eq));
  set_value(config, key, assignment.substr(eq + 1), "--set");
}

namespace {

constexpr size_t kMinTokenBytes = 16;

// Why `token` cannot be an admin token, or "" when it can. It travels in an
// HTTP header: printable ASCII, no spaces.
std::string token_problem(std::string_view token) {
  for (char ch : token) {
    if (ch <= 0x20 || ch >= 0x7f) return "may hold only printable ASCII characters, no spaces";
  }
  if (token.size() < kMinTokenBytes) {
    return fmt::format("must be at least {} characters (e.g. openssl rand -hex 32)",
                       kMinTokenBytes);
  }
  return {};
}

// Why `entry` cannot be in admin.allowed_hosts or listen.otlp_allowed_hosts,
// or "" when it can.
std::string allowed_host_problem(const std::string& entry) {
  if (entry == "*") return "\"*\" would accept any host, which this list exists to prevent";
  if (entry.empty() || entry == ".") return "an empty name";
  for (char ch : entry) {
    if (std::isspace(static_cast<unsigned char>(ch)) || ch == '/' || ch == '@' || ch == '*' ||
        ch == '[' || ch == ']') {
      return fmt::format("\"{}\" is not a host name or address (no scheme, path or brackets)",
                         entry);
    }
  }
  in6_addr v6{};
  if (entry.find(':') != std::string::npos && ::inet_pton(AF_INET6, entry.c_str(), &v6) != 1) {
    return fmt::format("\"{}\": give the name without a port", entry);
  }
  return {};
}

}  // namespace

bool is_loopback_listen(std::string_view host_port) {
  const auto hp = parse_host_port(host_port);
  if (!hp || !hp->port) return false;
  const std::string& host = hp->host;
  if (lower(host) == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

std::string admin_token(const Config& c) {
  if (c.admin.token_file.empty()) return c.admin.token;
  std::ifstream in(c.admin.token_file, std::ios::binary);
  std::stringstream text;
  if (in) text << in.rdbuf();
  if (!in || in.bad()) {
    throw ConfigError(fmt::format("admin.token_file: cannot read \"{}\"", c.admin.token_file));
  }
  std::string token = trim(text.str());
  if (token.empty()) {
    throw ConfigError(fmt::format("admin.token_file: \"{}\" is empty", c.admin.token_file));
  }
  if (std::string why = token_problem(token); !why.empty()) {
    throw ConfigError(
        fmt::format("admin.token_file: the token in \"{}\" {}", c.admin.token_file, why));
  }
  return token;
}

std::string upstream_endpoint(const Config& c) {
  if (c.upstream.endpoint.empty() && c.upstream.format == "neuraltrust") {
    return std::string(defaults::kNeuralTrustEndpoint);
  }
  return c.upstream.endpoint;
}

void validate(const Config& c) {
  if (c.upstream.retry_initial_ms > c.upstream.retry_max_ms) {
    throw ConfigError(
        fmt::format("upstream.retry_initial_ms: {} is larger than upstream.retry_max_ms ({})",
                    c.upstream.retry_initial_ms, c.upstream.retry_max_ms));
  }
  if (c.upstream.compression == "gzip" && c.upstream.compression_level > 9) {
    throw ConfigError(fmt::format("upstream.compression_level: {} is out of range for gzip (1..9)",
                                  c.upstream.compression_level));
  }
  if (c.data_dir.empty()) throw ConfigError("data_dir: must not be empty");
  if (!c.upstream.endpoint.empty() && !c.upstream.endpoint.starts_with("http://") &&
      !c.upstream.endpoint.starts_with("https://")) {
    throw ConfigError(fmt::format("upstream.endpoint: \"{}\" must start with http:// or https://",
                                  mask_url(c.upstream.endpoint)));
  }
  if (c.listen.max_partial_bytes < c.listen.max_message_bytes) {
    throw ConfigError(
        fmt::format("listen.max_partial_bytes: {} is smaller than listen.max_message_bytes ({})",
                    c.listen.max_partial_bytes, c.listen.max_message_bytes));
  }
  if (c.listen.unix_stream.empty() && c.listen.unix_dgram.empty() && c.listen.udp.empty() &&
      c.listen.otlp_http.empty()) {
    throw ConfigError("listen: every transport is disabled; enable at least one");
  }
  if (!c.listen.otlp_http.empty() &&
      c.listen.otlp_max_pending_bytes < c.listen.otlp_max_body_bytes) {
    throw ConfigError(fmt::format(
        "listen.otlp_max_pending_bytes: {} is smaller than listen.otlp_max_body_bytes ({}): a "
        "request of the largest size could never be taken",
        c.listen.otlp_max_pending_bytes, c.listen.otlp_max_body_bytes));
  }
  if (!c.admin.token.empty() && !c.admin.token_file.empty()) {
    throw ConfigError("admin.token: set admin.token or admin.token_file, not both");
  }
  if (!c.admin.token.empty()) {
    if (std::string why = token_problem(c.admin.token); !why.empty()) {
      throw ConfigError("admin.token: " + why);
    }
  }
  for (const auto& host : c.admin.allowed_hosts) {
    if (std::string why = allowed_host_problem(host); !why.empty()) {
      throw ConfigError("admin.allowed_hosts: " + why);
    }
  }
  for (const auto& host : c.listen.otlp_allowed_hosts) {
    if (std::string why = allowed_host_problem(host); !why.empty()) {
      throw ConfigError("listen.otlp_allowed_hosts: " + why);
    }
  }
  // (An admin.listen that is not host:port at all is reported when it is bound.)
  if (c.admin.listen.find(':') != std::string::npos && c.admin.token.empty() &&
      c.admin.token_file.empty() && !is_loopback_listen(c.admin.listen)) {
    throw ConfigError(fmt::format(
        "admin.token: admin.listen \"{}\" is reachable from other hosts, and the admin endpoint "
        "serves every trace; set admin.token (or admin.token_file), or listen on a loopback "
        "address such as 127.0.0.1:7718",
        c.admin.listen));
  }
}

std::string to_toml(const Config& config, bool mask_secrets) {
  Config& c = const_cast<Config&>(config);  // fields are only read
  std::ostringstream out;
  std::string section;
  for (const auto& k : keys()) {
    size_t dot = k.name.find('.');
    std::string sec = dot == std::string_view::npos ? "" : std::string(k.name.substr(0, dot));
    std::string_view leaf = dot == std::string_view::npos ? k.name : k.name.substr(dot + 1);
    if (sec != section) {
      out << "\n[" << sec << "]\n";
      section = sec;
    }
    out << leaf << " = " << render_value(c, k, mask_secrets) << "\n";
  }
  return out.str();
}

std::vector<std::string> key_names() {
  std::vector<std::string> out;
  for (const auto& k : keys())
    out.emplace_back(k.name);
  return out;
}

bool needs_restart(std::string_view key) {
  const Key* k = find_key(key);
  return k && k->needs_restart;
}

std::vector<std::string> changed_keys(const Config& a, const Config& b) {
  std::vector<std::string> out;
  for (const auto& k : keys()) {
    if (render_value(const_cast<Config&>(a), k, false) !=
        render_value(const_cast<Config&>(b), k, false)) {
      out.emplace_back(k.name);
    }
  }
  return out;
}

Config load(const std::string& file, const std::vector<std::string>& environment,
            const std::vector<std::string>& overrides) {
  Config c;
  if (!file.empty()) apply_file(c, file);
  apply_env(c, environment);
  for (const auto& o : overrides)
    apply_override(c, o);
  validate(c);
  return c;
}

}  // namespace sidetrace::config
