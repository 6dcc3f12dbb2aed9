// FileExporter: each trace revision as one JSON line in data_dir/traces.jsonl,
// rotated by size; outbox entries are acked once their lines are flushed and
// synced. An exception on the writer thread is counted (Stats::internal_errors,
// Stage::kFile) and handled as a failed write: the file is reopened and the
// unacknowledged entries are written again after a backoff.
#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "common/rate_limited_log.h"
#include "common/thread.h"
#include "upstream/detail/encode.h"
#include "upstream/detail/policy.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {

namespace fs = std::filesystem;

struct FileExporter::Impl {
  Impl(buffer::Outbox& s, Options o, const Clock& c) : store(s), options(std::move(o)), clock(c) {}

  buffer::Outbox& store;
  Options options;  // guarded by mu
  const Clock& clock;
  RateLimitedLog log{10, std::chrono::seconds(10)};

  std::mutex mu;  // guards options, stop flag, notified, stats
  std::condition_variable cv;
  bool stop_requested = false;
  bool notified = false;
  // While a small round gathers more, an emission wakes the writer thread
  // only once the round is full.
  bool gathering = false;
  Stats stats;
  uint64_t last_success_mono = 0;

  std::mutex life_mu;
  std::thread thread;
  bool running = false;

  // Writer-thread state.
  std::FILE* file = nullptr;
  // The stream's buffer: a batch goes out in a few large writes. glibc takes
  // the size given to setvbuf() only with a buffer of the caller's (without
  // one it allocates a block of the file system's, 4 KiB: one write() each).
  std::unique_ptr<char[]> file_buffer;
  uint64_t file_size = 0;
  std::string path;

  // A line cut short by a crash (kill -9 mid-write) is removed: its outbox
  // entry was not acknowledged, so it is written again, whole.
  void drop_torn_tail() {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return;  // absent: nothing to repair
    struct stat st {};
    off_t end = ::fstat(fd, &st) == 0 ? st.st_size : 0;
    off_t keep = end;
    char buf[4096];
    while (keep > 0) {
      off_t from =
          keep > static_cast<off_t>(sizeof(buf)) ? keep - static_cast<off_t>(sizeof(buf)) : 0;
      ssize_t n = ::pread(fd, buf, static_cast<size_t>(keep - from), from);
      if (n <= 0) break;
      ssize_t i = n;
      while (i > 0 && buf[i - 1] != '\n')
        --i;
      if (i > 0) {
        keep = from + i;
        break;
      }
      keep = from;
    }
    if (keep < end) {
      if (::ftruncate(fd, keep) == 0) {
        log.log(spdlog::level::warn,
                fmt::format("upstream: removed a partial last line ({} bytes) from {}", end - keep,
                            path));
      }
    }
    ::close(fd);
  }

  void open_file() {
    drop_torn_tail();
    file = std::fopen(path.c_str(), "ab");
    if (file == nullptr) {
      throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    }
    constexpr size_t kBufferBytes = 256 << 10;
    if (!file_buffer) file_buffer = std::make_unique<char[]>(kBufferBytes);
    std::setvbuf(file, file_buffer.get(), _IOFBF, kBufferBytes);
    std::error_code ec;
    file_size = fs::exists(path, ec) ? fs::file_size(path, ec) : 0;
  }

  // traces.jsonl -> .1 -> .2 ... ; the oldest beyond `keep` is deleted.
  bool rotate(uint32_t keep) {
    std::fclose(file);
    file = nullptr;
    std::error_code ec;
    if (keep == 0) {
      fs::remove(path, ec);
    } else {
      fs::remove(fmt::format("{}.{}", path, keep), ec);
      for (uint32_t i = keep; i > 1; --i) {
        fs::rename(fmt::format("{}.{}", path, i - 1), fmt::format("{}.{}", path, i), ec);
      }
      fs::rename(path, path + ".1", ec);
      if (ec) log.log(spdlog::level::err, "upstream: cannot rotate " + path + ": " + ec.message());
    }
    try {
      open_file();
    } catch (const std::exception& e) {
      log.log(spdlog::level::err, std::string("upstream: ") + e.what());
      return false;
    }
    return true;
  }

  bool write_all(const std::vector<buffer::OutboxEntry>& entries, const Options& o) {
    for (auto& e : entries) {
      if (file == nullptr && !rotate(o.file_keep)) return false;
      const std::string& doc = *e.document;
      if (file_size > 0 && file_size + doc.size() + 1 > o.file_max_bytes) {
        if (std::fflush(file) != 0 || ::fdatasync(::fileno(file)) != 0) return false;
        if (!rotate(o.file_keep)) return false;
      }
      if (std::fwrite(doc.data(), 1, doc.size(), file) != doc.size() ||
          std::fputc('\n', file) == EOF) {
        return false;
      }
      file_size += doc.size() + 1;
      if (o.print) {
        std::fwrite(doc.data(), 1, doc.size(), stdout);
        std::fputc('\n', stdout);
      }
    }
    if (o.print) std::fflush(stdout);
    return std::fflush(file) == 0 && ::fdatasync(::fileno(file)) == 0;
  }

  void run() {
    std::vector<buffer::OutboxEntry> entries;
    uint32_t failures = 0;
    // The outbox is read on from the first entry not yet written: entries
    // are appended in seq order, and those before it are acknowledged (their
    // deleted keys are never walked again).
    uint64_t next = 0;
    // When the last round was written (none yet: the first goes at once).
    auto last_round = std::chrono::steady_clock::time_point::min();
    for (;;) {
      Options o;
      {
        std::unique_lock lock(mu);
        if (stop_requested) break;
        o = options;
        notified = false;
      }
      bool ok = false;
      try {
        entries.clear();
        buffer::Status s = store.read_outbox(next, 1024, 4u << 20, &entries);
        ok = s.ok();
        if (!ok) log.log(spdlog::level::err, "upstream: outbox read failed: " + s.message());
        if (ok && !entries.empty()) {
          if (!write_all(entries, o)) {
            log.log(spdlog::level::err,
                    fmt::format("upstream: writing {} failed: {}", path, std::strerror(errno)));
            close_file();
            ok = false;
          } else {
            std::vector<uint64_t> seqs;
            size_t events = 0, bytes = 0;
            for (auto& e : entries) {
              seqs.push_back(e.seq);
              events += detail::count_events(*e.document);
              bytes += e.document->size() + 1;
            }
            s = store.ack_outbox(seqs);
            if (!s.ok()) {
              // The lines are written; acking again later may duplicate them
              // in the file, never lose them.
              log.log(spdlog::level::err, "upstream: outbox ack failed: " + s.message());
              ok = false;
            } else {
              uint64_t now = clock.now_ns();
              std::lock_guard lock(mu);
              ++stats.batches_sent;
              stats.traces_delivered += entries.size();
              stats.events_delivered += events;
              stats.bytes_sent += bytes;
              last_success_mono = clock.mono_ns();
              last_round = std::chrono::steady_clock::now();
              next = entries.back().seq + 1;
              for (auto& e : entries) {
                uint64_t ms = now > e.emitted_ns ? (now - e.emitted_ns) / 1'000'000 : 0;
                size_t i = 0;
                while (ms > kLatencyBoundsMs[i])
                  ++i;
                ++stats.latency_buckets[i];
                stats.latency_sum_ms += ms;
                ++stats.latency_count;
              }
              failures = 0;
              continue;  // there may be more
            }
          }
        }
      } catch (...) {
        // A line may have been cut short: reopening removes it (open_file()).
        internal_error(detail::current_exception_text());
        close_file();
        ok = false;
      }
      if (!ok) {
        std::lock_guard lock(mu);
        ++stats.failed_retryable;
        ++failures;
      }
      std::unique_lock lock(mu);
      if (ok) {
        // Nothing left to write: sleep until the outbox grows. Then a round
        // that would be small gathers more, as a partial batch of delivery
        // does: each round costs a write, an fdatasync and an
        // acknowledgement whatever it carries. It goes once the last one is
        // flush_interval_ms old, or at half a batch.
        cv.wait(lock, [&] { return stop_requested || notified; });
        gathering = true;
        cv.wait_until(lock, last_round + std::chrono::milliseconds(o.flush_interval_ms),
                      [&] { return stop_requested || round_is_full(o); });
        gathering = false;
      } else {
        cv.wait_for(
            lock,
            std::chrono::milliseconds(std::min<uint64_t>(
                uint64_t{o.retry_initial_ms} << std::min<uint32_t>(failures, 10), o.retry_max_ms)),
            [&] { return stop_requested; });
      }
    }
    close_file();
  }

  // Whether the outbox holds half a batch of entries or bytes.
  bool round_is_full(const Options& o) const {
    return store.outbox_entries() >= std::max<size_t>(o.batch_max_events / 2, 1) ||
           store.outbox_bytes() >= o.batch_max_bytes / 2;
  }

  void close_file() {
    if (file != nullptr) {
      std::fclose(file);
      file = nullptr;
    }
  }

  // Counts an exception of the writer thread and logs it (rate limited).
  void internal_error(const std::string& what) {
    {
      std::lock_guard lock(mu);
      ++stats.internal_errors[static_cast<size_t>(Stage::kFile)];
    }
    log.log(spdlog::level::err,
            fmt::format("upstream: internal error ({}): {}; writing again after a backoff",
                        stage_name(Stage::kFile), what));
  }
};

FileExporter::FileExporter(buffer::Outbox& store, Options options, const Clock& clock)
    : impl_(std::make_unique<Impl>(store, std::move(options), clock)) {}

FileExporter::~FileExporter() {
  stop();
}

void FileExporter::start() {
  std::lock_guard lock(impl_->life_mu);
  if (impl_->running) return;
  Impl& m = *impl_;
  if (m.options.data_dir.empty()) throw std::invalid_argument("file exporter needs a data_dir");
  m.path = m.options.file_path.empty() ? (fs::path(m.options.data_dir) / "traces.jsonl").string()
                                       : m.options.file_path;
  m.open_file();
  m.stop_requested = false;
  m.store.set_outbox_listener([&m] {
    {
      std::lock_guard l(m.mu);
      m.notified = true;
      if (m.gathering && !m.round_is_full(m.options)) return;
    }
    m.cv.notify_one();
  });
  m.thread = std::thread([&m] {
    run_thread("st-exporter", [&m] {
      // run() handles the exceptions of its writes; one from elsewhere in it
      // is counted and run() starts over (unacknowledged entries stay in the
      // outbox).
      for (;;) {
        try {
          m.run();
          return;
        } catch (...) {
          m.internal_error(detail::current_exception_text());
          m.close_file();
        }
        std::unique_lock lock(m.mu);
        m.cv.wait_for(lock, std::chrono::seconds(1), [&m] { return m.stop_requested; });
      }
    });
  });
  m.running = true;
}

void FileExporter::stop() {
  std::lock_guard lock(impl_->life_mu);
  Impl& m = *impl_;
  if (!m.running) return;
  m.store.set_outbox_listener({});
  {
    std::lock_guard l(m.mu);
    m.stop_requested = true;
  }
  m.cv.notify_one();
  m.thread.join();
  m.running = false;
}

Stats FileExporter::stats() const {
  std::lock_guard lock(impl_->mu);
  Stats s = impl_->stats;
  if (impl_->last_success_mono != 0) {
    s.seconds_since_success =
        static_cast<double>(impl_->clock.mono_ns() - impl_->last_success_mono) / 1e9;
  }
  return s;
}

void FileExporter::update_options(const Options& options) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->options = options;
    impl_->notified = true;
  }
  impl_->cv.notify_one();
}

}  // namespace sidetrace::upstream
