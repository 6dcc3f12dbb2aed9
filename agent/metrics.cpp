#include "agent/metrics.h"

#include <fmt/format.h>

#include <cmath>

namespace sidetrace::agent {

namespace {

void escape_label(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

std::string format_double(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

}  // namespace

void MetricsWriter::family(std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void MetricsWriter::labels(Labels labels, std::string_view extra_key,
                           std::string_view extra_value) {
  if (labels.size() == 0 && extra_key.empty()) return;
  out_ += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out_ += ',';
    first = false;
    out_ += k;
    out_ += "=\"";
    escape_label(out_, v);
    out_ += '"';
  }
  if (!extra_key.empty()) {
    if (!first) out_ += ',';
    out_ += extra_key;
    out_ += "=\"";
    escape_label(out_, extra_value);
    out_ += '"';
  }
  out_ += '}';
}

void MetricsWriter::sample(std::string_view name, double value, Labels l) {
  out_ += name;
  labels(l);
  out_ += ' ';
  out_ += format_double(value);
  out_ += '\n';
}

void MetricsWriter::sample(std::string_view name, uint64_t value, Labels l) {
  out_ += name;
  labels(l);
  fmt::format_to(std::back_inserter(out_), " {}\n", value);
}

void MetricsWriter::histogram(std::string_view name, std::span<const double> bounds,
                              std::span<const uint64_t> counts, double sum, Labels l) {
  uint64_t cumulative = 0;
  std::string bucket = fmt::format("{}_bucket", name);
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    std::string le = i < bounds.size() ? format_double(bounds[i]) : "+Inf";
    out_ += bucket;
    labels(l, "le", le);
    fmt::format_to(std::back_inserter(out_), " {}\n", cumulative);
  }
  out_ += name;
  out_ += "_sum";
  labels(l);
  out_ += ' ';
  out_ += format_double(sum);
  out_ += '\n';
  out_ += name;
  out_ += "_count";
  labels(l);
  fmt::format_to(std::back_inserter(out_), " {}\n", cumulative);
}

}  // namespace sidetrace::agent
