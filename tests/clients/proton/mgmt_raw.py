#!/usr/bin/python3
"""Sends raw requests to the $management node and prints each reply as a JSON line.

Each REQUEST argument is a JSON object:

  {"properties": {...},   application properties (operation, type, name, ...)
   "body": ...,           the body as JSON (an object becomes an AMQP map; a
                          string, number or list is sent as such: a non-map
                          body); omitted: no body
   "reply_to": false}     send without reply-to (the broker cannot answer); a
                          string sends that reply-to instead of our own queue

Replies arrive on a dynamic (temporary) queue. The requests are sent one at a
time: one with a reply-to waits for its reply before the next is sent; one
without is sent once the broker has settled it. Output, one line each:

  {"request": i, "statusCode": N, "statusDescription": "...", "correlation_id": C,
   "body": ...}                                      a reply to request i
  {"request": i, "settled": true, "reply_to": null}  request i sent without reply-to
  {"replies": N, "requests": M}                      summary, last

A reply whose correlation-id matches no request awaiting one is an error (exit 1).
"""

import argparse
import json
import sys

from proton import Message
from proton.reactor import AtLeastOnce, Container

from common import EXIT_TIMEOUT, Client, ClientError, emit

NODE = "$management"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:5672", help="broker host:port")
    parser.add_argument("--address", default=NODE, help="management node address")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds before giving up with exit code %d" % EXIT_TIMEOUT,
    )
    parser.add_argument("requests", nargs="+", metavar="REQUEST", help="a request, as JSON")
    args = parser.parse_args()
    args.want_shard = None
    parsed = []
    for text in args.requests:
        request = json.loads(text)
        if not isinstance(request, dict):
            parser.error("each REQUEST must be a JSON object: %s" % text)
        parsed.append(request)
    args.requests = parsed
    return args


def plain(value):
    """A decoded AMQP value as something json.dumps can print."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


class ManagementRaw(Client):
    def __init__(self, args):
        super().__init__(args)
        self.sender = None
        self.receiver = None
        self.reply_address = None
        self.next = 0  # index of the next request to send
        self.awaiting = None  # index of the request whose reply we wait for
        self.in_flight = None  # delivery of a request sent without reply-to
        self.replies = 0

    def open_links(self, connection):
        self.receiver = self.container.create_receiver(connection, None, dynamic=True)
        self.sender = self.container.create_sender(connection, self.args.address, options=AtLeastOnce())

    def on_link_opened(self, event):
        if event.link == self.receiver:
            self.reply_address = event.link.remote_source.address
            if not self.reply_address:
                raise ClientError("the broker gave the dynamic receiver no address")
        self.send_next()

    def on_sendable(self, event):
        self.send_next()

    def send_next(self):
        if self.reply_address is None or self.sender is None:
            return
        if self.awaiting is not None or self.in_flight is not None or self.sender.credit <= 0:
            return
        if self.next == len(self.args.requests):
            self.finish()
            return
        index = self.next
        self.next += 1
        request = self.args.requests[index]
        message = Message(id=index + 1, properties=dict(request.get("properties", {})))
        if "body" in request:
            message.body = request["body"]
        reply_to = request.get("reply_to", True)
        if reply_to is True:
            message.reply_to = self.reply_address
        elif reply_to:
            message.reply_to = reply_to
        delivery = self.sender.send(message)
        if reply_to is True:
            self.awaiting = index
        else:
            self.in_flight = (index, delivery)

    def on_settled(self, event):
        if self.in_flight is not None and event.delivery == self.in_flight[1]:
            index = self.in_flight[0]
            self.in_flight = None
            emit({"request": index, "settled": True, "reply_to": self.args.requests[index].get("reply_to")})
            self.send_next()

    def on_message(self, event):
        message = event.message
        props = message.properties or {}
        correlation = message.correlation_id
        if self.awaiting is None or correlation != self.awaiting + 1:
            raise ClientError(
                "unexpected reply (correlation-id %r, awaiting %r): %r"
                % (correlation, None if self.awaiting is None else self.awaiting + 1, props)
            )
        index, self.awaiting = self.awaiting, None
        self.replies += 1
        emit({
            "request": index,
            "statusCode": plain(props.get("statusCode")),
            "statusDescription": plain(props.get("statusDescription")),
            "correlation_id": plain(correlation),
            "body": plain(message.body),
        })
        self.send_next()

    def summary(self):
        return {"replies": self.replies, "requests": self.next}


if __name__ == "__main__":
    sys.exit(ManagementRaw(parse_args()).run(Container))
