/* wsgauge_sidecar._native_relay: the sidecar's native WebSocket relay.
 *
 * After the HTTP handshake, the Python adapter (wsgauge_sidecar.native_relay) hands the two
 * sockets of a counted WebSocket in a mode that needs no frame parsing (path, query, header)
 * to one Relay object. A Relay runs one native thread with its own epoll loop: it relays bytes
 * both ways with read/send, without the GIL and without waking Python per chunk. It follows
 * the frame boundaries of the app-to-client direction (a Tracker, the same rules as
 * wsframes.FrameBoundaryTracker) so that a drain can inject a close frame between two frames,
 * never inside one, and so that it knows whether a close frame was seen (close reason
 * "normal").
 *
 * Under a frame protocol rule (phoenix, graphql-ws, ...) a connection also has a message
 * reader per direction (a Reader, the same checks as wsframes.MessageReader: masking, RSV
 * bits, opcodes, control frames, UTF-8 of text, close payloads, max_message_bytes) and a
 * message filter: per direction and message type a test, either a small set of byte needles
 * (substrings such as "phx_join"; the empty needle matches every message) or one of three
 * scans (every message but those with a skip prefix, Socket.IO; every message but whole MQTT
 * packets or STOMP frames of types the session ignores; the Python reference of each is its
 * Scan class: PrefixSkip, MqttPacketScan, StompFrameScan). The bytes are relayed as they
 * arrive; a whole message (unmasked, fragments reassembled) is copied to Python only when it
 * passes the test: the only messages that may change the socket's topics. A malformed frame
 * or message closes that one socket with its close code (1002, 1007, 1009), as the
 * Python relay does. Python may narrow the filter at run time (relay.update: e.g. Phoenix's
 * phx_reply matters only while a join awaits its reply); while messages handed to Python are
 * not yet acknowledged the connection uses its wide filter (every needle the protocol may
 * ever need), so no message that Python's state would want is missed in between. Filters are
 * interned by the Relay (relay.filter) and shared by its connections.
 *
 * Python hears from the thread only through an event queue signalled on an eventfd (one
 * wake-up per batch of events): EV_CLOSED (the socket is over; its reason), EV_CLIENT_EOF
 * (the client half-closed; Python bounds the rest with its close timer) and the message
 * events EV_CLIENT_TEXT .. EV_SERVER_BINARY (a copy of a message that passed the filter).
 * Python talks to the thread with add / close_gracefully / end / fail / update under one
 * mutex; a connection ended by Python posts no event (Python uncounts it itself).
 *
 * Memory: an idle connection is one struct conn (no buffers); a buffer is allocated only
 * while a peer does not take what was read for it, and reading from the sending side stops
 * until it is written (backpressure, bounded by one read of READ_BUFFER bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The hot system calls, made directly: libc's wrappers of read/send/epoll_wait are
 * cancellation points, which in a threaded process (this one) cost a pthread
 * enable/disable-asynccancel pair around every call (measured: ~1.5% of the relay's CPU). */
static inline ssize_t sys_read(int fd, void *buffer, size_t size) {
    return syscall(SYS_read, fd, buffer, size);
}
static inline ssize_t sys_send(int fd, const void *data, size_t size) {
    return syscall(SYS_sendto, fd, data, size, MSG_NOSIGNAL, NULL, 0);
}
static inline int sys_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout) {
    return (int)syscall(SYS_epoll_wait, epfd, events, max, timeout);
}

#define READ_BUFFER 65536
#define MAX_EVENTS 256

enum { CLIENT = 0, UPSTREAM = 1 };
enum {
    EV_CLOSED = 1,
    EV_CLIENT_EOF = 2,
    EV_CLIENT_TEXT = 3, /* EV_CLIENT_TEXT + 2 * side + (opcode == binary): a message */
    EV_CLIENT_BINARY = 4,
    EV_SERVER_TEXT = 5,
    EV_SERVER_BINARY = 6,
};
enum { R_NORMAL = 0, R_CLIENT_GONE = 1, R_UPSTREAM_GONE = 2, R_PROTOCOL_ERROR = 3 };
enum { PH_RELAY = 0, PH_FLUSH = 1, PH_LINGER = 2, PH_DEAD = 3 };

/* ---- the frame boundary tracker (app-to-client: unmasked frames) ------------------------- */

typedef struct {
    unsigned char hdr[14];
    int hdr_len;
    uint64_t payload_left;
    int in_fragmented;
    int close_collect; /* close code bytes collected (0..1), -1 when not collecting */
    unsigned char close_bytes[2];
    int close_code; /* first close frame's code (1005 without one), -1 before any */
    int failed;
    uint64_t frames_seen;
} tracker;

static void tracker_init(tracker *t) {
    memset(t, 0, sizeof(*t));
    t->close_collect = -1;
    t->close_code = -1;
}

static int tracker_at_boundary(const tracker *t) {
    return t->payload_left == 0 && t->hdr_len == 0 && !t->failed;
}

static int header_needed(const unsigned char *h, int have) {
    if (have < 2) return 2;
    int short_length = h[1] & 0x7f;
    return 2 + (short_length == 126 ? 2 : short_length == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
}

static int known_opcode(int opcode) {
    return opcode == 0 || opcode == 1 || opcode == 2 || opcode == 8 || opcode == 9 ||
           opcode == 10;
}

static int check_first_bytes(const unsigned char *h) {
    int opcode = h[0] & 0x0f;
    if (!known_opcode(opcode)) return -1;
    if (h[1] & 0x80) return -1; /* a masked frame from the app */
    if (opcode >= 8 && (!(h[0] & 0x80) || (h[1] & 0x7f) > 125)) return -1;
    return 0;
}

static int start_frame(tracker *t) {
    const unsigned char *h = t->hdr;
    int fin = h[0] & 0x80, opcode = h[0] & 0x0f;
    uint64_t length = h[1] & 0x7f;
    if (length == 126) {
        length = ((uint64_t)h[2] << 8) | h[3];
    } else if (length == 127) {
        length = 0;
        for (int i = 2; i < 10; i++) length = (length << 8) | h[i];
        if (length >> 63) return -1;
    }
    t->frames_seen++;
    if (opcode == 0) {
        if (!t->in_fragmented) return -1;
        t->in_fragmented = !fin;
    } else if (opcode == 1 || opcode == 2) {
        if (t->in_fragmented) return -1;
        t->in_fragmented = !fin;
    } else if (opcode == 8) {
        if (length == 1) return -1;
        if (length == 0) {
            if (t->close_code < 0) t->close_code = 1005;
        } else if (t->close_code < 0) {
            t->close_collect = 0;
        }
    }
    t->hdr_len = 0;
    t->payload_left = length;
    return 0;
}

/* Follow data[0:n]; stop early at the first frame boundary when stop_at_boundary (then the
 * result may be 0). Returns the bytes consumed, -1 on a malformed frame (then always -1). */
static ssize_t tracker_feed(tracker *t, const unsigned char *data, size_t n, int stop_at_boundary) {
    size_t position = 0;
    if (t->failed) return -1;
    while (position < n) {
        if (t->payload_left) {
            uint64_t rest = n - position;
            size_t used = (size_t)(t->payload_left < rest ? t->payload_left : rest);
            if (t->close_collect >= 0) {
                size_t i = 0;
                while (i < used && t->close_collect < 2)
                    t->close_bytes[t->close_collect++] = data[position + i++];
                if (t->close_collect == 2) {
                    t->close_code = (t->close_bytes[0] << 8) | t->close_bytes[1];
                    t->close_collect = -1;
                }
            }
            position += used;
            t->payload_left -= used;
            continue;
        }
        if (stop_at_boundary && t->hdr_len == 0) return (ssize_t)position;
        t->hdr[t->hdr_len++] = data[position++];
        if (t->hdr_len == 2 && check_first_bytes(t->hdr) < 0) {
            t->failed = 1;
            return -1;
        }
        if (t->hdr_len >= 2 && t->hdr_len == header_needed(t->hdr, t->hdr_len)) {
            if (start_frame(t) < 0) {
                t->failed = 1;
                return -1;
            }
        }
    }
    return (ssize_t)position;
}

/* ---- message filters: a test per direction and message type ----------------------------- */

/* The kinds of test (the pure-Python reference of each scan: its Scan class's passes()). */
enum {
    TEST_NEEDLES = 0,      /* passes a message containing one of the needles */
    TEST_PREFIX_SKIP = 1,  /* passes every message except those starting with a needle */
    TEST_MQTT_PACKETS = 2, /* passes unless whole MQTT packets, none of a type in types */
    TEST_STOMP_FRAMES = 3, /* passes unless whole STOMP frames, none with a needle as command */
};

/* One test: its kind and byte strings (needles, prefixes or commands; for TEST_MQTT_PACKETS
 * the wanted packet types as a bit mask). With TEST_NEEDLES the empty needle matches every
 * message and a test without needles matches none. */
typedef struct {
    int kind;
    uint32_t types; /* TEST_MQTT_PACKETS: bit t set when packet type t is wanted */
    uint32_t count;
    uint32_t *lengths;
    unsigned char **needles;
} needle_set;

/* A filter: the tests of client text, client binary, server text, server binary (the
 * index is 2 * side + (opcode == binary)). Interned by the Relay, never changed. */
typedef struct {
    needle_set set[4];
} filter;

static void filter_free(filter *f) {
    if (f == NULL) return;
    for (int i = 0; i < 4; i++) {
        for (uint32_t j = 0; j < f->set[i].count; j++) free(f->set[i].needles[j]);
        free(f->set[i].needles);
        free(f->set[i].lengths);
    }
    free(f);
}

/* MQTT: 0 when the message is whole packets (fixed header, a remaining length of 1-4 bytes,
 * the body) none of whose types is wanted; 1 otherwise (also for what the session must
 * reject: reserved type 0, a remaining length over 4 bytes). */
static int mqtt_passes(uint32_t types, const unsigned char *p, size_t n) {
    size_t position = 0;
    while (position < n) {
        unsigned kind = p[position] >> 4;
        if (kind == 0 || (types >> kind) & 1) return 1;
        size_t at = position + 1, length = 0;
        unsigned shift = 0;
        for (;;) {
            if (at - position == 5 || at >= n) return 1;
            unsigned char byte = p[at++];
            length |= (size_t)(byte & 0x7F) << shift;
            shift += 7;
            if (!(byte & 0x80)) break;
        }
        if (length > n - at) return 1; /* the packet goes on in a later message */
        position = at + length;
    }
    return 0;
}

static int is_stomp_space(unsigned char c) { return c == '\r' || c == ' ' || c == '\t'; }

/* STOMP: 0 when the message is whole frames (EOLs between them allowed) none of whose
 * commands is one of the set's needles; 1 otherwise (also for a content-length the session
 * rejects, and a body longer than its content-length). */
static int stomp_passes(const needle_set *set, const unsigned char *p, size_t n) {
    static const char *const field = "\ncontent-length:";
    size_t position = 0;
    while (position < n) {
        while (position < n && (p[position] == '\r' || p[position] == '\n')) position++;
        if (position >= n) return 0;
        const unsigned char *lf2 = memmem(p + position, n - position, "\n\n", 2);
        size_t limit = lf2 != NULL ? (size_t)(lf2 - p) : n;
        const unsigned char *crlf = memmem(p + position, limit - position, "\n\r\n", 3);
        size_t end, body;
        if (crlf != NULL) {
            end = (size_t)(crlf - p);
            body = end + 3;
        } else if (lf2 != NULL) {
            end = limit;
            body = end + 2;
        } else {
            return 1; /* the headers go on in a later message */
        }
        const unsigned char *head = p + position;
        size_t head_length = end - position;
        const unsigned char *newline = memchr(head, '\n', head_length);
        size_t command = newline != NULL ? (size_t)(newline - head) : head_length;
        while (command > 0 && head[command - 1] == '\r') command--;
        for (uint32_t i = 0; i < set->count; i++) {
            if (set->lengths[i] == command && memcmp(head, set->needles[i], command) == 0)
                return 1;
        }
        const unsigned char *at = memmem(head, head_length, field, 16);
        size_t stop;
        if (at != NULL) {
            const unsigned char *value = at + 16, *value_end = head + head_length;
            const unsigned char *line_end = memchr(value, '\n', (size_t)(value_end - value));
            if (line_end != NULL) value_end = line_end;
            while (value < value_end && is_stomp_space(*value)) value++;
            while (value_end > value && is_stomp_space(value_end[-1])) value_end--;
            size_t digits = (size_t)(value_end - value);
            if (digits == 0 || digits > 18) return 1;
            unsigned long long length = 0;
            for (size_t i = 0; i < digits; i++) {
                if (value[i] < '0' || value[i] > '9') return 1;
                length = length * 10 + (unsigned long long)(value[i] - '0');
            }
            if (length >= n - body) return 1; /* the body goes on in a later message */
            stop = body + (size_t)length;
            if (p[stop] != 0) return 1; /* a body longer than its content-length */
        } else {
            const unsigned char *nul = memchr(p + body, 0, n - body);
            if (nul == NULL) return 1;
            stop = (size_t)(nul - p);
        }
        position = stop + 1;
    }
    return 0;
}

static int set_matches(const needle_set *set, const unsigned char *payload, size_t length) {
    switch (set->kind) {
    case TEST_PREFIX_SKIP:
        for (uint32_t i = 0; i < set->count; i++) {
            uint32_t n = set->lengths[i];
            if (n <= length && memcmp(payload, set->needles[i], n) == 0) return 0;
        }
        return 1;
    case TEST_MQTT_PACKETS:
        return mqtt_passes(set->types, payload, length);
    case TEST_STOMP_FRAMES:
        return stomp_passes(set, payload, length);
    default:
        break;
    }
    for (uint32_t i = 0; i < set->count; i++) {
        uint32_t n = set->lengths[i];
        if (n == 0) return 1;
        if (n <= length && memmem(payload, length, set->needles[i], n) != NULL) return 1;
    }
    return 0;
}

/* ---- UTF-8 and close payloads, checked as Python's bytes.decode("utf-8") does ---------------- */

static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) { /* ASCII, 8 bytes at a time */
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char low = 0x80, high = 0xBF; /* the allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) need = 2, low = 0xA0;                /* no overlong forms */
        else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
        else if (c == 0xED) need = 2, high = 0x9F;               /* no surrogates */
        else if (c == 0xF0) need = 3, low = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) need = 3, high = 0x8F;               /* nothing over U+10FFFF */
        else return 0;
        if (n - i - 1 < need) return 0;
        if (s[i + 1] < low || s[i + 1] > high) return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

static int valid_close_code(int code) {
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* ---- the message reader (one direction, under a frame protocol rule) ---------------------- */

enum { CLOSE_PROTOCOL_ERROR = 1002, CLOSE_INVALID_PAYLOAD = 1007, CLOSE_TOO_BIG = 1009 };

/* Keeps a message buffer of up to this size between messages (larger ones are freed). */
#define KEEP_MESSAGE_BUFFER 4096

typedef struct {
    unsigned char hdr[14];
    int hdr_len;
    int in_frame;       /* a header was read; payload_left bytes of its payload are to come */
    uint64_t payload_left;
    int opcode, fin;
    int masked;         /* the current frame's mask key applies */
    unsigned char key[4];
    uint64_t key_at;    /* payload bytes of the current frame unmasked so far */
    int msg_opcode;     /* 1 or 2 while a data message is open, else 0 */
    uint64_t msg_size;  /* the open message's size so far (sum of its frame lengths) */
    unsigned char *buf; /* the open message's unmasked payload so far */
    size_t len, cap;
    unsigned char ctl[125]; /* the current control frame's unmasked payload */
    size_t ctl_len;
    int failed;         /* the close code of the first error, 0 while none */
} reader;

/* Where a reader's whole messages go: wants() says whether Python must see one; deliver()
 * takes the payload (malloc'd, owned by the callee from then on). */
typedef struct {
    int (*wants)(void *ctx, int opcode, const unsigned char *payload, size_t length);
    void (*deliver)(void *ctx, int opcode, unsigned char *payload, size_t length);
    void *ctx;
} sink;

static void reader_free(reader *rd) {
    free(rd->buf);
    rd->buf = NULL;
    rd->len = rd->cap = 0;
}

/* The checks of a frame's first two bytes (wsframes._check_first_bytes). */
static int reader_first_bytes(const unsigned char *h, int expect_masked) {
    int opcode = h[0] & 0x0f;
    if (!known_opcode(opcode)) return CLOSE_PROTOCOL_ERROR;
    if (((h[1] & 0x80) != 0) != expect_masked) return CLOSE_PROTOCOL_ERROR;
    if (opcode >= 8 && (!(h[0] & 0x80) || (h[1] & 0x7f) > 125)) return CLOSE_PROTOCOL_ERROR;
    return 0;
}

/* A whole header was read: the checks of wsframes._decode_header and MessageReader._start_frame. */
static int reader_start_frame(reader *rd, uint64_t max_message) {
    const unsigned char *h = rd->hdr;
    int opcode = h[0] & 0x0f, at = 2;
    uint64_t length = h[1] & 0x7f;
    if (length == 126) {
        length = ((uint64_t)h[2] << 8) | h[3];
        at = 4;
    } else if (length == 127) {
        length = 0;
        for (int i = 2; i < 10; i++) length = (length << 8) | h[i];
        if (length >> 63) return CLOSE_PROTOCOL_ERROR;
        at = 10;
    }
    if (h[0] & 0x70) return CLOSE_PROTOCOL_ERROR; /* RSV: no extension was negotiated */
    if (opcode == 0) {
        if (!rd->msg_opcode) return CLOSE_PROTOCOL_ERROR;
    } else if (opcode == 1 || opcode == 2) {
        if (rd->msg_opcode) return CLOSE_PROTOCOL_ERROR;
        rd->msg_opcode = opcode;
    } else if (opcode == 8 && length == 1) {
        return CLOSE_PROTOCOL_ERROR;
    }
    if (opcode < 8) {
        if (rd->msg_size + length > max_message) return CLOSE_TOO_BIG;
        rd->msg_size += length;
    }
    rd->masked = (h[1] & 0x80) != 0;
    if (rd->masked) memcpy(rd->key, h + at, 4);
    rd->opcode = opcode;
    rd->fin = (h[0] & 0x80) != 0;
    rd->key_at = 0;
    rd->payload_left = length;
    rd->ctl_len = 0;
    rd->in_frame = 1;
    rd->hdr_len = 0;
    return 0;
}

/* The current frame's payload is complete: check a close frame; end a data message. */
static int reader_end_frame(reader *rd, const sink *to) {
    rd->in_frame = 0;
    if (rd->opcode >= 8) {
        if (rd->opcode == 8 && rd->ctl_len >= 2) {
            if (!valid_close_code((rd->ctl[0] << 8) | rd->ctl[1])) return CLOSE_PROTOCOL_ERROR;
            if (!utf8_valid(rd->ctl + 2, rd->ctl_len - 2)) return CLOSE_INVALID_PAYLOAD;
        }
        return 0;
    }
    if (!rd->fin) return 0;
    int opcode = rd->msg_opcode;
    rd->msg_opcode = 0;
    rd->msg_size = 0;
    size_t length = rd->len;
    rd->len = 0;
    if (opcode == 1 && !utf8_valid(rd->buf, length)) return CLOSE_INVALID_PAYLOAD;
    if (to->wants(to->ctx, opcode, rd->buf != NULL ? rd->buf : (const unsigned char *)"", length)) {
        unsigned char *payload = rd->buf;
        if (payload == NULL || length < rd->cap / 2) { /* hand over a right-sized copy */
            payload = malloc(length ? length : 1);
            if (payload != NULL && length) memcpy(payload, rd->buf, length);
        } else {
            rd->buf = NULL;
            rd->cap = 0;
        }
        if (payload != NULL) to->deliver(to->ctx, opcode, payload, length);
    }
    if (rd->cap > KEEP_MESSAGE_BUFFER) reader_free(rd);
    return 0;
}

/* Copy (unmasking) n payload bytes of the current frame to dest. */
static void reader_unmask(reader *rd, unsigned char *dest, const unsigned char *src, size_t n) {
    if (!rd->masked) {
        memcpy(dest, src, n);
        return;
    }
    size_t i = 0;
    unsigned at = (unsigned)(rd->key_at & 3);
    while (i < n && at) { /* up to a 4-byte aligned key position */
        dest[i] = src[i] ^ rd->key[at];
        i++;
        at = (at + 1) & 3;
    }
    size_t aligned = i; /* from here on, byte aligned + k uses key[k & 3] */
    uint32_t key32;
    memcpy(&key32, rd->key, 4);
    uint64_t key64 = ((uint64_t)key32 << 32) | key32;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, src + i, 8);
        word ^= key64;
        memcpy(dest + i, &word, 8);
    }
    for (; i < n; i++) dest[i] = src[i] ^ rd->key[(i - aligned) & 3];
    rd->key_at += n;
}

/* Read data[0:n] (never altered); whole messages go to `to`. Returns 0, or the close code of
 * the first malformed frame or message (then always that code again). */
static int reader_feed(reader *rd, int expect_masked, uint64_t max_message,
                       const unsigned char *data, size_t n, const sink *to) {
    size_t position = 0;
    if (rd->failed) return rd->failed;
    while (position < n) {
        int code = 0;
        if (!rd->in_frame) {
            rd->hdr[rd->hdr_len++] = data[position++];
            if (rd->hdr_len == 2) code = reader_first_bytes(rd->hdr, expect_masked);
            if (!code && rd->hdr_len >= 2 && rd->hdr_len == header_needed(rd->hdr, rd->hdr_len)) {
                code = reader_start_frame(rd, max_message);
                if (!code && rd->payload_left == 0) code = reader_end_frame(rd, to);
            }
        } else {
            size_t take = n - position;
            if (rd->payload_left < take) take = (size_t)rd->payload_left;
            unsigned char *dest;
            if (rd->opcode >= 8) {
                dest = rd->ctl + rd->ctl_len;
                rd->ctl_len += take;
            } else {
                if (rd->len + take > rd->cap) {
                    size_t cap = rd->cap ? rd->cap : 256;
                    while (cap < rd->len + take) cap *= 2;
                    unsigned char *grown = realloc(rd->buf, cap);
                    if (grown == NULL) {
                        rd->failed = CLOSE_TOO_BIG; /* out of memory: cannot follow this message */
                        return rd->failed;
                    }
                    rd->buf = grown;
                    rd->cap = cap;
                }
                dest = rd->buf + rd->len;
                rd->len += take;
            }
            reader_unmask(rd, dest, data + position, take);
            position += take;
            rd->payload_left -= take;
            if (rd->payload_left == 0) code = reader_end_frame(rd, to);
        }
        if (code) {
            rd->failed = code;
            reader_free(rd);
            return code;
        }
    }
    return 0;
}

/* ---- connections -------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, off;
} outbuf;

struct conn;
typedef struct {
    struct conn *conn;
    int side;
} endpoint;

/* A connection's part under a frame protocol rule. */
typedef struct {
    reader rd[2];         /* rd[CLIENT]: client-to-app (masked); rd[UPSTREAM]: app-to-client */
    const filter *wide;   /* every needle the protocol may ever need */
    const filter *narrow; /* what Python's state needs now (relay.update) */
    uint32_t unacked;     /* messages handed to Python and not yet acknowledged */
    uint64_t max_message; /* max_message_bytes: over it, close 1009 */
} proto;

typedef struct conn {
    long long token;
    int slot;
    int fd[2];
    uint32_t interest[2];
    outbuf out[2]; /* out[s]: bytes waiting to be written to side s */
    int eof[2];    /* reading side s is over (FIN seen) */
    int shut_after_flush[2];
    int phase;
    int linger_after_flush;
    tracker tr;
    unsigned char *close_frame; /* a close frame waiting for the next boundary */
    size_t close_frame_len;
    int close_sent;
    int gone_first; /* -1 or an R_* reason */
    proto *pr;      /* NULL unless a frame protocol rule reads the messages */
    double deadline;
    struct conn *tnext, *tprev;
    int timed;
    struct conn *grave_next;
    endpoint ep[2];
} conn;

typedef struct {
    long long token;
    int kind, reason;
    unsigned char *payload; /* a message event's payload (malloc'd), else NULL */
    size_t length;
} event;

typedef struct {
    PyObject_HEAD
    int epfd, evfd, wakefd;
    pthread_t thread;
    int thread_started;
    int stop;
    pthread_mutex_t lock;
    conn **slots;
    int nslots;
    int *free_slots;
    int nfree;
    event *events;
    size_t nevents, capevents;
    conn *timed;
    conn *grave;
    unsigned long long to_upstream, to_client;
    long long live;
    unsigned char *rbuf;
    double close_timeout, linger_seconds;
    filter **filters; /* interned by relay.filter(); freed with the Relay */
    int nfilters;
} Relay;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void post_payload(Relay *r, conn *c, int kind, int reason, unsigned char *payload,
                         size_t length) {
    if (r->nevents == r->capevents) {
        size_t cap = r->capevents ? r->capevents * 2 : 64;
        event *grown = realloc(r->events, cap * sizeof(event));
        if (grown == NULL) { /* out of memory: the event is lost (and the count with it) */
            free(payload);
            return;
        }
        r->events = grown;
        r->capevents = cap;
    }
    r->events[r->nevents++] = (event){c->token, kind, reason, payload, length};
    if (r->nevents == 1) {
        uint64_t one = 1;
        ssize_t ignored = write(r->evfd, &one, sizeof(one));
        (void)ignored;
    }
}

static void post(Relay *r, conn *c, int kind, int reason) {
    post_payload(r, c, kind, reason, NULL, 0);
}

static void set_timed(Relay *r, conn *c, double seconds) {
    c->deadline = now() + seconds;
    if (c->timed) return;
    c->timed = 1;
    c->tprev = NULL;
    c->tnext = r->timed;
    if (r->timed) r->timed->tprev = c;
    r->timed = c;
}

static void unset_timed(Relay *r, conn *c) {
    if (!c->timed) return;
    if (c->tprev) c->tprev->tnext = c->tnext; else r->timed = c->tnext;
    if (c->tnext) c->tnext->tprev = c->tprev;
    c->timed = 0;
    c->tnext = c->tprev = NULL;
}

static void set_interest(Relay *r, conn *c, int side, uint32_t interest) {
    if (c->fd[side] < 0 || c->interest[side] == interest) return;
    struct epoll_event ev = {.events = interest, .data.ptr = &c->ep[side]};
    epoll_ctl(r->epfd, EPOLL_CTL_MOD, c->fd[side], &ev);
    c->interest[side] = interest;
}

static int pending(const conn *c, int side) { return c->out[side].len > c->out[side].off; }

static void update_interest(Relay *r, conn *c) {
    uint32_t in[2] = {0, 0};
    if (c->phase == PH_RELAY) {
        for (int s = 0; s < 2; s++) {
            if (!c->eof[s] && !pending(c, 1 - s)) in[s] |= EPOLLIN;
            if (pending(c, s)) in[s] |= EPOLLOUT;
        }
    } else if (c->phase == PH_FLUSH) {
        in[CLIENT] = EPOLLOUT;
    } else if (c->phase == PH_LINGER) {
        in[CLIENT] = EPOLLIN;
    }
    set_interest(r, c, CLIENT, in[CLIENT]);
    set_interest(r, c, UPSTREAM, in[UPSTREAM]);
}

static void close_fd(Relay *r, conn *c, int side, int abort) {
    int fd = c->fd[side];
    if (fd < 0) return;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
    if (abort) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(fd);
    c->fd[side] = -1;
    free(c->out[side].data);
    c->out[side] = (outbuf){NULL, 0, 0};
}

static void finish(Relay *r, conn *c, int abort) {
    if (c->phase == PH_DEAD) return;
    close_fd(r, c, CLIENT, abort);
    close_fd(r, c, UPSTREAM, abort);
    unset_timed(r, c);
    free(c->close_frame);
    c->close_frame = NULL;
    if (c->pr != NULL) {
        reader_free(&c->pr->rd[CLIENT]);
        reader_free(&c->pr->rd[UPSTREAM]);
        free(c->pr);
        c->pr = NULL;
    }
    c->phase = PH_DEAD;
    r->slots[c->slot] = NULL;
    r->free_slots[r->nfree++] = c->slot;
    r->live--;
    c->grave_next = r->grave; /* freed after the current batch of epoll events */
    r->grave = c;
}

/* The end of a relayed socket: the upstream closed (flushing what little may be left), the
 * client flushed then closed, or flushed, half-closed and drained for a while (linger). */
static void close_conn(Relay *r, conn *c, int abort, int linger) {
    if (c->phase != PH_RELAY) {
        if (abort) finish(r, c, 1);
        return;
    }
    if (abort) {
        finish(r, c, 1);
        return;
    }
    if (pending(c, UPSTREAM)) {
        outbuf *o = &c->out[UPSTREAM];
        ssize_t ignored = send(c->fd[UPSTREAM], o->data + o->off, o->len - o->off, MSG_NOSIGNAL);
        (void)ignored;
    }
    close_fd(r, c, UPSTREAM, 0);
    if (pending(c, CLIENT)) {
        c->phase = PH_FLUSH;
        c->linger_after_flush = linger;
        set_timed(r, c, r->close_timeout);
        update_interest(r, c);
    } else if (linger) {
        shutdown(c->fd[CLIENT], SHUT_WR);
        c->phase = PH_LINGER;
        set_timed(r, c, r->linger_seconds);
        update_interest(r, c);
    } else {
        finish(r, c, 0);
    }
}

static void note_gone(conn *c, int reason) {
    if (c->gone_first < 0) c->gone_first = c->tr.close_code >= 0 ? R_NORMAL : reason;
}

static void lost(Relay *r, conn *c, int side, int abort) {
    note_gone(c, side == CLIENT ? R_CLIENT_GONE : R_UPSTREAM_GONE);
    post(r, c, EV_CLOSED, c->gone_first);
    close_conn(r, c, abort, 0);
}

static void protocol_error(Relay *r, conn *c) {
    c->close_sent = 1;
    post(r, c, EV_CLOSED, R_PROTOCOL_ERROR);
    close_conn(r, c, 0, 1);
}

/* Send to side: at once when nothing waits, else (or for the rest) into its buffer. */
static void send_to(Relay *r, conn *c, int side, const unsigned char *data, size_t n) {
    outbuf *o = &c->out[side];
    if (side == UPSTREAM) r->to_upstream += n; else r->to_client += n;
    if (!pending(c, side)) {
        ssize_t written = sys_send(c->fd[side], data, n);
        if (written < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                lost(r, c, side, 1);
                return;
            }
            written = 0;
        }
        if ((size_t)written == n) return;
        data += written;
        n -= (size_t)written;
        free(o->data);
        o->data = NULL;
        o->len = o->off = 0;
    }
    char *grown = realloc(o->data, o->len + n);
    if (grown == NULL) {
        lost(r, c, side, 1);
        return;
    }
    memcpy(grown + o->len, data, n);
    o->data = grown;
    o->len += n;
    update_interest(r, c);
}

static void send_close_frame(Relay *r, conn *c) {
    unsigned char *frame = c->close_frame;
    size_t length = c->close_frame_len;
    c->close_frame = NULL;
    c->close_sent = 1;
    if (c->tr.close_code < 0) send_to(r, c, CLIENT, frame, length);
    free(frame);
}

/* A close frame with code and reason (cut to 123 bytes); NULL when out of memory. */
static unsigned char *make_close_frame(int code, const void *reason, size_t reason_len,
                                       size_t *length) {
    if (reason_len > 123) reason_len = 123;
    unsigned char *frame = malloc(4 + reason_len);
    if (frame == NULL) return NULL;
    frame[0] = 0x88;
    frame[1] = (unsigned char)(2 + reason_len);
    frame[2] = (unsigned char)(code >> 8);
    frame[3] = (unsigned char)code;
    memcpy(frame + 4, reason, reason_len);
    *length = 4 + reason_len;
    return frame;
}

/* A malformed frame or message (found here, or by Python: then post_event is 0 since Python
 * uncounts the socket itself): as the Python relay's protocol_error, the client gets a close
 * frame with `code` if the app-to-client stream is between two frames (and the app did not
 * close first), then a lingering close; the app's connection is closed. */
static void protocol_close(Relay *r, conn *c, int code, const void *reason, size_t reason_len,
                           int post_event) {
    if (c->phase != PH_RELAY) return;
    if (!c->close_sent && tracker_at_boundary(&c->tr)) {
        free(c->close_frame); /* an error's close code replaces a drain's */
        c->close_frame = NULL;
        size_t length;
        unsigned char *frame = c->tr.close_code < 0
                                   ? make_close_frame(code, reason, reason_len, &length)
                                   : NULL;
        c->close_sent = 1;
        if (frame != NULL) {
            send_to(r, c, CLIENT, frame, length);
            free(frame);
        }
        if (c->phase != PH_RELAY) return; /* the send failed: lost() posted and closed */
    }
    c->close_sent = 1;
    if (post_event) post(r, c, EV_CLOSED, R_PROTOCOL_ERROR);
    close_conn(r, c, 0, 1);
}

static const char *close_reason_text(int code) {
    return code == CLOSE_INVALID_PAYLOAD ? "invalid payload"
           : code == CLOSE_TOO_BIG       ? "message too big"
                                         : "protocol error";
}

typedef struct {
    Relay *r;
    conn *c;
    int side;
} message_target;

static int message_wanted(void *ctx, int opcode, const unsigned char *payload, size_t length) {
    message_target *t = ctx;
    proto *pr = t->c->pr;
    const filter *f = pr->unacked ? pr->wide : pr->narrow;
    return set_matches(&f->set[2 * t->side + (opcode == 2)], payload, length);
}

static void message_deliver(void *ctx, int opcode, unsigned char *payload, size_t length) {
    message_target *t = ctx;
    t->c->pr->unacked++;
    post_payload(t->r, t->c, EV_CLIENT_TEXT + 2 * t->side + (opcode == 2), 0, payload, length);
}

/* Under a frame protocol rule: read data (from side) as messages before it is relayed.
 * Returns 0 after a malformed frame or message (the socket is then closing; data is dropped,
 * as the Python relay drops the chunk it could not read). */
static int read_messages(Relay *r, conn *c, int side, const unsigned char *data, size_t n) {
    proto *pr = c->pr;
    if (pr == NULL) return 1;
    message_target target = {r, c, side};
    sink to = {message_wanted, message_deliver, &target};
    int code = reader_feed(&pr->rd[side], side == CLIENT, pr->max_message, data, n, &to);
    if (!code) return 1;
    const char *reason = close_reason_text(code);
    protocol_close(r, c, code, reason, strlen(reason), 1);
    return 0;
}

static void from_client(Relay *r, conn *c, const unsigned char *data, size_t n) {
    if (!read_messages(r, c, CLIENT, data, n)) return;
    send_to(r, c, UPSTREAM, data, n);
}

static void from_upstream(Relay *r, conn *c, const unsigned char *data, size_t n) {
    if (c->close_sent) return; /* our close frame went out: nothing may follow it */
    if (!read_messages(r, c, UPSTREAM, data, n)) return;
    if (c->close_frame != NULL) {
        ssize_t used = tracker_feed(&c->tr, data, n, 1);
        if (used < 0) {
            protocol_error(r, c);
            return;
        }
        if (used > 0) send_to(r, c, CLIENT, data, (size_t)used);
        if (c->phase == PH_RELAY && tracker_at_boundary(&c->tr)) send_close_frame(r, c);
        return;
    }
    if (tracker_feed(&c->tr, data, n, 0) < 0) {
        protocol_error(r, c);
        return;
    }
    send_to(r, c, CLIENT, data, n);
}

static void flush(Relay *r, conn *c, int side) {
    outbuf *o = &c->out[side];
    while (pending(c, side)) {
        ssize_t written = sys_send(c->fd[side], o->data + o->off, o->len - o->off);
        if (written < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            if (c->phase == PH_RELAY) lost(r, c, side, 1); else finish(r, c, 1);
            return;
        }
        o->off += (size_t)written;
    }
    free(o->data);
    *o = (outbuf){NULL, 0, 0};
    if (c->shut_after_flush[side]) {
        shutdown(c->fd[side], SHUT_WR);
        c->shut_after_flush[side] = 0;
    }
    if (c->phase == PH_FLUSH) {
        if (c->linger_after_flush) {
            shutdown(c->fd[CLIENT], SHUT_WR);
            c->phase = PH_LINGER;
            set_timed(r, c, r->linger_seconds);
        } else {
            finish(r, c, 0);
            return;
        }
    }
    update_interest(r, c);
}

static void readable(Relay *r, conn *c, int side) {
    ssize_t n = sys_read(c->fd[side], r->rbuf, READ_BUFFER);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        if (c->phase == PH_RELAY) lost(r, c, side, 1); else finish(r, c, 1);
        return;
    }
    if (c->phase == PH_LINGER) {
        if (n == 0) finish(r, c, 0); /* the client is done too: close now */
        return;                      /* else: dropped */
    }
    if (c->phase != PH_RELAY) return;
    if (n == 0) {
        c->eof[side] = 1;
        if (side == UPSTREAM) {
            note_gone(c, R_UPSTREAM_GONE);
            post(r, c, EV_CLOSED, c->gone_first);
            close_conn(r, c, 0, 0);
            return;
        }
        note_gone(c, R_CLIENT_GONE);
        if (pending(c, UPSTREAM)) c->shut_after_flush[UPSTREAM] = 1;
        else shutdown(c->fd[UPSTREAM], SHUT_WR);
        post(r, c, EV_CLIENT_EOF, c->gone_first);
        update_interest(r, c);
        return;
    }
    if (side == CLIENT) from_client(r, c, r->rbuf, (size_t)n);
    else from_upstream(r, c, r->rbuf, (size_t)n);
}

static void handle(Relay *r, conn *c, int side, uint32_t events) {
    if (c->phase == PH_DEAD || c->fd[side] < 0) return;
    if (events & EPOLLOUT) flush(r, c, side);
    if (c->phase == PH_DEAD || c->fd[side] < 0) return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if ((events & EPOLLIN) || !c->eof[side]) readable(r, c, side);
        else if (events & EPOLLERR) {
            if (c->phase == PH_RELAY) lost(r, c, side, 1); else finish(r, c, 1);
        }
    }
}

static void sweep(Relay *r) {
    double t = now();
    conn *c = r->timed;
    while (c != NULL) {
        conn *next = c->tnext;
        if (c->deadline <= t) finish(r, c, c->phase == PH_FLUSH);
        c = next;
    }
}

static void bury(Relay *r) {
    while (r->grave != NULL) {
        conn *c = r->grave;
        r->grave = c->grave_next;
        free(c);
    }
}

static void *run(void *arg) {
    Relay *r = arg;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = sys_epoll_wait(r->epfd, events, MAX_EVENTS, 250);
        pthread_mutex_lock(&r->lock);
        if (r->stop) {
            pthread_mutex_unlock(&r->lock);
            break;
        }
        for (int i = 0; i < n; i++) {
            endpoint *ep = events[i].data.ptr;
            if (ep == NULL) continue; /* the wake-up fd */
            handle(r, ep->conn, ep->side, events[i].events);
        }
        if (r->timed != NULL) sweep(r);
        bury(r);
        pthread_mutex_unlock(&r->lock);
    }
    return NULL;
}

/* ---- the Python type ------------------------------------------------------------------- */

static int Relay_init(Relay *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"close_timeout", "linger_seconds", NULL};
    double close_timeout = 5.0, linger_seconds = 2.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|dd", kwlist, &close_timeout, &linger_seconds))
        return -1;
    if (self->epfd > 0) {
        PyErr_SetString(PyExc_RuntimeError, "Relay already initialized");
        return -1;
    }
    self->close_timeout = close_timeout;
    self->linger_seconds = linger_seconds;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->rbuf = malloc(READ_BUFFER);
    if (self->epfd < 0 || self->evfd < 0 || self->wakefd < 0 || self->rbuf == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->wakefd, &ev);
    pthread_mutex_init(&self->lock, NULL);
    if (pthread_create(&self->thread, NULL, run, self) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot start the relay thread");
        return -1;
    }
    self->thread_started = 1;
    return 0;
}

static int grow_slots(Relay *r) {
    int count = r->nslots ? r->nslots * 2 : 1024;
    conn **slots = realloc(r->slots, count * sizeof(conn *));
    if (slots == NULL) return -1;
    r->slots = slots;
    int *free_slots = realloc(r->free_slots, count * sizeof(int));
    if (free_slots == NULL) return -1;
    r->free_slots = free_slots;
    for (int i = count - 1; i >= r->nslots; i--) {
        slots[i] = NULL;
        free_slots[r->nfree++] = i;
    }
    r->nslots = count;
    return 0;
}

static conn *lookup(Relay *r, int slot, long long token) {
    if (slot < 0 || slot >= r->nslots) return NULL;
    conn *c = r->slots[slot];
    if (c == NULL || c->token != token || c->phase == PH_DEAD) return NULL;
    return c;
}

/* A test from a sequence of bytes objects (needles) or a (kind, sequence of bytes) pair; -1
 * with an exception set. For TEST_MQTT_PACKETS the one bytes object lists the packet types. */
static int parse_needle_set(PyObject *items, needle_set *set) {
    set->kind = TEST_NEEDLES;
    if (PyTuple_Check(items) && PyTuple_GET_SIZE(items) == 2 &&
        PyLong_Check(PyTuple_GET_ITEM(items, 0))) {
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(items, 0));
        if (kind < TEST_NEEDLES || kind > TEST_STOMP_FRAMES) {
            PyErr_SetString(PyExc_ValueError, "unknown message test kind");
            return -1;
        }
        set->kind = (int)kind;
        items = PyTuple_GET_ITEM(items, 1);
    }
    PyObject *seq = PySequence_Fast(items, "a filter's needles are a sequence of bytes");
    if (seq == NULL) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    set->count = 0;
    set->lengths = calloc((size_t)count + 1, sizeof(uint32_t));
    set->needles = calloc((size_t)count + 1, sizeof(unsigned char *));
    if (set->lengths == NULL || set->needles == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        char *bytes;
        Py_ssize_t length;
        if (PyBytes_AsStringAndSize(item, &bytes, &length) < 0) {
            Py_DECREF(seq);
            return -1;
        }
        set->needles[i] = malloc((size_t)length + 1);
        if (set->needles[i] == NULL) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(set->needles[i], bytes, (size_t)length);
        set->lengths[i] = (uint32_t)length;
        set->count++;
        if (set->kind == TEST_MQTT_PACKETS) {
            for (Py_ssize_t j = 0; j < length; j++) {
                unsigned char type = (unsigned char)bytes[j];
                if (type > 15) {
                    Py_DECREF(seq);
                    PyErr_SetString(PyExc_ValueError, "an MQTT packet type is 0-15");
                    return -1;
                }
                set->types |= 1u << type;
            }
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* A filter from (client_text, client_binary, server_text, server_binary) needle sequences. */
static filter *parse_filter(PyObject *sets[4]) {
    filter *f = calloc(1, sizeof(filter));
    if (f == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (parse_needle_set(sets[i], &f->set[i]) < 0) {
            filter_free(f);
            return NULL;
        }
    }
    return f;
}

static PyObject *Relay_filter(Relay *self, PyObject *args) {
    PyObject *sets[4];
    if (!PyArg_ParseTuple(args, "OOOO", &sets[0], &sets[1], &sets[2], &sets[3])) return NULL;
    filter *f = parse_filter(sets);
    if (f == NULL) return NULL;
    pthread_mutex_lock(&self->lock);
    filter **grown = realloc(self->filters, (size_t)(self->nfilters + 1) * sizeof(filter *));
    int id = -1;
    if (grown != NULL) {
        self->filters = grown;
        id = self->nfilters++;
        grown[id] = f;
    }
    pthread_mutex_unlock(&self->lock);
    if (id < 0) {
        filter_free(f);
        return PyErr_NoMemory();
    }
    return PyLong_FromLong(id);
}

static const filter *filter_by_id(Relay *r, int id) {
    return id >= 0 && id < r->nfilters ? r->filters[id] : NULL;
}

static PyObject *Relay_add(Relay *self, PyObject *args) {
    int client_fd, upstream_fd, wide_id = -1, narrow_id = -1;
    long long token;
    unsigned long long max_message = 1048576;
    Py_buffer prefix, to_client, to_upstream;
    if (!self->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "relay is not running");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "iiLy*y*y*|iiK", &client_fd, &upstream_fd, &token, &prefix,
                          &to_client, &to_upstream, &wide_id, &narrow_id, &max_message))
        return NULL;
    PyObject *result = NULL;
    conn *c = calloc(1, sizeof(conn));
    if (c == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pthread_mutex_lock(&self->lock);
    if (wide_id >= 0) {
        const filter *wide = filter_by_id(self, wide_id), *narrow = filter_by_id(self, narrow_id);
        c->pr = calloc(1, sizeof(proto));
        if (wide == NULL || narrow == NULL || c->pr == NULL) {
            pthread_mutex_unlock(&self->lock);
            free(c->pr);
            free(c);
            close(client_fd); /* the fds were given to the relay: it closes them */
            close(upstream_fd);
            if (wide == NULL || narrow == NULL)
                PyErr_SetString(PyExc_ValueError, "unknown filter id");
            else
                PyErr_NoMemory();
            goto done;
        }
        c->pr->wide = wide;
        c->pr->narrow = narrow;
        c->pr->max_message = max_message;
    }
    if (self->nfree == 0 && grow_slots(self) < 0) {
        pthread_mutex_unlock(&self->lock);
        free(c);
        PyErr_NoMemory();
        goto done;
    }
    c->slot = self->free_slots[--self->nfree];
    self->slots[c->slot] = c;
    c->token = token;
    c->fd[CLIENT] = client_fd;
    c->fd[UPSTREAM] = upstream_fd;
    c->gone_first = -1;
    tracker_init(&c->tr);
    self->live++;
    int failed = 0;
    for (int s = 0; s < 2; s++) {
        c->ep[s] = (endpoint){c, s};
        struct epoll_event ev = {.events = 0, .data.ptr = &c->ep[s]};
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, c->fd[s], &ev) < 0) failed = errno;
    }
    if (failed) {
        finish(self, c, 1); /* closes both fds: the caller gave them to us */
        bury(self);
        pthread_mutex_unlock(&self->lock);
        errno = failed;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    int slot = c->slot;
    if (prefix.len) send_to(self, c, CLIENT, prefix.buf, (size_t)prefix.len);
    if (c->phase == PH_RELAY && to_client.len)
        from_upstream(self, c, to_client.buf, (size_t)to_client.len);
    if (c->phase == PH_RELAY && to_upstream.len)
        from_client(self, c, to_upstream.buf, (size_t)to_upstream.len);
    if (c->phase == PH_RELAY) update_interest(self, c);
    pthread_mutex_unlock(&self->lock);
    result = PyLong_FromLong(slot);
done:
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&to_client);
    PyBuffer_Release(&to_upstream);
    return result;
}

static PyObject *Relay_close_gracefully(Relay *self, PyObject *args) {
    int slot, code;
    long long token;
    Py_buffer reason;
    if (!PyArg_ParseTuple(args, "iLiy*", &slot, &token, &code, &reason)) return NULL;
    int started = 0;
    pthread_mutex_lock(&self->lock);
    conn *c = lookup(self, slot, token);
    if (c != NULL && c->phase == PH_RELAY && !c->close_sent && c->close_frame == NULL) {
        started = 1;
        if (c->tr.close_code < 0) {
            size_t length;
            unsigned char *frame = make_close_frame(code, reason.buf, (size_t)reason.len, &length);
            if (frame != NULL) {
                c->close_frame = frame;
                c->close_frame_len = length;
                if (tracker_at_boundary(&c->tr)) send_close_frame(self, c);
            }
        }
    }
    pthread_mutex_unlock(&self->lock);
    PyBuffer_Release(&reason);
    return PyBool_FromLong(started);
}

static PyObject *Relay_end(Relay *self, PyObject *args) {
    int slot, abort;
    long long token;
    if (!PyArg_ParseTuple(args, "iLp", &slot, &token, &abort)) return NULL;
    pthread_mutex_lock(&self->lock);
    conn *c = lookup(self, slot, token);
    if (c != NULL) close_conn(self, c, abort, 0);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *Relay_fail(Relay *self, PyObject *args) {
    int slot, code;
    long long token;
    Py_buffer reason;
    if (!PyArg_ParseTuple(args, "iLiy*", &slot, &token, &code, &reason)) return NULL;
    pthread_mutex_lock(&self->lock);
    conn *c = lookup(self, slot, token);
    if (c != NULL) protocol_close(self, c, code, reason.buf, (size_t)reason.len, 0);
    pthread_mutex_unlock(&self->lock);
    PyBuffer_Release(&reason);
    Py_RETURN_NONE;
}

static PyObject *Relay_update(Relay *self, PyObject *args) {
    int slot, narrow_id;
    long long token;
    unsigned int handled;
    if (!PyArg_ParseTuple(args, "iLIi", &slot, &token, &handled, &narrow_id)) return NULL;
    pthread_mutex_lock(&self->lock);
    conn *c = lookup(self, slot, token);
    const filter *narrow = filter_by_id(self, narrow_id);
    if (c != NULL && c->pr != NULL) {
        c->pr->unacked -= handled < c->pr->unacked ? handled : c->pr->unacked;
        if (narrow != NULL) c->pr->narrow = narrow;
    }
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static void free_events(event *taken, size_t from, size_t n) {
    for (size_t i = from; i < n; i++) free(taken[i].payload);
    free(taken);
}

static PyObject *Relay_events(Relay *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t count;
    ssize_t ignored_read = read(self->evfd, &count, sizeof(count));
    (void)ignored_read;
    pthread_mutex_lock(&self->lock);
    size_t n = self->nevents;
    event *taken = self->events;
    self->events = NULL;
    self->nevents = self->capevents = 0;
    pthread_mutex_unlock(&self->lock);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        free_events(taken, 0, n);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *item;
        if (taken[i].payload != NULL) { /* a message: (token, kind, payload) */
            item = Py_BuildValue("(Liy#)", taken[i].token, taken[i].kind,
                                 (const char *)taken[i].payload, (Py_ssize_t)taken[i].length);
            free(taken[i].payload);
            taken[i].payload = NULL;
        } else {
            item = Py_BuildValue("(Lii)", taken[i].token, taken[i].kind, taken[i].reason);
        }
        if (item == NULL) {
            Py_DECREF(list);
            free_events(taken, i, n);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    free(taken);
    return list;
}

static PyObject *Relay_fileno(Relay *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->evfd);
}

static PyObject *Relay_stats(Relay *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->lock);
    unsigned long long up = self->to_upstream, down = self->to_client;
    long long live = self->live;
    pthread_mutex_unlock(&self->lock);
    return Py_BuildValue("(KKL)", up, down, live);
}

static void stop_thread(Relay *self) {
    if (!self->thread_started) return;
    pthread_mutex_lock(&self->lock);
    self->stop = 1;
    pthread_mutex_unlock(&self->lock);
    uint64_t one = 1;
    ssize_t ignored = write(self->wakefd, &one, sizeof(one));
    (void)ignored;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->thread_started = 0;
    for (int i = 0; i < self->nslots; i++)
        if (self->slots[i] != NULL) finish(self, self->slots[i], 1);
    bury(self);
}

static PyObject *Relay_shutdown(Relay *self, PyObject *Py_UNUSED(ignored)) {
    stop_thread(self);
    Py_RETURN_NONE;
}

static void Relay_dealloc(Relay *self) {
    stop_thread(self);
    if (self->epfd > 0) close(self->epfd);
    if (self->evfd > 0) close(self->evfd);
    if (self->wakefd > 0) close(self->wakefd);
    free(self->slots);
    free(self->free_slots);
    if (self->events != NULL) free_events(self->events, 0, self->nevents);
    for (int i = 0; i < self->nfilters; i++) filter_free(self->filters[i]);
    free(self->filters);
    free(self->rbuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Relay_methods[] = {
    {"add", (PyCFunction)Relay_add, METH_VARARGS,
     "add(client_fd, upstream_fd, token, prefix, to_client, to_upstream, wide=-1, narrow=-1, "
     "max_message_bytes=1048576) -> slot: relay a socket pair (the fds become the relay's); "
     "prefix goes to the client untracked, to_client through the tracker, to_upstream to the "
     "app. With filter ids wide and narrow (relay.filter), both directions are read as "
     "messages and those passing the filter are posted as message events."},
    {"filter", (PyCFunction)Relay_filter, METH_VARARGS,
     "filter(client_text, client_binary, server_text, server_binary) -> id: intern a message "
     "filter (each a sequence of bytes needles; b'' matches every message)."},
    {"update", (PyCFunction)Relay_update, METH_VARARGS,
     "update(slot, token, handled, narrow): Python handled that many message events of the "
     "socket; its narrow filter is now the filter id narrow (-1: unchanged)."},
    {"fail", (PyCFunction)Relay_fail, METH_VARARGS,
     "fail(slot, token, code, reason): Python found a message malformed: a close frame with "
     "code at the frame boundary (if there is one now), then a lingering close (no event)."},
    {"close_gracefully", (PyCFunction)Relay_close_gracefully, METH_VARARGS,
     "close_gracefully(slot, token, code, reason) -> bool: a close frame at the next "
     "app-to-client frame boundary."},
    {"end", (PyCFunction)Relay_end, METH_VARARGS,
     "end(slot, token, abort): close both sides now (no event is posted)."},
    {"events", (PyCFunction)Relay_events, METH_NOARGS,
     "events() -> [(token, kind, reason_or_payload)]: what happened since the last call "
     "(a message event carries the payload bytes)."},
    {"fileno", (PyCFunction)Relay_fileno, METH_NOARGS,
     "fileno() -> int: the eventfd that is readable while events wait."},
    {"stats", (PyCFunction)Relay_stats, METH_NOARGS,
     "stats() -> (bytes_to_upstream, bytes_to_client, live_connections)."},
    {"shutdown", (PyCFunction)Relay_shutdown, METH_NOARGS,
     "shutdown(): stop the thread and cut every connection."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgauge_sidecar._native_relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A native relay thread for upgraded WebSocket socket pairs.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = Relay_methods,
};

/* ---- Tracker: the native tracker on its own, for tests ------------------------------------ */

typedef struct {
    PyObject_HEAD
    tracker t;
} Tracker;

static int Tracker_init(Tracker *self, PyObject *args, PyObject *kwds) {
    tracker_init(&self->t);
    return 0;
}

static PyObject *Tracker_feed(Tracker *self, PyObject *args) {
    Py_buffer data;
    int stop = 0;
    if (!PyArg_ParseTuple(args, "y*|p", &data, &stop)) return NULL;
    ssize_t used = tracker_feed(&self->t, data.buf, (size_t)data.len, stop);
    PyBuffer_Release(&data);
    if (used < 0) {
        PyErr_SetString(PyExc_ValueError, "malformed WebSocket frame");
        return NULL;
    }
    return PyLong_FromSsize_t(used);
}

static PyObject *Tracker_at_boundary(Tracker *self, void *closure) {
    return PyBool_FromLong(tracker_at_boundary(&self->t));
}

static PyObject *Tracker_close_code_seen(Tracker *self, void *closure) {
    if (self->t.close_code < 0) Py_RETURN_NONE;
    return PyLong_FromLong(self->t.close_code);
}

static PyObject *Tracker_frames_seen(Tracker *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->t.frames_seen);
}

static PyMethodDef Tracker_methods[] = {
    {"feed", (PyCFunction)Tracker_feed, METH_VARARGS,
     "feed(data, stop_at_boundary=False) -> bytes consumed; ValueError if malformed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Tracker_getset[] = {
    {"at_boundary", (getter)Tracker_at_boundary, NULL, "True between two frames.", NULL},
    {"close_code_seen", (getter)Tracker_close_code_seen, NULL, "First close code or None.",
     NULL},
    {"frames_seen", (getter)Tracker_frames_seen, NULL, "Frame headers read so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgauge_sidecar._native_relay.Tracker",
    .tp_basicsize = sizeof(Tracker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The relay's app-to-client frame boundary tracker (unmasked frames).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tracker_init,
    .tp_methods = Tracker_methods,
    .tp_getset = Tracker_getset,
};

/* ---- Reader: one direction's message reader and filter on their own, for tests ----------- */

typedef struct {
    PyObject_HEAD
    reader rd;
    int masked;
    unsigned long long max_message;
    filter *f; /* set[0]: text needles, set[1]: binary needles */
    PyObject *out; /* the list feed() is filling */
} Reader;

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"masked", "max_message_bytes", "text", "binary", NULL};
    int masked;
    unsigned long long max_message;
    PyObject *sets[4] = {NULL, NULL, NULL, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "pKOO", kwlist, &masked, &max_message,
                                     &sets[0], &sets[1]))
        return -1;
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL) return -1;
    sets[2] = sets[3] = empty;
    filter *f = parse_filter(sets);
    Py_DECREF(empty);
    if (f == NULL) return -1;
    reader_free(&self->rd);
    filter_free(self->f);
    memset(&self->rd, 0, sizeof(self->rd));
    self->f = f;
    self->masked = masked;
    self->max_message = max_message;
    return 0;
}

static int Reader_wants(void *ctx, int opcode, const unsigned char *payload, size_t length) {
    Reader *self = ctx;
    return set_matches(&self->f->set[opcode == 2], payload, length);
}

static void Reader_deliver(void *ctx, int opcode, unsigned char *payload, size_t length) {
    Reader *self = ctx;
    PyObject *item = Py_BuildValue("(iy#)", opcode, (const char *)payload, (Py_ssize_t)length);
    free(payload);
    if (item == NULL || PyList_Append(self->out, item) < 0) PyErr_Clear(); /* out of memory */
    Py_XDECREF(item);
}

static PyObject *Reader_feed(Reader *self, PyObject *args) {
    Py_buffer data;
    if (self->f == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader not initialized");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    self->out = out;
    sink to = {Reader_wants, Reader_deliver, self};
    int code = reader_feed(&self->rd, self->masked, self->max_message, data.buf,
                           (size_t)data.len, &to);
    self->out = NULL;
    PyBuffer_Release(&data);
    if (code) {
        Py_DECREF(out);
        PyObject *error = Py_BuildValue("(is)", code, close_reason_text(code));
        if (error != NULL) {
            PyErr_SetObject(PyExc_ValueError, error);
            Py_DECREF(error);
        }
        return NULL;
    }
    return out;
}

static void Reader_dealloc(Reader *self) {
    reader_free(&self->rd);
    filter_free(self->f);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Reader_methods[] = {
    {"feed", (PyCFunction)Reader_feed, METH_VARARGS,
     "feed(data) -> [(opcode, payload)]: the whole messages data completes that pass the "
     "filter; ValueError((close_code, reason)) on a malformed frame or message."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgauge_sidecar._native_relay.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(masked, max_message_bytes, text, binary): the relay's message reader of "
              "one direction with a filter (text and binary needles), for tests.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsgauge_sidecar._native_relay",
    "The sidecar's native WebSocket relay (see wsgauge_sidecar.native_relay).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native_relay(void) {
    if (PyType_Ready(&RelayType) < 0 || PyType_Ready(&TrackerType) < 0 ||
        PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RelayType);
    Py_INCREF(&TrackerType);
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObject(m, "Tracker", (PyObject *)&TrackerType) < 0 ||
        PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddIntConstant(m, "EV_CLOSED", EV_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "TEST_PREFIX_SKIP", TEST_PREFIX_SKIP) < 0 ||
        PyModule_AddIntConstant(m, "TEST_MQTT_PACKETS", TEST_MQTT_PACKETS) < 0 ||
        PyModule_AddIntConstant(m, "TEST_STOMP_FRAMES", TEST_STOMP_FRAMES) < 0 ||
        PyModule_AddIntConstant(m, "EV_CLIENT_EOF", EV_CLIENT_EOF) < 0 ||
        PyModule_AddIntConstant(m, "EV_CLIENT_TEXT", EV_CLIENT_TEXT) < 0 ||
        PyModule_AddIntConstant(m, "EV_CLIENT_BINARY", EV_CLIENT_BINARY) < 0 ||
        PyModule_AddIntConstant(m, "EV_SERVER_TEXT", EV_SERVER_TEXT) < 0 ||
        PyModule_AddIntConstant(m, "EV_SERVER_BINARY", EV_SERVER_BINARY) < 0 ||
        PyModule_AddIntConstant(m, "R_NORMAL", R_NORMAL) < 0 ||
        PyModule_AddIntConstant(m, "R_CLIENT_GONE", R_CLIENT_GONE) < 0 ||
        PyModule_AddIntConstant(m, "R_UPSTREAM_GONE", R_UPSTREAM_GONE) < 0 ||
        PyModule_AddIntConstant(m, "R_PROTOCOL_ERROR", R_PROTOCOL_ERROR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
