//! Starting and stopping queue replicas (`tandem-ha replicate`,
//! `stop-replicate`, `tandem-config add queue --start-replica`): the tools
//! set the queue's `replica-of` through management and watch the broker's
//! first attempt, so that a missing remote queue, an unreachable remote or
//! refused credentials are reported, not only logged.

use std::time::{Duration, Instant};

use tandem_shards::amqp::codec::Value;
use tandem_shards::management::{ManagementClient, Request};
use tandem_shards::url::BrokerUrl;

use super::{call, cell, get, read, ToolResult};

/// Whether a command-line argument names a broker (`host:port`,
/// `user@host`, or a list), not a queue: it must parse as a broker URL and
/// have a port, a user or more than one address (a bare word is a queue).
pub fn is_broker_address(arg: &str) -> bool {
    let marked = arg.contains(':') || arg.contains('@') || arg.contains(',');
    marked && arg.parse::<BrokerUrl>().is_ok()
}

/// `QUEUE REMOTE` in either order: the one that is a broker address is the
/// remote.
pub fn queue_and_remote<'a>(a: &'a str, b: &'a str) -> ToolResult<(&'a str, &'a str)> {
    match (is_broker_address(a), is_broker_address(b)) {
        (false, true) => Ok((a, b)),
        (true, false) => Ok((b, a)),
        (both, _) => Err(format!(
            "replicate takes a queue and a remote broker address (host:port, user@host or a list), in either order: '{a}' and '{b}' are {} broker addresses",
            if both { "both" } else { "neither" }
        )),
    }
}

/// Makes `queue` a replica of `remote` (`None`: an ordinary queue) with a
/// management UPDATE.
fn set_replica_of(mc: &mut ManagementClient, queue: &str, remote: Option<&str>) -> ToolResult<()> {
    let body = Value::Map(vec![(
        Value::string("replica-of"),
        Value::string(remote.unwrap_or("")),
    )]);
    call(mc, Request::new("UPDATE", "queue", Some(queue), body)).map(|_| ())
}

/// How the broker's first attempt to replicate went.
pub enum FirstAttempt {
    /// Attached to the remote: catching up, or caught up already.
    Attached { state: String, address: String },
    /// Refused, or the remote could not be reached.
    Failed(String),
    /// No outcome within the timeout.
    Pending,
}

/// Waits up to `timeout` for the first attempt of `queue`'s replica.
pub fn first_attempt(
    mc: &mut ManagementClient,
    queue: &str,
    timeout: Duration,
) -> ToolResult<FirstAttempt> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = read(mc, "queue", Some(queue))?;
        let state = cell(get(&row, "replica-state"));
        let address = cell(get(&row, "replica-address"));
        match get(&row, "replica-error") {
            Some(Value::String(why)) => return Ok(FirstAttempt::Failed(why.clone())),
            _ if state == "catchup" || state == "ready" => {
                return Ok(FirstAttempt::Attached { state, address })
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Ok(FirstAttempt::Pending);
        }
        // Ask again; the loop ends at the deadline above.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tandem-ha replicate`: `queue` (which exists here) replicates `remote`;
/// if the first attempt fails, the queue is left as it was.
pub fn replicate(
    mc: &mut ManagementClient,
    queue: &str,
    remote: &str,
    timeout: Duration,
) -> ToolResult<String> {
    let url: BrokerUrl = remote
        .parse()
        .map_err(|e| format!("remote '{remote}': {e}"))?;
    let row = read(mc, "queue", Some(queue)).map_err(|e| {
        format!("{e}: replicate copies into an existing queue (or create one with tandem-config add queue {queue} --start-replica {})", url.redacted())
    })?;
    let before = match get(&row, "replica-of") {
        Some(Value::String(r)) => Some(r.clone()),
        _ => None,
    };
    if before.as_deref() == Some(url.redacted().as_str()) {
        return Ok(format!(
            "queue '{queue}' already replicates {}\n",
            url.redacted()
        ));
    }
    if before.is_some() {
        return Err(format!(
            "queue '{queue}' already replicates {}: stop-replicate it first",
            cell(get(&row, "replica-of"))
        ));
    }
    // A replica holds only its original's messages: the broker would drop
    // these.
    let depth = get(&row, "depth").and_then(Value::as_u64).unwrap_or(0);
    if depth > 0 {
        return Err(format!(
            "queue '{queue}' holds {depth} messages, and a replica holds only its original's: empty it (or delete it) first"
        ));
    }
    set_replica_of(mc, queue, Some(&url.to_string()))?;
    match first_attempt(mc, queue, timeout)? {
        FirstAttempt::Attached { state, address } => Ok(format!(
            "queue '{queue}' replicates {} (attached to {address}, {state})\n",
            url.redacted()
        )),
        FirstAttempt::Failed(why) => {
            set_replica_of(mc, queue, None)?;
            Err(format!(
                "queue '{queue}' cannot replicate {}: {why}; the queue is left as it was",
                url.redacted()
            ))
        }
        FirstAttempt::Pending => Err(format!(
            "queue '{queue}' replicates {} but did not attach within {:.1}s; the broker keeps trying (tandem-ha stop-replicate {queue} stops it)",
            url.redacted(),
            timeout.as_secs_f64()
        )),
    }
}

/// `tandem-ha stop-replicate`: `queue` becomes an ordinary local queue.
pub fn stop_replicate(mc: &mut ManagementClient, queue: &str) -> ToolResult<String> {
    let row = read(mc, "queue", Some(queue))?;
    let Some(Value::String(remote)) = get(&row, "replica-of") else {
        return Err(format!("queue '{queue}' is not a replica"));
    };
    let remote = remote.clone();
    set_replica_of(mc, queue, None)?;
    Ok(format!(
        "queue '{queue}' no longer replicates {remote}: it is an ordinary queue now\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_is_the_argument_that_is_a_broker_address() {
        assert_eq!(queue_and_remote("q", "h:5672"), Ok(("q", "h:5672")));
        assert_eq!(queue_and_remote("guest@h", "q"), Ok(("q", "guest@h")));
        assert_eq!(queue_and_remote("q", "a:1,b:2"), Ok(("q", "a:1,b:2")));
        let neither = queue_and_remote("q1", "q2").expect_err("no remote");
        assert!(neither.contains("neither"), "{neither}");
        let both = queue_and_remote("a:1", "b:2").expect_err("two remotes");
        assert!(both.contains("both"), "{both}");
        // A port out of range is not an address: a queue name it stays.
        assert!(!is_broker_address("h:99999"));
    }
}
