// Test support: a writer transform (WriterOptions::transform) that holds the
// writer on its group until released, standing for a store write that does
// not return.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>

#include "ipc/message.h"

namespace sidetrace::buffer::testing {

class HeldTransform {
 public:
  // The transform to give the writer; the object must outlive its use.
  std::function<bool(ipc::Message&)> transform() {
    return [this](ipc::Message&) {
      std::unique_lock lock(mu_);
      entered_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return released_; });
      return false;
    };
  }

  // Whether the writer reached the transform within `limit`.
  bool wait_entered(std::chrono::seconds limit = std::chrono::seconds(10)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return entered_; });
  }

  void release() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool released_ = false;
};

}  // namespace sidetrace::buffer::testing
