#!/usr/bin/env node
'use strict';
// Sends --count sequence-numbered messages at-least-once to an HA cluster, failing over along --urls.
// Same flags, output and exit codes as ../proton/ha_send.py.
//
// Each message carries its sequence number as application property "seq" (an AMQP long,
// as Proton encodes a Python int) and in the body, "seq-N"; messages are durable. A
// message counts as settled only when the broker accepts it; everything still unsettled
// when the connection drops, and anything released or modified, is sent again, so the
// broker may see duplicates but nothing the client saw settled may be lost. See
// HaClient in common.js for the connection and its flags.
//
// Output, one JSON object per line on stdout:
//   {"connected": URL, "t": T}                  each time a connection opens
//   {"disconnected": true, "t": T}              each time an open connection is lost
//   {"refused": COND, "description": D, "t": T} the first amqp:connection:forced close
//   {"connect_timeout": S, "t": T}              an attempt given up after --connect-timeout
//   {"settled": SEQ, "t": T}                    as the broker accepts each message (once per SEQ)
//   {"settled_unique": N, "count": C, "sent_new": S, "resent": R,
//    "connections": K, "disconnects": D, "forced_closes": F[, "error": E]}   summary, last
// T is seconds since the epoch.
//
// Exit 0 when every message is settled, 3 when --timeout expires first, 1 on an error the
// client cannot recover from (a rejected message, a link or connection refused with an
// error other than amqp:connection:forced), 2 on bad flags.

const { describe, emit, rhea } = require('./common.js');
const { HaClient, haFlags, now, pyFloat } = require('./ha_common.js');

const TEXT = 'Sends --count sequence-numbered messages at-least-once along --urls; see ../proton/ha_send.py.';
const { values: args, number, integer } = haFlags('ha_send.js', {
    count: { type: 'string' },
    // Pace: at most one new message per interval (resends go at once).
    'interval-ms': { type: 'string', default: '0' },
    'max-in-flight': { type: 'string', default: '1000' },
}, TEXT);
args.count = integer('count');
args.interval_ms = number('interval-ms');
args.max_in_flight = integer('max-in-flight');

class HaSender extends HaClient {
    constructor() {
        super('ha_send.js', args);
        this.sender = undefined;
        // Seqs to send again, lowest on top (the end): ha_send.py's pending deque is
        // these followed by the never-sent seqs sentNew..count-1.
        this.resend = [];
        // Delivery -> seq for what the current connection has sent and not yet had settled.
        this.inFlight = new Map();
        this.settled = new Set();
        // Seqs below this have been sent at least once.
        this.sentNew = 0;
        this.resends = 0;
        this.lastNewSend = -Infinity;
    }

    start() {
        super.start();
        if (args.count === 0) this.finish();
        else if (args.interval_ms > 0) this.tick();
    }

    createLink(connection) {
        // Unsettled transfers, so the broker's outcome decides (snd-settle-mode 0).
        const sender = connection.open_sender({ target: { address: args.address }, snd_settle_mode: 0 });
        this.sender = sender;
        sender.on('sendable', () => this.pump());
        sender.on('accepted', (context) => this.onAccepted(context.delivery));
        sender.on('rejected', (context) => this.onRejected(context.delivery));
        // rhea reports modified as released (treat_modified_as_released).
        sender.on('released', (context) => this.onReleased(context.delivery));
        sender.on('sender_error', (context) => {
            this.fail(`link detached by broker: ${describe(context.sender.error)}`);
        });
        sender.on('sender_close', () => {
            if (!this.finishing) this.fail('link detached by broker without error condition');
        });
    }

    // Everything unsettled goes back to the front of the queue, lowest first, to be sent again.
    connectionLost() {
        const lost = [...this.inFlight.values()].sort((a, b) => a - b);
        this.inFlight.clear();
        for (let i = lost.length - 1; i >= 0; i--) {
            if (!this.settled.has(lost[i])) this.resend.push(lost[i]);
        }
    }

    timeoutMessage() {
        return `timed out after ${pyFloat(args.timeout)}s with ${this.settled.size} of ${args.count} settled`;
    }

    // --- sending ---------------------------------------------------------------

    tick() {
        this.pump();
        if (!this.finishing) setTimeout(() => this.tick(), args.interval_ms);
    }

    pump() {
        const sender = this.sender;
        if (this.finishing || !this.up) return;
        const interval = args.interval_ms;
        while (sender.sendable() && this.inFlight.size < args.max_in_flight) {
            const isNew = this.resend.length === 0;
            if (isNew && this.sentNew >= args.count) return;
            const seq = isNew ? this.sentNew : this.resend[this.resend.length - 1];
            if (isNew && interval > 0) {
                const at = performance.now();
                if (at - this.lastNewSend < interval * 0.9) return;
                this.lastNewSend = at;
            }
            if (!isNew) {
                this.resend.pop();
                if (this.settled.has(seq)) continue;
            }
            const delivery = sender.send({
                durable: true,
                application_properties: { seq: rhea.types.wrap_long(seq) },
                body: `seq-${seq}`,
            });
            this.inFlight.set(delivery, seq);
            if (isNew) this.sentNew = seq + 1;
            else this.resends += 1;
        }
    }

    onAccepted(delivery) {
        const seq = this.inFlight.get(delivery);
        if (seq === undefined) return;
        this.inFlight.delete(delivery);
        if (!this.settled.has(seq)) {
            this.settled.add(seq);
            emit({ settled: seq, t: now() });
        }
        if (this.settled.size === args.count) this.finish();
        // A free in-flight slot: ha_send.py waits for the next flow frame instead.
        else this.pump();
    }

    onRejected(delivery) {
        const seq = this.inFlight.get(delivery);
        this.inFlight.delete(delivery);
        const state = delivery.remote_state;
        this.fail(`message ${seq} rejected: ${describe(state && state.error)}`);
    }

    // Released or modified: the broker did not take it; send it again.
    onReleased(delivery) {
        const seq = this.inFlight.get(delivery);
        this.inFlight.delete(delivery);
        if (seq !== undefined && !this.settled.has(seq)) {
            this.resend.push(seq);
            this.pump();
        }
    }

    summary() {
        return {
            settled_unique: this.settled.size,
            count: args.count,
            sent_new: this.sentNew,
            resent: this.resends,
        };
    }
}

new HaSender().start();
