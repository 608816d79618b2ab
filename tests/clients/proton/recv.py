#!/usr/bin/python3
"""Receives messages from a queue or exchange and prints them as JSON lines.

Output, one JSON object per line:
  {"ready": true, "shard": K, "queue_shard": Q, "link_shard": L}   once the broker has attached the link
  {"body": .., "delivery_count": .., "first_acquirer": .., "subject": .., "properties": ..}
                                                  per message (not with --check-order)
  {"received": N, "shard": K, "queue_shard": Q, "link_shard": L, ...}   summary, last
(shard: where the connection was accepted; link_shard: the shard serving the link)

The client grants credit only up to --count, so it never takes (and never
accepts) more than --count messages. It stops after --count messages, after
--idle-exit seconds without a message, or on SIGTERM (exit 0, summary printed);
--timeout first is an error (exit 2). --no-settle never settles what it
receives; with --hold it then keeps the connection open until it is killed.
--check-order replaces the per-message lines with per-prefix statistics in the
summary (bodies are "{prefix}{seq}", possibly padded with '.').
"""

import json
import re
import sys
import time

from proton import Described, symbol
from proton.reactor import Container, Copy, Filter

from common import Client, base_parser, body_text, emit

TOPIC_BINDING = "apache.org:legacy-amqp-topic-binding:string"
DIRECT_BINDING = "apache.org:legacy-amqp-direct-binding:string"
HEADERS_BINDING = "apache.org:legacy-amqp-headers-binding:map"

BODY_PATTERN = re.compile(r"^(.*?)(\d+)$")


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--browse", action="store_true", help="distribution-mode copy")
    filters = parser.add_mutually_exclusive_group()
    filters.add_argument("--topic-filter", metavar="PATTERN", help="legacy topic binding")
    filters.add_argument("--direct-filter", metavar="KEY", help="legacy direct binding")
    filters.add_argument("--headers-filter", metavar="JSON", help="legacy headers binding")
    parser.add_argument("--no-settle", action="store_true", help="never accept or settle")
    parser.add_argument("--hold", action="store_true", help="after --count, stay connected until killed")
    parser.add_argument("--credit", type=int, default=100, help="link credit window")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                        help="stop when nothing arrives for this long")
    parser.add_argument("--check-order", action="store_true",
                        help="summarise per-prefix counts and order instead of printing messages")
    args = parser.parse_args()
    if args.headers_filter is not None:
        args.headers_filter = json.loads(args.headers_filter)
        if not isinstance(args.headers_filter, dict):
            parser.error("--headers-filter must be a JSON object")
    if args.credit < 1:
        parser.error("--credit must be at least 1")
    return args


def source_filter(args):
    """The link source's filter set for the binding flags, or None."""
    if args.topic_filter is not None:
        value = Described(symbol(TOPIC_BINDING), args.topic_filter)
    elif args.direct_filter is not None:
        value = Described(symbol(DIRECT_BINDING), args.direct_filter)
    elif args.headers_filter is not None:
        value = Described(symbol(HEADERS_BINDING), dict(args.headers_filter))
    else:
        return None
    return Filter({symbol("tandem-binding"): value})


class OrderCheck:
    """Per-prefix count, distinct sequence numbers, and whether they strictly increase."""

    def __init__(self):
        self.prefixes = {}
        self.unparsed = 0

    def add(self, body):
        match = BODY_PATTERN.match((body or "").rstrip("."))
        if match is None:
            self.unparsed += 1
            return
        prefix, seq = match.group(1), int(match.group(2))
        stats = self.prefixes.get(prefix)
        if stats is None:
            stats = self.prefixes[prefix] = {
                "count": 0, "seen": set(), "in_order": True, "last": None,
                "first_out_of_order": None,
            }
        stats["count"] += 1
        stats["seen"].add(seq)
        if stats["last"] is not None and seq <= stats["last"] and stats["in_order"]:
            stats["in_order"] = False
            stats["first_out_of_order"] = [stats["last"], seq]
        stats["last"] = seq

    def report(self):
        report = {}
        for prefix, stats in self.prefixes.items():
            seen = stats["seen"]
            report[prefix] = {
                "count": stats["count"],
                "distinct": len(seen),
                "min": min(seen),
                "max": max(seen),
                "in_order": stats["in_order"],
                "first_out_of_order": stats["first_out_of_order"],
            }
        return {"prefixes": report, "unparsed": self.unparsed}


class Receiver(Client):
    def __init__(self, args):
        # Credit is managed here (prefetch=0), so the link never holds more than --count.
        super().__init__(args, prefetch=0, auto_accept=False)
        self.receiver = None
        self.received = 0
        self.done = False
        self.last_activity = None
        self.order = OrderCheck() if args.check_order else None

    def open_links(self, connection):
        options = []
        if self.args.browse:
            options.append(Copy())
        filter_option = source_filter(self.args)
        if filter_option is not None:
            options.append(filter_option)
        self.receiver = self.container.create_receiver(connection, self.args.address, options=options)
        self.top_up_credit()

    def top_up_credit(self):
        """Keeps credit at the window, never beyond what --count still allows."""
        window = self.args.credit
        if self.args.count:
            window = min(window, self.args.count - self.received)
        credit = self.receiver.credit
        if window > credit and (credit <= window // 2 or window < self.args.credit):
            self.receiver.flow(window - credit)

    def on_link_opened(self, event):
        if event.link != self.receiver:
            return
        self.note_link_properties(event.link)
        emit({"ready": True, "shard": self.shard, "queue_shard": self.queue_shard, "link_shard": self.link_shard})
        self.last_activity = time.monotonic()
        if self.args.idle_exit is not None:
            self.schedule(self.args.idle_exit, self.check_idle)

    def check_idle(self):
        if self.done:
            return
        quiet = time.monotonic() - self.last_activity
        if quiet >= self.args.idle_exit:
            self.stop()
        else:
            self.schedule(self.args.idle_exit - quiet, self.check_idle)

    def on_message(self, event):
        if self.done:
            # Only reachable if the broker ignored our credit; give it back untouched.
            self.release(event.delivery, delivered=False)
            return
        self.received += 1
        self.last_activity = time.monotonic()
        message = event.message
        body = body_text(message.body)
        if self.order is not None:
            self.order.add(body)
        else:
            emit({
                "body": body,
                "delivery_count": message.delivery_count,
                "first_acquirer": message.first_acquirer,
                "subject": message.subject,
                "properties": message.properties,
            })
        if not self.args.no_settle:
            self.accept(event.delivery)
        if self.args.count and self.received >= self.args.count:
            self.stop()
        else:
            self.top_up_credit()

    def stop(self):
        self.done = True
        if self.args.hold:
            emit(dict(self.summary(), holding=True))
            return
        self.finish()

    def summary(self):
        summary = {"received": self.received, "shard": self.shard, "queue_shard": self.queue_shard, "link_shard": self.link_shard}
        if self.order is not None:
            summary.update(self.order.report())
        return summary


if __name__ == "__main__":
    sys.exit(Receiver(parse_args()).run(Container))
