/*
 * tandem-proton-load: a load generator that behaves like a user's client,
 * because it is one: Qpid Proton-C (the proactor API), not Tandem's engine.
 *
 * One process, one thread, two connections to the broker: a sender that
 * keeps at most --window unsettled (at-least-once) messages of --size bytes
 * in flight and counts the broker's accepts, and a receiver that grants
 * --window credit (topped up at half), accepts and settles each message.
 * It stops once --count messages were sent, accepted and received, and
 * prints one JSON line:
 *
 *   {"client":"proton-c","sent":N,"accepted":N,"received":N,"seconds":S,
 *    "msg_per_s":R,"cpu_seconds":C,"cpu_us_per_msg":U}
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct load {
    const char *address;
    long count, size, window;
    double timeout;
    pn_proactor_t *proactor;
    pn_connection_t *send_conn, *recv_conn;
    pn_link_t *sender, *receiver;
    long sent, accepted, received, in_flight;
    char *body;
    char *encoded;
    size_t encoded_len;
    char *rx;
    size_t rx_cap;
    double started;
    int failed;
    int finished;
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
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
            "       [--size BYTES] [--window N] [--timeout SECONDS]\n",
            why);
    exit(2);
}

static long number(const char *flag, const char *text, long min) {
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (!end || *end || v < min) {
        fprintf(stderr, "tandem-proton-load: %s: '%s' is not a whole number >= %ld\n", flag,
                text, min);
        exit(2);
    }
    return v;
}

/* The message every send writes: encoded once, as its bytes never change. */
static void encode_message(struct load *l) {
    pn_message_t *m = pn_message();
    l->body = malloc(l->size + 1);
    memset(l->body, 'x', l->size);
    l->body[l->size] = 0;
    pn_message_set_durable(m, true);
    pn_data_t *body = pn_message_body(m);
    pn_data_put_binary(body, pn_bytes(l->size, l->body));
    size_t cap = l->size + 256;
    l->encoded = malloc(cap);
    l->encoded_len = cap;
    if (pn_message_encode(m, l->encoded, &l->encoded_len) != 0) {
        fprintf(stderr, "tandem-proton-load: cannot encode the message\n");
        exit(1);
    }
    pn_message_free(m);
}

/* Sends while the broker gives credit and the window has room. */
static void send_more(struct load *l) {
    pn_link_t *s = l->sender;
    while (l->sent < l->count && l->in_flight < l->window && pn_link_credit(s) > 0) {
        char tag[16];
        int n = snprintf(tag, sizeof tag, "%lx", l->sent);
        pn_delivery_t *d = pn_delivery(s, pn_dtag(tag, n));
        pn_link_send(s, l->encoded, l->encoded_len);
        pn_link_advance(s);
        (void)d;
        l->sent++;
        l->in_flight++;
    }
}

/* Each connection is changed only in its own event batch: the other one
   is woken, and closes itself (PN_CONNECTION_WAKE). */
static void close_both(struct load *l, pn_connection_t *here) {
    pn_connection_t *conns[2] = {l->send_conn, l->recv_conn};
    for (int i = 0; i < 2; i++) {
        if (conns[i] == here) pn_connection_close(here);
        else pn_connection_wake(conns[i]);
    }
}

static void finish_if_done(struct load *l, pn_connection_t *here) {
    if (l->finished || l->accepted < l->count || l->received < l->count) return;
    l->finished = 1;
    close_both(l, here);
}

static void fail(struct load *l, pn_connection_t *here, const char *what, pn_condition_t *c) {
    if (l->failed) return;
    l->failed = 1;
    fprintf(stderr, "tandem-proton-load: %s: %s: %s\n", what, pn_condition_get_name(c),
            pn_condition_get_description(c) ? pn_condition_get_description(c) : "");
    close_both(l, here);
}

static void on_delivery(struct load *l, pn_delivery_t *d) {
    pn_link_t *link = pn_delivery_link(d);
    if (pn_link_is_sender(link)) {
        if (!pn_delivery_updated(d)) return;
        uint64_t state = pn_delivery_remote_state(d);
        if (state == PN_ACCEPTED) {
            l->accepted++;
        } else if (state != 0) {
            fprintf(stderr, "tandem-proton-load: a message was not accepted (state %llu)\n",
                    (unsigned long long)state);
            l->failed = 1;
            close_both(l, pn_session_connection(pn_link_session(link)));
        }
        pn_delivery_settle(d);
        l->in_flight--;
        send_more(l);
        finish_if_done(l, pn_session_connection(pn_link_session(link)));
        return;
    }
    if (!pn_delivery_readable(d) || pn_delivery_partial(d)) return;
    size_t pending = pn_delivery_pending(d);
    if (pending > l->rx_cap) {
        l->rx = realloc(l->rx, pending);
        l->rx_cap = pending;
    }
    pn_link_recv(link, l->rx, l->rx_cap);
    pn_link_advance(link);
    pn_delivery_update(d, PN_ACCEPTED);
    pn_delivery_settle(d);
    l->received++;
    if (pn_link_credit(link) < l->window / 2) pn_link_flow(link, l->window - pn_link_credit(link));
    finish_if_done(l, pn_session_connection(pn_link_session(link)));
}

static void open_link(struct load *l, pn_connection_t *c) {
    pn_connection_set_container(c, "tandem-proton-load");
    pn_connection_open(c);
    pn_session_t *s = pn_session(c);
    pn_session_open(s);
    if (c == l->send_conn) {
        l->sender = pn_sender(s, "load-sender");
        pn_terminus_set_address(pn_link_target(l->sender), l->address);
        pn_link_set_snd_settle_mode(l->sender, PN_SND_UNSETTLED);
        pn_link_open(l->sender);
    } else {
        l->receiver = pn_receiver(s, "load-receiver");
        pn_terminus_set_address(pn_link_source(l->receiver), l->address);
        pn_link_open(l->receiver);
        pn_link_flow(l->receiver, l->window);
    }
}

int main(int argc, char **argv) {
    struct load l;
    memset(&l, 0, sizeof l);
    const char *url = NULL;
    l.count = 100000;
    l.size = 1024;
    l.window = 1000;
    l.timeout = 120;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage("every flag takes a value");
        const char *v = argv[++i];
        if (!strcmp(a, "--url")) url = v;
        else if (!strcmp(a, "--address")) l.address = v;
        else if (!strcmp(a, "--count")) l.count = number(a, v, 1);
        else if (!strcmp(a, "--size")) l.size = number(a, v, 0);
        else if (!strcmp(a, "--window")) l.window = number(a, v, 1);
        else if (!strcmp(a, "--timeout")) l.timeout = (double)number(a, v, 1);
        else usage("unknown flag");
    }
    if (!url || !l.address) usage("--url and --address are needed");
    encode_message(&l);
    l.proactor = pn_proactor();
    l.send_conn = pn_connection();
    l.recv_conn = pn_connection();
    pn_proactor_connect2(l.proactor, l.recv_conn, NULL, url);
    pn_proactor_connect2(l.proactor, l.send_conn, NULL, url);
    l.started = now();
    double cpu_start = cpu_seconds();
    int running = 1, timed_out = 0, closed = 0;
    pn_proactor_set_timeout(l.proactor, (pn_millis_t)(l.timeout * 1000));
    while (running) {
        pn_event_batch_t *batch = pn_proactor_wait(l.proactor);
        pn_event_t *e;
        while ((e = pn_event_batch_next(batch))) {
            switch (pn_event_type(e)) {
            case PN_CONNECTION_INIT:
                open_link(&l, pn_event_connection(e));
                break;
            case PN_LINK_FLOW:
                if (pn_event_link(e) == l.sender) send_more(&l);
                break;
            case PN_DELIVERY:
                on_delivery(&l, pn_event_delivery(e));
                break;
            case PN_LINK_REMOTE_CLOSE:
                if (pn_condition_is_set(pn_link_remote_condition(pn_event_link(e))))
                    fail(&l, pn_event_connection(e), "link closed by the broker",
                         pn_link_remote_condition(pn_event_link(e)));
                break;
            case PN_CONNECTION_WAKE:
                if (l.finished || l.failed) pn_connection_close(pn_event_connection(e));
                break;
            case PN_TRANSPORT_CLOSED: {
                pn_condition_t *c = pn_transport_condition(pn_event_transport(e));
                if (!l.finished && pn_condition_is_set(c))
                    fail(&l, pn_event_connection(e), "connection lost", c);
                /* Both connections gone: done (the timeout would keep the
                   proactor from going inactive). */
                if (++closed == 2) running = 0;
                break;
            }
            case PN_PROACTOR_INACTIVE:
                /* Both connections are gone. */
                running = 0;
                break;
            case PN_PROACTOR_TIMEOUT:
                if (!l.finished) {
                    timed_out = 1;
                    l.failed = 1;
                    close_both(&l, NULL);
                }
                break;
            default:
                break;
            }
        }
        pn_proactor_done(l.proactor, batch);
    }
    double seconds = now() - l.started;
    double cpu = cpu_seconds() - cpu_start;
    printf("{\"client\":\"proton-c\",\"sent\":%ld,\"accepted\":%ld,\"received\":%ld,"
           "\"seconds\":%.3f,\"msg_per_s\":%.0f,\"cpu_seconds\":%.3f,\"cpu_us_per_msg\":%.2f}\n",
           l.sent, l.accepted, l.received, seconds, l.received / (seconds > 0 ? seconds : 1),
           cpu, l.received ? cpu * 1e6 / l.received : 0.0);
    pn_proactor_free(l.proactor);
    if (timed_out) {
        fprintf(stderr, "tandem-proton-load: --timeout %.0f s passed\n", l.timeout);
        return 3;
    }
    return l.failed || l.received < l.count ? 1 : 0;
}
