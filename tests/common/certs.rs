//! Test certificates, made fresh for each test: a CA, a broker certificate
//! for `localhost` and `127.0.0.1` signed by it, client certificates, an
//! expired broker certificate, and one from a CA nobody trusts. PEM files in
//! a temporary directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::TempDir;

/// The files of one test's certificates (the directory goes with it).
pub struct Certs {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
}

struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn authority(name: &str) -> Authority {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    Authority { cert, key }
}

impl Certs {
    pub fn new(name: &str) -> Certs {
        let dir = TempDir::new(name);
        let ca = authority("Tandem test CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).expect("write CA");
        let (broker_cert, broker_key) =
            issue(&dir, &ca, "broker", &["localhost", "127.0.0.1"], false);
        // Kept for the other certificates this test asks for.
        std::fs::write(dir.join("ca.key"), ca.key.serialize_pem()).expect("write CA key");
        Certs {
            dir,
            ca: ca_path,
            broker_cert,
            broker_key,
        }
    }

    fn ca(&self) -> Authority {
        let key_pem = std::fs::read_to_string(self.dir.join("ca.key")).expect("CA key");
        let key = KeyPair::from_pem(&key_pem).expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Tandem test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Authority { cert, key }
    }

    /// The arguments that give a broker TLS with these files, on a free
    /// `ssl-port`.
    pub fn broker_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_str().expect("path").to_owned();
        vec![
            "--ssl-port".into(),
            super::free_port().to_string(),
            "--ssl-cert-file".into(),
            path(&self.broker_cert),
            "--ssl-key-file".into(),
            path(&self.broker_key),
            "--ssl-ca-file".into(),
            path(&self.ca),
        ]
    }

    /// A client certificate with common name `cn`, signed by the CA.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        issue(&self.dir, &self.ca(), cn, &[], false)
    }

    /// A broker certificate that expired in 2001, signed by the CA.
    pub fn expired_broker(&self) -> (PathBuf, PathBuf) {
        issue(
            &self.dir,
            &self.ca(),
            "expired",
            &["localhost", "127.0.0.1"],
            true,
        )
    }

    /// A broker certificate from a CA no one trusts.
    pub fn untrusted_broker(&self) -> (PathBuf, PathBuf) {
        let stranger = authority("Nobody's CA");
        issue(
            &self.dir,
            &stranger,
            "untrusted",
            &["localhost", "127.0.0.1"],
            false,
        )
    }
}

/// A certificate for `cn` (and `names` as subject alternative names) signed
/// by `ca`; its PEM certificate and key files.
fn issue(
    dir: &TempDir,
    ca: &Authority,
    cn: &str,
    names: &[&str],
    expired: bool,
) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    let cert_path = dir.join(&format!("{cn}.pem"));
    let key_path = dir.join(&format!("{cn}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}
