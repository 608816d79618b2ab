#!/usr/bin/env node
'use strict';
// Receives messages from a queue or exchange and prints them as JSON lines:
// {"ready":true,"shard":K,"queue_shard":Q} once attached, one
// {"body":..,"delivery_count":..,"first_acquirer":..,"subject":..,"properties":..}
// per message (not with --check-order), then {"received":N,"shard":K,"queue_shard":Q,...}.
// Same flags and output as ../proton/recv.py, which documents them.

const { Client, emit, bodyText, parseFlags, rhea } = require('./common.js');

const TOPIC_BINDING = 'apache.org:legacy-amqp-topic-binding:string';
const DIRECT_BINDING = 'apache.org:legacy-amqp-direct-binding:string';
const HEADERS_BINDING = 'apache.org:legacy-amqp-headers-binding:map';

const TEXT = 'Receives messages and prints them as JSON lines; see ../proton/recv.py.';
const { values: args, number } = parseFlags('recv.js', {
    browse: { type: 'boolean', default: false },
    'topic-filter': { type: 'string' },
    'direct-filter': { type: 'string' },
    'headers-filter': { type: 'string' },
    'no-settle': { type: 'boolean', default: false },
    hold: { type: 'boolean', default: false },
    credit: { type: 'string', default: '100' },
    'idle-exit': { type: 'string' },
    'check-order': { type: 'boolean', default: false },
}, TEXT);
args.credit = number('credit');
args.idle_exit = args['idle-exit'] === undefined ? undefined : number('idle-exit');
const filterFlags = ['topic-filter', 'direct-filter', 'headers-filter'].filter((f) => args[f] !== undefined);
if (filterFlags.length > 1 || args.credit < 1) {
    process.stderr.write('recv.js: at most one filter flag, and --credit of at least 1\n');
    process.exit(2);
}

function sourceFilter() {
    let value;
    if (args['topic-filter'] !== undefined) {
        value = rhea.types.wrap_described(args['topic-filter'], TOPIC_BINDING);
    } else if (args['direct-filter'] !== undefined) {
        value = rhea.types.wrap_described(args['direct-filter'], DIRECT_BINDING);
    } else if (args['headers-filter'] !== undefined) {
        value = rhea.types.wrap_described(JSON.parse(args['headers-filter']), HEADERS_BINDING);
    } else {
        return undefined;
    }
    return { 'tandem-binding': value };
}

// Per-prefix count, distinct sequence numbers, and whether they strictly increase.
class OrderCheck {
    constructor() {
        this.prefixes = new Map();
        this.unparsed = 0;
    }

    add(body) {
        const match = /^(.*?)(\d+)$/.exec((body || '').replace(/\.+$/, ''));
        if (match === null) {
            this.unparsed += 1;
            return;
        }
        const [prefix, seq] = [match[1], Number(match[2])];
        let stats = this.prefixes.get(prefix);
        if (stats === undefined) {
            stats = { count: 0, seen: new Set(), inOrder: true, last: null, firstOutOfOrder: null };
            this.prefixes.set(prefix, stats);
        }
        stats.count += 1;
        stats.seen.add(seq);
        if (stats.last !== null && seq <= stats.last && stats.inOrder) {
            stats.inOrder = false;
            stats.firstOutOfOrder = [stats.last, seq];
        }
        stats.last = seq;
    }

    report() {
        const prefixes = {};
        for (const [prefix, stats] of this.prefixes) {
            let min = Infinity;
            let max = -Infinity;
            for (const seq of stats.seen) {
                if (seq < min) min = seq;
                if (seq > max) max = seq;
            }
            prefixes[prefix] = {
                count: stats.count,
                distinct: stats.seen.size,
                min,
                max,
                in_order: stats.inOrder,
                first_out_of_order: stats.firstOutOfOrder,
            };
        }
        return { prefixes, unparsed: this.unparsed };
    }
}

class Receiver extends Client {
    constructor() {
        super('recv.js', args);
        this.received = 0;
        this.done = false;
        this.lastActivity = undefined;
        this.order = args['check-order'] ? new OrderCheck() : undefined;
    }

    openLinks(connection) {
        const source = { address: args.address };
        if (args.browse) source.distribution_mode = 'copy';
        const filter = sourceFilter();
        if (filter !== undefined) source.filter = filter;
        // credit_window 0: credit is managed here, so the link never holds more than --count.
        this.receiver = connection.open_receiver({ source, credit_window: 0, autoaccept: false });
        this.receiver.on('receiver_open', (context) => this.onOpen(context));
        this.receiver.on('message', (context) => this.onMessage(context));
        this.topUpCredit();
    }

    topUpCredit() {
        let window = args.credit;
        if (args.count) window = Math.min(window, args.count - this.received);
        const credit = this.receiver.credit;
        if (window > credit && (credit <= Math.floor(window / 2) || window < args.credit)) {
            this.receiver.add_credit(window - credit);
        }
    }

    onOpen(context) {
        this.noteLinkProperties(context.receiver);
        emit({ ready: true, shard: this.shard, queue_shard: this.queueShard });
        this.lastActivity = Date.now();
        if (args.idle_exit !== undefined) this.scheduleIdleCheck(args.idle_exit * 1000);
    }

    scheduleIdleCheck(delayMs) {
        setTimeout(() => {
            if (this.done) return;
            const quiet = Date.now() - this.lastActivity;
            if (quiet >= args.idle_exit * 1000) this.stop();
            else this.scheduleIdleCheck(args.idle_exit * 1000 - quiet);
        }, delayMs);
    }

    onMessage(context) {
        if (this.done) {
            // Only reachable if the broker ignored our credit; give it back untouched.
            context.delivery.release();
            return;
        }
        this.received += 1;
        this.lastActivity = Date.now();
        const message = context.message;
        const body = bodyText(message.body);
        if (this.order !== undefined) {
            this.order.add(body);
        } else {
            emit({
                body,
                delivery_count: message.delivery_count === undefined ? 0 : message.delivery_count,
                first_acquirer: Boolean(message.first_acquirer),
                subject: message.subject === undefined ? null : message.subject,
                properties: message.application_properties === undefined ? null : message.application_properties,
            });
        }
        if (!args['no-settle']) context.delivery.accept();
        if (args.count && this.received >= args.count) this.stop();
        else this.topUpCredit();
    }

    stop() {
        this.done = true;
        if (args.hold) {
            emit(Object.assign(this.summary(), { holding: true }));
            return;
        }
        this.finish();
    }

    summary() {
        const summary = { received: this.received, shard: this.shard, queue_shard: this.queueShard };
        if (this.order !== undefined) Object.assign(summary, this.order.report());
        return summary;
    }
}

new Receiver().start();
