//! What a running broker reads again when told to, on SIGHUP and by the
//! management operations `reloadACLFile` (entity type `acl`) and `RELOAD`
//! (entity type `broker`): the ACL file, the users file and the TLS
//! certificate and key. Each is read whole and checked first; a file that
//! does not read or parse leaves what is in use in place, and says why.

use std::sync::Arc;

use crate::acl::Acl;
use crate::tls::ReloadableCert;
use crate::users::UserDb;

/// The broker's reloadable parts (each only when it came from a file).
#[derive(Debug, Default)]
pub struct Reloadable {
    pub acl: Option<Arc<Acl>>,
    /// Reread only when they came from a users file.
    pub users: Option<Arc<UserDb>>,
    pub cert: Option<Arc<ReloadableCert>>,
}

/// How reading one part again went: what now holds, or why the old one stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// `acl`, `users` or `certificate`.
    pub what: &'static str,
    pub outcome: Result<String, String>,
}

impl Reloaded {
    /// Logs it: INFO when it took, ERROR when the old one stays.
    pub fn log(&self, cause: &str) {
        match &self.outcome {
            Ok(text) => tracing::info!("{cause}: {text}"),
            Err(text) => tracing::error!("{cause}: {text}"),
        }
    }
}

impl Reloadable {
    /// Reads the ACL file again (nothing when there is none).
    pub fn acl(&self) -> Option<Reloaded> {
        let acl = self.acl.as_ref()?;
        let path = acl.path().display();
        Some(Reloaded {
            what: "acl",
            outcome: match acl.reload() {
                Ok(n) => Ok(format!("ACL reloaded from {path} ({n} rules)")),
                Err(e) => Err(format!("ACL not reloaded, the rules in use stay: {e}")),
            },
        })
    }

    /// Reads the users file again.
    pub fn users(&self) -> Option<Reloaded> {
        let users = self.users.as_ref()?;
        let path = users.path()?.display();
        Some(Reloaded {
            what: "users",
            outcome: match users.reload() {
                Ok(n) => Ok(format!(
                    "users reloaded from {path} ({n} users; open connections stay)"
                )),
                Err(e) => Err(format!("users not reloaded, the users in use stay: {e}")),
            },
        })
    }

    /// Reads the TLS certificate and key again.
    pub fn certificate(&self) -> Option<Reloaded> {
        let cert = self.cert.as_ref()?;
        let (c, k) = cert.files();
        Some(Reloaded {
            what: "certificate",
            outcome: match cert.reload() {
                Ok(()) => Ok(format!(
                    "TLS certificate reloaded from {} and {} (new connections use it)",
                    c.display(),
                    k.display()
                )),
                Err(e) => Err(format!(
                    "TLS certificate not reloaded, the old one stays: {e}"
                )),
            },
        })
    }

    /// Everything there is, in that order.
    pub fn everything(&self) -> Vec<Reloaded> {
        [self.acl(), self.users(), self.certificate()]
            .into_iter()
            .flatten()
            .collect()
    }
}
