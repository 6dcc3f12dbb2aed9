// Request bodies: the native and OTLP formats, compression, and the 413
// truncation of oversized documents.
//
// Thread safety: free functions without shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "upstream/upstream.h"

namespace sidetrace::upstream::detail {

// {"traces":[doc,doc,...]} with the documents copied verbatim. Appends to *out.
void append_native_body(std::span<const std::string_view> docs, std::string* out);

// An OTLP/HTTP ExportTraceServiceRequest holding the documents (one
// resourceSpans per document; see OtlpEncoder in otlp.h), in the JSON or the
// protobuf encoding. Returns false (and sets *error) when a document is not
// valid JSON.
bool append_otlp_body(std::span<const std::string_view> docs, std::string* out, std::string* error);
bool append_otlp_protobuf(std::span<const std::string_view> docs, std::string* out,
                          std::string* error);

// Compresses `in` into *out (replacing it). kNone copies. Returns false on a
// compressor failure.
bool compress(Compression c, int level, std::string_view in, std::string* out);

// zlib and igzip count the bytes of one call in 32 bits: gzip input and
// output are handed to them in pieces of at most this many bytes, so that a
// body of 4 GiB or more is compressed whole.
inline constexpr size_t kZlibMaxChunk = UINT32_MAX;

// Builds request bodies one after another, keeping its compressor state
// between them, and writing into the capacity *out already has: a fresh
// deflate state, an uncompressed copy of the body and a new output buffer
// per batch would each be faulted in anew (the allocator returns freed pages
// within a fraction of a second). A body is compressed as it is formed,
// never held uncompressed.
//
// Thread safety: none; one encoder per thread (it is not shared).
class BodyEncoder {
 public:
  // `zlib_chunk` (at most kZlibMaxChunk; smaller in tests) bounds the bytes
  // of input and of output space given to one compressor call (gzip).
  explicit BodyEncoder(size_t zlib_chunk = kZlibMaxChunk);
  ~BodyEncoder();
  BodyEncoder(const BodyEncoder&) = delete;
  BodyEncoder& operator=(const BodyEncoder&) = delete;

  // The native body of `docs` (as append_native_body) compressed into *out,
  // replacing its content. False on a compressor failure.
  bool native(Compression c, int level, std::span<const std::string_view> docs, std::string* out);
  // The OTLP body of `docs` in `encoding` (OtlpEncoder, otlp.h), compressed
  // into *out as it is formed, replacing its content. False, with *error
  // set, when a document is not valid JSON or the compressor fails.
  bool otlp(OtlpEncoding encoding, Compression c, int level, std::span<const std::string_view> docs,
            std::string* out, std::string* error);
  // `in` compressed into *out, replacing its content (kNone copies). False on
  // a compressor failure.
  bool compress(Compression c, int level, std::string_view in, std::string* out);

 private:
  struct State;
  bool begin(Compression c, int level, std::string* out);
  bool add(std::string_view piece);
  bool finish();
  std::unique_ptr<State> s_;
};
// The inverse (for tests and the benchmark server); bounded by `limit` bytes.
// `zlib_chunk` as for BodyEncoder.
bool decompress(Compression c, std::string_view in, std::string* out, size_t limit = 1u << 30,
                size_t zlib_chunk = kZlibMaxChunk);
// The Content-Encoding value, empty for kNone.
std::string_view content_encoding(Compression c);

// Replaces the largest `input` or `output` value of any event in the document
// with the string "[truncated N bytes]" (N: the JSON size of the value).
// Returns false when no such field is worth truncating (all are absent, null
// or already shorter than the marker) or the document is not valid JSON.
bool truncate_largest_field(std::string* doc);

// Number of events in a document (counts event objects by their "children"
// array; fast, no parse).
size_t count_events(std::string_view doc);

// OTLP ids: `id` itself (lowercased) when it already is `hex_len` hex digits
// and not all zero, otherwise the first hex_len digits of SHA-256(id).
std::string otlp_id(std::string_view id, size_t hex_len);

}  // namespace sidetrace::upstream::detail
