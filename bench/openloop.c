/* The open-loop generator's engine: Poisson arrivals, one thread, epoll, CLOCK_MONOTONIC.
 *
 * Run by bench/openloop.py (run), which builds the request bytes, reads the records this
 * writes and reduces them to the summary; see its docstring for what the figures mean.
 *
 *   openloop HOST PORT RATE SECONDS DEADLINE SEED REQUESTS OUT
 *
 * REQUESTS holds the raw HTTP/1.1 requests, each as "LENGTH\n" followed by LENGTH bytes; they
 * are sent in turn. Request k is scheduled at start + the sum of k+1 exponential gaps of mean
 * 1/RATE (start: 50 ms after launch); arrivals past SECONDS are not sent. At its scheduled time
 * a request takes the most recently idled keep-alive connection (one idle 2 s or longer is
 * closed instead) or opens a new one, and is written. Its deadline is scheduled + DEADLINE
 * seconds: past it the connection is closed and the request counts as a timeout.
 *
 * OUT gets one line per request, in schedule order, tab-separated:
 *   index  outcome  latency_ns  lag_ns  body_hex
 * outcome: the HTTP status, "timeout", or "error" (connect, write or read failed, the
 * connection closed early, an unparsable answer, or over MAX_CONNS open). latency: from the
 * scheduled time to the whole answer read (0 when none). lag: from the scheduled time to the
 * write on a kept-alive connection, or to connect() on a new one (the server's accept is the
 * server's time, as the latency counts it). body_hex: the body of a non-2xx answer, in hex.
 * A last line: "end  SENT  CONNECTIONS_OPENED".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
/* Connections idle longer are not reused: servers close kept-alive ones after about 5 s, and a
 * request written into one the server is closing would count as a connection error. */
#define MAX_IDLE_NS 2000000000LL
#define START_DELAY_NS 50000000LL
#define MAX_EVENTS 256
#define MAX_RESPONSE (16 * 1024 * 1024)

enum { PENDING = 0, TIMEOUT = -1, ERROR = -2 };
enum { FREE, CONNECTING, BUSY, IDLE };

typedef struct {
    int64_t scheduled, lag, latency;
    int outcome; /* HTTP status, PENDING, TIMEOUT or ERROR */
    int conn;    /* connection slot while in flight, else -1 */
    char *body;  /* non-2xx answers only */
    size_t body_len;
} Request;

typedef struct {
    int fd, state, req;
    uint32_t gen;
    size_t woff;
    char *rbuf;
    size_t rlen, rcap;
    int64_t idle_since;
    int want_out;
} Conn;

typedef struct {
    int slot;
    uint32_t gen;
} Idle;

static int ep;
static struct sockaddr_in addr;
static int64_t deadline_ns;
static char **reqs;
static size_t *reqs_len;
static size_t n_reqs;
static Request *requests;
static size_t n_sent, cap_sent;
static Conn conns[MAX_CONNS];
static int free_slots[MAX_CONNS], n_free;
static Idle idle[MAX_CONNS];
static int n_idle, n_open;
static long long opened;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static uint64_t rng_state;

static double uniform(void) { /* splitmix64, in (0, 1] */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 1.0) / 9007199254740992.0;
}

static void watch(Conn *c, int slot, int op, int out) {
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0);
    ev.data.u64 = ((uint64_t)c->gen << 32) | (uint32_t)slot;
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = out;
}

static void close_conn(int slot) {
    Conn *c = &conns[slot];
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->state = FREE;
    c->req = -1;
    c->gen++;
    c->rlen = 0;
    free_slots[n_free++] = slot;
    n_open--;
}

static void finish(int idx, int outcome, int64_t at) {
    Request *r = &requests[idx];
    r->outcome = outcome;
    r->latency = outcome > 0 ? at - r->scheduled : 0;
    r->conn = -1;
}

static void fail(int slot) {
    int idx = conns[slot].req;
    if (idx >= 0) finish(idx, ERROR, 0);
    close_conn(slot);
}

static void write_some(int slot) {
    Conn *c = &conns[slot];
    const char *buf = reqs[(size_t)c->req % n_reqs];
    size_t len = reqs_len[(size_t)c->req % n_reqs];
    while (c->woff < len) {
        ssize_t n = send(c->fd, buf + c->woff, len - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            fail(slot);
            return;
        }
        c->woff += (size_t)n;
    }
    int out = c->woff < len;
    if (out != c->want_out) watch(c, slot, EPOLL_CTL_MOD, out);
}

static void start_on(int slot, int idx) {
    Conn *c = &conns[slot];
    c->state = BUSY;
    c->req = idx;
    c->woff = 0;
    c->rlen = 0;
    requests[idx].conn = slot;
    write_some(slot);
}

static int live_idle(Idle it) { return conns[it.slot].gen == it.gen && conns[it.slot].state == IDLE; }

/* Entries of connections the server closed while idle stay on the stack until popped; when it
 * is full, drop them (the live ones are fewer than MAX_CONNS, this one being busy). */
static void push_idle(int slot) {
    if (n_idle == MAX_CONNS) {
        int kept = 0;
        for (int i = 0; i < n_idle; i++)
            if (live_idle(idle[i])) idle[kept++] = idle[i];
        n_idle = kept;
    }
    idle[n_idle++] = (Idle){slot, conns[slot].gen};
}

static int take_idle(int64_t now) {
    while (n_idle > 0) {
        Idle it = idle[--n_idle];
        if (!live_idle(it)) continue; /* the server closed it meanwhile */
        if (now - conns[it.slot].idle_since < MAX_IDLE_NS) return it.slot;
        close_conn(it.slot);
    }
    return -1;
}

static void fire(int64_t scheduled) {
    if (n_sent == cap_sent) {
        cap_sent = cap_sent ? 2 * cap_sent : 4096;
        requests = realloc(requests, cap_sent * sizeof *requests);
        if (!requests) die("realloc");
    }
    int idx = (int)n_sent++;
    Request *r = &requests[idx];
    memset(r, 0, sizeof *r);
    r->scheduled = scheduled;
    r->conn = -1;
    int64_t now = now_ns();
    int slot = take_idle(now);
    if (slot >= 0) {
        r->lag = now_ns() - scheduled;
        start_on(slot, idx);
        return;
    }
    r->lag = now - scheduled;
    if (n_open >= MAX_CONNS) {
        finish(idx, ERROR, 0);
        return;
    }
    opened++;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        finish(idx, ERROR, 0);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    slot = free_slots[--n_free];
    n_open++;
    Conn *c = &conns[slot];
    c->fd = fd;
    c->req = idx;
    r->conn = slot;
    r->lag = now_ns() - scheduled;
    int rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    if (rc < 0 && errno != EINPROGRESS) {
        fail(slot);
        return;
    }
    c->state = CONNECTING;
    watch(c, slot, EPOLL_CTL_ADD, 1);
    if (rc == 0) start_on(slot, idx);
}

/* Parse a whole response in c->rbuf: 1 done, 0 more to read, -1 malformed. */
static int parse(Conn *c, int *status, size_t *body_at, size_t *body_len, int *close_after) {
    char *buf = c->rbuf, *end = buf + c->rlen, *line = buf;
    long long length = 0;
    int first = 1;
    *close_after = 0;
    for (;;) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl) return 0;
        char *eol = (nl > line && nl[-1] == '\r') ? nl - 1 : nl;
        if (first) {
            char *sp = memchr(line, ' ', (size_t)(eol - line));
            if (!sp) return -1;
            char *num = sp + 1, *stop;
            errno = 0;
            long s = strtol(num, &stop, 10);
            if (stop == num || errno || (stop < eol && *stop != ' ') || s < 0 || s > 999) return -1;
            *status = (int)s;
            first = 0;
        } else if (eol == line) {
            *body_at = (size_t)(nl + 1 - buf);
            break;
        } else {
            char *colon = memchr(line, ':', (size_t)(eol - line));
            char *name = line, *name_end = colon ? colon : eol;
            char *value = colon ? colon + 1 : eol, *value_end = eol;
            while (name < name_end && (*name == ' ' || *name == '\t')) name++;
            while (name_end > name && (name_end[-1] == ' ' || name_end[-1] == '\t')) name_end--;
            while (value < value_end && (*value == ' ' || *value == '\t')) value++;
            while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t')) value_end--;
            size_t nlen = (size_t)(name_end - name), vlen = (size_t)(value_end - value);
            if (nlen == 14 && strncasecmp(name, "content-length", 14) == 0) {
                char tmp[32], *stop;
                if (vlen == 0 || vlen >= sizeof tmp) return -1;
                memcpy(tmp, value, vlen);
                tmp[vlen] = 0;
                errno = 0;
                length = strtoll(tmp, &stop, 10);
                if (*stop || errno || length < 0 || length > MAX_RESPONSE) return -1;
            } else if (nlen == 10 && strncasecmp(name, "connection", 10) == 0) {
                *close_after = vlen == 5 && strncasecmp(value, "close", 5) == 0;
            }
        }
        line = nl + 1;
    }
    if (c->rlen - *body_at < (size_t)length) return 0;
    *body_len = (size_t)length;
    return 1;
}

static void on_readable(int slot) {
    Conn *c = &conns[slot];
    int eof = 0;
    for (;;) {
        if (c->rcap - c->rlen < 4096) {
            if (c->rcap >= MAX_RESPONSE) {
                fail(slot);
                return;
            }
            c->rcap = c->rcap ? 2 * c->rcap : 8192;
            c->rbuf = realloc(c->rbuf, c->rcap);
            if (!c->rbuf) die("realloc");
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n > 0) {
            c->rlen += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (c->state == IDLE || c->req < 0) { /* the server closed a kept-alive connection */
            close_conn(slot);
            return;
        }
        eof = 1; /* end of stream or an error: parse what came, then give up */
        break;
    }
    if (c->state != BUSY) {
        if (c->rlen > 0) close_conn(slot); /* bytes nobody asked for */
        return;
    }
    int status = 0, close_after = 0;
    size_t body_at = 0, body_len = 0;
    int done = parse(c, &status, &body_at, &body_len, &close_after);
    if (done < 0 || (done == 0 && eof)) {
        fail(slot);
        return;
    }
    if (done == 0) return;
    int idx = c->req;
    Request *r = &requests[idx];
    int64_t now = now_ns();
    if (now > r->scheduled + deadline_ns) { /* came during the wait that ends at the deadline */
        finish(idx, TIMEOUT, 0);
        c->req = -1;
        close_conn(slot);
        return;
    }
    finish(idx, status, now);
    if (status < 200 || status >= 300) {
        r->body = malloc(body_len + 1);
        if (!r->body) die("malloc");
        memcpy(r->body, c->rbuf + body_at, body_len);
        r->body_len = body_len;
    }
    size_t len = reqs_len[(size_t)idx % n_reqs];
    if (close_after || eof || c->woff < len || c->rlen > body_at + body_len) {
        c->req = -1;
        close_conn(slot);
        return;
    }
    c->state = IDLE;
    c->req = -1;
    c->rlen = 0;
    c->idle_since = now_ns();
    push_idle(slot);
}

static void on_event(struct epoll_event *ev) {
    int slot = (int)(uint32_t)ev->data.u64;
    Conn *c = &conns[slot];
    if (c->gen != (uint32_t)(ev->data.u64 >> 32) || c->state == FREE) return; /* stale */
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err ||
            (ev->events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP))) {
            fail(slot);
            return;
        }
        if (!(ev->events & EPOLLOUT)) return;
        start_on(slot, c->req);
        return;
    }
    if (c->state == BUSY && (ev->events & EPOLLOUT)) {
        write_some(slot);
        if (c->state != BUSY) return;
    }
    if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(slot);
}

static void load_requests(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    size_t cap = 0;
    unsigned long len;
    while (fscanf(f, "%lu", &len) == 1) {
        if (fgetc(f) != '\n') die("requests: a length must end its line");
        if (n_reqs == cap) {
            cap = cap ? 2 * cap : 64;
            reqs = realloc(reqs, cap * sizeof *reqs);
            reqs_len = realloc(reqs_len, cap * sizeof *reqs_len);
            if (!reqs || !reqs_len) die("realloc");
        }
        reqs[n_reqs] = malloc(len ? len : 1);
        if (!reqs[n_reqs] || fread(reqs[n_reqs], 1, len, f) != len) die("requests: short");
        reqs_len[n_reqs++] = len;
    }
    fclose(f);
    if (n_reqs == 0) {
        fprintf(stderr, "openloop: no requests in %s\n", path);
        exit(2);
    }
}

static void write_records(const char *path) {
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    if (!f) die(path);
    for (size_t i = 0; i < n_sent; i++) {
        Request *r = &requests[i];
        if (r->outcome > 0)
            fprintf(f, "%zu\t%d", i, r->outcome);
        else
            fprintf(f, "%zu\t%s", i, r->outcome == TIMEOUT ? "timeout" : "error");
        fprintf(f, "\t%lld\t%lld\t", (long long)r->latency, (long long)r->lag);
        for (size_t k = 0; k < r->body_len; k++) fprintf(f, "%02x", (unsigned char)r->body[k]);
        fputc('\n', f);
    }
    fprintf(f, "end\t%zu\t%lld\n", n_sent, opened);
    if (fclose(f) != 0) die(path);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS DEADLINE SEED REQUESTS OUT\n", argv[0]);
        return 2;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    int gai = getaddrinfo(argv[1], argv[2], &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "openloop: %s: %s\n", argv[1], gai_strerror(gai));
        return 2;
    }
    memcpy(&addr, ai->ai_addr, sizeof addr);
    freeaddrinfo(ai);
    double rate = atof(argv[3]), seconds = atof(argv[4]), deadline = atof(argv[5]);
    if (!(rate > 0) || !(seconds > 0) || !(deadline > 0)) {
        fprintf(stderr, "openloop: RATE, SECONDS and DEADLINE must be positive\n");
        return 2;
    }
    rng_state = strtoull(argv[6], NULL, 10);
    deadline_ns = (int64_t)(deadline * 1e9);
    load_requests(argv[7]);

    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < MAX_CONNS + 64) {
        nofile.rlim_cur = nofile.rlim_max < MAX_CONNS + 64 ? nofile.rlim_max : MAX_CONNS + 64;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    /* Real-time priority: beside a server whose threads keep both cores busy, a normal one was
     * left waiting 20-130 ms at times (lag p99 up to 130 ms at 250 req/s with the 4 ms-CPU
     * model; nice -20 did not help: autogroups share the CPU by session). It uses little CPU. */
    struct sched_param fifo = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_FIFO, &fifo) != 0) {
        fprintf(stderr, "openloop: no real-time priority (%s): its lag will show the server's load\n",
                strerror(errno));
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* at least wake on time, not up to 50 us late */
    }
    for (int i = 0; i < MAX_CONNS; i++) {
        conns[i].fd = -1;
        conns[i].req = -1;
        free_slots[n_free++] = MAX_CONNS - 1 - i;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");

    int64_t start = now_ns() + START_DELAY_NS, end = start + (int64_t)(seconds * 1e9);
    int64_t next = start + (int64_t)(-log(uniform()) / rate * 1e9);
    size_t oldest = 0; /* requests before it are all done; deadlines come in schedule order */
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int64_t now = now_ns();
        while (next <= end && next <= now) {
            fire(next);
            next += (int64_t)(-log(uniform()) / rate * 1e9);
        }
        while (oldest < n_sent && requests[oldest].outcome != PENDING) oldest++;
        for (size_t i = oldest; i < n_sent && requests[i].scheduled + deadline_ns <= now; i++) {
            if (requests[i].outcome != PENDING) continue;
            int slot = requests[i].conn;
            finish((int)i, TIMEOUT, 0);
            if (slot >= 0) {
                conns[slot].req = -1;
                close_conn(slot); /* the client gives up and hangs up, as a real one would */
            }
        }
        while (oldest < n_sent && requests[oldest].outcome != PENDING) oldest++;
        if (next > end && oldest == n_sent) break;
        int64_t wake = next <= end ? next : INT64_MAX;
        if (oldest < n_sent && requests[oldest].scheduled + deadline_ns < wake)
            wake = requests[oldest].scheduled + deadline_ns;
        int64_t wait = wake - now_ns();
        if (wait < 0) wait = 0;
        struct timespec ts = {.tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL};
        int n = epoll_pwait2(ep, events, MAX_EVENTS, &ts, NULL);
        if (n < 0 && errno != EINTR) die("epoll_pwait2");
        for (int i = 0; i < n; i++) {
            on_event(&events[i]);
            int64_t t = now_ns();
            while (next <= end && next <= t) { /* keep the schedule through a long batch */
                fire(next);
                next += (int64_t)(-log(uniform()) / rate * 1e9);
            }
        }
    }
    while (n_idle > 0) {
        Idle it = idle[--n_idle];
        if (live_idle(it)) close_conn(it.slot);
    }
    write_records(argv[8]);
    return 0;
}
