/* flood: sends protocol-v1 messages to a sidetrace agent as fast as the
 * transport allows, with no pacing, and prints one JSON line of counts.
 *
 *   flood MODE TARGET [options]
 *     MODE    udp | unixgram | stream
 *     TARGET  HOST:PORT (udp) or a socket path (unixgram, stream)
 *   options
 *     --seconds S     stop after S seconds (default 5)
 *     --count N       stop after N messages attempted (default: no limit)
 *     --per-dgram K   messages per datagram (default 1; ignored for stream)
 *     --prefix P      trace ids start with P (default "flood")
 *     --kind K        "start": start messages spread over --traces open traces
 *                     that never end (default); "event": whole events, 10 per
 *                     trace, so every trace completes; event n has id P-e<n>
 *                     and trace id P-t<n/10>
 *     --traces T      open traces for --kind start (default 64)
 *     --pad B         bytes of input text per message (default 64)
 *
 * Datagram modes use non-blocking sendmmsg(): a datagram the kernel refuses
 * (EAGAIN, ENOBUFS) is dropped and its messages counted in "refused", as a
 * fire-and-forget emitter would. The stream mode writes on a blocking socket,
 * so a slow reader slows the sender down (back-pressure) and nothing is
 * dropped; "blocked_s" is the time spent waiting in write().
 *
 * Output: {"mode":...,"sent":N,"refused":N,"errors":N,"datagrams":N,
 *          "bytes":N,"seconds":S,"blocked_s":S,"first_error":"..."}
 * "sent" counts messages the kernel took; "errors" messages lost to other
 * send errors (e.g. ECONNREFUSED). The exit code is 0 unless setup failed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { kBatch = 32, kMaxDgram = 65000 };

typedef struct {
  char* p;
  size_t n;
  size_t cap;
} Buf;

static void put(Buf* b, const void* d, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->n + n)
      cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) abort();
    b->cap = cap;
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}

static void put_u8(Buf* b, uint8_t v) {
  put(b, &v, 1);
}

static void put_be(Buf* b, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i)
    put_u8(b, (uint8_t)(v >> (8 * i)));
}

static void put_str(Buf* b, const char* s, size_t n) {
  if (n < 32) {
    put_u8(b, (uint8_t)(0xa0 | n));
  } else if (n < 256) {
    put_u8(b, 0xd9);
    put_u8(b, (uint8_t)n);
  } else {
    put_u8(b, 0xda);
    put_be(b, n, 2);
  }
  put(b, s, n);
}

static void put_cstr(Buf* b, const char* s) {
  put_str(b, s, strlen(s));
}

static void put_uint(Buf* b, uint64_t v) {
  if (v < 128) {
    put_u8(b, (uint8_t)v);
  } else {
    put_u8(b, 0xcf);
    put_be(b, v, 8);
  }
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct {
  const char* prefix;
  int event_kind; /* 1: "event", 0: "start" */
  uint64_t traces;
  const char* pad;
  size_t pad_len;
} MsgSpec;

/* Appends message number `seq`. */
static void put_message(Buf* b, const MsgSpec* m, uint64_t seq) {
  char trace[160], id[160];
  if (m->event_kind) {
    snprintf(trace, sizeof trace, "%s-t%llu", m->prefix, (unsigned long long)(seq / 10));
    snprintf(id, sizeof id, "%s-e%llu", m->prefix, (unsigned long long)seq);
  } else {
    snprintf(trace, sizeof trace, "%s-t%llu", m->prefix, (unsigned long long)(seq % m->traces));
    snprintf(id, sizeof id, "%s-s%llu", m->prefix, (unsigned long long)seq);
  }
  put_u8(b, m->event_kind ? 0x88 : 0x87); /* fixmap */
  put_cstr(b, "v");
  put_uint(b, 1);
  put_cstr(b, "kind");
  put_cstr(b, m->event_kind ? "event" : "start");
  put_cstr(b, "trace_id");
  put_cstr(b, trace);
  put_cstr(b, "id");
  put_cstr(b, id);
  put_cstr(b, "type");
  put_cstr(b, "TOOL");
  put_cstr(b, "name");
  put_cstr(b, "flood");
  put_cstr(b, "input");
  put_str(b, m->pad, m->pad_len);
  if (m->event_kind) {
    put_cstr(b, "ts");
    put_uint(b, wall_ns());
  }
}

static int parse_udp(const char* s, struct sockaddr_in* a) {
  const char* colon = strrchr(s, ':');
  if (!colon) return -1;
  char host[64];
  size_t hl = (size_t)(colon - s);
  if (hl >= sizeof host) return -1;
  memcpy(host, s, hl);
  host[hl] = 0;
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)atoi(colon + 1));
  return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: flood udp|unixgram|stream TARGET [options]\n");
    return 2;
  }
  const char* mode = argv[1];
  const char* target = argv[2];
  double seconds = 5;
  uint64_t count = UINT64_MAX;
  int per_dgram = 1;
  MsgSpec spec = {"flood", 0, 64, NULL, 64};
  for (int i = 3; i + 1 < argc; i += 2) {
    const char* k = argv[i];
    const char* v = argv[i + 1];
    if (!strcmp(k, "--seconds")) {
      seconds = atof(v);
    } else if (!strcmp(k, "--count")) {
      count = strtoull(v, NULL, 10);
    } else if (!strcmp(k, "--per-dgram")) {
      per_dgram = atoi(v);
    } else if (!strcmp(k, "--prefix")) {
      spec.prefix = v;
    } else if (!strcmp(k, "--kind")) {
      spec.event_kind = !strcmp(v, "event");
    } else if (!strcmp(k, "--traces")) {
      spec.traces = strtoull(v, NULL, 10);
    } else if (!strcmp(k, "--pad")) {
      spec.pad_len = (size_t)atol(v);
    } else {
      fprintf(stderr, "flood: unknown option %s\n", k);
      return 2;
    }
  }
  if (per_dgram < 1 || spec.traces < 1 || spec.pad_len > 60000) {
    fprintf(stderr, "flood: bad option value\n");
    return 2;
  }
  char* pad = malloc(spec.pad_len + 1);
  memset(pad, 'x', spec.pad_len);
  spec.pad = pad;

  const int stream = !strcmp(mode, "stream");
  const int udp = !strcmp(mode, "udp");
  if (!stream && !udp && strcmp(mode, "unixgram") != 0) {
    fprintf(stderr, "flood: unknown mode %s\n", mode);
    return 2;
  }
  struct sockaddr_storage addr;
  socklen_t addr_len;
  memset(&addr, 0, sizeof addr);
  int fd;
  if (udp) {
    if (parse_udp(target, (struct sockaddr_in*)&addr) != 0) {
      fprintf(stderr, "flood: bad udp address %s\n", target);
      return 2;
    }
    addr_len = sizeof(struct sockaddr_in);
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  } else {
    struct sockaddr_un* un = (struct sockaddr_un*)&addr;
    un->sun_family = AF_UNIX;
    if (strlen(target) >= sizeof un->sun_path) {
      fprintf(stderr, "flood: socket path too long\n");
      return 2;
    }
    strcpy(un->sun_path, target);
    addr_len = sizeof(struct sockaddr_un);
    fd = socket(AF_UNIX, stream ? SOCK_STREAM : (SOCK_DGRAM | SOCK_NONBLOCK), 0);
  }
  if (fd < 0) {
    perror("flood: socket");
    return 2;
  }
  if (stream && connect(fd, (struct sockaddr*)&addr, addr_len) != 0) {
    perror("flood: connect");
    return 2;
  }

  uint64_t seq = 0, sent = 0, refused = 0, errors = 0, datagrams = 0, bytes = 0;
  double blocked = 0;
  char first_error[128] = "";
  const double start = now_s();
  const double end = start + seconds;
  Buf b = {0};

  if (stream) {
    /* Messages in chunks of ~64 KiB, each written whole with blocking writes. */
    while (seq < count && now_s() < end) {
      b.n = 0;
      uint64_t in_chunk = 0;
      while (b.n < 64 * 1024 && seq < count) {
        put_message(&b, &spec, seq++);
        ++in_chunk;
      }
      size_t off = 0;
      while (off < b.n) {
        double t0 = now_s();
        ssize_t w = write(fd, b.p + off, b.n - off);
        blocked += now_s() - t0;
        if (w < 0) {
          if (errno == EINTR) continue;
          snprintf(first_error, sizeof first_error, "write: %s", strerror(errno));
          break;
        }
        off += (size_t)w;
        bytes += (size_t)w;
      }
      if (off < b.n) {
        errors += in_chunk;
        break;
      }
      sent += in_chunk;
    }
  } else {
    struct mmsghdr hdr[kBatch];
    struct iovec iov[kBatch];
    size_t offsets[kBatch + 1];
    uint64_t msgs[kBatch];
    while (seq < count && now_s() < end) {
      /* Build up to kBatch datagrams of per_dgram messages each. */
      b.n = 0;
      int nd = 0;
      while (nd < kBatch && seq < count) {
        offsets[nd] = b.n;
        msgs[nd] = 0;
        for (int k = 0; k < per_dgram && seq < count; ++k) {
          put_message(&b, &spec, seq++);
          ++msgs[nd];
        }
        ++nd;
      }
      offsets[nd] = b.n;
      for (int i = 0; i < nd; ++i) {
        iov[i].iov_base = b.p + offsets[i];
        iov[i].iov_len = offsets[i + 1] - offsets[i];
        memset(&hdr[i], 0, sizeof hdr[i]);
        hdr[i].msg_hdr.msg_iov = &iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
        hdr[i].msg_hdr.msg_name = &addr;
        hdr[i].msg_hdr.msg_namelen = addr_len;
      }
      int done = 0;
      while (done < nd) {
        int r = sendmmsg(fd, hdr + done, (unsigned)(nd - done), 0);
        if (r > 0) {
          for (int i = done; i < done + r; ++i)
            bytes += hdr[i].msg_len;
          datagrams += (uint64_t)r;
          done += r;
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        /* The datagram at `done` was refused: drop it and go on. */
        const uint64_t msgs_in = msgs[done];
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
          refused += msgs_in;
          sched_yield();
        } else {
          errors += msgs_in;
          if (!first_error[0])
            snprintf(first_error, sizeof first_error, "sendmmsg: %s", strerror(errno));
        }
        ++done;
      }
    }
    /* Every message built was either taken, refused or failed. */
    sent = seq - refused - errors;
  }
  const double took = now_s() - start;
  printf(
      "{\"mode\":\"%s\",\"sent\":%llu,\"refused\":%llu,\"errors\":%llu,\"datagrams\":%llu,"
      "\"bytes\":%llu,\"seconds\":%.3f,\"blocked_s\":%.3f,\"first_error\":\"%s\"}\n",
      mode, (unsigned long long)sent, (unsigned long long)refused, (unsigned long long)errors,
      (unsigned long long)datagrams, (unsigned long long)bytes, took, blocked, first_error);
  close(fd);
  free(pad);
  free(b.p);
  return 0;
}
