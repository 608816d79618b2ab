"""Shared pieces of the HA clients (ha_send.py, ha_recv.py): a connection that fails over.

Both clients connect with Proton's own reconnect, Container.connect(urls=[...],
reconnect=backoff), create their link once (Proton re-attaches it on every reconnect),
print JSON lines with wall-clock times (seconds since the epoch, so a test can time a
fail-over against its own clock) and end with a summary line.

--forced-reconnect works around how Proton Python 0.37 handles a broker that opens and
then closes with amqp:connection:forced (what a Tandem backup does): MessagingHandler
ignores the close so that reconnect can happen, but the transport only reports itself
closed when its output side closes too, which a quiet connection does only when the
idle timeout (--heartbeat) expires. Without a heartbeat the client then waits forever;
with the flag, the client closes the transport itself so the connector moves on at once.
"""

import argparse
import sys
import time

from proton.handlers import MessagingHandler
from proton.reactor import Container

from common import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, Stopped, emit, install_sigterm_handler

FORCED = "amqp:connection:forced"


class Fatal(Exception):
    """Ends the client: an error it cannot recover from by reconnecting."""

    exit_code = EXIT_ERROR


class Timeout(Fatal):
    """--timeout expired before the client finished its job."""

    exit_code = EXIT_TIMEOUT


class FreshBackoff:
    """Reconnect delays 0, 50 ms, doubling to max_delay.

    Proton's Backoff hands out one shared iterator, so its delay never resets after a
    successful connection; this gives the connector a fresh sequence each time it asks.
    """

    def __init__(self, max_delay):
        self.max_delay = max_delay

    def __iter__(self):
        yield 0.0
        delay = 0.05
        while True:
            yield delay
            delay = min(self.max_delay, delay * 2)


class _Timer:
    """Adapter: the reactor calls on_timer_task on the object given to schedule()."""

    def __init__(self, callback):
        self.callback = callback

    def on_timer_task(self, _event):
        self.callback()


def base_parser(description):
    """The flags both HA clients take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--urls", required=True, help="comma-separated host:port list of the cluster")
    parser.add_argument("--address", required=True, help="queue name")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before giving up (exit 3)")
    parser.add_argument("--max-backoff", type=float, default=0.5, help="longest pause between reconnect attempts")
    parser.add_argument("--heartbeat", type=float, default=None, help="AMQP idle timeout, seconds")
    parser.add_argument("--forced-reconnect", action="store_true",
                        help="on amqp:connection:forced, close the transport so Proton moves on at once")
    parser.add_argument("--connect-timeout", type=float, default=None,
                        help="seconds an attempt may take to reach an open connection before the client "
                             "gives it up and tries the next URL (Proton has no connect timeout of its own: "
                             "a TCP connect to an unreachable host waits for the kernel's SYN retries); "
                             "also ends a transport whose heartbeat expired at once, instead of waiting "
                             "for TCP to give up on the silent peer")
    return parser


class HaClient(MessagingHandler):
    """Connection, fail-over bookkeeping, deadline and summary; subclasses make the link."""

    def __init__(self, args, **handler_options):
        super().__init__(**handler_options)
        self.args = args
        self.container = None
        self.connection = None
        # Whether the current transport reached an open connection (reported once per loss).
        self.up = False
        self.connections = 0
        self.disconnects = 0
        self.forced_closes = 0
        # Transports bound so far (one per connection attempt).
        self.attempts = 0
        self.finishing = False
        self.deadline = None

    # --- for subclasses ------------------------------------------------------

    def create_link(self, connection):
        raise NotImplementedError

    def connection_lost(self):
        """The socket is gone; called once per connection that had opened."""

    def summary(self):
        raise NotImplementedError

    def schedule(self, delay, callback):
        return self.container.schedule(delay, _Timer(callback))

    def finish(self):
        """Closes the connection; run() returns once the broker confirms the close."""
        if not self.finishing:
            self.finishing = True
            self.connection.close()

    # --- connection --------------------------------------------------------------

    def on_start(self, event):
        self.container = event.container
        self.deadline = self.schedule(self.args.timeout, self.on_deadline)
        self.connection = self.container.connect(
            urls=self.args.urls.split(","),
            reconnect=FreshBackoff(self.args.max_backoff),
            heartbeat=self.args.heartbeat,
        )
        self.create_link(self.connection)

    def on_deadline(self):
        raise Timeout("timed out after %ss" % self.args.timeout)

    def on_transport_error(self, event):
        # A peer that is gone (not closed: unreachable, or stopped) never closes
        # its side, so after the heartbeat expired Proton would wait on the
        # socket for TCP's own timeout before it reconnects: end it here.
        if self.args.connect_timeout is not None:
            event.transport.close_head()
            event.transport.close_tail()
        super().on_transport_error(event)

    def on_connection_bound(self, event):
        # Each attempt binds a new transport: give it --connect-timeout to open.
        self.attempts += 1
        if self.args.connect_timeout is not None:
            attempt, transport = self.attempts, event.transport
            self.schedule(self.args.connect_timeout, lambda: self.give_up_attempt(attempt, transport))

    def give_up_attempt(self, attempt, transport):
        if attempt == self.attempts and not self.up:
            emit({"connect_timeout": self.args.connect_timeout, "t": time.time()})
            transport.close_head()
            transport.close_tail()

    def on_connection_opened(self, event):
        self.connections += 1
        self.up = True
        emit({"connected": str(event.connection.connected_address or event.connection.url), "t": time.time()})

    def on_connection_remote_close(self, event):
        condition = event.connection.remote_condition
        if condition is not None and condition.name == FORCED:
            self.forced_closes += 1
            if self.forced_closes == 1:
                emit({"refused": condition.name, "description": condition.description, "t": time.time()})
            if self.args.forced_reconnect and event.transport is not None:
                event.transport.close_head()
                event.transport.close_tail()

    def on_disconnected(self, event):
        if self.up:
            self.up = False
            self.disconnects += 1
            self.connection_lost()
            emit({"disconnected": True, "t": time.time()})

    def on_connection_closed(self, event):
        if self.finishing:
            self.deadline.cancel()
            self.container.stop()

    def on_connection_error(self, event):
        raise Fatal("connection closed by broker: %s" % event.connection.remote_condition)

    def on_link_error(self, event):
        raise Fatal("link detached by broker: %s" % event.link.remote_condition)

    def on_session_error(self, event):
        raise Fatal("session ended by broker: %s" % event.session.remote_condition)

    # --- running -------------------------------------------------------------------

    def common_summary(self):
        return {
            "connections": self.connections,
            "disconnects": self.disconnects,
            "forced_closes": self.forced_closes,
        }

    def run(self):
        """Runs to the end, prints the summary line, returns the exit code."""
        install_sigterm_handler()
        code = EXIT_OK
        error = None
        try:
            Container(self).run()
        except Stopped:
            pass
        except Fatal as e:
            code, error = e.exit_code, str(e)
        summary = self.summary()
        summary.update(self.common_summary())
        if error is not None:
            summary["error"] = error
            sys.stderr.write("%s: %s\n" % (sys.argv[0], error))
        emit(summary)
        return code
