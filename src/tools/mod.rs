//! What the admin tools share: the connection options every tool takes
//! (`-b/--broker URL`, `--ha-admin`, `--timeout`), management calls that turn
//! non-success replies into one-line errors, and value formatting for tables.

pub mod replica;
pub mod table;

use std::time::Duration;

use clap::Args;
use tandem_shards::amqp::codec::Value;
use tandem_shards::client::{Client, ClientOptions};
use tandem_shards::management::{ManagementClient, Request, Response};
use tandem_shards::url::BrokerUrl;

/// Connection options common to all tools.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Broker URL: [amqp:|amqps:][user[/password]@][ssl:]host[:port][,...]; with
    /// user@ and no password, the password comes from $TANDEM_PASSWORD
    #[arg(
        short = 'b',
        long = "broker",
        value_name = "URL",
        default_value = "localhost:5672",
        global = true
    )]
    pub broker: String,
    /// Mark the connection as an HA admin connection, so a backup broker accepts it.
    #[arg(long = "ha-admin", global = true)]
    pub ha_admin: bool,
    /// Seconds to wait for the broker.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", global = true)]
    pub timeout: f64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS options every tool takes, as qpid-config names them: for `ssl:`
/// addresses and `amqps:` URLs. Each can come from the environment instead
/// (`TANDEM_SSL_TRUSTFILE`, `TANDEM_SSL_CERTIFICATE`, `TANDEM_SSL_KEY`), which
/// is how the resource-manager scripts pass them.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM CA file the broker's certificate must be signed by (needed for ssl:/amqps:)
    #[arg(
        long = "ssl-trustfile",
        value_name = "FILE",
        global = true,
        env = "TANDEM_SSL_TRUSTFILE"
    )]
    pub trustfile: Option<std::path::PathBuf>,
    /// PEM client certificate (for SASL EXTERNAL)
    #[arg(
        long = "ssl-certificate",
        value_name = "FILE",
        global = true,
        env = "TANDEM_SSL_CERTIFICATE"
    )]
    pub certificate: Option<std::path::PathBuf>,
    /// PEM private key of --ssl-certificate
    #[arg(
        long = "ssl-key",
        value_name = "FILE",
        global = true,
        env = "TANDEM_SSL_KEY"
    )]
    pub key: Option<std::path::PathBuf>,
}

/// The TLS configuration this process's connections use (set once, from the
/// command line, by [`use_tls`]).
static TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Makes this tool's `ssl:` connections use `args` (when it gives a trust
/// file); a bad file is an error naming it.
pub fn use_tls(args: &TlsArgs) -> ToolResult<()> {
    if args.trustfile.is_none() && args.certificate.is_none() && args.key.is_none() {
        return Ok(());
    }
    let config = tandem_shards::tls::client_config(&tandem_shards::tls::ClientFiles {
        ca: args.trustfile.clone(),
        cert: args.certificate.clone(),
        key: args.key.clone(),
    })?;
    let _ = TLS.set(config);
    Ok(())
}

/// A tool's failure: printed as one line, exit status 1.
pub type ToolResult<T> = Result<T, String>;

impl BrokerArgs {
    /// Connects and opens the management channel.
    pub fn connect(&self) -> ToolResult<ManagementClient> {
        use_tls(&self.tls)?;
        connect(&self.broker, self.ha_admin, self.timeout)
    }
}

/// The environment variable a URL with a user name but no password takes its
/// password from.
pub const PASSWORD_VAR: &str = "TANDEM_PASSWORD";

/// Connects to `url` (with `qpid.ha-admin` when asked) and opens the management
/// channel. A URL of `user@host` takes the password from `TANDEM_PASSWORD`.
pub fn connect(url: &str, ha_admin: bool, timeout_secs: f64) -> ToolResult<ManagementClient> {
    let mut url: BrokerUrl = url.parse().map_err(|e| format!("--broker: {e}"))?;
    if url.user.is_some() && url.password.is_none() {
        // Scripts keep the password off command lines (where `ps` shows it).
        url.password = std::env::var(PASSWORD_VAR).ok();
    }
    if !(timeout_secs.is_finite() && timeout_secs > 0.0) {
        return Err(format!(
            "--timeout: '{timeout_secs}' must be a positive number of seconds"
        ));
    }
    let timeout = Duration::from_secs_f64(timeout_secs);
    let mut properties = Vec::new();
    if ha_admin {
        properties.push(("qpid.ha-admin".to_owned(), Value::Bool(true)));
    }
    let opts = ClientOptions {
        properties,
        timeout: Some(timeout),
        container_id: None,
        tls: TLS.get().cloned(),
    };
    let client = Client::connect(&url, &opts).map_err(|e| format!("{}: {e}", url.redacted()))?;
    ManagementClient::new(client, timeout).map_err(|e| format!("{}: {e}", url.redacted()))
}

/// Calls management and turns a failure reply into an error message.
pub fn call(mc: &mut ManagementClient, req: Request) -> ToolResult<Response> {
    let resp = mc.call(&req).map_err(|e| e.to_string())?;
    if resp.is_success() {
        Ok(resp)
    } else {
        Err(format!("{} (status {})", resp.description, resp.status))
    }
}

/// Runs a QUERY and returns one map per entity.
pub fn query(
    mc: &mut ManagementClient,
    entity_type: &str,
) -> ToolResult<Vec<Vec<(String, Value)>>> {
    let resp = call(
        mc,
        Request::new("QUERY", entity_type, None, Value::Map(Vec::new())),
    )?;
    let names: Vec<String> = match resp.body.map_get("attributeNames") {
        Some(Value::List(n)) => n
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => return Err("malformed QUERY reply: no attributeNames".into()),
    };
    let Some(Value::List(results)) = resp.body.map_get("results") else {
        return Err("malformed QUERY reply: no results".into());
    };
    Ok(results
        .iter()
        .filter_map(|r| match r {
            Value::List(cells) => Some(names.iter().cloned().zip(cells.iter().cloned()).collect()),
            _ => None,
        })
        .collect())
}

/// Reads a READ reply's attributes as pairs.
pub fn read(
    mc: &mut ManagementClient,
    entity_type: &str,
    name: Option<&str>,
) -> ToolResult<Vec<(String, Value)>> {
    let resp = call(
        mc,
        Request::new("READ", entity_type, name, Value::Map(Vec::new())),
    )?;
    match resp.body {
        Value::Map(entries) => Ok(entries
            .into_iter()
            .filter_map(|(k, v)| k.as_str().map(|k| (k.to_owned(), v)))
            .collect()),
        _ => Err("malformed READ reply".into()),
    }
}

/// An attribute of an entity row.
pub fn get<'a>(row: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    row.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A value as a table cell.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::Bool(true)) => "Y".into(),
        Some(Value::Bool(false)) => String::new(),
        Some(v) => {
            if let Some(s) = v.as_str() {
                s.to_owned()
            } else if let Some(n) = v.as_u64() {
                n.to_string()
            } else {
                format!("{v:?}")
            }
        }
    }
}

/// A value as JSON (strings quoted and escaped; maps and lists nested).
pub fn json(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::List(items) | Value::Array(items) => {
            format!("[{}]", items.iter().map(json).collect::<Vec<_>>().join(","))
        }
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}:{}", json_string(&cell(Some(k))), json(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Int(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        Value::Double(f) => f.to_string(),
        Value::Float(f) => f.to_string(),
        other => match other.as_u64() {
            Some(n) => n.to_string(),
            None => json_string(&cell(Some(other))),
        },
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Rows as a JSON array of objects.
pub fn json_rows(rows: &[Vec<(String, Value)>]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            json(&Value::Map(
                r.iter()
                    .map(|(k, v)| (Value::string(k), v.clone()))
                    .collect(),
            ))
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Prints a tool error and returns the failing exit code.
pub fn fail(tool: &str, message: &str) -> std::process::ExitCode {
    eprintln!("{tool}: {message}");
    std::process::ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_nests() {
        let v = Value::Map(vec![
            (Value::string("name"), Value::string("a\"b")),
            (Value::string("n"), Value::Ulong(3)),
            (
                Value::string("l"),
                Value::List(vec![Value::Bool(true), Value::Null]),
            ),
        ]);
        assert_eq!(json(&v), r#"{"name":"a\"b","n":3,"l":[true,null]}"#);
    }
}
