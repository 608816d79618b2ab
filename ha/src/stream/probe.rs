//! Epoch probes (fencing). A primary keeps asking the other brokers of
//! `ha-brokers-url` who they are: it connects as the cluster does, attaches
//! to `$ha.replication` saying it is a probe (with its broker id, epoch and
//! status), and the peer refuses the link with its own broker id, epoch and
//! status. The answer goes to the HA role, which steps down if the peer
//! outranks it; the peer does the same with what the probe said. Probes run
//! on the service shard, beside the backup's own link.

use hashbrown::HashMap;

use tandem_shards::amqp::codec::Value;
use tandem_shards::amqp::connection::{Event as EngineEvent, LinkKey};
use tandem_shards::amqp::performative::{condition, Attach, ErrorCondition};
use tandem_shards::broker::Shard;

use super::{msg, Msg, Replication};
use crate::node::PeerEpoch;
use crate::role::{BackupIdentity, LinkEvent};

/// Connection tokens of probes: this plus the peer's index (the backup's
/// own link uses the bare index).
pub(super) const PROBE_TOKEN: u64 = 1 << 32;

#[derive(Default)]
pub(super) struct ProbeState {
    /// Who we say we are, by the peer index being probed.
    asking: HashMap<usize, BackupIdentity>,
    /// Open probe connections: conn -> peer index, and the link once attached.
    conns: HashMap<u64, (usize, Option<LinkKey>)>,
}

/// What a refused probe's error says of the peer.
pub(crate) fn peer_epoch_from(info: Option<&Value>) -> Option<PeerEpoch> {
    let info = info?;
    Some(PeerEpoch {
        broker_id: info.map_get("tandem.ha-broker-id")?.as_str()?.to_owned(),
        epoch: info.map_get("tandem.ha-epoch")?.as_u64()?,
        status: info.map_get("tandem.ha-status")?.as_str()?.parse().ok()?,
    })
}

impl Replication {
    /// Service shard: probe `brokers[index]` at `address`, saying we are `who`.
    pub(super) fn probe(
        &mut self,
        shard: &mut Shard,
        index: usize,
        address: String,
        who: BackupIdentity,
    ) {
        if self.probes.asking.insert(index, who).is_some() {
            return; // one probe per peer at a time
        }
        let timeout = self
            .settings
            .heartbeat
            .max(std::time::Duration::from_secs(1));
        shard.request_connection(PROBE_TOKEN + index as u64, address, timeout);
    }

    pub(super) fn is_probe_token(token: u64) -> bool {
        (PROBE_TOKEN..super::feed::FEED_TOKEN).contains(&token)
    }

    pub(super) fn is_probe(&self, conn: u64) -> bool {
        self.probes.conns.contains_key(&conn)
    }

    /// The engine of a probe's connection.
    pub(super) fn probe_engine(
        &mut self,
        shard: &Shard,
        token: u64,
        address: &str,
    ) -> Option<tandem_shards::amqp::connection::Connection> {
        let index = (token - PROBE_TOKEN) as usize;
        let who = self.probes.asking.get(&index)?.clone();
        Some(self.broker_link_engine(shard, address, who))
    }

    /// The probe's engine runs as `conn`.
    pub(super) fn probe_opened(&mut self, token: u64, conn: u64) {
        let index = (token - PROBE_TOKEN) as usize;
        if self.probes.asking.contains_key(&index) {
            self.probes.conns.insert(conn, (index, None));
        }
    }

    /// The peer opened the probe's connection: attach, saying who we are.
    fn probe_attach(&mut self, shard: &mut Shard, index: usize, conn: u64) {
        let Some(who) = self.probes.asking.get(&index).cloned() else {
            return;
        };
        let Some(engine) = shard.engine(conn) else {
            return;
        };
        let channel = engine.begin();
        let mut properties = super::backup::identity_properties(&who);
        properties.push((
            Value::symbol("tandem.ha-probe"),
            Value::String(who.probing.clone().unwrap_or_default()),
        ));
        let name = format!("ha-probe-{}", who.broker_id);
        let attach = Attach::receiver(name, super::backup::replication_source())
            .with_properties(Value::Map(properties));
        let link = engine.attach(channel, attach);
        shard.wrote_to(conn);
        if let Some(entry) = self.probes.conns.get_mut(&conn) {
            entry.1 = link;
        }
    }

    /// Connecting for a probe failed outright.
    pub(super) fn probe_failed(&mut self, shard: &mut Shard, token: u64) {
        let index = (token - PROBE_TOKEN) as usize;
        self.probe_done(shard, index, None);
    }

    /// An event of a probe's connection: the refusal carries the answer;
    /// anything else that ends it is no answer.
    pub(super) fn probe_event(&mut self, shard: &mut Shard, conn: u64, event: EngineEvent) {
        let Some(&(index, _)) = self.probes.conns.get(&conn) else {
            return;
        };
        let answer = match &event {
            EngineEvent::Opened(_) => return self.probe_attach(shard, index, conn),
            EngineEvent::Detached { error, .. } | EngineEvent::Closed { error, .. }
                if error.is_some() =>
            {
                error
                    .as_ref()
                    .and_then(|e| peer_epoch_from(e.info.as_ref()))
            }
            // The links' detaches come before the close that says why.
            EngineEvent::Detached { .. } => return,
            EngineEvent::Closed { .. } => None,
            // A broker that accepts a probe as a backup's link does not know
            // probes: no answer from it.
            EngineEvent::Attached { .. } => None,
            _ => return,
        };
        self.probes.conns.remove(&conn);
        shard.conn_close(
            conn,
            ErrorCondition::new(condition::CONNECTION_FORCED, "epoch probe done"),
        );
        self.probe_done(shard, index, answer);
    }

    fn probe_done(&mut self, shard: &mut Shard, index: usize, answer: Option<PeerEpoch>) {
        if self.probes.asking.remove(&index).is_none() {
            return;
        }
        shard.send_ext(0, msg(Msg::ProbeAnswer { index, answer }));
    }

    /// Shard 0: the answer of a probe, for the HA role.
    pub(super) fn probe_answer(
        &mut self,
        shard: &mut Shard,
        index: usize,
        answer: Option<PeerEpoch>,
    ) {
        self.link_event_to_role(shard, LinkEvent::ProbeAnswer { index, answer });
    }
}
