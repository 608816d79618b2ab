//! Publishing: routing a client's message to its queues (directly, by exchange,
//! or through the anonymous relay), and settling it once every queue stored it,
//! in ranges, topping the link's credit back up.

use std::sync::Arc;

use bytes::Bytes;

use super::conn::{not_found, Dest, LinkRole, PendingAck};
use super::{Shard, ShardMsg};
use crate::amqp::connection::{Connection, LinkKey};
use crate::amqp::message;
use crate::amqp::performative::{condition, DeliveryState, ErrorCondition, Role};
use crate::exchange::RoutingInfo;
use crate::queue::AckTo;

impl Shard {
    // -----------------------------------------------------------------------
    // Publishing

    pub(super) fn on_publish(
        &mut self,
        id: u64,
        link: LinkKey,
        delivery_id: u32,
        settled: bool,
        payload: Bytes,
    ) {
        let dest = match self.conns.get(&id).and_then(|c| c.links.get(&link)) {
            Some(LinkRole::Publisher { dest, .. }) => dest.clone(),
            _ => return,
        };
        if payload.is_empty() {
            // A message has at least a body section: an empty transfer is not one
            // (Proton sends those when it settles deliveries it never sent).
            let error = ErrorCondition::new(
                condition::DECODE_ERROR,
                "empty message: a message needs at least a body section",
            );
            return self.reject_delivery(id, link, delivery_id, settled, error);
        }
        if let Err(error) = self.may_send(id, &dest, &payload) {
            return self.reject_delivery(id, link, delivery_id, settled, error);
        }
        self.route_buf.clear();
        let mut targets = std::mem::take(&mut self.route_buf);
        let routed = match &dest {
            Dest::Queue { name, .. } => {
                targets.push(name.clone());
                Ok(())
            }
            Dest::Exchange(ex) => self.route_exchange(ex, &payload, &mut targets),
            Dest::Anonymous => self.route_anonymous(&payload, &mut targets),
            Dest::Management => Ok(()),
        };
        if let Dest::Exchange(ex) = &dest {
            let stats = self.exchange_stats.entry(ex.clone()).or_default();
            if targets.is_empty() {
                stats.dropped += 1;
            } else {
                stats.routed += 1;
            }
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.messages_in += 1;
        }
        if matches!(dest, Dest::Management) {
            self.on_management(id, &payload);
        }
        let token = self.next_token;
        self.next_token += 1;
        let mut pending = PendingAck {
            conn: id,
            link,
            delivery_id,
            presettled: settled,
            remaining: targets.len() as u32,
            rejected: routed.err(),
        };
        if pending.rejected.is_some() {
            pending.remaining = 0;
        }
        if let Some(LinkRole::Publisher { outstanding, .. }) =
            self.conns.get_mut(&id).and_then(|c| c.links.get_mut(&link))
        {
            *outstanding += 1;
        }
        if pending.remaining == 0 {
            self.finish_publish(pending);
        } else {
            self.acks.insert(token, pending);
            let ack = Some(AckTo {
                shard: self.id,
                token,
            });
            for queue in targets.drain(..) {
                let owner = match &dest {
                    Dest::Queue { owner, .. } => *owner,
                    _ => self.owner_of(&queue),
                };
                self.send(
                    owner,
                    ShardMsg::Enqueue {
                        queue,
                        message: payload.clone(),
                        ack,
                    },
                );
            }
        }
        self.route_buf = targets;
    }

    /// Settles a publish as rejected with `error` (nothing to do for one the
    /// client sent settled).
    fn reject_delivery(
        &mut self,
        id: u64,
        link: LinkKey,
        delivery_id: u32,
        settled: bool,
        error: ErrorCondition,
    ) {
        if settled {
            return;
        }
        if let Some(c) = self.conns.get_mut(&id) {
            let state = DeliveryState::Rejected(Some(error));
            c.engine.disposition(
                link.channel,
                Role::Receiver,
                delivery_id,
                delivery_id,
                true,
                Some(&state),
            );
        }
        self.mark_dirty(id);
    }

    pub(super) fn route_exchange(
        &self,
        exchange: &str,
        payload: &Bytes,
        targets: &mut Vec<Arc<str>>,
    ) -> Result<(), ErrorCondition> {
        let Some(ex) = self.catalogue.exchanges.get(exchange) else {
            return Err(not_found(exchange));
        };
        let bad = |e: crate::amqp::codec::CodecError| {
            ErrorCondition::new(condition::DECODE_ERROR, format!("message: {e}"))
        };
        let map = message::scan(payload).map_err(bad)?;
        let subject = message::subject(payload, &map).map_err(bad)?;
        let props = if ex.kind == crate::exchange::ExchangeType::Headers {
            message::application_properties(payload, &map).map_err(bad)?
        } else {
            None
        };
        ex.route(
            &RoutingInfo {
                subject: subject.as_deref(),
                properties: props.as_ref(),
            },
            targets,
        );
        Ok(())
    }

    pub(super) fn route_anonymous(
        &self,
        payload: &Bytes,
        targets: &mut Vec<Arc<str>>,
    ) -> Result<(), ErrorCondition> {
        let decoded = message::DecodedMessage::decode(payload)
            .map_err(|e| ErrorCondition::new(condition::DECODE_ERROR, format!("message: {e}")))?;
        let to = message::to_address(payload).unwrap_or_default();
        let _ = decoded;
        if let Some((name, _)) = self.catalogue.queues.get_key_value(to.as_str()) {
            // (The queue's owner refuses it if it is a replica.)
            targets.push(name.clone());
            return Ok(());
        }
        if self.catalogue.exchanges.contains_key(to.as_str()) {
            return self.route_exchange(&to, payload, targets);
        }
        Err(not_found(&to))
    }

    pub(super) fn on_ack(&mut self, token: u64, rejected: Option<ErrorCondition>) {
        let Some(p) = self.acks.get_mut(&token) else {
            // Not a publish of ours: one of the extension's (`Shard::store_at`).
            return self.with_ext(move |ext, shard| ext.acked(shard, token, rejected.as_ref()));
        };
        p.remaining = p.remaining.saturating_sub(1);
        if rejected.is_some() && p.rejected.is_none() {
            p.rejected = rejected;
        }
        if p.remaining == 0 {
            if let Some(p) = self.acks.remove(&token) {
                self.finish_publish(p);
            }
        }
    }

    /// Every queue has the publish: settle it (batched) and top up the link's credit.
    pub(super) fn finish_publish(&mut self, p: PendingAck) {
        let window = self.settings.link_credit;
        let Some(c) = self.conns.get_mut(&p.conn) else {
            return;
        };
        if !p.presettled {
            match p.rejected {
                None => c.accepted.push((p.link.channel, p.delivery_id)),
                Some(e) => {
                    let state = DeliveryState::Rejected(Some(e));
                    c.engine.disposition(
                        p.link.channel,
                        Role::Receiver,
                        p.delivery_id,
                        p.delivery_id,
                        true,
                        Some(&state),
                    );
                }
            }
        }
        if let Some(LinkRole::Publisher { outstanding, .. }) = c.links.get_mut(&p.link) {
            *outstanding = outstanding.saturating_sub(1);
            let credit = c.engine.credit(p.link);
            if credit + *outstanding <= window / 2 {
                c.engine.grant_credit(p.link, window - *outstanding, false);
            }
        }
        self.mark_dirty(p.conn);
    }

    /// Sends the accepted dispositions gathered during this step, as ranges.
    pub(super) fn flush_acks(&mut self) {
        for id in self.dirty.clone() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.accepted.is_empty() {
                continue;
            }
            let mut acc = std::mem::take(&mut c.accepted);
            accept_in_ranges(&mut c.engine, &mut acc);
            acc.clear();
            c.accepted = acc;
        }
    }
}

/// Settles deliveries we received as accepted, one disposition per run of
/// consecutive ids of a session (`ids` is sorted here; left as is).
pub fn accept_in_ranges(engine: &mut Connection, ids: &mut [(u16, u32)]) {
    ids.sort_unstable();
    let mut i = 0;
    while i < ids.len() {
        let (channel, first) = ids[i];
        let mut last = first;
        while i + 1 < ids.len() && ids[i + 1].0 == channel && ids[i + 1].1 == last.wrapping_add(1) {
            i += 1;
            last = ids[i].1;
        }
        engine.disposition(
            channel,
            Role::Receiver,
            first,
            last,
            true,
            Some(&DeliveryState::Accepted),
        );
        i += 1;
    }
}
