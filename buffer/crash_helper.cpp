// Test helper for the crash test: opens the store in argv[1], runs the Writer
// on an endless stream of messages (run number argv[2]) and prints one line
// "<seq> <unique raw>" per committed message, written with write(2) as soon as
// the commit returns. The test kill -9s this process at random points.
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "buffer/store.h"
#include "buffer/writer.h"

using namespace sidetrace;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DATA_DIR RUN\n", argv[0]);
    return 2;
  }
  // Stdout carries the report; log lines (RocksDB's too) go to stderr.
  spdlog::set_default_logger(spdlog::stderr_logger_st("helper"));
  buffer::StoreOptions o;
  o.data_dir = argv[1];
  o.sync = buffer::SyncMode::kOs;
  std::unique_ptr<buffer::Store> store;
  buffer::Status s = buffer::Store::open(o, &store);
  if (!s.ok()) {
    std::fprintf(stderr, "open: %s\n", s.ToString().c_str());
    return 1;
  }
  BoundedQueue<ipc::MessageBatch> q(8 << 20);
  std::string out;
  // The raw bytes of every message are unique: "run-<run>-<n>".
  buffer::Writer w(*store, q, [&](std::span<const buffer::Committed> c) {
    out.clear();
    for (const auto& m : c) {
      out += std::to_string(m.seq);
      out += ' ';
      out += m.trace_id;
      out += '\n';
    }
    const char* p = out.data();
    size_t left = out.size();
    while (left > 0) {
      ssize_t n = ::write(1, p, left);
      if (n <= 0) std::_Exit(3);
      p += n;
      left -= static_cast<size_t>(n);
    }
  });
  w.start();
  std::string run = argv[2];
  for (uint64_t n = 0;; ++n) {
    ipc::MessageBatch b;
    for (int i = 0; i < 16; ++i, ++n) {
      ipc::Message m;
      m.trace_id = "r" + run + "-t" + std::to_string(n % 13);
      m.raw = "run-" + run + "-" + std::to_string(n);
      m.recv_ns = system_clock().now_ns();
      b.push_back(std::move(m));
    }
    while (!q.try_push(b, 16 * 64))
      std::this_thread::yield();
  }
}
