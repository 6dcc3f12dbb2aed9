#include "ipc/splitter.h"

#include <algorithm>
#include <cstring>

namespace sidetrace::ipc {

namespace {
// More pending values than this cannot be a real message in any stream.
constexpr uint64_t kMaxPendingValues = uint64_t{1} << 40;
}  // namespace

bool MemoryBudget::take(size_t n) {
  size_t used = used_.load(std::memory_order_relaxed);
  do {
    if (n > limit_ - std::min(used, limit_)) return false;
  } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
  return true;
}

StreamSplitter::StreamSplitter(size_t max_message_bytes, size_t read_bytes, MemoryBudget* budget)
    : max_message_(max_message_bytes),
      read_bytes_(std::max<size_t>(read_bytes, 64)),
      budget_(budget) {}

StreamSplitter::~StreamSplitter() {
  if (budget_) budget_->give(charged_);
}

bool StreamSplitter::grow(size_t want) {
  // What the buffer holds beyond one read is charged to the budget.
  const size_t charge = want > read_bytes_ ? want - read_bytes_ : 0;
  if (budget_ && charge > charged_) {
    if (!budget_->take(charge - charged_)) return false;
  } else if (budget_) {
    budget_->give(charged_ - charge);
  }
  if (budget_) charged_ = charge;
  auto fresh = std::make_unique_for_overwrite<char[]>(want);
  if (end_ > begin_) std::memcpy(fresh.get(), buf_.get() + begin_, end_ - begin_);
  scan_ -= begin_;
  end_ -= begin_;
  begin_ = 0;
  buf_ = std::move(fresh);
  cap_ = want;
  return true;
}

void StreamSplitter::starve() {
  // Parsing goes on over the message's remaining bytes, dropping them as for
  // an oversized message; only the unparsed tail (at most a partial header)
  // is kept.
  discarding_ = true;
  starved_ = true;
  discarded_ += scan_ - begin_;
  const size_t tail = end_ - scan_;
  std::memmove(buf_.get(), buf_.get() + scan_, tail);
  begin_ = scan_ = 0;
  end_ = tail;
}

std::span<char> StreamSplitter::prepare() {
  const size_t held = end_ - begin_;
  const size_t limit = max_message_ + read_bytes_;
  if (held == 0 && cap_ > 4 * read_bytes_) {
    // A large message has gone: give the memory back.
    begin_ = scan_ = end_ = 0;
    buf_.reset();
    cap_ = 0;
  }
  if (cap_ == 0) {
    grow(read_bytes_);  // charges nothing
  } else if (cap_ - end_ < read_bytes_ / 2) {
    if (begin_ > 0 && cap_ - held >= read_bytes_ / 2) {
      std::memmove(buf_.get(), buf_.get() + begin_, held);
      scan_ -= begin_;
      end_ = held;
      begin_ = 0;
    } else if (cap_ < limit) {
      if (!grow(std::min(limit, std::max(cap_ * 2, held + read_bytes_)))) starve();
    } else if (begin_ > 0) {
      std::memmove(buf_.get(), buf_.get() + begin_, held);
      scan_ -= begin_;
      end_ = held;
      begin_ = 0;
    }
  }
  return {buf_.get() + end_, cap_ - end_};
}

void StreamSplitter::commit(size_t n) {
  end_ = std::min(cap_, end_ + n);
}

StreamSplitter::Result StreamSplitter::next(std::string_view* msg) {
  if (failed_) return Result::kMalformed;
  if (starved_) {
    starved_ = false;
    return Result::kNoMemory;
  }
  const auto* p = reinterpret_cast<const uint8_t*>(buf_.get());
  for (;;) {
    if (!in_message_) {
      if (scan_ == end_) {
        begin_ = scan_;
        return Result::kNeedMore;
      }
      begin_ = scan_;
      pending_ = 1;
      skip_ = 0;
      discarded_ = 0;
      in_message_ = true;
      discarding_ = false;
    }
    // Parse as far as the received bytes allow.
    for (;;) {
      if (skip_ > 0) {
        const uint64_t take = std::min<uint64_t>(skip_, end_ - scan_);
        scan_ += static_cast<size_t>(take);
        skip_ -= take;
        if (skip_ > 0) break;
      }
      if (pending_ == 0) break;
      detail::MpItem it;
      const int h = detail::read_header(p + scan_, end_ - scan_, &it);
      if (h == detail::kInvalid) {
        failed_ = true;
        return Result::kMalformed;
      }
      if (h == detail::kNeedMore) break;
      scan_ += static_cast<size_t>(h);
      pending_ = pending_ - 1 + detail::child_values(it);
      skip_ = detail::payload_bytes(it);
      if (pending_ > kMaxPendingValues) {
        failed_ = true;
        return Result::kMalformed;
      }
      // The size bound is checked after every header, so an oversized value
      // is reported at the same header however the stream is chunked (and
      // before any bad bytes that follow it).
      if (!discarding_ && (scan_ - begin_) + skip_ + pending_ > max_message_) break;
    }
    const bool complete = pending_ == 0 && skip_ == 0;
    if (!discarding_) {
      // Lower bound of the message size: parsed bytes, the payload still due
      // and at least one byte per value still due.
      const uint64_t known = (scan_ - begin_) + skip_ + pending_;
      if (known > max_message_) {
        discarding_ = true;
        discarded_ += scan_ - begin_;
        begin_ = scan_;
        if (complete) in_message_ = false;
        return Result::kTooLarge;
      }
      if (complete) {
        *msg = std::string_view(buf_.get() + begin_, scan_ - begin_);
        in_message_ = false;
        begin_ = scan_;
        return Result::kMessage;
      }
      return Result::kNeedMore;
    }
    // Discarding an oversized message: drop what has been scanned.
    discarded_ += scan_ - begin_;
    begin_ = scan_;
    if (!complete) return Result::kNeedMore;
    in_message_ = false;
    discarding_ = false;
  }
}

}  // namespace sidetrace::ipc
