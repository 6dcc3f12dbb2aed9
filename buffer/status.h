// The result of a store operation. The store never throws after open; every
// call returns a Status that says whether trying again may help.
#pragma once

#include <string>
#include <utility>

namespace sidetrace::buffer {

class Status {
 public:
  enum class Code {
    kOk,
    kNotFound,
    kNoSpace,  // the filesystem is full
    kFull,     // the quota (buffer.max_bytes) is reached
    kIOError,
    kCorruption,
    kBusy,
    kInvalidArgument
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status NotFound(std::string m = {}) { return Status(Code::kNotFound, std::move(m)); }
  static Status NoSpace(std::string m) { return Status(Code::kNoSpace, std::move(m)); }
  static Status Full(std::string m) { return Status(Code::kFull, std::move(m)); }
  static Status IOError(std::string m) { return Status(Code::kIOError, std::move(m)); }
  static Status Corruption(std::string m) { return Status(Code::kCorruption, std::move(m)); }
  static Status Busy(std::string m) { return Status(Code::kBusy, std::move(m)); }
  static Status InvalidArgument(std::string m) {
    return Status(Code::kInvalidArgument, std::move(m));
  }

  bool ok() const { return code_ == Code::kOk; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsNoSpace() const { return code_ == Code::kNoSpace; }
  bool IsFull() const { return code_ == Code::kFull; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  // Whether the same call may succeed later without anyone changing anything
  // but time (space freed, a transient I/O error passed, a lock released).
  bool retryable() const {
    return code_ == Code::kNoSpace || code_ == Code::kFull || code_ == Code::kIOError ||
           code_ == Code::kBusy;
  }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Status(Code c, std::string m) : code_(c), message_(std::move(m)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

}  // namespace sidetrace::buffer
