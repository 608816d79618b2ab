//! A plain HTTP/1.1 GET for tests of tandemd's HTTP listener (`http-port`):
//! one request per connection, `Connection: close`, the whole answer read;
//! over TCP, or over TLS with a rustls client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::Broker;

/// What the server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header lines as (lower-case name, value).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the sample line `series` (name and labels exactly as
    /// printed), if the body has it.
    pub fn sample(&self, series: &str) -> Option<f64> {
        self.body.lines().find_map(|l| {
            let value = l.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }
}

/// The broker's HTTP address, from its `tandemd http on http://ADDR` line
/// (or `https://ADDR`).
pub fn http_address(broker: &Broker) -> String {
    http_url(broker)
        .split_once("://")
        .map(|(_, addr)| addr.to_owned())
        .unwrap_or_default()
}

/// The broker's HTTP URL as its `tandemd http on URL` line gives it.
pub fn http_url(broker: &Broker) -> String {
    broker
        .stdout_lines()
        .iter()
        .find_map(|l| l.strip_prefix("tandemd http on ").map(str::to_owned))
        .unwrap_or_else(|| panic!("no http line in {:?}", broker.stdout_lines()))
}

/// `METHOD path` on `addr`; panics if the exchange fails (bounded by 10 s).
pub fn request(addr: &str, method: &str, path: &str) -> Answer {
    request_with(addr, method, path, None, Duration::from_secs(10))
}

/// `METHOD path` with a JSON `body`, waiting up to `wait` for the answer
/// (a WebDriver command can take a while).
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    wait: Duration,
) -> Answer {
    let mut stream = connect(addr, wait);
    exchange(&mut stream, addr, method, path, &[], body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `GET path` over TLS to `addr` (the certificate checked against `host`),
/// with extra `headers`; what went wrong if the exchange failed (a refused
/// handshake, say).
pub fn get_tls(
    addr: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    config: Arc<rustls::ClientConfig>,
) -> Result<Answer, String> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("server name {host}: {e}"))?;
    let tls = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    exchange(&mut stream, host, "GET", path, headers, None)
}

/// `GET path` with extra `headers` (an `Authorization`, say) on `addr`.
pub fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = connect(addr, Duration::from_secs(10));
    exchange(&mut stream, addr, "GET", path, headers, None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A TCP connection to `addr` whose reads give up after `wait`.
fn connect(addr: &str, wait: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(wait)).expect("read timeout");
    stream
}

/// An `Authorization` header value for HTTP Basic credentials.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// One request and its answer on an open `stream`.
fn exchange(
    stream: &mut (impl Read + Write),
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Answer, String> {
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("writing the request: {e}"))?;
    stream
        .flush()
        .map_err(|e| format!("writing the request: {e}"))?;
    let raw = read_answer(stream).map_err(|e| format!("reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let body = if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Reads one answer: up to its `Content-Length` when it has one (some
/// servers keep the connection open whatever the request said), else to
/// the end of the stream.
fn read_answer(stream: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if let Some(length) = length {
                while raw.len() < end + 4 + length {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&chunk[..n]);
                }
                return Ok(raw);
            }
            stream.read_to_end(&mut raw)?;
            return Ok(raw);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

pub fn get(addr: &str, path: &str) -> Answer {
    request(addr, "GET", path)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
