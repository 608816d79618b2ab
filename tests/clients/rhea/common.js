'use strict';
// Shared pieces of Tandem's rhea test clients (send.js, recv.js): the flags,
// JSON output, the connection (re-opened until the broker places it on
// --want-shard), the overall deadline and clean exits with a summary line.
// Same flags and output as the Qpid Proton clients in ../proton.
// The HA clients (ha_send.js, ha_recv.js) build on this in ha_common.js.

const { parseArgs } = require('node:util');
const rhea = require('rhea');

// See ../proton/common.py: 64 misses in a row with two shards is ~1 in 10^19.
const MAX_SHARD_ATTEMPTS = 64;

const EXIT_OK = 0;
const EXIT_ERROR = 1;
const EXIT_USAGE = 2;
const EXIT_TIMEOUT = 3;

// Flags every client takes, in node:util parseArgs form.
const BASE_OPTIONS = {
    url: { type: 'string', default: '127.0.0.1:5672' },
    address: { type: 'string' },
    count: { type: 'string', default: '0' },
    timeout: { type: 'string', default: '30' },
    'want-shard': { type: 'string' },
    // TLS (with an amqps:// --url): verify the broker against this CA (PEM).
    'ssl-ca': { type: 'string' },
    username: { type: 'string' },
    password: { type: 'string' },
    help: { type: 'boolean', default: false },
};

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function usage(name, options, text) {
    const flags = Object.keys(options).map((k) => '--' + k + (options[k].type === 'string' ? ' VALUE' : ''));
    return `usage: ${name} ${flags.join(' ')}\n${text}\n`;
}

// Parses argv with the base flags plus `extra`; numbers are converted here so
// the clients see plain values. Exits 2 with a usage line on bad flags.
// `base` replaces BASE_OPTIONS for clients with other common flags (HA_OPTIONS);
// --count and --want-shard are converted only when `base` has them.
function parseFlags(name, extra, text, base = BASE_OPTIONS) {
    const options = Object.assign({}, base, extra);
    let values;
    try {
        values = parseArgs({ options, strict: true, allowPositionals: false }).values;
    } catch (e) {
        process.stderr.write(`${name}: ${e.message}\n` + usage(name, options, text));
        process.exit(EXIT_USAGE);
    }
    if (values.help) {
        process.stdout.write(usage(name, options, text));
        process.exit(EXIT_OK);
    }
    if (!values.address) {
        process.stderr.write(`${name}: --address is required\n`);
        process.exit(EXIT_USAGE);
    }
    const number = (flag) => {
        const value = Number(values[flag]);
        if (!Number.isFinite(value)) {
            process.stderr.write(`${name}: --${flag} must be a number\n`);
            process.exit(EXIT_USAGE);
        }
        return value;
    };
    if ('count' in base) values.count = number('count');
    values.timeout = number('timeout');
    if ('want-shard' in base) {
        values.want_shard = values['want-shard'] === undefined ? undefined : number('want-shard');
    }
    return { values, number };
}

// "host:port", "amqp://host:port" or "amqps://host:port" into rhea connect
// options; amqps:// is TLS, verifying the broker against --ssl-ca.
function connectOptions(url, args) {
    const tls = url.startsWith('amqps://');
    const bare = url.replace(/^amqps?:\/\//, '');
    const colon = bare.lastIndexOf(':');
    const host = colon < 0 ? bare : bare.slice(0, colon);
    const port = colon < 0 ? (tls ? 5671 : 5672) : Number(bare.slice(colon + 1));
    const options = { host: host || '127.0.0.1', port, reconnect: false };
    if (tls) {
        options.transport = 'tls';
        options.servername = options.host;
        options.rejectUnauthorized = true;
        if (args && args['ssl-ca']) options.ca = [require('fs').readFileSync(args['ssl-ca'])];
    }
    if (args && args.username) {
        options.username = args.username;
        options.password = args.password;
    }
    return options;
}

function bodyText(body) {
    if (body === undefined || body === null || typeof body === 'string') return body === undefined ? null : body;
    if (Buffer.isBuffer(body)) return body.toString('utf8');
    if (body && body.content !== undefined && Buffer.isBuffer(body.content)) return body.content.toString('utf8');
    return String(body);
}

// Base of the clients. `openLinks(connection)` attaches the links once the
// connection is on the wanted shard; `summary()` returns the final JSON object.
// Call `finish()` when done: the client exits 0 once the broker confirms the close.
class Client {
    constructor(name, args) {
        this.name = name;
        this.args = args;
        this.container = rhea.create_container();
        this.connection = undefined;
        this.shard = null;
        this.queueShard = null;
        this.attempts = 0;
        this.finishing = false;
        this.exited = false;
        this.deadline = setTimeout(() => this.fail(`timed out after ${args.timeout}s`, EXIT_TIMEOUT), args.timeout * 1000);
        process.on('SIGTERM', () => this.exit(EXIT_OK));
        this.container.on('connection_open', (context) => this.onConnectionOpen(context));
        this.container.on('connection_close', (context) => {
            if (context.connection !== this.connection) return;
            if (this.finishing) this.exit(EXIT_OK);
            else this.fail(`connection closed by broker: ${describe(context.connection.error)}`);
        });
        this.container.on('connection_error', (context) => {
            if (context.connection === this.connection) this.fail(`connection error: ${describe(context.connection.error)}`);
        });
        this.container.on('disconnected', (context) => {
            if (context.connection === this.connection && !this.finishing) {
                this.fail(`connection lost: ${describe(context.error)}`);
            }
        });
        this.container.on('protocol_error', (context) => this.fail(`protocol error: ${describe(context)}`));
        this.container.on('error', (error) => this.fail(`error: ${describe(error)}`));
        for (const kind of ['sender', 'receiver']) {
            this.container.on(`${kind}_error`, (context) => this.fail(`link detached by broker: ${describe(context[kind].error)}`));
            this.container.on(`${kind}_close`, () => {
                if (!this.finishing) this.fail('link detached by broker');
            });
        }
    }

    start() {
        this.attempts += 1;
        this.connection = this.container.connect(connectOptions(this.args.url, this.args));
    }

    onConnectionOpen(context) {
        if (context.connection !== this.connection) return;
        const props = (context.connection.remote.open && context.connection.remote.open.properties) || {};
        const raw = props['tandem.shard'];
        const shard = raw === undefined || raw === null ? null : Number(raw);
        const want = this.args.want_shard;
        if (want !== undefined && shard !== want) {
            if (this.attempts >= MAX_SHARD_ATTEMPTS) {
                this.fail(`no connection on shard ${want} after ${this.attempts} attempts (last: ${shard})`);
                return;
            }
            context.connection.close();
            this.start();
            return;
        }
        this.shard = shard;
        this.openLinks(context.connection);
    }

    noteLinkProperties(link) {
        const props = (link.remote.attach && link.remote.attach.properties) || {};
        const raw = props['tandem.queue-shard'];
        if (raw !== undefined && raw !== null) this.queueShard = Number(raw);
    }

    finish() {
        if (this.finishing) return;
        this.finishing = true;
        this.connection.close();
    }

    fail(message, code = EXIT_ERROR) {
        if (this.exited) return;
        process.stderr.write(`${this.name}: ${message}\n`);
        this.exit(code, message);
    }

    exit(code, error) {
        if (this.exited) return;
        this.exited = true;
        clearTimeout(this.deadline);
        const summary = this.summary();
        if (error !== undefined) summary.error = error;
        // Exit only once stdout is flushed: it may be a pipe.
        process.stdout.write(JSON.stringify(summary) + '\n', () => process.exit(code));
    }
}

function describe(error) {
    if (error === undefined || error === null) return 'no error condition';
    if (error.condition || error.description) return `${error.condition}: ${error.description}`;
    return String(error.message || error);
}

module.exports = {
    Client, EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, bodyText, connectOptions, describe, emit,
    parseFlags, rhea,
};
