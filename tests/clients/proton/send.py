#!/usr/bin/python3
"""Sends --count messages with bodies "{prefix}{seq}" to an address, then prints

    {"sent": N, "accepted": A, "rejected": R, "released": L, "settled": S,
     "first_rejection": {"condition": C, "description": D} or null,
     "shard": K, "queue_shard": Q, "link_shard": L}

(shard: the broker shard that accepted the connection; queue_shard: the shard
the broker reports for the target queue, null for exchanges; link_shard: the
shard serving the link, the queue's when connection placement moved the
connection there). Unsettled mode ends
when the broker has settled every message; presettled mode when all are sent and
the connection is closed cleanly. With --report-progress, prints
{"settled": n, "sent": m} whenever the number of settled messages changes.
"""

import json
import sys

from proton import Message
from proton.reactor import AtLeastOnce, AtMostOnce, Container

from common import Client, base_parser, emit


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=0, help="pad bodies with '.' to this many bytes")
    parser.add_argument("--subject", default=None, help="message subject (routing key)")
    parser.add_argument("--settle", choices=["presettled", "unsettled"], default="unsettled")
    parser.add_argument("--prefix", default="", help="body prefix, before the sequence number")
    parser.add_argument("--properties", default=None, help="application properties, a JSON object")
    parser.add_argument("--report-progress", action="store_true", help="print settled counts as they change")
    parser.add_argument("--durable", action="store_true", help="mark messages durable (persistent on a durable queue)")
    args = parser.parse_args()
    if args.properties is not None:
        args.properties = json.loads(args.properties)
        if not isinstance(args.properties, dict):
            parser.error("--properties must be a JSON object")
    return args


class Sender(Client):
    def __init__(self, args):
        super().__init__(args)
        self.sender = None
        self.sent = 0
        self.accepted = 0
        self.rejected = 0
        self.first_rejection = None
        self.released = 0
        self.settled = 0
        self.presettled = args.settle == "presettled"

    def open_links(self, connection):
        option = AtMostOnce() if self.presettled else AtLeastOnce()
        self.sender = self.container.create_sender(connection, self.args.address, options=option)

    def on_link_opened(self, event):
        if event.link == self.sender:
            self.note_link_properties(event.link)
            if self.args.count == 0:
                # Nothing to send: the run only reports where the broker put the link.
                self.finish()

    def body(self, seq):
        text = "%s%d" % (self.args.prefix, seq)
        return text.ljust(self.args.size, ".")

    def on_sendable(self, event):
        sender = event.sender
        while sender.credit > 0 and self.sent < self.args.count:
            message = Message(body=self.body(self.sent), durable=self.args.durable)
            if self.args.subject is not None:
                message.subject = self.args.subject
            if self.args.properties is not None:
                message.properties = dict(self.args.properties)
            sender.send(message)
            self.sent += 1
        if self.presettled and self.sent == self.args.count:
            self.finish()

    def on_accepted(self, event):
        self.accepted += 1

    def on_rejected(self, event):
        self.rejected += 1
        condition = event.delivery.remote.condition
        if condition is not None and self.first_rejection is None:
            self.first_rejection = {"condition": condition.name, "description": condition.description}

    def on_released(self, event):
        self.released += 1

    def on_settled(self, event):
        self.settled += 1
        if self.args.report_progress:
            emit({"settled": self.settled, "sent": self.sent})
        if self.settled == self.args.count:
            self.finish()

    def summary(self):
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "released": self.released,
            "settled": self.settled,
            "shard": self.shard,
            "queue_shard": self.queue_shard, "link_shard": self.link_shard,
            "first_rejection": self.first_rejection,
        }


if __name__ == "__main__":
    sys.exit(Sender(parse_args()).run(Container))
