#!/usr/bin/env node
'use strict';
// Receives sequence-numbered messages from an HA cluster, failing over along --urls.
// Same flags, output and exit codes as ../proton/ha_recv.py.
//
// Messages are accepted as they arrive; the sequence number is the application property
// "seq" (or the number ending the body), as ha_send.js and ha_send.py send them. A message
// accepted just before a fail-over may be delivered again by the new primary: repeats are
// counted as duplicates. See HaClient in common.js for the connection and its flags.
//
// Output, one JSON object per line on stdout:
//   {"connected": URL, "t": T}                  each time a connection opens
//   {"ready": true, "t": T}                     each time the receiving link attaches
//   {"disconnected": true, "t": T}              each time an open connection is lost
//   {"refused": COND, "description": D, "t": T} the first amqp:connection:forced close
//   {"connect_timeout": S, "t": T}              an attempt given up after --connect-timeout
//   {"progress": UNIQUE, "t": T}                every --progress-every new sequence numbers
//   {"received_unique": N, "duplicates": D, "missing": [...], "received_total": M,
//    "unparsed": U, "out_of_range": O, "connections": K, "disconnects": D,
//    "forced_closes": F[, "error": E]}          summary, last
// T is seconds since the epoch.
//
// Exit 0 once every seq in 0..--expect-1 has arrived; 3 (still printing the summary) when
// --timeout expires first; 1 on an error the client cannot recover from; 2 on bad flags.

const { bodyText, describe, emit } = require('./common.js');
const { HaClient, haFlags, now, pyFloat } = require('./ha_common.js');

const TEXT = 'Receives sequence-numbered messages along --urls; see ../proton/ha_recv.py.';
const { values: args, integer } = haFlags('ha_recv.js', {
    // Stop once seqs 0..N-1 have all arrived.
    expect: { type: 'string' },
    // Link credit window (prefetch).
    credit: { type: 'string', default: '100' },
    'progress-every': { type: 'string', default: '500' },
}, TEXT);
args.expect = integer('expect');
args.credit = integer('credit');
args.progress_every = integer('progress-every');

// The seq of a message: its "seq" property, else the number ending its body; null if neither.
function seqOf(message) {
    const props = message.application_properties || {};
    if (Object.prototype.hasOwnProperty.call(props, 'seq')) {
        const value = props.seq;
        if (typeof value === 'number') return Math.trunc(value);
        if (typeof value === 'string' && /^\s*[-+]?\d+\s*$/.test(value)) return parseInt(value, 10);
        return null;
    }
    const match = /(\d+)$/.exec(String(bodyText(message.body)));
    return match ? Number(match[1]) : null;
}

class HaReceiver extends HaClient {
    constructor() {
        super('ha_recv.js', args);
        this.seen = new Set();
        this.total = 0;
        this.duplicates = 0;
        this.unparsed = 0;
        this.outOfRange = 0;
    }

    start() {
        super.start();
        if (args.expect === 0) this.finish();
    }

    createLink(connection) {
        // rhea keeps the credit topped up to the window and accepts each message
        // before our 'message' listener runs.
        const receiver = connection.open_receiver({
            source: { address: args.address },
            credit_window: args.credit,
            autoaccept: true,
        });
        receiver.on('receiver_open', () => emit({ ready: true, t: now() }));
        receiver.on('message', (context) => this.onMessage(context.message));
        receiver.on('receiver_error', (context) => {
            this.fail(`link detached by broker: ${describe(context.receiver.error)}`);
        });
        receiver.on('receiver_close', () => {
            if (!this.finishing) this.fail('link detached by broker without error condition');
        });
    }

    timeoutMessage() {
        return `timed out after ${pyFloat(args.timeout)}s with ${this.seen.size} of ${args.expect}`;
    }

    onMessage(message) {
        this.total += 1;
        const seq = seqOf(message);
        if (seq === null) {
            this.unparsed += 1;
        } else if (seq < 0 || seq >= args.expect) {
            this.outOfRange += 1;
        } else if (this.seen.has(seq)) {
            this.duplicates += 1;
        } else {
            this.seen.add(seq);
            if (this.seen.size % args.progress_every === 0) emit({ progress: this.seen.size, t: now() });
            // Close after this callback, so the accept goes out first.
            if (this.seen.size === args.expect) setImmediate(() => this.finish());
        }
    }

    summary() {
        const missing = [];
        for (let seq = 0; seq < args.expect; seq++) {
            if (!this.seen.has(seq)) missing.push(seq);
        }
        return {
            received_unique: this.seen.size,
            duplicates: this.duplicates,
            missing,
            received_total: this.total,
            unparsed: this.unparsed,
            out_of_range: this.outOfRange,
        };
    }
}

new HaReceiver().start();
