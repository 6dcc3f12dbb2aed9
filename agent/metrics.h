// Prometheus text exposition (format 0.0.4), written by hand: counters,
// gauges and cumulative histograms with labels.
//
// Thread safety: a MetricsWriter is used by one thread at a time.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace sidetrace::agent {

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

class MetricsWriter {
 public:
  // Writes the HELP and TYPE lines once per metric family; call before the
  // samples of that family.
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, double value, Labels labels = {});
  void sample(std::string_view name, uint64_t value, Labels labels = {});

  // A histogram from per-bucket (not cumulative) counts; `bounds` are the
  // upper bounds of all buckets but the last, which is +Inf.
  void histogram(std::string_view name, std::span<const double> bounds,
                 std::span<const uint64_t> counts, double sum, Labels labels = {});

  const std::string& text() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void labels(Labels labels, std::string_view extra_key = {}, std::string_view extra_value = {});
  std::string out_;
};

}  // namespace sidetrace::agent
