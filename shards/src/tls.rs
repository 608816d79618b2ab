//! TLS configurations (rustls, the `ring` provider) built from PEM files: the
//! broker's server side (its certificate and key; optionally a CA whose
//! client certificates it accepts or requires) and the client side of a
//! backup's replication link, the tools and the load generator (a CA to
//! verify the broker; optionally a client certificate). Loading fails with a
//! message naming the file and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The broker's TLS files (`ssl-cert-file`, `ssl-key-file`, `ssl-ca-file`,
/// `ssl-require-client-authentication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of the client certificates accepted (EXTERNAL).
    pub ca: Option<PathBuf>,
    /// Refuse a client without a certificate the CA signed.
    pub require_client_auth: bool,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The broker's certificate and key, swapped whole when the files are read
/// again ([`ReloadableCert::reload`], on SIGHUP): connections from then on
/// get the new one, open ones keep theirs.
#[derive(Debug)]
pub struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    current: crate::swapped::Swapped<rustls::sign::CertifiedKey>,
}

impl ReloadableCert {
    fn load(cert: &Path, key_file: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
        let certified =
            rustls::sign::CertifiedKey::from_der(certs(cert)?, key(key_file)?, &provider())
                .map_err(|e| {
                    format!(
                        "{} and {}: certificate and key do not make a usable pair: {e}",
                        cert.display(),
                        key_file.display()
                    )
                })?;
        Ok(Arc::new(certified))
    }

    /// Reads the certificate and key files again; on an error the one in use
    /// stays.
    pub fn reload(&self) -> Result<(), String> {
        self.current
            .set_arc(ReloadableCert::load(&self.cert, &self.key)?);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.get())
    }
}

/// The broker's TLS server configuration, and the handle that reloads its
/// certificate.
pub fn server_config(
    files: &ServerFiles,
) -> Result<(Arc<ServerConfig>, Arc<ReloadableCert>), String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            );
            let verifier = if files.require_client_auth {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if files.require_client_auth => {
            return Err(
                "ssl-require-client-authentication needs ssl-ca-file (the CA of the client certificates)"
                    .into(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let resolver = Arc::new(ReloadableCert {
        cert: files.cert.clone(),
        key: files.key.clone(),
        current: crate::swapped::Swapped::from_arc(ReloadableCert::load(&files.cert, &files.key)?),
    });
    let config = builder.with_cert_resolver(resolver.clone());
    Ok((Arc::new(config), resolver))
}

/// What a TLS client uses: the CA that signed the broker's certificate, and
/// optionally its own certificate and key (for EXTERNAL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A TLS client configuration.
pub fn client_config(files: &ClientFiles) -> Result<Arc<ClientConfig>, String> {
    let Some(ca) = &files.ca else {
        return Err("TLS needs a trust file (the CA that signed the broker's certificate)".into());
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots(ca)?);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("a client certificate needs both its certificate and its key".into()),
    };
    Ok(Arc::new(config))
}

/// The name a client checks the broker's certificate against: the host of
/// the address it connects to.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("TLS: server name '{host}': {e}"))
}

/// The common name (CN) of a DER certificate's subject, if it has one: the
/// identity SASL EXTERNAL takes (as `CN@realm`). The certificate was verified
/// already; this only reads it, and gives `None` for anything it cannot read.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03]; // 2.5.4.3
    let (tag, cert, _) = tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut fields = tbs;
    // version [0] (optional), serial, signature, issuer, validity, subject.
    let (tag, _, rest) = tlv(fields)?;
    if tag == 0xa0 {
        fields = rest;
    }
    for _ in 0..4 {
        let (_, _, rest) = tlv(fields)?;
        fields = rest;
    }
    let (tag, mut names, _) = tlv(fields)?;
    if tag != SEQUENCE {
        return None;
    }
    while !names.is_empty() {
        let (tag, mut rdn, rest) = tlv(names)?;
        names = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (_, pair, rest) = tlv(rdn)?;
            rdn = rest;
            let (tag, oid, value) = tlv(pair)?;
            if tag == 0x06 && oid == COMMON_NAME {
                let (kind, text, _) = tlv(value)?;
                // UTF8String, PrintableString, IA5String, TeletexString.
                if matches!(kind, 0x0c | 0x13 | 0x16 | 0x14) {
                    return std::str::from_utf8(text).ok().map(str::to_owned);
                }
                return None;
            }
        }
    }
    None
}

/// One DER element at the start of `input`: its tag, its contents, and what
/// follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_der_gives_no_name_and_no_panic() {
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(subject_common_name(&[0x30, 0x10, 0x30]), None);
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = subject_common_name(&junk);
        }
    }
}
