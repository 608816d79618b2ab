"""Shared pieces of Tandem's Qpid Proton test clients (send.py, recv.py).

Every client prints machine-readable JSON, one object per line, on stdout and
exits non-zero on an error or when --timeout expires. The base handler here
owns what both clients share: the common flags, the connection (re-opened until
the broker places it on --want-shard), the overall deadline, and turning the
broker's errors into a clean exit with a summary line.

Runs with Debian's python3-qpid-proton (Proton 0.37), which imports only under
/usr/bin/python3.
"""

import argparse
import json
import signal
import sys

from proton import SSLDomain
from proton.handlers import MessagingHandler

# How many connections a client opens, at most, looking for --want-shard. The
# kernel spreads connections over the shards' SO_REUSEPORT listeners by a hash
# of the client's port, so with two shards 64 misses in a row is ~1 in 10^19.
MAX_SHARD_ATTEMPTS = 64

# Exit codes, so a test's failure message says what kind of failure it was.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 3  # argparse uses 2 for usage errors


class ClientError(Exception):
    """Ends the client: a broker or transport error, or a violated expectation."""

    exit_code = EXIT_ERROR


class Timeout(ClientError):
    """The client's --timeout expired before it finished its job."""

    exit_code = EXIT_TIMEOUT


class Stopped(Exception):
    """SIGTERM: the test has seen what it needed; print the summary and leave."""


def emit(obj):
    """Prints one JSON object as a line and flushes it, so a test sees it at once."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def body_text(body):
    """The message body as text: bodies are strings, but interop peers may send binary."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body).decode("utf-8", errors="replace")
    if body is None or isinstance(body, str):
        return body
    return str(body)


def base_parser(description):
    """The flags every client takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default="127.0.0.1:5672", help="broker host:port")
    parser.add_argument("--address", required=True, help="queue or exchange name")
    parser.add_argument("--count", type=int, default=0, help="number of messages")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds before giving up with exit code %d" % EXIT_TIMEOUT,
    )
    parser.add_argument(
        "--ssl-ca",
        default=None,
        help="TLS: verify the broker's certificate against this CA (PEM) and its host name; "
        "use with an amqps:// --url",
    )
    parser.add_argument("--ssl-cert", default=None, help="TLS: this client certificate (PEM)")
    parser.add_argument("--ssl-key", default=None, help="TLS: the key of --ssl-cert (PEM)")
    parser.add_argument(
        "--sasl-mechs",
        default=None,
        help="SASL mechanisms the client allows, space-separated (e.g. EXTERNAL)",
    )
    parser.add_argument(
        "--want-shard",
        type=int,
        default=None,
        help="reconnect until the broker serves the connection on this shard",
    )
    return parser


def install_sigterm_handler():
    """SIGTERM stops a client gracefully: it still prints its summary."""

    def on_sigterm(_signum, _frame):
        raise Stopped()

    signal.signal(signal.SIGTERM, on_sigterm)


class _TimerTask:
    """Adapter: the reactor calls on_timer_task on the object given to schedule()."""

    def __init__(self, callback):
        self.callback = callback

    def on_timer_task(self, _event):
        self.callback()


class Client(MessagingHandler):
    """Connection, shard choice, deadline and error handling shared by the clients.

    Subclasses implement open_links(connection) and summary(), and call
    finish() when their job is done.
    """

    def __init__(self, args, **handler_options):
        super().__init__(**handler_options)
        self.args = args
        self.container = None
        # The connection the client works on; earlier ones (wrong shard) are closing.
        self.connection = None
        self.shard = None
        self.queue_shard = None
        # The shard serving the link: the queue's, once placement moved us.
        self.link_shard = None
        self.attempts = 0
        self.finishing = False
        self.deadline_task = None

    # --- helpers for subclasses -------------------------------------------

    def schedule(self, delay, callback):
        return self.container.schedule(delay, _TimerTask(callback))

    def finish(self):
        """Closes the connection; run() returns once the broker confirms the close."""
        if self.finishing:
            return
        self.finishing = True
        self.connection.close()

    def summary(self):
        raise NotImplementedError

    def open_links(self, connection):
        raise NotImplementedError

    def note_link_properties(self, link):
        """Records the shards the broker reports for the link's queue and the link, if any."""
        props = link.remote_properties or {}
        if "tandem.queue-shard" in props:
            self.queue_shard = int(props["tandem.queue-shard"])
        if "tandem.link-shard" in props:
            self.link_shard = int(props["tandem.link-shard"])

    # --- connection and shard choice ---------------------------------------

    def on_start(self, event):
        self.container = event.container
        self.deadline_task = self.schedule(self.args.timeout, self._on_deadline)
        self._connect()

    def _connect(self):
        self.attempts += 1
        options = {}
        # Clients with a parser of their own (mgmt_raw.py) may lack these flags.
        ssl_ca = getattr(self.args, "ssl_ca", None)
        if ssl_ca:
            domain = SSLDomain(SSLDomain.MODE_CLIENT)
            domain.set_trusted_ca_db(ssl_ca)
            domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
            if getattr(self.args, "ssl_cert", None):
                domain.set_credentials(self.args.ssl_cert, self.args.ssl_key, None)
            options["ssl_domain"] = domain
        if getattr(self.args, "sasl_mechs", None):
            options["allowed_mechs"] = self.args.sasl_mechs
        self.connection = self.container.connect(self.args.url, reconnect=False, **options)

    def _on_deadline(self):
        raise Timeout("timed out after %ss" % self.args.timeout)

    def _is_current(self, event):
        return event.connection is not None and event.connection == self.connection

    def on_connection_opened(self, event):
        if not self._is_current(event):
            return
        props = event.connection.remote_properties or {}
        shard = props.get("tandem.shard")
        shard = None if shard is None else int(shard)
        want = self.args.want_shard
        if want is not None and shard != want:
            if self.attempts >= MAX_SHARD_ATTEMPTS:
                raise ClientError(
                    "no connection on shard %d after %d attempts (last: %s)"
                    % (want, self.attempts, shard)
                )
            event.connection.close()
            self._connect()
            return
        self.shard = shard
        self.open_links(event.connection)

    def on_connection_closed(self, event):
        if self._is_current(event) and self.finishing:
            # The broker has answered our close, so everything we sent has been
            # read. Stop now: left alone, the reactor would first sit out its
            # ~3 s idle poll before noticing the cancelled deadline timer.
            self.deadline_task.cancel()
            self.container.stop()

    # --- errors: any of these ends the client --------------------------------

    def on_transport_error(self, event):
        self.on_disconnected(event)

    def on_disconnected(self, event):
        if self._is_current(event) and not self.finishing:
            cond = event.transport and event.transport.condition
            if cond:
                raise ClientError("connection lost: %s: %s" % (cond.name, cond.description))
            raise ClientError("connection lost")

    def on_connection_error(self, event):
        raise ClientError("connection closed by broker: %s" % event.connection.remote_condition)

    def on_connection_closing(self, event):
        if self._is_current(event):
            raise ClientError("connection closed by broker without error condition")

    def on_session_error(self, event):
        raise ClientError("session ended by broker: %s" % event.session.remote_condition)

    def on_link_error(self, event):
        raise ClientError("link detached by broker: %s" % event.link.remote_condition)

    def on_link_closing(self, event):
        if not self.finishing:
            raise ClientError("link detached by broker without error condition")

    # --- running -------------------------------------------------------------

    def run(self, container_class):
        """Runs the client to the end; prints the summary line; returns the exit code."""
        install_sigterm_handler()
        code = EXIT_OK
        error = None
        try:
            container_class(self).run()
        except Stopped:
            pass
        except ClientError as e:
            code, error = e.exit_code, str(e)
        except KeyboardInterrupt:
            code, error = EXIT_ERROR, "interrupted"
        summary = self.summary()
        if error is not None:
            summary["error"] = error
            sys.stderr.write("%s: %s\n" % (sys.argv[0], error))
        emit(summary)
        return code
