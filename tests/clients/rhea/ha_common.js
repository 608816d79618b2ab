'use strict';
// The fail-over layer of Tandem's rhea HA clients (ha_send.js, ha_recv.js): the
// counterpart of ../proton/ha_common.py.

const { EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, connectOptions, describe, emit, parseFlags, rhea } = require('./common.js');

// A connection that fails over along --urls, as ../proton/ha_common.py does it
// with Proton's reconnect. rhea's own reconnect stays off: each attempt is a new
// rhea connection, so the output lines and counters follow ha_common.py's.

const FORCED = 'amqp:connection:forced';

// Flags both HA clients take: ha_common.py's base_parser.
const HA_OPTIONS = {
    urls: { type: 'string' },
    address: { type: 'string' },
    timeout: { type: 'string', default: '60' },
    'max-backoff': { type: 'string', default: '0.5' },
    // AMQP idle timeout, seconds: a peer silent this long is given up.
    heartbeat: { type: 'string' },
    'forced-reconnect': { type: 'boolean', default: false },
    // Seconds an attempt may take to open before the next URL is tried. (In
    // ha_common.py it also ends at once a transport whose heartbeat expired;
    // here that is always so, see HaClient.connect.)
    'connect-timeout': { type: 'string' },
    help: { type: 'boolean', default: false },
};

// Wall-clock seconds since the epoch, with sub-millisecond digits like Python's time.time().
function now() {
    return (performance.timeOrigin + performance.now()) / 1000;
}

// A number as Python prints a float ("60.0"), for messages that mirror ha_common.py's.
function pyFloat(x) {
    return Number.isInteger(x) ? x.toFixed(1) : String(x);
}

// A --urls entry as Proton's Url prints it: "127.0.0.1:5672" -> "amqp://127.0.0.1:5672".
function displayUrl(url) {
    const withScheme = /^amqps?:\/\//.test(url) ? url : `amqp://${url}`;
    const rest = withScheme.replace(/^amqps?:\/\//, '');
    return rest.includes(':') ? withScheme : `${withScheme}:${withScheme.startsWith('amqps') ? 'amqps' : 'amqp'}`;
}

// parseFlags with HA_OPTIONS plus `extra`. Besides `number`, returns `integer`
// for argparse's type=int flags (required ones have no default). Exits 2 on bad flags.
function haFlags(name, extra, text) {
    const { values, number } = parseFlags(name, extra, text, HA_OPTIONS);
    const usageError = (message) => {
        process.stderr.write(`${name}: ${message}\n`);
        process.exit(EXIT_USAGE);
    };
    if (!values.urls) usageError('--urls is required');
    const integer = (flag) => {
        if (values[flag] === undefined) usageError(`--${flag} is required`);
        const value = Number(values[flag]);
        if (!Number.isInteger(value)) usageError(`--${flag} must be an integer`);
        return value;
    };
    const optional = (flag) => (values[flag] === undefined ? undefined : number(flag));
    values.urls = values.urls.split(',');
    values.max_backoff = number('max-backoff');
    values.heartbeat = optional('heartbeat');
    values.connect_timeout = optional('connect-timeout');
    values.forced_reconnect = values['forced-reconnect'];
    return { values, number, integer };
}

// The (delay in seconds, URL) pairs Proton's connector goes through with
// ha_common.py's FreshBackoff: each round tries every URL in order, the first
// round without a pause, then 50 ms, doubling to --max-backoff. The first pair
// is the first attempt; a connection that opens starts a fresh plan, so the
// next loss retries the first URL at once.
function* connectPlan(urls, maxBackoff) {
    let delay = 0;
    for (;;) {
        for (const url of urls) yield [delay, url];
        delay = delay === 0 ? 0.05 : Math.min(maxBackoff, delay * 2);
    }
}

// Connection, fail-over bookkeeping, deadline and summary of the HA clients.
// Subclasses implement createLink(connection) (called for every attempt, as a
// new connection needs its own link), summary(), timeoutMessage(), and may
// implement connectionLost(); they call finish() when their job is done.
class HaClient {
    constructor(name, args) {
        this.name = name;
        this.args = args;
        // One container, so every attempt presents the same container-id.
        this.container = rhea.create_container();
        // The attempt in progress: { connection, url, timer, over }.
        this.attempt = undefined;
        this.plan = connectPlan(args.urls, args.max_backoff);
        // Whether the current attempt reached an open connection (a loss is reported once).
        this.up = false;
        this.connections = 0;
        this.disconnects = 0;
        this.forcedCloses = 0;
        this.finishing = false;
        this.exited = false;
        this.deadline = undefined;
    }

    // --- for subclasses ------------------------------------------------------

    createLink(_connection) {
        throw new Error('createLink not implemented');
    }

    // The socket is gone; called once per connection that had opened.
    connectionLost() {}

    // Closes the connection; the client exits 0 once the broker confirms the close.
    finish() {
        if (this.finishing) return;
        this.finishing = true;
        if (this.attempt !== undefined && !this.attempt.over) this.attempt.connection.close();
        else this.exit(EXIT_OK);
    }

    // --- connection ----------------------------------------------------------

    start() {
        this.deadline = setTimeout(() => this.fail(this.timeoutMessage(), EXIT_TIMEOUT), this.args.timeout * 1000);
        process.on('SIGTERM', () => this.exit(EXIT_OK));
        this.connect(this.plan.next().value[1]);
    }

    connect(url) {
        const options = connectOptions(url, this.args);
        // Proton sets TCP_NODELAY: a transfer goes out at once, not behind Nagle's wait for an ACK.
        options.tcp_no_delay = true;
        // Proton advertises half its idle timeout and gives up on a peer silent for the
        // whole of it; rhea advertises idle_time_out and gives up after twice that.
        if (this.args.heartbeat) options.idle_time_out = (this.args.heartbeat * 1000) / 2;
        const connection = this.container.connect(options);
        const attempt = { connection, url, timer: undefined, over: false };
        this.attempt = attempt;
        if (this.args.connect_timeout !== undefined) {
            attempt.timer = setTimeout(() => this.giveUp(attempt), this.args.connect_timeout * 1000);
        }
        // rhea answers an expired heartbeat with a close and waits 1 s more for the silent
        // peer; Proton reports the loss when the idle timeout expires: end the transport now.
        connection.idle = () => this.drop(attempt);
        connection.on('connection_open', () => this.opened(attempt));
        connection.on('connection_error', (context) => this.remoteError(attempt, context.error || connection.error));
        connection.on('connection_close', () => this.remoteClose(attempt));
        connection.on('disconnected', () => this.attemptOver(attempt));
        connection.on('session_error', (context) => {
            this.fail(`session ended by broker: ${describe(context.session.error)}`);
        });
        // Bytes rhea cannot parse are a transport failure, as Proton's framing errors are to
        // ha_common.py: give up this transport and fail over. (A Tandem backup refusing a
        // client may write a stray frame after dropping it.)
        connection.on('protocol_error', () => setImmediate(() => this.drop(attempt)));
        connection.on('error', (error) => this.fail(`error: ${describe(error)}`));
        this.createLink(connection);
    }

    opened(attempt) {
        // An open answering a connection already closing (--count 0) does not count,
        // as Proton then reports no opened connection.
        if (attempt !== this.attempt || this.finishing) return;
        this.connections += 1;
        this.up = true;
        this.plan = connectPlan(this.args.urls, this.args.max_backoff);
        emit({ connected: displayUrl(attempt.url), t: now() });
    }

    // The broker closed with an error (or rhea failed the transport, e.g. SASL).
    remoteError(attempt, error) {
        if (attempt !== this.attempt) return;
        if (error && error.condition === FORCED) {
            // A backup refusing clients, or a broker going away: fail over.
            this.forcedCloses += 1;
            if (this.forcedCloses === 1) {
                emit({ refused: FORCED, description: error.description === undefined ? null : error.description, t: now() });
            }
            // Out of rhea's dispatch of this close, so the next attempt starts on a clean stack.
            if (this.args.forced_reconnect) setImmediate(() => this.drop(attempt));
            return;
        }
        this.fail(`connection closed by broker: ${describe(error)}`);
    }

    remoteClose(attempt) {
        if (attempt !== this.attempt) return;
        if (this.finishing) this.exit(EXIT_OK);
        else if (!attempt.connection.error) this.fail('connection closed by broker without error condition');
        // With an error, remoteError has decided; a forced close ends in 'disconnected'.
    }

    giveUp(attempt) {
        if (attempt === this.attempt && !this.up && !attempt.over) {
            emit({ connect_timeout: this.args.connect_timeout, t: now() });
            this.drop(attempt);
        }
    }

    // Ends an attempt's transport now (rhea then reports it disconnected).
    drop(attempt) {
        if (attempt.over) return;
        const connection = attempt.connection;
        if (connection.socket) connection.abort_socket(connection.socket);
        this.attemptOver(attempt);
    }

    // The attempt's socket is gone: report a loss, then try the next URL of the plan.
    attemptOver(attempt) {
        if (attempt !== this.attempt || attempt.over) return;
        attempt.over = true;
        clearTimeout(attempt.timer);
        if (this.up) {
            this.up = false;
            this.disconnects += 1;
            this.connectionLost();
            emit({ disconnected: true, t: now() });
        }
        if (this.finishing) {
            // The job was done; only the broker's answer to our close is missing.
            this.exit(EXIT_OK);
            return;
        }
        const [delay, url] = this.plan.next().value;
        if (delay === 0) this.connect(url);
        else setTimeout(() => this.connect(url), delay * 1000);
    }

    // --- running -------------------------------------------------------------

    fail(message, code = EXIT_ERROR) {
        if (this.exited) return;
        process.stderr.write(`${this.name}: ${message}\n`);
        this.exit(code, message);
    }

    // Prints the summary line (with the connection counters) and exits.
    exit(code, error) {
        if (this.exited) return;
        this.exited = true;
        clearTimeout(this.deadline);
        const summary = Object.assign(this.summary(), {
            connections: this.connections,
            disconnects: this.disconnects,
            forced_closes: this.forcedCloses,
        });
        if (error !== undefined) summary.error = error;
        // Exit only once stdout is flushed: it may be a pipe.
        process.stdout.write(JSON.stringify(summary) + '\n', () => process.exit(code));
    }
}

module.exports = { HaClient, haFlags, now, pyFloat };
