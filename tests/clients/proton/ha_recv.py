#!/usr/bin/python3
"""Receives sequence-numbered messages from an HA cluster, failing over along --urls.

Messages are accepted as they arrive; the sequence number is the application property
"seq" (or the number ending the body), as ha_send.py sends them. A message accepted just
before a fail-over may be delivered again by the new primary: repeats are counted as
duplicates. See ha_common.py for the connection and its flags.

Output, one JSON object per line on stdout:
  {"connected": URL, "t": T}          each time a connection opens
  {"ready": true, "t": T}             each time the receiving link attaches
  {"disconnected": true, "t": T}      each time an open connection is lost
  {"refused": COND, "description": D, "t": T} the first amqp:connection:forced close
  {"progress": UNIQUE, "t": T}        every --progress-every new sequence numbers
  {"received_unique": N, "duplicates": D, "missing": [...], ...}   summary, last

Exit 0 once every seq in 0..--expect has arrived; 3 (still printing the summary) when
--timeout expires first.
"""

import re
import sys
import time

from ha_common import HaClient, Timeout, base_parser, emit

BODY_SEQ = re.compile(r"(\d+)$")


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--expect", type=int, required=True, help="stop once seqs 0..N-1 have all arrived")
    parser.add_argument("--credit", type=int, default=100, help="link credit window (prefetch)")
    parser.add_argument("--progress-every", type=int, default=500, help="print progress every N new seqs")
    return parser.parse_args()


def seq_of(message):
    props = message.properties or {}
    if "seq" in props:
        return int(props["seq"])
    body = message.body
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body).decode("utf-8", errors="replace")
    match = BODY_SEQ.search(str(body))
    return int(match.group(1)) if match else None


class HaReceiver(HaClient):
    def __init__(self, args):
        super().__init__(args, prefetch=args.credit, auto_accept=True)
        self.receiver = None
        self.seen = set()
        self.total = 0
        self.duplicates = 0
        self.unparsed = 0
        self.out_of_range = 0

    def create_link(self, connection):
        self.receiver = self.container.create_receiver(connection, self.args.address)
        if self.args.expect == 0:
            self.finish()

    def on_deadline(self):
        raise Timeout("timed out after %ss with %d of %d" % (self.args.timeout, len(self.seen), self.args.expect))

    def on_link_opened(self, event):
        if event.link == self.receiver:
            emit({"ready": True, "t": time.time()})

    def on_message(self, event):
        self.total += 1
        seq = seq_of(event.message)
        if seq is None:
            self.unparsed += 1
        elif seq < 0 or seq >= self.args.expect:
            self.out_of_range += 1
        elif seq in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(seq)
            if len(self.seen) % self.args.progress_every == 0:
                emit({"progress": len(self.seen), "t": time.time()})
            if len(self.seen) == self.args.expect:
                # Close after this callback, so the auto-accept goes out first.
                self.schedule(0, self.finish)

    def summary(self):
        return {
            "received_unique": len(self.seen),
            "duplicates": self.duplicates,
            "missing": [seq for seq in range(self.args.expect) if seq not in self.seen],
            "received_total": self.total,
            "unparsed": self.unparsed,
            "out_of_range": self.out_of_range,
        }


if __name__ == "__main__":
    sys.exit(HaReceiver(parse_args()).run())
