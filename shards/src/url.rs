//! Broker URLs, in exactly the grammar of Qpid's documentation:
//!
//! ```text
//! url  = ["amqp:" | "amqps:"][ user ["/" password] "@" ] addr ("," addr)*
//! addr = ["tcp:" | "ssl:"] host [":" port]
//! ```
//!
//! `host` is a name, an IPv4 address, or an IPv6 address in brackets (`[::1]:5672`).
//! The port defaults to 5672 for `tcp:` (the default transport) and 5671 for `ssl:`.
//! With the `amqps:` prefix every address without a transport of its own is
//! `ssl:` (so `amqps:n1,n2` is TLS to port 5671 of both).
//!
//! The one leniency beyond the grammar: whitespace around the URL and around each
//! comma-separated address is ignored (`"n1, n2, n3"`), because that is how people
//! write lists by hand in config files. Everything else the grammar does not produce
//! (`amqp://` URIs, `rdma:`, an unbracketed IPv6 address, a port out of range) is a
//! [`UrlError`] that names the offending part.
//!
//! ```
//! use tandem_shards::url::{BrokerUrl, Transport};
//!
//! let url: BrokerUrl = "amqp:admin/secret@n1,ssl:n2:5999".parse().unwrap();
//! assert_eq!(url.user.as_deref(), Some("admin"));
//! assert_eq!(url.addrs[0].socket_string(), "n1:5672");
//! assert_eq!(url.addrs[1].transport, Transport::Ssl);
//! assert_eq!(url.redacted(), "admin/***@n1:5672,ssl:n2:5999");
//! ```

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// The shape every broker URL must have, quoted in error messages.
const GRAMMAR: &str = "[amqp:|amqps:][user[/password]@]host[:port][,host[:port]...]";

/// A parsed broker URL: optional credentials and one or more broker addresses.
///
/// `Display` writes a URL that parses back to an equal value, password included;
/// use [`BrokerUrl::redacted`] for anything a person or a log will see.
/// `Debug` hides the password too.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    /// User name for SASL, if the URL has a `user@` part.
    pub user: Option<String>,
    /// Password for SASL, if the URL has a `user/password@` part.
    pub password: Option<String>,
    /// The brokers, in the order given: clients try them in this order. Never empty.
    pub addrs: Vec<Address>,
}

/// One broker address of a [`BrokerUrl`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// How to connect.
    pub transport: Transport,
    /// Host name, IPv4 address, or IPv6 address (stored without brackets).
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

/// The transports a broker address may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Plain TCP (`tcp:`, or no prefix).
    #[default]
    Tcp,
    /// TLS over TCP (`ssl:`).
    Ssl,
}

/// Why a string is not a broker URL. Each message names the offending part and the fix.
///
/// Messages never include the password: a URL's credentials come before its
/// addresses, and only the addresses are quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Nothing but whitespace.
    #[error("empty broker URL: expected {GRAMMAR}")]
    Empty,
    /// A URI such as `amqp://host:5672`: the `//` form is not part of the grammar.
    #[error("'{scheme}//' URLs are not supported: write {GRAMMAR}, e.g. 'amqp:host:5672'")]
    UriForm {
        /// The scheme as written, with its colon (`amqp:`, `amqps:`).
        scheme: String,
    },
    /// `@` with nothing (or only `/password`) before it.
    #[error(
        "no user name before '@' in broker URL: write user[/password]@host, or leave out the '@'"
    )]
    MissingUser,
    /// Two commas in a row, or a comma at the start or end of the address list.
    #[error("empty address in '{list}': remove the extra comma")]
    EmptyAddress {
        /// The comma-separated address list (everything after `@`).
        list: String,
    },
    /// A transport prefix other than `tcp:` or `ssl:`.
    #[error("unsupported transport '{transport}' in address '{addr}' (use tcp: or ssl:)")]
    UnsupportedTransport {
        /// The prefix before the first `:`.
        transport: String,
        /// The whole address.
        addr: String,
    },
    /// An address with a transport or port but no host (`:5672`, `tcp:`, `[]`).
    #[error("no host in address '{addr}'")]
    EmptyHost {
        /// The whole address.
        addr: String,
    },
    /// A host that is not a name, an IPv4 address, or a bracketed IPv6 address.
    #[error("invalid host '{host}' in address '{addr}': {why}")]
    InvalidHost {
        /// The host part as written.
        host: String,
        /// The whole address.
        addr: String,
        /// What is wrong with it and what to write instead.
        why: &'static str,
    },
    /// A port that is not a decimal number from 1 to 65535.
    #[error("port '{port}' in address '{addr}' is not a number from 1 to 65535")]
    BadPort {
        /// The port part as written.
        port: String,
        /// The whole address.
        addr: String,
    },
}

impl Transport {
    /// The port used when an address gives none: 5672 for TCP, 5671 for TLS (IANA's AMQP ports).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 5672,
            Transport::Ssl => 5671,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Ssl => "ssl",
        })
    }
}

impl Address {
    /// `host:port`, with brackets around an IPv6 host, as `std::net::ToSocketAddrs` wants it.
    pub fn socket_string(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Address {
    /// `host:port`, prefixed with `ssl:` for TLS (`tcp:` is the default and left
    /// out, except before a host named like a transport, which would read as one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.transport == Transport::Ssl {
            f.write_str("ssl:")?;
        } else if self.host == "tcp" || self.host == "ssl" {
            f.write_str("tcp:")?;
        }
        f.write_str(&self.socket_string())
    }
}

impl FromStr for Address {
    type Err = UrlError;

    /// One `addr` of the grammar; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, UrlError> {
        Address::parse_with_default(s, Transport::Tcp)
    }
}

impl Address {
    /// One `addr`, taking `default` as its transport when it names none.
    fn parse_with_default(s: &str, default: Transport) -> Result<Address, UrlError> {
        let addr = s.trim();
        if addr.is_empty() {
            return Err(UrlError::EmptyAddress {
                list: s.to_string(),
            });
        }
        let (mut transport, host_port) = split_transport(addr)?;
        let named = addr.starts_with("tcp:") || addr.starts_with("ssl:");
        if !named {
            transport = default;
        }
        let (host, port) = split_host_port(addr, host_port)?;
        let port = match port {
            None => transport.default_port(),
            Some(port) => parse_port(addr, port)?,
        };
        Ok(Address {
            transport,
            host,
            port,
        })
    }
}

/// A broker URL as written, for display: its password replaced by `***`
/// (text that does not parse is shown as it is, having no password to hide).
pub fn redacted_text(url: &str) -> String {
    url.parse::<BrokerUrl>()
        .map(|u| u.redacted())
        .unwrap_or_else(|_| url.to_owned())
}

impl BrokerUrl {
    /// The URL as `Display` writes it, with the password replaced by `***`: for logs and messages.
    pub fn redacted(&self) -> String {
        let mut out = String::new();
        if let Some(user) = &self.user {
            out.push_str(user);
            if self.password.is_some() {
                out.push_str("/***");
            }
            out.push('@');
        }
        out.push_str(&self.addr_list());
        out
    }

    fn addr_list(&self) -> String {
        self.addrs
            .iter()
            .map(Address::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for BrokerUrl {
    /// `[user[/password]@]addr,addr…` (without `amqp:`, which the grammar makes
    /// optional, unless what follows would read as a scheme: a user or host
    /// named `amqp`...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        if let Some(user) = &self.user {
            text.push_str(user);
            if let Some(password) = &self.password {
                text.push('/');
                text.push_str(password);
            }
            text.push('@');
        }
        text.push_str(&self.addr_list());
        if text.starts_with("amqp:")
            || text.starts_with("amqps:")
            || text.starts_with(char::is_whitespace)
        {
            f.write_str("amqp:")?;
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(UrlError::Empty);
        }
        for scheme in ["amqp:", "amqps:"] {
            if s.strip_prefix(scheme).is_some_and(|r| r.starts_with("//")) {
                return Err(UrlError::UriForm {
                    scheme: scheme.to_string(),
                });
            }
        }
        let (s, all_ssl) = match s.strip_prefix("amqps:") {
            Some(rest) => (rest, true),
            None => (s.strip_prefix("amqp:").unwrap_or(s), false),
        };
        // Addresses never contain '@', so the last one ends the credentials and a
        // password may itself contain '@' (and '/', and ',').
        let (user, password, list) = match s.rsplit_once('@') {
            None => (None, None, s),
            Some((credentials, list)) => {
                let (user, password) = match credentials.split_once('/') {
                    Some((user, password)) => (user, Some(password.to_string())),
                    None => (credentials, None),
                };
                if user.trim().is_empty() {
                    return Err(UrlError::MissingUser);
                }
                (Some(user.to_string()), password, list)
            }
        };
        let addrs = list
            .split(',')
            .map(|addr| {
                if addr.trim().is_empty() {
                    Err(UrlError::EmptyAddress {
                        list: list.trim().to_string(),
                    })
                } else if all_ssl {
                    Address::parse_with_default(addr, Transport::Ssl)
                } else {
                    addr.parse()
                }
            })
            .collect::<Result<Vec<Address>, UrlError>>()?;
        Ok(BrokerUrl {
            user,
            password,
            addrs,
        })
    }
}

/// Splits an optional transport prefix off a (trimmed, non-empty) address.
///
/// `host:port` and `transport:host` look alike, so a prefix other than `tcp`/`ssl` is
/// taken for a transport only when it looks like one (letters, digits, `+`, `-`) and
/// what follows cannot be a port: `rdma:host:5672` and `rdma:10.0.0.1` name a
/// transport, while `localhost:56a2` is a bad port.
fn split_transport(addr: &str) -> Result<(Transport, &str), UrlError> {
    if addr.starts_with('[') {
        return Ok((Transport::Tcp, addr));
    }
    let Some((prefix, rest)) = addr.split_once(':') else {
        return Ok((Transport::Tcp, addr));
    };
    match prefix {
        "tcp" => return Ok((Transport::Tcp, rest)),
        "ssl" => return Ok((Transport::Ssl, rest)),
        _ => {}
    }
    if !addr.contains('[') && (addr.contains("::") || addr.parse::<Ipv6Addr>().is_ok()) {
        // An IPv6 address without brackets: let the host check say so.
        return Ok((Transport::Tcp, addr));
    }
    let looks_like_port = !rest.contains(['.', ':'])
        && rest
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_digit() || c == '-' || c == '+');
    let looks_like_transport = prefix.starts_with(|c: char| c.is_ascii_alphabetic())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
    if !looks_like_port && looks_like_transport {
        return Err(UrlError::UnsupportedTransport {
            transport: prefix.to_string(),
            addr: addr.to_string(),
        });
    }
    Ok((Transport::Tcp, addr))
}

/// Splits `host[:port]` (`host_port`, a suffix of `addr`) and checks the host.
fn split_host_port<'a>(
    addr: &str,
    host_port: &'a str,
) -> Result<(String, Option<&'a str>), UrlError> {
    let invalid = |host: &str, why| UrlError::InvalidHost {
        host: host.to_string(),
        addr: addr.to_string(),
        why,
    };
    if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(invalid(host_port, "missing ']' after the IPv6 address"));
        };
        if host.is_empty() {
            return Err(UrlError::EmptyHost {
                addr: addr.to_string(),
            });
        }
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(invalid(host, "brackets are only for IPv6 addresses"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(invalid(host_port, "expected ':port' after ']'")),
            },
        };
        return Ok((host.to_string(), port));
    }
    let (host, port) = match host_port.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    };
    if port.is_some_and(|p| p.contains(':')) {
        let why = if host_port.parse::<Ipv6Addr>().is_ok() {
            "an IPv6 address must be in brackets, e.g. '[::1]:5672'"
        } else {
            "too many ':' (IPv6 addresses go in brackets, e.g. '[::1]:5672')"
        };
        return Err(invalid(host_port, why));
    }
    if host.is_empty() {
        return Err(UrlError::EmptyHost {
            addr: addr.to_string(),
        });
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.starts_with('-') || !host.chars().all(name_char) {
        return Err(invalid(
            host,
            "a host is a name or an IP address (letters, digits, '-', '.', '_')",
        ));
    }
    Ok((host.to_string(), port))
}

fn parse_port(addr: &str, port: &str) -> Result<u16, UrlError> {
    let bad = || UrlError::BadPort {
        port: port.to_string(),
        addr: addr.to_string(),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> BrokerUrl {
        match s.parse() {
            Ok(url) => url,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> UrlError {
        match s.parse::<BrokerUrl>() {
            Ok(url) => panic!("{s:?} should not parse, got {url:?}"),
            Err(e) => e,
        }
    }

    fn addr(transport: Transport, host: &str, port: u16) -> Address {
        Address {
            transport,
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn bare_host_gets_tcp_and_default_port() {
        let u = url("localhost");
        assert_eq!(u.user, None);
        assert_eq!(u.password, None);
        assert_eq!(u.addrs, vec![addr(Transport::Tcp, "localhost", 5672)]);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            url("127.0.0.1:5673").addrs,
            vec![addr(Transport::Tcp, "127.0.0.1", 5673)]
        );
    }

    #[test]
    fn a_host_named_like_a_transport_prints_so_that_it_reads_back() {
        for text in [
            "tcp",
            "ssl:5671",
            "tcp:ssl",
            "amqp",
            "amqp:amqps:x@h",
            "amqp:amqps",
        ] {
            let u = url(text);
            assert_eq!(url(&u.to_string()), u, "{text} printed as {u}");
        }
    }

    #[test]
    fn amqps_makes_every_address_tls_unless_it_says_otherwise() {
        let u = url("amqps:u/p@n1,n2:6000,tcp:n3");
        assert_eq!(
            u.addrs,
            vec![
                addr(Transport::Ssl, "n1", 5671),
                addr(Transport::Ssl, "n2", 6000),
                addr(Transport::Tcp, "n3", 5672),
            ]
        );
        assert_eq!(u.user.as_deref(), Some("u"));
        assert!(matches!(
            "amqps://h:5671".parse::<BrokerUrl>(),
            Err(UrlError::UriForm { .. })
        ));
    }

    #[test]
    fn transport_prefixes_and_their_default_ports() {
        assert_eq!(url("tcp:h").addrs, vec![addr(Transport::Tcp, "h", 5672)]);
        assert_eq!(url("ssl:h").addrs, vec![addr(Transport::Ssl, "h", 5671)]);
        assert_eq!(
            url("ssl:h:9999").addrs,
            vec![addr(Transport::Ssl, "h", 9999)]
        );
    }

    #[test]
    fn amqp_prefix_is_optional() {
        assert_eq!(url("amqp:h:1"), url("h:1"));
        assert_eq!(url("amqp:tcp:h:1"), url("h:1"));
    }

    #[test]
    fn user_and_password() {
        let u = url("amqp:bob/s3cret@h");
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        let u = url("bob@h");
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password, None);
    }

    #[test]
    fn password_may_contain_slash_at_and_comma() {
        let u = url("bob/a/b@c,d@h1,h2");
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("a/b@c,d"));
        assert_eq!(u.addrs.len(), 2);
    }

    #[test]
    fn empty_password_is_kept() {
        assert_eq!(url("bob/@h").password.as_deref(), Some(""));
    }

    #[test]
    fn address_list_keeps_order() {
        let u = url("n1,ssl:n2:5999,tcp:n3:1");
        assert_eq!(
            u.addrs,
            vec![
                addr(Transport::Tcp, "n1", 5672),
                addr(Transport::Ssl, "n2", 5999),
                addr(Transport::Tcp, "n3", 1),
            ]
        );
    }

    #[test]
    fn whitespace_around_url_and_addresses_is_ignored() {
        assert_eq!(url("  n1 , n2:5673 ,\tn3  "), url("n1,n2:5673,n3"));
        assert_eq!(url("u/p@ n1, n2"), url("u/p@n1,n2"));
    }

    #[test]
    fn ipv6_in_brackets() {
        assert_eq!(
            url("[::1]:5673").addrs,
            vec![addr(Transport::Tcp, "::1", 5673)]
        );
        assert_eq!(
            url("ssl:[fe80::1]").addrs,
            vec![addr(Transport::Ssl, "fe80::1", 5671)]
        );
        assert_eq!(
            url("tcp:[2001:db8::2]:1").addrs,
            vec![addr(Transport::Tcp, "2001:db8::2", 1)]
        );
    }

    #[test]
    fn host_names_with_dots_dashes_and_underscores() {
        assert_eq!(
            url("node-1.example.com:5672").addrs[0].host,
            "node-1.example.com"
        );
        assert_eq!(url("my_host").addrs[0].host, "my_host");
    }

    #[test]
    fn socket_string_brackets_ipv6_only() {
        assert_eq!(url("h").addrs[0].socket_string(), "h:5672");
        assert_eq!(url("ssl:[::1]").addrs[0].socket_string(), "[::1]:5671");
        assert_eq!(url("10.0.0.1:7").addrs[0].socket_string(), "10.0.0.1:7");
    }

    #[test]
    fn socket_string_resolves() {
        use std::net::ToSocketAddrs;
        for s in ["127.0.0.1:5672", "[::1]:5672"] {
            let sock = url(s).addrs[0].socket_string();
            assert!(sock.to_socket_addrs().is_ok(), "{sock}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "h",
            "amqp:h:1",
            "ssl:h",
            "u@h",
            "u/p@h1,ssl:h2:2,[::1]:3",
            "u/p/q@r@h",
            "u/@h",
            "ssl:[fe80::1]",
        ] {
            let parsed = url(s);
            let shown = parsed.to_string();
            assert_eq!(url(&shown), parsed, "{s} -> {shown}");
        }
    }

    #[test]
    fn display_form() {
        assert_eq!(
            url("amqp:u/p@tcp:h1,ssl:h2,[::1]:9").to_string(),
            "u/p@h1:5672,ssl:h2:5671,[::1]:9"
        );
    }

    #[test]
    fn redacted_hides_only_the_password() {
        assert_eq!(url("u/p@h").redacted(), "u/***@h:5672");
        assert_eq!(url("u@h").redacted(), "u@h:5672");
        assert_eq!(url("h1,h2").redacted(), "h1:5672,h2:5672");
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", url("u/topsecret@h"));
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn empty_url_is_an_error() {
        assert_eq!(err(""), UrlError::Empty);
        assert_eq!(err("   "), UrlError::Empty);
    }

    #[test]
    fn uri_form_is_an_error() {
        let e = err("amqp://h:5672");
        assert_eq!(
            e,
            UrlError::UriForm {
                scheme: "amqp:".into()
            }
        );
        assert!(e.to_string().contains("'amqp://'"), "{e}");
        assert!(matches!(err("amqps://u:p@h"), UrlError::UriForm { .. }));
    }

    #[test]
    fn at_without_user_is_an_error() {
        assert_eq!(err("@h"), UrlError::MissingUser);
        assert_eq!(err("/secret@h"), UrlError::MissingUser);
        assert!(!err("/secret@h").to_string().contains("secret"));
    }

    #[test]
    fn empty_addresses_are_errors() {
        for s in ["h1,,h2", "h1,", ",h1", "u@", "amqp:", "h1, ,h2"] {
            assert!(
                matches!(err(s), UrlError::EmptyAddress { .. }),
                "{s}: {}",
                err(s)
            );
        }
        assert_eq!(
            err("h1,,h2").to_string(),
            "empty address in 'h1,,h2': remove the extra comma"
        );
    }

    #[test]
    fn unsupported_transport_names_it() {
        let e = err("rdma:host:5672");
        assert_eq!(
            e.to_string(),
            "unsupported transport 'rdma' in address 'rdma:host:5672' (use tcp: or ssl:)"
        );
        for s in [
            "rdma:host",
            "rdma:10.0.0.1",
            "h1,TCP:h2",
            "amqp:amqp:h",
            "tls:[::1]",
            "a:b:c",
        ] {
            assert!(
                matches!(err(s), UrlError::UnsupportedTransport { .. }),
                "{s}: {}",
                err(s)
            );
        }
    }

    #[test]
    fn bad_ports_name_the_port() {
        assert_eq!(
            err("h:99999").to_string(),
            "port '99999' in address 'h:99999' is not a number from 1 to 65535"
        );
        for (s, port) in [
            ("h:0", "0"),
            ("h:", ""),
            ("h:-1", "-1"),
            ("h:+5", "+5"),
            ("localhost:56a2", "56a2"),
            ("ssl:h:x", "x"),
            ("[::1]:70000", "70000"),
            ("example.com:abc", "abc"),
        ] {
            match err(s) {
                UrlError::BadPort { port: p, addr } => {
                    assert_eq!((p.as_str(), addr.as_str()), (port, s));
                }
                e => panic!("{s}: {e}"),
            }
        }
    }

    #[test]
    fn missing_hosts_are_errors() {
        for s in [":5672", "tcp:", "ssl::1", "[]:5672", "h1,tcp:"] {
            assert!(
                matches!(err(s), UrlError::EmptyHost { .. }),
                "{s}: {}",
                err(s)
            );
        }
    }

    #[test]
    fn invalid_hosts_are_errors() {
        for s in [
            "::1",
            "fe80::1:5672",
            "[::1",
            "[nothost]:5672",
            "[127.0.0.1]",
            "[::1]5672",
            "h/x",
            "ho st",
            "-h",
            "2001:db8:0:0:0:0:0:1:5672",
        ] {
            assert!(
                matches!(err(s), UrlError::InvalidHost { .. }),
                "{s}: {}",
                err(s)
            );
        }
        assert!(err("::1").to_string().contains("brackets"));
    }

    #[test]
    fn address_parses_alone() {
        assert_eq!(
            " ssl:h:1 ".parse::<Address>(),
            Ok(addr(Transport::Ssl, "h", 1))
        );
        assert!(matches!(
            "".parse::<Address>(),
            Err(UrlError::EmptyAddress { .. })
        ));
    }

    #[test]
    fn address_display_round_trips() {
        for a in [
            addr(Transport::Tcp, "h", 1),
            addr(Transport::Ssl, "h", 5671),
            addr(Transport::Ssl, "::1", 2),
        ] {
            assert_eq!(a.to_string().parse::<Address>(), Ok(a.clone()));
        }
    }
}
