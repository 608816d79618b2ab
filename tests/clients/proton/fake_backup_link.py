#!/usr/bin/python3
"""Attaches one replication link to an HA primary as a backup would, then closes it.

The connection's open carries the connection property "qpid.ha-backup" (a map of
broker-id, address and epoch, as a real backup's does, or true with --backup-flag-only);
the link is a receiver named "ha-replication-BROKER_ID" from the node "$ha.replication",
with the attach properties "tandem.ha-broker-id", "tandem.ha-address" and
"tandem.ha-epoch" (ulong). It grants no credit, so it never takes a replication event.
Once the broker has answered the attach (accepted it, or refused it with a detach), the
client detaches the link, closes the connection and waits for the broker's close.

Output, one JSON object per line on stdout:
  {"connected": true}                                  the broker's open arrived
  {"attached": true, "source": S, "properties": P}     the broker answered the attach
  {"link_error": COND, "description": D}               the broker detached the link with an error
  {"detached": true}                                   the link is closed on both sides
  {"connection_error": COND, "description": D}         the broker closed the connection with an error
  {"answered": B, "accepted": B, ...}                  summary, last

Exit 0 once the broker has answered the attach (either way) and the connection is
closed; 1 when the connection is lost before that; 3 when --timeout expires first.
"""

import argparse
import sys

from proton import symbol, ulong
from proton.handlers import MessagingHandler
from proton.reactor import Container, LinkOption

from common import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, Stopped, emit, install_sigterm_handler

NODE = "$ha.replication"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the primary's host:port")
    parser.add_argument("--broker-id", required=True, help="the broker id the link presents")
    parser.add_argument("--ha-address", required=True, help="the address the link presents")
    parser.add_argument("--epoch", type=int, required=True, help="the epoch the link presents")
    parser.add_argument("--backup-flag-only", action="store_true",
                        help="connection property qpid.ha-backup = true instead of the identity map")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds before giving up with exit code %d" % EXIT_TIMEOUT)
    return parser.parse_args()


class LinkProperties(LinkOption):
    """Sets the attach frame's link properties."""

    def __init__(self, properties):
        self.properties = properties

    def apply(self, link):
        link.properties = self.properties


class _Timer:
    def __init__(self, callback):
        self.callback = callback

    def on_timer_task(self, _event):
        self.callback()


class FakeBackupLink(MessagingHandler):
    def __init__(self, args):
        # No credit: the link never takes (or settles) a replication event.
        super().__init__(prefetch=0, auto_accept=False)
        self.args = args
        self.container = None
        self.connection = None
        self.receiver = None
        self.deadline = None
        self.answered = False
        self.accepted = False
        self.remote_epoch = None
        self.link_error = None
        self.connection_error = None
        self.closing = False
        self.exit_code = EXIT_OK
        self.error = None

    def on_start(self, event):
        self.container = event.container
        self.deadline = self.container.schedule(self.args.timeout, _Timer(self.on_deadline))
        if self.args.backup_flag_only:
            backup = True
        else:
            backup = {
                symbol("broker-id"): self.args.broker_id,
                symbol("address"): self.args.ha_address,
                symbol("epoch"): ulong(self.args.epoch),
            }
        self.connection = self.container.connect(
            self.args.url,
            reconnect=False,
            properties={symbol("qpid.ha-backup"): backup},
        )
        link_properties = {
            symbol("tandem.ha-broker-id"): self.args.broker_id,
            symbol("tandem.ha-address"): self.args.ha_address,
            symbol("tandem.ha-epoch"): ulong(self.args.epoch),
        }
        self.receiver = self.container.create_receiver(
            self.connection,
            source=NODE,
            name="ha-replication-%s" % self.args.broker_id,
            options=[LinkProperties(link_properties)],
        )

    def on_deadline(self):
        self.fail(EXIT_TIMEOUT, "timed out after %ss (answered: %s)" % (self.args.timeout, self.answered))

    def fail(self, code, error):
        self.exit_code = code
        self.error = error
        self.container.stop()

    def finish(self):
        """Detach (if still attached), then close the connection."""
        if self.closing:
            return
        self.closing = True
        self.connection.close()

    def on_connection_opened(self, event):
        emit({"connected": True})

    def on_link_opened(self, event):
        if event.link != self.receiver:
            return
        self.answered = True
        link = event.link
        source = link.remote_source.address if link.remote_source is not None else None
        props = dict(link.remote_properties or {})
        self.accepted = source == NODE
        epoch = props.get(symbol("tandem.ha-epoch"), props.get("tandem.ha-epoch"))
        self.remote_epoch = None if epoch is None else int(epoch)
        emit({"attached": True, "source": source, "properties": {str(k): v for k, v in props.items()}})
        if self.accepted:
            link.close()
        # A refusal (no source) is followed by the broker's detach: on_link_error.

    def on_link_error(self, event):
        cond = event.link.remote_condition
        self.answered = True
        self.accepted = False
        self.link_error = cond.name
        emit({"link_error": cond.name, "description": cond.description})
        self.finish()

    def on_link_closed(self, event):
        if event.link == self.receiver:
            emit({"detached": True})
            self.finish()

    def on_link_closing(self, event):
        # The broker detached without an error: answer and close.
        if event.link == self.receiver:
            self.answered = True
            emit({"detached": True, "by_broker": True})
            self.finish()

    def on_connection_remote_close(self, event):
        cond = event.connection.remote_condition
        if cond is None:
            return
        self.answered = True
        self.connection_error = cond.name
        emit({"connection_error": cond.name, "description": cond.description})
        # Proton ignores amqp:connection:forced (it expects to reconnect) and would
        # wait for the idle timeout; end the transport ourselves.
        if event.transport is not None:
            event.transport.close_head()
            event.transport.close_tail()
        self.container.stop()

    def on_connection_closed(self, event):
        self.deadline.cancel()
        self.container.stop()

    def on_transport_error(self, event):
        cond = event.transport.condition
        if not self.answered:
            self.fail(EXIT_ERROR, "connection lost before the attach was answered: %s" % cond)

    def on_disconnected(self, event):
        if not self.answered:
            self.fail(EXIT_ERROR, "connection lost before the attach was answered")
        else:
            self.container.stop()

    def run(self):
        install_sigterm_handler()
        try:
            Container(self).run()
        except Stopped:
            pass
        summary = {
            "answered": self.answered,
            "accepted": self.accepted,
            "remote_epoch": self.remote_epoch,
            "link_error": self.link_error,
            "connection_error": self.connection_error,
        }
        if self.error is not None:
            summary["error"] = self.error
            sys.stderr.write("%s: %s\n" % (sys.argv[0], self.error))
        emit(summary)
        return self.exit_code


if __name__ == "__main__":
    sys.exit(FakeBackupLink(parse_args()).run())
