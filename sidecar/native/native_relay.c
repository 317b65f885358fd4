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
 * Python hears from the thread only through an event queue signalled on an eventfd (one
 * wake-up per batch of events): EV_CLOSED (the socket is over; its reason) and EV_CLIENT_EOF
 * (the client half-closed; Python bounds the rest with its close timer). Python talks to the
 * thread with add / close_gracefully / end under one mutex; a connection ended by Python
 * posts no event (Python uncounts it itself).
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
enum { EV_CLOSED = 1, EV_CLIENT_EOF = 2 };
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
    double deadline;
    struct conn *tnext, *tprev;
    int timed;
    struct conn *grave_next;
    endpoint ep[2];
} conn;

typedef struct {
    long long token;
    int kind, reason;
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
} Relay;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void post(Relay *r, conn *c, int kind, int reason) {
    if (r->nevents == r->capevents) {
        size_t cap = r->capevents ? r->capevents * 2 : 64;
        event *grown = realloc(r->events, cap * sizeof(event));
        if (grown == NULL) return; /* out of memory: the event is lost (and the count with it) */
        r->events = grown;
        r->capevents = cap;
    }
    r->events[r->nevents++] = (event){c->token, kind, reason};
    if (r->nevents == 1) {
        uint64_t one = 1;
        ssize_t ignored = write(r->evfd, &one, sizeof(one));
        (void)ignored;
    }
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

static void from_upstream(Relay *r, conn *c, const unsigned char *data, size_t n) {
    if (c->close_sent) return; /* our close frame went out: nothing may follow it */
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
    if (side == CLIENT) send_to(r, c, UPSTREAM, r->rbuf, (size_t)n);
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

static PyObject *Relay_add(Relay *self, PyObject *args) {
    int client_fd, upstream_fd;
    long long token;
    Py_buffer prefix, to_client, to_upstream;
    if (!self->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "relay is not running");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "iiLy*y*y*", &client_fd, &upstream_fd, &token, &prefix,
                          &to_client, &to_upstream))
        return NULL;
    PyObject *result = NULL;
    conn *c = calloc(1, sizeof(conn));
    if (c == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pthread_mutex_lock(&self->lock);
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
        send_to(self, c, UPSTREAM, to_upstream.buf, (size_t)to_upstream.len);
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
    Py_ssize_t reason_len = reason.len > 123 ? 123 : reason.len;
    int started = 0;
    pthread_mutex_lock(&self->lock);
    conn *c = lookup(self, slot, token);
    if (c != NULL && c->phase == PH_RELAY && !c->close_sent && c->close_frame == NULL) {
        started = 1;
        if (c->tr.close_code < 0) {
            size_t length = 4 + (size_t)reason_len;
            unsigned char *frame = malloc(length);
            if (frame != NULL) {
                frame[0] = 0x88;
                frame[1] = (unsigned char)(2 + reason_len);
                frame[2] = (unsigned char)(code >> 8);
                frame[3] = (unsigned char)code;
                memcpy(frame + 4, reason.buf, (size_t)reason_len);
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
        free(taken);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *item = Py_BuildValue("(Lii)", taken[i].token, taken[i].kind, taken[i].reason);
        if (item == NULL) {
            Py_DECREF(list);
            free(taken);
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
    free(self->events);
    free(self->rbuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Relay_methods[] = {
    {"add", (PyCFunction)Relay_add, METH_VARARGS,
     "add(client_fd, upstream_fd, token, prefix, to_client, to_upstream) -> slot: relay a "
     "socket pair (the fds become the relay's); prefix goes to the client untracked, "
     "to_client through the tracker, to_upstream to the app."},
    {"close_gracefully", (PyCFunction)Relay_close_gracefully, METH_VARARGS,
     "close_gracefully(slot, token, code, reason) -> bool: a close frame at the next "
     "app-to-client frame boundary."},
    {"end", (PyCFunction)Relay_end, METH_VARARGS,
     "end(slot, token, abort): close both sides now (no event is posted)."},
    {"events", (PyCFunction)Relay_events, METH_NOARGS,
     "events() -> [(token, kind, reason)]: what happened since the last call."},
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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsgauge_sidecar._native_relay",
    "The sidecar's native WebSocket relay (see wsgauge_sidecar.native_relay).", -1, NULL,
};

PyMODINIT_FUNC PyInit__native_relay(void) {
    if (PyType_Ready(&RelayType) < 0 || PyType_Ready(&TrackerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RelayType);
    Py_INCREF(&TrackerType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObject(m, "Tracker", (PyObject *)&TrackerType) < 0 ||
        PyModule_AddIntConstant(m, "EV_CLOSED", EV_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "EV_CLIENT_EOF", EV_CLIENT_EOF) < 0 ||
        PyModule_AddIntConstant(m, "R_NORMAL", R_NORMAL) < 0 ||
        PyModule_AddIntConstant(m, "R_CLIENT_GONE", R_CLIENT_GONE) < 0 ||
        PyModule_AddIntConstant(m, "R_UPSTREAM_GONE", R_UPSTREAM_GONE) < 0 ||
        PyModule_AddIntConstant(m, "R_PROTOCOL_ERROR", R_PROTOCOL_ERROR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
