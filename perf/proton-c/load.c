/*
 * tandem-proton-load: a load generator that behaves like a user's client,
 * because it is one: Qpid Proton-C (the proactor API), not Tandem's engine.
 *
 * One process, --threads event threads (default 1; the handlers share one
 * lock, the socket I/O runs on all of them), --pairs sender and receiver
 * connections (default 1 + 1). Pair i uses ADDRESS, or ADDRESS-(i mod Q) with
 * --queues Q > 1, the names tandem-perf uses. Each sender keeps at most
 * --window unsettled (at-least-once) messages of --size bytes (durable with
 * --durable yes; default no, as tandem-perf's) in flight and
 * counts the broker's accepts; each receiver grants --window credit (topped
 * up at half), accepts and settles each message. --count messages in all
 * are shared among the senders; the run stops once every one was sent,
 * accepted and received.
 *
 * Every body begins with the stamp tandem-perf uses (big-endian): run id
 * (u32, random per process), sender (u32), sequence (u64) and time (u64,
 * ns). A receiver counts messages of other runs (left on the queue by an
 * earlier one) as "foreign" and not as received.
 *
 * --rate R paces the senders to R msg/s in all. The stamp then holds the
 * time each message was due by that schedule, not when it went out, so a
 * sender held back by its window or a slow broker shows as latency
 * (coordinated omission corrected). A pacer thread wakes the senders every
 * 1/R seconds, but no more often than every PACE_MIN_NS (messages due
 * sooner go out together). --latencies FILE writes each message's latency
 * in ns, one per line, for tandem-perf to turn into a histogram.
 *
 * Prints one JSON line:
 *
 *   {"client":"proton-c","sent":N,"accepted":N,"received":N,"foreign":N,
 *    "seconds":S,"msg_per_s":R,"cpu_seconds":C,"cpu_us_per_msg":U}
 *
 * (cpu_seconds is this process's own user + system time, so that a bench
 * can tell the client's CPU from the broker's.) Exit 0 when every message
 * made it, 1 on an error (printed on stderr), 3 on --timeout.
 *
 * Built by scripts/bench/proton-load (gcc, libqpid-proton11-dev); cargo
 * never needs it.
 */

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define STAMP_LEN 24
#define MAX_PAIRS 64
#define PACE_MIN_NS 100000L
#define MAX_THREADS 16

/* One connection with one link: a sender or a receiver. */
struct side {
    pn_connection_t *conn;
    pn_link_t *link;
    int is_sender;
    uint32_t id;
    char address[256];
    /* Senders: their share of --count; receivers: how many to expect. */
    long quota;
    long sent, accepted, in_flight, received;
    char *encoded; /* senders: the message, stamp patched per send */
    size_t encoded_len;
};

struct load {
    long count, size, window, pairs, queues;
    int durable;
    double rate, timeout;
    pn_proactor_t *proactor;
    struct side sides[2 * MAX_PAIRS];
    int nsides;
    uint32_t run;
    long received, accepted, foreign;
    char *rx;
    size_t rx_cap;
    struct timespec start;
    FILE *latencies;
    pthread_t pacer;
    int pacer_running;
    atomic_int stop;
    int failed, finished, timed_out, done, closed;
    long threads;
    pthread_mutex_t lock;
};

static int64_t ns_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)(t.tv_sec - t0->tv_sec) * 1000000000 + (t.tv_nsec - t0->tv_nsec);
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static void usage(const char *why) {
    fprintf(stderr,
            "tandem-proton-load: %s\n"
            "usage: tandem-proton-load --url HOST:PORT --address QUEUE [--count N]\n"
            "       [--size BYTES] [--window N] [--pairs N] [--queues N]\n"
            "       [--durable yes|no] [--rate MSG_PER_S [--latencies FILE]]\n"
            "       [--threads N] [--timeout SECONDS]\n",
            why);
    exit(2);
}

static long number(const char *flag, const char *text, long min, long max) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || !end || *end || v < min || v > max) {
        fprintf(stderr, "tandem-proton-load: %s: '%s' is not a whole number from %ld to %ld\n",
                flag, text, min, max);
        exit(2);
    }
    return v;
}

static void put_be(char *at, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        at[i] = (char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be(const char *at, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | (unsigned char)at[i];
    return v;
}

/* A sender's message: encoded once; the stamp (the body's first bytes,
   which end the encoding) is patched in place for every send. */
static void encode_message(struct load *l, struct side *s) {
    pn_message_t *m = pn_message();
    char *body = calloc(1, l->size);
    put_be(body, l->run, 4);
    put_be(body + 4, s->id, 4);
    pn_message_set_durable(m, l->durable);
    pn_data_put_binary(pn_message_body(m), pn_bytes(l->size, body));
    size_t cap = l->size + 256;
    s->encoded = malloc(cap);
    s->encoded_len = cap;
    if (!body || !s->encoded || pn_message_encode(m, s->encoded, &s->encoded_len) != 0) {
        fprintf(stderr, "tandem-proton-load: cannot encode the message\n");
        exit(1);
    }
    free(body);
    pn_message_free(m);
}

/* Messages sender s should have sent by now: all of its quota, or with
   --rate as many as its schedule has made due. */
static long due(struct load *l, struct side *s) {
    if (l->rate <= 0) return s->quota;
    double per_sender = l->rate / (l->nsides / 2);
    long n = (long)((double)ns_since(&l->start) * per_sender / 1e9) + 1;
    return n < s->quota ? n : s->quota;
}

/* Sends while the broker gives credit, the window has room and (paced)
   messages are due. */
static void send_more(struct load *l, struct side *s) {
    double per_sender = l->rate > 0 ? l->rate / (l->nsides / 2) : 0;
    long until = due(l, s);
    while (s->sent < until && s->in_flight < l->window && pn_link_credit(s->link) > 0) {
        char tag[16];
        int n = snprintf(tag, sizeof tag, "%lx", s->sent);
        int64_t stamp = per_sender > 0 ? (int64_t)(s->sent * 1e9 / per_sender)
                                       : ns_since(&l->start);
        char *at = s->encoded + s->encoded_len - l->size;
        put_be(at + 8, (uint64_t)s->sent, 8);
        put_be(at + 16, (uint64_t)stamp, 8);
        pn_delivery(s->link, pn_dtag(tag, n));
        pn_link_send(s->link, s->encoded, s->encoded_len);
        pn_link_advance(s->link);
        s->sent++;
        s->in_flight++;
    }
}

static void stop_pacer(struct load *l) {
    if (!l->pacer_running) return;
    atomic_store(&l->stop, 1);
    pthread_join(l->pacer, NULL);
    l->pacer_running = 0;
}

/* Each connection is changed only in its own event batch: the others are
   woken, and close themselves (PN_CONNECTION_WAKE). */
static void close_all(struct load *l, pn_connection_t *here) {
    stop_pacer(l);
    for (int i = 0; i < l->nsides; i++) {
        if (l->sides[i].conn == here) pn_connection_close(here);
        else pn_connection_wake(l->sides[i].conn);
    }
}

static void finish_if_done(struct load *l, pn_connection_t *here) {
    if (l->finished || l->accepted < l->count || l->received < l->count) return;
    l->finished = 1;
    close_all(l, here);
}

static void fail(struct load *l, pn_connection_t *here, const char *what, pn_condition_t *c) {
    if (l->failed) return;
    l->failed = 1;
    fprintf(stderr, "tandem-proton-load: %s: %s: %s\n", what,
            c ? pn_condition_get_name(c) : "",
            c && pn_condition_get_description(c) ? pn_condition_get_description(c) : "");
    close_all(l, here);
}

static struct side *side_of(struct load *l, pn_connection_t *c) {
    for (int i = 0; i < l->nsides; i++)
        if (l->sides[i].conn == c) return &l->sides[i];
    return NULL;
}

static void on_delivery(struct load *l, struct side *s, pn_delivery_t *d) {
    pn_link_t *link = pn_delivery_link(d);
    if (s->is_sender) {
        if (!pn_delivery_updated(d)) return;
        uint64_t state = pn_delivery_remote_state(d);
        if (state == PN_ACCEPTED) {
            s->accepted++;
            l->accepted++;
        } else if (state != 0) {
            fprintf(stderr, "tandem-proton-load: a message was not accepted (state %llu)\n",
                    (unsigned long long)state);
            l->failed = 1;
            close_all(l, s->conn);
        }
        pn_delivery_settle(d);
        s->in_flight--;
        send_more(l, s);
        finish_if_done(l, s->conn);
        return;
    }
    if (!pn_delivery_readable(d) || pn_delivery_partial(d)) return;
    size_t pending = pn_delivery_pending(d);
    if (pending > l->rx_cap) {
        l->rx = realloc(l->rx, pending);
        l->rx_cap = pending;
        if (!l->rx) {
            fprintf(stderr, "tandem-proton-load: out of memory\n");
            exit(1);
        }
    }
    ssize_t got = pn_link_recv(link, l->rx, l->rx_cap);
    int64_t arrived = ns_since(&l->start);
    pn_link_advance(link);
    pn_delivery_update(d, PN_ACCEPTED);
    pn_delivery_settle(d);
    /* The stamp is the body's first bytes; the body ends the message. */
    const char *stamp = got >= l->size ? l->rx + got - l->size : NULL;
    if (!stamp || get_be(stamp, 4) != l->run) {
        l->foreign++;
    } else {
        s->received++;
        l->received++;
        if (l->latencies) {
            int64_t lat = arrived - (int64_t)get_be(stamp + 16, 8);
            fprintf(l->latencies, "%lld\n", (long long)(lat > 0 ? lat : 1));
        }
    }
    if (pn_link_credit(link) < l->window / 2) pn_link_flow(link, l->window - pn_link_credit(link));
    finish_if_done(l, s->conn);
}

static void open_link(struct load *l, struct side *s) {
    pn_connection_set_container(s->conn, "tandem-proton-load");
    pn_connection_open(s->conn);
    pn_session_t *session = pn_session(s->conn);
    pn_session_open(session);
    char name[32];
    snprintf(name, sizeof name, "load-%s-%u", s->is_sender ? "sender" : "receiver", s->id);
    if (s->is_sender) {
        s->link = pn_sender(session, name);
        pn_terminus_set_address(pn_link_target(s->link), s->address);
        pn_link_set_snd_settle_mode(s->link, PN_SND_UNSETTLED);
        pn_link_open(s->link);
    } else {
        s->link = pn_receiver(session, name);
        pn_terminus_set_address(pn_link_source(s->link), s->address);
        pn_link_open(s->link);
        pn_link_flow(s->link, l->window);
    }
}

/* Wakes the senders on their schedule; their wake events send what is due. */
static void *pace(void *arg) {
    struct load *l = arg;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    long tick = (long)(1e9 / l->rate * (l->nsides / 2));
    if (tick < PACE_MIN_NS) tick = PACE_MIN_NS;
    struct timespec next = l->start;
    while (!atomic_load(&l->stop)) {
        next.tv_nsec += tick;
        while (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        if (atomic_load(&l->stop)) break;
        for (int i = 0; i < l->nsides; i++)
            if (l->sides[i].is_sender) pn_connection_wake(l->sides[i].conn);
    }
    return NULL;
}

/* One event thread: handles batches until every connection is gone. The
   handlers run under one lock (the proactor reads and writes sockets outside
   it, in pn_proactor_wait and pn_proactor_done, on every thread at once). */
static void *serve(void *arg) {
    struct load *l = arg;
    for (;;) {
        pn_event_batch_t *batch = pn_proactor_wait(l->proactor);
        pthread_mutex_lock(&l->lock);
        pn_event_t *e;
        while ((e = pn_event_batch_next(batch))) {
            pn_connection_t *c = pn_event_connection(e);
            struct side *s = c ? side_of(l, c) : NULL;
            switch (pn_event_type(e)) {
            case PN_CONNECTION_INIT:
                if (s) open_link(l, s);
                break;
            case PN_LINK_FLOW:
                if (s && s->is_sender) send_more(l, s);
                break;
            case PN_DELIVERY:
                if (s) on_delivery(l, s, pn_event_delivery(e));
                break;
            case PN_LINK_REMOTE_CLOSE:
                if (pn_condition_is_set(pn_link_remote_condition(pn_event_link(e))))
                    fail(l, c, "link closed by the broker",
                         pn_link_remote_condition(pn_event_link(e)));
                break;
            case PN_CONNECTION_WAKE:
                if (l->finished || l->failed) pn_connection_close(c);
                else if (s && s->is_sender && s->link) send_more(l, s);
                break;
            case PN_TRANSPORT_CLOSED: {
                pn_condition_t *cond = pn_transport_condition(pn_event_transport(e));
                if (!l->finished && pn_condition_is_set(cond))
                    fail(l, c, "connection lost", cond);
                /* All connections gone: done (the timeout would keep the
                   proactor from going inactive). */
                if (++l->closed == l->nsides) l->done = 1;
                break;
            }
            case PN_PROACTOR_INACTIVE:
                l->done = 1;
                break;
            case PN_PROACTOR_TIMEOUT:
                if (!l->finished) {
                    l->timed_out = 1;
                    l->failed = 1;
                    close_all(l, NULL);
                }
                break;
            default:
                break;
            }
        }
        int done = l->done;
        pthread_mutex_unlock(&l->lock);
        pn_proactor_done(l->proactor, batch);
        if (done) {
            /* Wake the other event threads, which then see done too. */
            for (long t = 1; t < l->threads; t++) pn_proactor_interrupt(l->proactor);
            return NULL;
        }
    }
}

int main(int argc, char **argv) {
    static struct load l;
    const char *url = NULL, *address = NULL, *latencies = NULL;
    l.count = 100000;
    l.size = 1024;
    l.window = 1000;
    l.pairs = 1;
    l.queues = 1;
    l.timeout = 120;
    l.threads = 1;
    pthread_mutex_init(&l.lock, NULL);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage("every flag takes a value");
        const char *v = argv[++i];
        if (!strcmp(a, "--url")) url = v;
        else if (!strcmp(a, "--address")) address = v;
        else if (!strcmp(a, "--count")) l.count = number(a, v, 1, 1L << 40);
        else if (!strcmp(a, "--size")) l.size = number(a, v, STAMP_LEN, 1L << 26);
        else if (!strcmp(a, "--window")) l.window = number(a, v, 1, 1L << 20);
        else if (!strcmp(a, "--pairs")) l.pairs = number(a, v, 1, MAX_PAIRS);
        else if (!strcmp(a, "--queues")) l.queues = number(a, v, 1, MAX_PAIRS);
        else if (!strcmp(a, "--rate")) l.rate = (double)number(a, v, 1, 100000000);
        else if (!strcmp(a, "--latencies")) latencies = v;
        else if (!strcmp(a, "--threads")) l.threads = number(a, v, 1, MAX_THREADS);
        else if (!strcmp(a, "--durable")) {
            if (strcmp(v, "yes") && strcmp(v, "no")) usage("--durable takes yes or no");
            l.durable = !strcmp(v, "yes");
        }
        else if (!strcmp(a, "--timeout")) l.timeout = (double)number(a, v, 1, 86400);
        else usage("unknown flag");
    }
    if (!url || !address) usage("--url and --address are needed");
    if (strlen(address) > 200) usage("--address is too long");
    if (l.queues > l.pairs) usage("--queues: more queues than pairs; every queue needs both");
    if (latencies && l.rate <= 0) usage("--latencies needs --rate");
    if (latencies && !(l.latencies = fopen(latencies, "w"))) {
        fprintf(stderr, "tandem-proton-load: cannot write %s: %s\n", latencies, strerror(errno));
        return 2;
    }
    struct timespec seed;
    clock_gettime(CLOCK_REALTIME, &seed);
    l.run = (uint32_t)(seed.tv_nsec ^ (seed.tv_sec << 20) ^ ((uint32_t)getpid() << 8));
    l.proactor = pn_proactor();
    for (long p = 0; p < l.pairs; p++) {
        for (int role = 0; role < 2; role++) {
            struct side *s = &l.sides[l.nsides++];
            s->is_sender = role == 0;
            s->id = (uint32_t)p;
            if (l.queues > 1)
                snprintf(s->address, sizeof s->address, "%s-%ld", address, p % l.queues);
            else
                snprintf(s->address, sizeof s->address, "%s", address);
            s->quota = l.count / l.pairs + (p < l.count % l.pairs ? 1 : 0);
            if (s->is_sender) encode_message(&l, s);
            s->conn = pn_connection();
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &l.start);
    for (int i = 0; i < l.nsides; i++) pn_proactor_connect2(l.proactor, l.sides[i].conn, NULL, url);
    if (l.rate > 0) {
        if (pthread_create(&l.pacer, NULL, pace, &l) != 0) {
            fprintf(stderr, "tandem-proton-load: cannot start the pacer thread\n");
            return 1;
        }
        l.pacer_running = 1;
    }
    double cpu_start = cpu_seconds();
    pn_proactor_set_timeout(l.proactor, (pn_millis_t)(l.timeout * 1000));
    pthread_t workers[MAX_THREADS];
    for (long t = 1; t < l.threads; t++) {
        if (pthread_create(&workers[t], NULL, serve, &l) != 0) {
            fprintf(stderr, "tandem-proton-load: cannot start event thread %ld\n", t);
            return 1;
        }
    }
    serve(&l);
    for (long t = 1; t < l.threads; t++) pthread_join(workers[t], NULL);
    stop_pacer(&l);
    double seconds = ns_since(&l.start) / 1e9;
    double cpu = cpu_seconds() - cpu_start;
    long sent = 0;
    for (int i = 0; i < l.nsides; i++) sent += l.sides[i].sent;
    printf("{\"client\":\"proton-c\",\"sent\":%ld,\"accepted\":%ld,\"received\":%ld,"
           "\"foreign\":%ld,\"seconds\":%.3f,\"msg_per_s\":%.0f,\"cpu_seconds\":%.3f,"
           "\"cpu_us_per_msg\":%.2f}\n",
           sent, l.accepted, l.received, l.foreign, seconds,
           l.received / (seconds > 0 ? seconds : 1), cpu,
           l.received ? cpu * 1e6 / l.received : 0.0);
    pn_proactor_free(l.proactor);
    if (l.latencies && fclose(l.latencies) != 0) {
        fprintf(stderr, "tandem-proton-load: cannot write %s\n", latencies);
        return 1;
    }
    if (l.timed_out) {
        fprintf(stderr, "tandem-proton-load: --timeout %.0f s passed\n", l.timeout);
        return 3;
    }
    return l.failed || l.received < l.count ? 1 : 0;
}
