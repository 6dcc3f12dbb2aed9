#include "upstream/detail/encode.h"

#include <isa-l/igzip_lib.h>
#include <openssl/evp.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "upstream/detail/otlp.h"

namespace sidetrace::upstream::detail {

using nlohmann::json;

void append_native_body(std::span<const std::string_view> docs, std::string* out) {
  size_t total = 14;
  for (auto d : docs)
    total += d.size() + 1;
  out->reserve(out->size() + total);
  out->append("{\"traces\":[");
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > 0) out->push_back(',');
    out->append(docs[i]);
  }
  out->append("]}");
}

std::string otlp_id(std::string_view id, size_t hex_len) {
  bool hex = id.size() == hex_len && !id.empty();
  bool nonzero = false;
  for (char c : id) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) hex = false;
    if (c != '0') nonzero = true;
  }
  std::string out;
  if (hex && nonzero) {
    out.assign(id);
    for (char& c : out)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(id.data(), id.size(), md, &md_len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < hex_len / 2 && i < md_len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

std::string_view content_encoding(Compression c) {
  switch (c) {
    case Compression::kGzip:
      return "gzip";
    case Compression::kZstd:
      return "zstd";
    case Compression::kNone:
      break;
  }
  return {};
}

// Both gzip compressors count a call's bytes in 32 bits.
static_assert(kZlibMaxChunk <= std::numeric_limits<uInt>::max() &&
              kZlibMaxChunk <= std::numeric_limits<uint32_t>::max());

// gzip at level 1 (the default) goes through ISA-L's igzip, about ten times
// as fast as zlib's level 1 on trace documents for a like ratio
// (docs/benchmarks.md, "Request encoding"); other levels through zlib.
constexpr int kIgzipLevel = 1;

struct BodyEncoder::State {
  Compression c = Compression::kNone;
  std::string* out = nullptr;
  size_t used = 0;  // bytes of *out written (kGzip, kZstd)
  size_t zlib_chunk = kZlibMaxChunk;
  bool failed = false;
  bool igzip = false;  // this body's gzip goes through igzip
  isal_zstream is{};
  std::vector<uint8_t> is_buf;  // igzip's level buffer, kept between bodies
  z_stream zs{};
  bool zs_ready = false;
  int zs_level = 0;
  ZSTD_CCtx* zc = nullptr;
  std::unique_ptr<OtlpEncoder> otlp;  // made at the first OTLP body

  ~State() {
    if (zs_ready) deflateEnd(&zs);
    ZSTD_freeCCtx(zc);
  }

  // Makes room after `used` in *out: first its whole capacity, then double.
  void grow() {
    size_t want = std::max({out->capacity(), out->size() * 2, size_t{64} << 10});
    out->resize(want);
  }

  // One deflate() call over the room after `used` (at most zlib_chunk of
  // it, growing *out when it is full); advances `used`.
  int deflate_step(int flush) {
    if (used == out->size()) grow();
    zs.next_out = reinterpret_cast<Bytef*>(out->data() + used);
    zs.avail_out = static_cast<uInt>(std::min(out->size() - used, zlib_chunk));
    int rc = deflate(&zs, flush);
    used = static_cast<size_t>(reinterpret_cast<char*>(zs.next_out) - out->data());
    return rc;
  }

  // The same for igzip: one isal_deflate() call; false on its failure.
  bool igzip_step() {
    if (used == out->size()) grow();
    is.next_out = reinterpret_cast<uint8_t*>(out->data() + used);
    is.avail_out = static_cast<uint32_t>(std::min(out->size() - used, zlib_chunk));
    const int rc = isal_deflate(&is);
    used = static_cast<size_t>(reinterpret_cast<char*>(is.next_out) - out->data());
    return rc == COMP_OK;
  }
};

namespace {

// Hands `piece` to a gzip stream (zlib's or igzip's, which count in 32 bits)
// in chunks of at most `chunk` bytes, calling `step` (one compressor call;
// false on its failure) until the stream has taken all of it.
template <class Stream, class Step>
bool feed(Stream& stream, std::string_view piece, size_t chunk, Step step) {
  size_t given = 0;
  stream.avail_in = 0;
  while (given < piece.size() || stream.avail_in > 0) {
    if (stream.avail_in == 0) {
      const size_t n = std::min(piece.size() - given, chunk);
      stream.next_in = reinterpret_cast<unsigned char*>(const_cast<char*>(piece.data() + given));
      stream.avail_in = static_cast<uint32_t>(n);
      given += n;
    }
    if (!step()) return false;
  }
  return true;
}

}  // namespace

BodyEncoder::BodyEncoder(size_t zlib_chunk) : s_(std::make_unique<State>()) {
  s_->zlib_chunk = std::clamp<size_t>(zlib_chunk, 1, kZlibMaxChunk);
}
BodyEncoder::~BodyEncoder() = default;

bool BodyEncoder::begin(Compression c, int level, std::string* out) {
  State& s = *s_;
  s.c = c;
  s.out = out;
  s.used = 0;
  s.failed = false;
  out->clear();
  s.igzip = false;
  if (c == Compression::kGzip && level <= kIgzipLevel) {
    if (s.is_buf.empty()) {
      s.is_buf.resize(ISAL_DEF_LVL1_DEFAULT);
      isal_deflate_init(&s.is);
    } else {
      isal_deflate_reset(&s.is);
    }
    s.is.level = kIgzipLevel;
    s.is.level_buf = s.is_buf.data();
    s.is.level_buf_size = static_cast<uint32_t>(s.is_buf.size());
    s.is.gzip_flag = IGZIP_GZIP;
    s.is.flush = NO_FLUSH;
    s.is.end_of_stream = 0;
    s.igzip = true;
  } else if (c == Compression::kGzip) {
    level = std::clamp(level, 1, 9);
    if (s.zs_ready && s.zs_level == level) {
      if (deflateReset(&s.zs) != Z_OK) return false;
    } else {
      if (s.zs_ready) deflateEnd(&s.zs);
      s.zs = z_stream{};
      s.zs_ready = deflateInit2(&s.zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
      if (!s.zs_ready) return false;
      s.zs_level = level;
    }
  } else if (c == Compression::kZstd) {
    if (s.zc == nullptr) s.zc = ZSTD_createCCtx();
    if (s.zc == nullptr) return false;
    ZSTD_CCtx_reset(s.zc, ZSTD_reset_session_and_parameters);
    if (ZSTD_isError(ZSTD_CCtx_setParameter(s.zc, ZSTD_c_compressionLevel, level))) return false;
  }
  return true;
}

bool BodyEncoder::add(std::string_view piece) {
  State& s = *s_;
  if (s.failed) return false;
  switch (s.c) {
    case Compression::kNone:
      s.out->append(piece);
      return true;
    case Compression::kGzip: {
      const bool ok = s.igzip ? feed(s.is, piece, s.zlib_chunk, [&] { return s.igzip_step(); })
                              : feed(s.zs, piece, s.zlib_chunk, [&] {
                                  const int rc = s.deflate_step(Z_NO_FLUSH);
                                  return rc == Z_OK || rc == Z_BUF_ERROR;
                                });
      if (!ok) s.failed = true;
      return ok;
    }
    case Compression::kZstd: {
      ZSTD_inBuffer in{piece.data(), piece.size(), 0};
      while (in.pos < in.size) {
        if (s.used == s.out->size()) s.grow();
        ZSTD_outBuffer ob{s.out->data(), s.out->size(), s.used};
        size_t rc = ZSTD_compressStream2(s.zc, &ob, &in, ZSTD_e_continue);
        s.used = ob.pos;
        if (ZSTD_isError(rc)) {
          s.failed = true;
          return false;
        }
      }
      return true;
    }
  }
  return false;
}

bool BodyEncoder::finish() {
  State& s = *s_;
  if (s.failed) return false;
  if (s.c == Compression::kGzip && s.igzip) {
    s.is.next_in = nullptr;
    s.is.avail_in = 0;
    s.is.end_of_stream = 1;
    while (s.is.internal_state.state != ZSTATE_END) {
      if (!s.igzip_step()) return false;
    }
    s.out->resize(s.used);
  } else if (s.c == Compression::kGzip) {
    s.zs.next_in = nullptr;
    s.zs.avail_in = 0;
    for (;;) {
      int rc = s.deflate_step(Z_FINISH);
      if (rc == Z_STREAM_END) break;
      if (rc != Z_OK && rc != Z_BUF_ERROR) return false;
    }
    s.out->resize(s.used);
  } else if (s.c == Compression::kZstd) {
    ZSTD_inBuffer in{nullptr, 0, 0};
    for (;;) {
      if (s.used == s.out->size()) s.grow();
      ZSTD_outBuffer ob{s.out->data(), s.out->size(), s.used};
      size_t rc = ZSTD_compressStream2(s.zc, &ob, &in, ZSTD_e_end);
      s.used = ob.pos;
      if (ZSTD_isError(rc)) return false;
      if (rc == 0) break;
    }
    s.out->resize(s.used);
  }
  return true;
}

bool BodyEncoder::native(Compression c, int level, std::span<const std::string_view> docs,
                         std::string* out) {
  if (!begin(c, level, out)) return false;
  if (c == Compression::kNone) {
    append_native_body(docs, out);
    return true;
  }
  add("{\"traces\":[");
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > 0) add(",");
    add(docs[i]);
  }
  add("]}");
  return finish();
}

bool BodyEncoder::otlp(OtlpEncoding encoding, Compression c, int level,
                       std::span<const std::string_view> docs, std::string* out,
                       std::string* error) {
  State& s = *s_;
  if (!s.otlp) s.otlp = std::make_unique<OtlpEncoder>();
  if (!begin(c, level, out)) {
    *error = "compression failed";
    return false;
  }
  // Compressed as it is made, a document at a time.
  const bool encoded = s.otlp->encode(
      docs, encoding, [&](std::string_view piece) { add(piece); }, error);
  if (!encoded) return false;
  if (!finish()) {
    *error = "compression failed";
    return false;
  }
  return true;
}

bool BodyEncoder::compress(Compression c, int level, std::string_view in, std::string* out) {
  if (!begin(c, level, out)) return false;
  add(in);
  return finish();
}

bool compress(Compression c, int level, std::string_view in, std::string* out) {
  BodyEncoder e;
  if (!e.compress(c, level, in, out)) return false;
  // The body is held while the batch is in flight: not at the size of the
  // output buffer's last doubling.
  out->shrink_to_fit();
  return true;
}

bool decompress(Compression c, std::string_view in, std::string* out, size_t limit,
                size_t zlib_chunk) {
  out->clear();
  if (c == Compression::kNone) {
    if (in.size() > limit) return false;
    out->assign(in);
    return true;
  }
  if (c == Compression::kZstd) {
    ZSTD_DCtx* dctx = ZSTD_createDCtx();
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    char buf[65536];
    size_t rc = 1;
    while (ib.pos < ib.size || rc != 0) {
      ZSTD_outBuffer ob{buf, sizeof(buf), 0};
      rc = ZSTD_decompressStream(dctx, &ob, &ib);
      if (ZSTD_isError(rc) || out->size() + ob.pos > limit) {
        ZSTD_freeDCtx(dctx);
        return false;
      }
      out->append(buf, ob.pos);
      if (ob.pos == 0 && ib.pos == ib.size) break;
    }
    ZSTD_freeDCtx(dctx);
    return rc == 0;
  }
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) return false;
  zlib_chunk = std::clamp<size_t>(zlib_chunk, 1, kZlibMaxChunk);
  size_t given = 0;  // bytes of `in` handed to zlib, in chunks of zlib_chunk
  char buf[65536];
  int rc = Z_OK;
  while (rc == Z_OK) {
    if (zs.avail_in == 0 && given < in.size()) {
      size_t n = std::min(in.size() - given, zlib_chunk);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + given));
      zs.avail_in = static_cast<uInt>(n);
      given += n;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = static_cast<uInt>(std::min(sizeof(buf), zlib_chunk));
    uInt room = zs.avail_out;
    rc = inflate(&zs, Z_NO_FLUSH);
    size_t n = room - zs.avail_out;
    if ((rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) || out->size() + n > limit) {
      inflateEnd(&zs);
      return false;
    }
    out->append(buf, n);
    if (rc == Z_BUF_ERROR) {
      // No progress was possible: the input given ran out before the stream
      // ended. Only more input can help.
      if (zs.avail_in > 0 || given == in.size()) break;
      rc = Z_OK;
    }
    if (rc == Z_OK && n == 0 && zs.avail_in == 0 && given == in.size()) break;
  }
  inflateEnd(&zs);
  return rc == Z_STREAM_END;
}

namespace {

void find_largest(json& events, json** best, size_t* best_size) {
  if (!events.is_array()) return;
  for (json& e : events) {
    if (!e.is_object()) continue;
    for (const char* io : {"input", "output"}) {
      auto it = e.find(io);
      if (it == e.end() || it->is_null()) continue;
      if (it->is_string() && it->get_ref<const std::string&>().starts_with("[truncated ")) continue;
      size_t n = it->dump().size();
      if (n > *best_size) {
        *best_size = n;
        *best = &*it;
      }
    }
    auto ch = e.find("children");
    if (ch != e.end()) find_largest(*ch, best, best_size);
  }
}

}  // namespace

bool truncate_largest_field(std::string* doc) {
  json j = json::parse(*doc, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  auto evs = j.find("events");
  if (evs == j.end()) return false;
  json* best = nullptr;
  size_t best_size = 0;
  find_largest(*evs, &best, &best_size);
  std::string marker = "[truncated " + std::to_string(best_size) + " bytes]";
  if (best == nullptr || best_size <= marker.size() + 2) return false;
  *best = marker;
  *doc = j.dump(-1, ' ', false, json::error_handler_t::replace);
  return true;
}

size_t count_events(std::string_view doc) {
  // Each event has one `"children":[`. Found from its '[', which is rare in
  // a document, rather than from its '"', which is everywhere.
  static constexpr std::string_view kKey = "\"children\":";
  size_t n = 0;
  for (size_t pos = doc.find('[', kKey.size()); pos != std::string_view::npos;
       pos = doc.find('[', pos + 1)) {
    if (doc.compare(pos - kKey.size(), kKey.size(), kKey) == 0) ++n;
  }
  return n;
}

}  // namespace sidetrace::upstream::detail
