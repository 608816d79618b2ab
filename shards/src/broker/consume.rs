//! Consuming: forwarding a client's credit to the queue's owner, putting
//! deliveries on the wire within that credit, and turning the client's
//! settlements (and its departure) into settle / release messages for the owner.

use std::sync::Arc;

use super::conn::{Conn, LinkRole, OutDelivery};
use super::{consumer_ref, delivery_tag, Shard, ShardMsg};
use crate::amqp::connection::LinkKey;
use crate::amqp::message;
use crate::amqp::performative::{DeliveryState, Disposition, ErrorCondition, Role};
use crate::queue::{ConsumerRef, Delivery, Settlement};

impl Shard {
    // -----------------------------------------------------------------------
    // Consuming

    /// The client changed the credit of a link we send on: ask the queue for more.
    pub(super) fn on_credit(&mut self, id: u64, link: LinkKey, drain: bool) {
        let me = self.id;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // Deliveries that waited for credit go first.
        if let Some(LinkRole::Consumer { buffer, .. }) = c.links.get_mut(&link) {
            let mut waiting = std::mem::take(buffer);
            while c.engine.credit(link) > 0 {
                let Some(d) = waiting.pop_front() else {
                    break;
                };
                if let Some(LinkRole::Consumer { queue, owner, .. }) = c.links.get(&link) {
                    let (queue, owner) = (queue.clone(), *owner);
                    send_delivery(c, link, &queue, owner, d);
                }
            }
            if let Some(LinkRole::Consumer { buffer, .. }) = c.links.get_mut(&link) {
                *buffer = waiting;
            }
        }
        let credit = c.engine.credit(link);
        let Some(LinkRole::Consumer {
            queue,
            owner,
            requested,
            buffer,
            draining,
            ..
        }) = c.links.get_mut(&link)
        else {
            return;
        };
        let have = *requested + buffer.len() as u32;
        let want = credit.saturating_sub(have);
        if want == 0 && !drain {
            return;
        }
        *requested += want;
        *draining |= drain;
        let msg = ShardMsg::Credit {
            queue: queue.clone(),
            consumer: consumer_ref(me, id, link),
            credit: want,
            drain,
        };
        let owner = *owner;
        self.mark_dirty(id);
        self.send(owner, msg);
    }

    pub(super) fn on_deliver(&mut self, queue: Arc<str>, d: Delivery) {
        let id = d.consumer.conn;
        let link = d.consumer.link;
        let Some(c) = self.conns.get_mut(&id) else {
            return self.give_back(queue, d);
        };
        let Some(LinkRole::Consumer {
            requested,
            buffer,
            owner,
            ..
        }) = c.links.get_mut(&link)
        else {
            return self.give_back(queue, d);
        };
        *requested = requested.saturating_sub(1);
        let owner = *owner;
        if c.engine.credit(link) == 0 {
            buffer.push_back(d);
            return;
        }
        send_delivery(c, link, &queue, owner, d);
        self.mark_dirty(id);
    }

    /// A delivery for a link that is gone goes back to its queue, not counted.
    pub(super) fn give_back(&mut self, queue: Arc<str>, d: Delivery) {
        if d.settled {
            return;
        }
        let owner = self.owner_of(&queue);
        self.send(
            owner,
            ShardMsg::Settle {
                queue,
                consumer: d.consumer,
                position: d.position,
                how: Settlement::Released,
            },
        );
    }

    pub(super) fn on_drained(&mut self, consumer: ConsumerRef, unused: u32) {
        let Some(c) = self.conns.get_mut(&consumer.conn) else {
            return;
        };
        if let Some(LinkRole::Consumer {
            requested,
            buffer,
            draining,
            ..
        }) = c.links.get_mut(&consumer.link)
        {
            *requested = requested.saturating_sub(unused);
            if *draining && *requested == 0 && buffer.is_empty() {
                *draining = false;
                c.engine.drained(consumer.link);
                self.mark_dirty(consumer.conn);
            }
        }
    }

    pub(super) fn on_consumer_gone(&mut self, consumer: ConsumerRef, error: ErrorCondition) {
        let Some(c) = self.conns.get_mut(&consumer.conn) else {
            return;
        };
        if c.links.remove(&consumer.link).is_some() {
            c.out.retain(|_, o| o.link != consumer.link);
            c.engine.detach_with(consumer.link, error);
            self.mark_dirty(consumer.conn);
        }
    }

    /// The client settled (or changed the state of) deliveries we sent.
    pub(super) fn on_disposition(&mut self, id: u64, channel: u16, d: Disposition) {
        if d.role != Role::Receiver {
            // The client as sender settling its own transfers: we settle on store.
            return;
        }
        let me = self.id;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let how = match &d.state {
            None | Some(DeliveryState::Accepted) | Some(DeliveryState::Rejected(_)) => {
                Settlement::Consumed
            }
            Some(DeliveryState::Released) => Settlement::Released,
            Some(DeliveryState::Modified {
                delivery_failed, ..
            }) => {
                if *delivery_failed {
                    Settlement::Failed
                } else {
                    Settlement::Released
                }
            }
            Some(DeliveryState::Received { .. }) => return,
        };
        let last = d.last.unwrap_or(d.first);
        let span = u64::from(last.wrapping_sub(d.first)) + 1;
        let ids: Vec<u32> = if span as usize > c.out.len() {
            let mut v: Vec<u32> = c
                .out
                .keys()
                .filter(|(ch, id)| {
                    *ch == channel && id.wrapping_sub(d.first) <= last.wrapping_sub(d.first)
                })
                .map(|(_, id)| *id)
                .collect();
            v.sort_unstable();
            v
        } else {
            (0..span as u32).map(|i| d.first.wrapping_add(i)).collect()
        };
        let mut settles = Vec::new();
        for delivery_id in ids {
            if let Some(o) = c.out.remove(&(channel, delivery_id)) {
                settles.push((o.owner, o.queue, consumer_ref(me, id, o.link), o.position));
            }
        }
        if !d.settled {
            // We settle what the client decided, so it can forget the deliveries.
            c.engine
                .disposition(channel, Role::Sender, d.first, last, true, d.state.as_ref());
            self.mark_dirty(id);
        }
        for (owner, queue, consumer, position) in settles {
            self.send(
                owner,
                ShardMsg::Settle {
                    queue,
                    consumer,
                    position,
                    how,
                },
            );
        }
    }

    pub(super) fn on_detached(&mut self, id: u64, link: LinkKey) {
        let me = self.id;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(role) = c.links.remove(&link) else {
            return;
        };
        if let LinkRole::Consumer { queue, owner, .. } = role {
            let mut delivered: Vec<u64> = Vec::new();
            c.out.retain(|_, o| {
                if o.link == link {
                    delivered.push(o.position);
                    false
                } else {
                    true
                }
            });
            self.send(
                owner,
                ShardMsg::Unsubscribe {
                    queue,
                    consumer: consumer_ref(me, id, link),
                    delivered,
                },
            );
        }
    }
}

/// Puts one delivery on the wire, rewriting the header when it is a redelivery.
fn send_delivery(c: &mut Conn, link: LinkKey, queue: &Arc<str>, owner: usize, d: Delivery) {
    let payload = if d.delivery_count > 0 {
        match message::scan(&d.message) {
            Ok(map) => {
                let mut header = message::Header::read(&d.message, &map).unwrap_or_default();
                header.delivery_count = d.delivery_count;
                header.first_acquirer = false;
                message::with_header(&d.message, &map, &header)
            }
            Err(_) => d.message.clone(),
        }
    } else {
        d.message.clone()
    };
    let tag = delivery_tag(d.position);
    if let Some(delivery_id) = c.engine.send(link, &tag, &payload, d.settled) {
        c.messages_out += 1;
        if !d.settled {
            c.out.insert(
                (link.channel, delivery_id),
                OutDelivery {
                    link,
                    queue: queue.clone(),
                    owner,
                    position: d.position,
                },
            );
        }
    }
}
