#!/usr/bin/python3
"""Sends --count sequence-numbered messages at-least-once to an HA cluster, failing over along --urls.

Each message carries its sequence number as application property "seq" (and in the body,
"seq-N"). A message counts as settled only when the broker accepts it; everything still
unsettled when the connection drops, and anything released or modified, is sent again
(Proton's reliable-delivery pattern), so the broker may see duplicates but nothing the
client saw settled may be lost. See ha_common.py for the connection and its flags.

Output, one JSON object per line on stdout:
  {"connected": URL, "t": T}                each time a connection opens
  {"disconnected": true, "t": T}            each time an open connection is lost
  {"refused": COND, "description": D, "t": T} the first amqp:connection:forced close
  {"settled": SEQ, "t": T}                  as the broker accepts each message (once per SEQ)
  {"settled_unique": N, "count": C, ...}    summary, last

Exit 0 when every message is settled, 3 when --timeout expires first, 1 on an error the
client cannot recover from (a rejected message, a link or connection refused with an
error other than amqp:connection:forced).
"""

import collections
import sys
import time

from proton import Message
from proton.reactor import AtLeastOnce

from ha_common import Fatal, HaClient, Timeout, base_parser, emit


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="number of messages")
    parser.add_argument("--interval-ms", type=float, default=0.0,
                        help="pace: at most one new message per interval (resends go at once)")
    parser.add_argument("--max-in-flight", type=int, default=1000, help="most unsettled messages at a time")
    return parser.parse_args()


class HaSender(HaClient):
    def __init__(self, args):
        super().__init__(args)
        self.sender = None
        # Sequence numbers to send, first-time or again, lowest first.
        self.pending = collections.deque(range(args.count))
        # Delivery -> seq for what the current connection has sent and not yet had settled.
        self.in_flight = {}
        self.settled = set()
        # Seqs below this have been sent at least once.
        self.sent_new = 0
        self.resends = 0
        self.last_new_send = 0.0

    def create_link(self, connection):
        self.sender = self.container.create_sender(connection, self.args.address, options=AtLeastOnce())
        if self.args.count == 0:
            self.finish()
        elif self.args.interval_ms > 0:
            self.schedule(self.args.interval_ms / 1000.0, self.tick)

    def connection_lost(self):
        """Everything unsettled goes back to the front of the queue, to be sent again.

        The old deliveries are forgotten, not settled: Proton 0.37 would announce a local
        settlement on the next connection as a settled transfer without a payload.
        """
        lost = sorted(self.in_flight.values())
        self.in_flight.clear()
        for seq in reversed(lost):
            if seq not in self.settled:
                self.pending.appendleft(seq)

    def on_deadline(self):
        raise Timeout(
            "timed out after %ss with %d of %d settled" % (self.args.timeout, len(self.settled), self.args.count))

    # --- sending -------------------------------------------------------------------

    def tick(self):
        self.pump()
        if not self.finishing:
            self.schedule(self.args.interval_ms / 1000.0, self.tick)

    def on_sendable(self, event):
        self.pump()

    def pump(self):
        sender = self.sender
        if self.finishing or not self.up:
            return
        interval = self.args.interval_ms / 1000.0
        while sender.credit > 0 and self.pending and len(self.in_flight) < self.args.max_in_flight:
            seq = self.pending[0]
            is_new = seq >= self.sent_new
            if is_new and interval > 0:
                now = time.monotonic()
                if now - self.last_new_send < interval * 0.9:
                    return
                self.last_new_send = now
            self.pending.popleft()
            if seq in self.settled:
                continue
            delivery = sender.send(Message(body="seq-%d" % seq, properties={"seq": seq}, durable=True))
            self.in_flight[delivery] = seq
            if is_new:
                self.sent_new = seq + 1
            else:
                self.resends += 1

    def on_accepted(self, event):
        seq = self.in_flight.pop(event.delivery, None)
        if seq is None:
            return
        if seq not in self.settled:
            self.settled.add(seq)
            emit({"settled": seq, "t": time.time()})
        if len(self.settled) == self.args.count:
            self.finish()

    def on_rejected(self, event):
        seq = self.in_flight.pop(event.delivery, None)
        raise Fatal("message %s rejected: %s" % (seq, event.delivery.remote.condition))

    def on_released(self, event):
        # Released or modified: the broker did not take it; send it again.
        seq = self.in_flight.pop(event.delivery, None)
        if seq is not None and seq not in self.settled:
            self.pending.appendleft(seq)
            self.pump()

    def summary(self):
        return {
            "settled_unique": len(self.settled),
            "count": self.args.count,
            "sent_new": self.sent_new,
            "resent": self.resends,
        }


if __name__ == "__main__":
    sys.exit(HaSender(parse_args()).run())
