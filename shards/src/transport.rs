//! The transport layer: what sits between a connection's socket and its
//! engine. Bytes read from the socket become the engine's input, and the
//! engine's output becomes bytes to write, through the connection's
//! [`Transport`]. Plain TCP hands them through untouched (the engine reads
//! straight from the socket's buffer, no copy); TLS decrypts and encrypts
//! here with rustls, sans-I/O like the engine, so the engine never knows. The
//! runtime keeps one socket descriptor per connection and drives both
//! directions from one task.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// How a connection's bytes are carried.
#[derive(Debug, Default)]
pub enum Transport {
    /// Plain TCP.
    #[default]
    Plain,
    /// TLS: the socket carries records, the engine sees what they hold.
    Tls(Box<Tls>),
}

/// One TLS session and the records read but not processed yet.
#[derive(Debug)]
pub struct Tls {
    session: rustls::Connection,
    records: BytesMut,
}

impl Transport {
    /// The server side of a TLS connection just accepted.
    pub fn tls_server(config: &Arc<rustls::ServerConfig>) -> Result<Transport, String> {
        let session =
            rustls::ServerConnection::new(config.clone()).map_err(|e| format!("TLS: {e}"))?;
        Ok(Transport::tls(session.into()))
    }

    /// The client side of a TLS connection to `host` (its certificate must
    /// name it).
    pub fn tls_client(config: &Arc<rustls::ClientConfig>, host: &str) -> Result<Transport, String> {
        let name = crate::tls::server_name(host)?;
        let session =
            rustls::ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS: {e}"))?;
        Ok(Transport::tls(session.into()))
    }

    fn tls(mut session: rustls::Connection) -> Transport {
        // Never refuse the engine's output: it is bounded by the engine.
        session.set_buffer_limit(None);
        Transport::Tls(Box::new(Tls {
            session,
            records: BytesMut::with_capacity(32 * 1024),
        }))
    }

    /// The buffer socket reads go into. After a read, [`Transport::received`]
    /// says which bytes the engine should see.
    pub fn read_buffer<'a>(&'a mut self, socket: &'a mut BytesMut) -> &'a mut BytesMut {
        match self {
            Transport::Plain => socket,
            Transport::Tls(tls) => &mut tls.records,
        }
    }

    /// The bytes the engine should read now, after socket bytes arrived in
    /// the read buffer; an error ends the connection (what it says is for
    /// the log: a plaintext client on a TLS port, a certificate refused).
    pub fn received<'a>(&mut self, socket: &'a mut BytesMut) -> Result<&'a mut BytesMut, String> {
        let Transport::Tls(tls) = self else {
            return Ok(socket);
        };
        // rustls takes records only while its plaintext buffer has room, so
        // what each batch of records holds is taken out before the next.
        let mut records: &[u8] = &tls.records;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if !records.is_empty() {
                match tls.session.read_tls(&mut records) {
                    Ok(_) => {}
                    Err(e) => return Err(format!("TLS: {e}")),
                }
                if let Err(e) = tls.session.process_new_packets() {
                    return Err(describe(&e));
                }
            }
            let mut took = false;
            loop {
                match tls.session.reader().read(&mut chunk) {
                    Ok(0) => break, // the peer's close_notify
                    Ok(n) => {
                        socket.extend_from_slice(&chunk[..n]);
                        took = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("TLS: {e}")),
                }
            }
            if records.is_empty() || (!took && !tls.session.wants_read()) {
                break;
            }
        }
        let used = tls.records.len() - records.len();
        let _ = tls.records.split_to(used);
        Ok(socket)
    }

    /// What to write to the socket for the engine's output `plain`.
    pub fn to_send(&mut self, plain: Bytes) -> Bytes {
        match self {
            Transport::Plain => plain,
            Transport::Tls(tls) => {
                // Unbounded buffer: the write takes everything.
                let _ = tls.session.writer().write_all(&plain);
                tls.records_out()
            }
        }
    }

    /// Bytes the transport itself must send (a TLS handshake, an alert), if
    /// any.
    pub fn pending(&mut self) -> Option<Bytes> {
        match self {
            Transport::Tls(tls) if tls.session.wants_write() => Some(tls.records_out()),
            _ => None,
        }
    }

    /// Says goodbye (TLS close_notify); the bytes to write last.
    pub fn close(&mut self) -> Option<Bytes> {
        match self {
            Transport::Tls(tls) => {
                tls.session.send_close_notify();
                self.pending()
            }
            Transport::Plain => None,
        }
    }

    /// The subject of the peer's verified certificate (its DER), once the
    /// handshake is done.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Transport::Tls(tls) => tls.session.peer_certificates()?.first().map(|c| c.as_ref()),
            Transport::Plain => None,
        }
    }

    /// A TLS transport still in its handshake.
    pub fn handshaking(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.session.is_handshaking())
    }
}

impl Tls {
    fn records_out(&mut self) -> Bytes {
        let mut out = Vec::new();
        while self.session.wants_write() {
            if self.session.write_tls(&mut out).is_err() {
                break;
            }
        }
        Bytes::from(out)
    }
}

/// A TLS failure as the log says it, with a hint where one helps.
fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidMessage(_) => format!(
            "TLS: {e} (a client speaking plain AMQP to the TLS port? it uses amqps:// or ssl: addresses)"
        ),
        _ => format!("TLS: {e}"),
    }
}
