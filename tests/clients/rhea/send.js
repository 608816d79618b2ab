#!/usr/bin/env node
'use strict';
// Sends --count messages with bodies "{prefix}{seq}" to an address, then prints
// {"sent":N,"accepted":A,"rejected":R,"released":L,"settled":S,"shard":K,"queue_shard":Q}.
// Same flags and output as ../proton/send.py.

const { Client, emit, parseFlags } = require('./common.js');

const TEXT = 'Sends --count messages with bodies "{prefix}{seq}"; see ../proton/send.py.';
const { values: args, number } = parseFlags('send.js', {
    size: { type: 'string', default: '0' },
    subject: { type: 'string' },
    settle: { type: 'string', default: 'unsettled' },
    prefix: { type: 'string', default: '' },
    properties: { type: 'string' },
    'report-progress': { type: 'boolean', default: false },
}, TEXT);
args.size = number('size');
if (args.settle !== 'presettled' && args.settle !== 'unsettled') {
    process.stderr.write('send.js: --settle must be presettled or unsettled\n');
    process.exit(2);
}
if (args.properties !== undefined) args.properties = JSON.parse(args.properties);

class Sender extends Client {
    constructor() {
        super('send.js', args);
        this.presettled = args.settle === 'presettled';
        this.sent = 0;
        this.accepted = 0;
        this.rejected = 0;
        this.released = 0;
        this.settled = 0;
    }

    openLinks(connection) {
        // snd-settle-mode: 1 settled, 0 unsettled.
        this.sender = connection.open_sender({
            target: { address: args.address },
            snd_settle_mode: this.presettled ? 1 : 0,
        });
        this.sender.on('sender_open', (context) => {
            this.noteLinkProperties(context.sender);
            // Nothing to send: the run only reports where the broker put the link.
            if (args.count === 0) this.finish();
        });
        this.sender.on('sendable', () => this.sendAvailable());
        this.sender.on('accepted', () => { this.accepted += 1; });
        this.sender.on('rejected', () => { this.rejected += 1; });
        this.sender.on('released', () => { this.released += 1; });
        this.sender.on('settled', () => this.onSettled());
    }

    body(seq) {
        return `${args.prefix}${seq}`.padEnd(args.size, '.');
    }

    sendAvailable() {
        while (this.sender.sendable() && this.sent < args.count) {
            const message = { body: this.body(this.sent) };
            if (args.subject !== undefined) message.subject = args.subject;
            if (args.properties !== undefined) message.application_properties = args.properties;
            this.sender.send(message);
            this.sent += 1;
        }
        if (this.presettled && this.sent === args.count) this.finish();
    }

    onSettled() {
        // Presettled deliveries are never settled by the broker; ignore anything odd.
        if (this.presettled) return;
        this.settled += 1;
        if (args['report-progress']) emit({ settled: this.settled, sent: this.sent });
        if (this.settled === args.count) this.finish();
    }

    summary() {
        return {
            sent: this.sent,
            accepted: this.accepted,
            rejected: this.rejected,
            released: this.released,
            settled: this.settled,
            shard: this.shard,
            queue_shard: this.queueShard,
        };
    }
}

new Sender().start();
