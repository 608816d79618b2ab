//! Who is logging: the broker's id and HA status, which every log line
//! carries (a prefix in text logs, fields in `log-format = json`), as qpidd's
//! log did after QPID-6020. The HA role sets the status as it changes; a
//! broker outside a cluster stays `standalone`. Log lines are rare, so one
//! lock read per line is no cost to the message path.

use std::sync::RwLock;

struct Context {
    broker_id: String,
    status: &'static str,
}

static CONTEXT: RwLock<Context> = RwLock::new(Context {
    broker_id: String::new(),
    status: "standalone",
});

pub fn set_broker_id(id: &str) {
    let mut c = CONTEXT.write().unwrap_or_else(|e| e.into_inner());
    c.broker_id = id.to_owned();
}

pub fn set_status(status: &'static str) {
    let mut c = CONTEXT.write().unwrap_or_else(|e| e.into_inner());
    c.status = status;
}

/// The broker id and status to log with.
pub fn current() -> (String, &'static str) {
    let c = CONTEXT.read().unwrap_or_else(|e| e.into_inner());
    (c.broker_id.clone(), c.status)
}
