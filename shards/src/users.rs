//! The users file and the server side of SASL logins against it.
//!
//! A line is `user:scram-sha-256:ITERATIONS:SALT:STORED-KEY:SERVER-KEY` (the
//! salted, iterated form `tandem-passwd` writes, base64 fields as RFC 5802
//! stores them; the password itself is never kept) or, read for
//! compatibility, `user:password` in clear. Blank lines and `#` comments are
//! skipped. PLAIN and SCRAM-SHA-256 both check against either form;
//! comparisons of secrets take constant time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

use crate::amqp::connection::{SaslServer, SaslStep};
use crate::swapped::Swapped;

/// The SCRAM mechanism offered.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Iterations `tandem-passwd` uses (RFC 7677's minimum is 4096).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// What the file keeps for one user.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A password in clear (an old `user:password` line).
    Plain(String),
    /// Salted and iterated (SCRAM-SHA-256's StoredKey and ServerKey).
    Scram {
        iterations: u32,
        salt: Vec<u8>,
        stored_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        match self {
            Credential::Plain(_) => f.write_str("Plain(***)"),
            Credential::Scram { iterations, .. } => write!(f, "Scram({iterations} iterations)"),
        }
    }
}

/// The users of a users file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: HashMap<String, Credential>,
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    let iterations =
        std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Credential {
    /// The salted form of `password` with a fresh random salt.
    pub fn scram(password: &str) -> Result<Credential, String> {
        let mut salt = vec![0u8; SALT_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no randomness for a salt".to_string())?;
        Ok(Credential::scram_with(password, salt, ITERATIONS))
    }

    fn scram_with(password: &str, salt: Vec<u8>, iterations: u32) -> Credential {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Credential::Scram {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Whether `password` is this user's.
    pub fn check(&self, password: &str) -> bool {
        match self {
            Credential::Plain(p) => same(p.as_bytes(), password.as_bytes()),
            Credential::Scram {
                iterations,
                salt,
                stored_key,
                ..
            } => {
                let salted = salted_password(password, salt, *iterations);
                same(&sha256(&hmac_sha256(&salted, b"Client Key")), stored_key)
            }
        }
    }

    /// The line's part after `user:`.
    pub fn to_line(&self) -> String {
        match self {
            Credential::Plain(p) => p.clone(),
            Credential::Scram {
                iterations,
                salt,
                stored_key,
                server_key,
            } => format!(
                "scram-sha-256:{iterations}:{}:{}:{}",
                B64.encode(salt),
                B64.encode(stored_key),
                B64.encode(server_key)
            ),
        }
    }

    /// The SCRAM keys: stored in the file, or derived for a clear password.
    fn scram_keys(&self) -> Credential {
        match self {
            Credential::Plain(p) => {
                // A fixed salt per password would let two users' keys be
                // compared; this one is derived from nothing secret, and only
                // used for the length of one login.
                Credential::scram_with(p, sha256(p.as_bytes())[..SALT_LEN].to_vec(), ITERATIONS)
            }
            scram => scram.clone(),
        }
    }
}

impl Users {
    /// Reads a users file's text; an error names the line.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = line.split_once(':').map(|(u, r)| (u.trim(), r)) else {
                return Err(format!(
                    "line {}: expected user:password or user:scram-sha-256:...",
                    n + 1
                ));
            };
            if user.is_empty() {
                return Err(format!("line {}: no user name before ':'", n + 1));
            }
            let credential = match rest.strip_prefix("scram-sha-256:") {
                Some(fields) => parse_scram(fields).map_err(|e| format!("line {}: {e}", n + 1))?,
                None => Credential::Plain(rest.to_owned()),
            };
            users.insert(user.to_owned(), credential);
        }
        Ok(Users { users })
    }

    /// The file's text (sorted by user).
    pub fn to_text(&self) -> String {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|u| format!("{u}:{}\n", self.users[u].to_line()))
            .collect()
    }

    /// How many users have a password in clear.
    pub fn plain_count(&self) -> usize {
        self.users
            .values()
            .filter(|c| matches!(c, Credential::Plain(_)))
            .count()
    }

    /// The users' names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.users.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn get(&self, user: &str) -> Option<&Credential> {
        self.users.get(user)
    }

    pub fn insert(&mut self, user: &str, credential: Credential) {
        self.users.insert(user.to_owned(), credential);
    }

    pub fn remove(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s.
    pub fn check(&self, user: &str, password: &str) -> bool {
        self.users.get(user).is_some_and(|c| c.check(password))
    }

    /// The iterations a SCRAM challenge for a user who does not exist gives:
    /// those of the users who do (the most of them), so the challenge's `i=`
    /// does not tell the two apart when the file uses another count.
    fn unknown_user_iterations(&self) -> u32 {
        self.users
            .values()
            .map(|c| match c {
                Credential::Scram { iterations, .. } => *iterations,
                Credential::Plain(_) => ITERATIONS,
            })
            .max()
            .unwrap_or(ITERATIONS)
    }
}

/// The users the broker checks logins against: a users file, read again by
/// [`UserDb::reload`] without a restart (logins from then on use the new
/// users; connections already open stay open), or a fixed set.
#[derive(Debug, Default)]
pub struct UserDb {
    path: Option<PathBuf>,
    current: Swapped<Users>,
}

impl From<Users> for UserDb {
    fn from(users: Users) -> UserDb {
        UserDb {
            path: None,
            current: Swapped::new(users),
        }
    }
}

impl UserDb {
    /// Reads `path`; an error names the file and the line.
    pub fn load(path: &Path) -> Result<UserDb, String> {
        Ok(UserDb {
            current: Swapped::new(read_users(path)?),
            path: Some(path.to_owned()),
        })
    }

    /// The users now.
    pub fn current(&self) -> Arc<Users> {
        self.current.get()
    }

    /// The file it reads, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the file again and says how many users it has; on an error the
    /// users in use stay.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(self.current().users.len());
        };
        let fresh = read_users(path)?;
        let n = fresh.users.len();
        self.current.set(fresh);
        Ok(n)
    }
}

/// Parses a users file, warning when passwords are kept in clear.
fn read_users(path: &Path) -> Result<Users, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("users-file {}: {e}", path.display()))?;
    let users = Users::parse(&text).map_err(|e| format!("users-file {}: {e}", path.display()))?;
    let plain = users.plain_count();
    if plain > 0 {
        tracing::warn!(
            "users-file {}: {plain} user(s) with a password in clear (user:password); store salted hashes instead with tandem-passwd -f {} USER",
            path.display(),
            path.display()
        );
    }
    Ok(users)
}

fn parse_scram(fields: &str) -> Result<Credential, String> {
    let parts: Vec<&str> = fields.split(':').collect();
    let [iterations, salt, stored, server] = parts[..] else {
        return Err("scram-sha-256 needs ITERATIONS:SALT:STORED-KEY:SERVER-KEY".into());
    };
    let iterations: u32 = iterations
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or("scram-sha-256: iterations must be a positive number")?;
    let key = |what: &str, text: &str| -> Result<[u8; KEY_LEN], String> {
        let bytes = B64
            .decode(text)
            .map_err(|e| format!("scram-sha-256: {what}: {e}"))?;
        bytes
            .try_into()
            .map_err(|_| format!("scram-sha-256: {what} must be {KEY_LEN} bytes"))
    };
    Ok(Credential::Scram {
        iterations,
        salt: B64
            .decode(salt)
            .map_err(|e| format!("scram-sha-256: salt: {e}"))?,
        stored_key: key("stored key", stored)?,
        server_key: key("server key", server)?,
    })
}

/// The broker's SASL server for one connection: PLAIN and SCRAM-SHA-256
/// against `users`; ANONYMOUS (and any PLAIN user) when authentication is
/// off.
pub struct Logins {
    users: Arc<Users>,
    auth: bool,
    scram: Option<Scram>,
}

/// A SCRAM exchange after the server's first message.
struct Scram {
    user: String,
    credential: Credential,
    /// client-first-bare "," server-first "," (the client-final's start follows).
    auth_message: String,
    nonce: String,
}

impl Logins {
    pub fn new(users: Arc<Users>, auth: bool) -> Logins {
        Logins {
            users,
            auth,
            scram: None,
        }
    }

    fn scram_first(&mut self, message: &[u8]) -> SaslStep {
        let refuse = |why: &str| SaslStep::Refused(format!("SCRAM-SHA-256: {why}"));
        let Ok(text) = std::str::from_utf8(message) else {
            return refuse("client-first-message is not UTF-8");
        };
        // gs2-header: no channel binding ("n,,"; "y,," tolerated), no authzid.
        let bare = match text
            .strip_prefix("n,,")
            .or_else(|| text.strip_prefix("y,,"))
        {
            Some(bare) => bare,
            None => return refuse("channel binding and authzid are not supported (expected n,,)"),
        };
        let mut user = None;
        let mut client_nonce = None;
        for attr in bare.split(',') {
            match attr.split_once('=') {
                Some(("n", v)) => user = Some(v.replace("=2C", ",").replace("=3D", "=")),
                Some(("r", v)) => client_nonce = Some(v.to_owned()),
                Some(("m", _)) => return refuse("mandatory extensions are not supported"),
                _ => {}
            }
        }
        let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
            return refuse("client-first-message needs n= and r=");
        };
        // An unknown user goes through the motions with a throw-away
        // credential, so the exchange does not say which users exist.
        let credential = match self.users.get(&user) {
            Some(c) => c.scram_keys(),
            None => Credential::scram_with(
                "",
                sha256(user.as_bytes())[..SALT_LEN].to_vec(),
                self.users.unknown_user_iterations(),
            ),
        };
        let Credential::Scram {
            iterations, salt, ..
        } = &credential
        else {
            return refuse("no SCRAM keys");
        };
        let mut ours = [0u8; 18];
        if ring::rand::SystemRandom::new().fill(&mut ours).is_err() {
            return refuse("no randomness for a nonce");
        }
        let nonce = format!("{client_nonce}{}", B64.encode(ours));
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        self.scram = Some(Scram {
            user,
            credential,
            auth_message: format!("{bare},{server_first},"),
            nonce,
        });
        SaslStep::Challenge(Bytes::from(server_first))
    }

    fn scram_final(&mut self, message: &[u8]) -> SaslStep {
        let refuse = |why: &str| SaslStep::Refused(format!("SCRAM-SHA-256: {why}"));
        let Some(scram) = self.scram.take() else {
            return refuse("client-final-message before client-first");
        };
        let Ok(text) = std::str::from_utf8(message) else {
            return refuse("client-final-message is not UTF-8");
        };
        let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
            return refuse("client-final-message without a proof");
        };
        let nonce_ok = without_proof
            .split(',')
            .any(|a| a.strip_prefix("r=") == Some(scram.nonce.as_str()));
        if !nonce_ok {
            return refuse("the nonce does not match");
        }
        let Ok(proof) = B64.decode(proof) else {
            return refuse("the proof is not base64");
        };
        let Credential::Scram {
            stored_key,
            server_key,
            ..
        } = &scram.credential
        else {
            return refuse("no SCRAM keys");
        };
        let auth_message = format!("{}{without_proof}", scram.auth_message);
        let signature = hmac_sha256(stored_key, auth_message.as_bytes());
        if proof.len() != KEY_LEN {
            return refuse("authentication failed");
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        if !same(&sha256(&client_key), stored_key) || self.users.get(&scram.user).is_none() {
            return SaslStep::Refused("authentication failed".into());
        }
        let server_signature = hmac_sha256(server_key, auth_message.as_bytes());
        SaslStep::Done {
            user: scram.user,
            additional: Some(Bytes::from(format!("v={}", B64.encode(server_signature)))),
        }
    }
}

impl SaslServer for Logins {
    fn start(&mut self, mechanism: &str, initial: &[u8]) -> SaslStep {
        match mechanism {
            "ANONYMOUS" if !self.auth => SaslStep::Done {
                user: "anonymous".into(),
                additional: None,
            },
            "PLAIN" => {
                // [authzid] NUL authcid NUL password, exactly; an authzid other
                // than the user would be acting as someone else.
                let parts: Vec<&[u8]> = initial.split(|b| *b == 0).collect();
                let [authzid, user, pass] = parts[..] else {
                    return SaslStep::Refused(
                        "PLAIN: expected authzid NUL user NUL password".into(),
                    );
                };
                let (Ok(user), Ok(pass)) = (std::str::from_utf8(user), std::str::from_utf8(pass))
                else {
                    return SaslStep::Refused("PLAIN: user and password must be UTF-8".into());
                };
                if !authzid.is_empty() && authzid != user.as_bytes() {
                    return SaslStep::Refused(
                        "PLAIN: acting as another user is not supported".into(),
                    );
                }
                if !self.auth || self.users.check(user, pass) {
                    SaslStep::Done {
                        user: user.to_owned(),
                        additional: None,
                    }
                } else {
                    SaslStep::Refused("authentication failed".into())
                }
            }
            SCRAM_SHA_256 => self.scram_first(initial),
            _ => SaslStep::Refused("mechanism not supported".into()),
        }
    }

    fn respond(&mut self, response: &[u8]) -> SaslStep {
        self.scram_final(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_and_clear_lines_both_check_and_the_hash_hides_the_password() {
        let mut users = Users::parse("alice:secret\n# comment\n\n").expect("parses");
        users.insert("bob", Credential::scram("hunter2").expect("salted"));
        let text = users.to_text();
        assert!(!text.contains("hunter2"), "{text}");
        let users = Users::parse(&text).expect("reparses");
        assert!(users.check("alice", "secret") && !users.check("alice", "Secret"));
        assert!(users.check("bob", "hunter2") && !users.check("bob", "hunter3"));
        assert!(!users.check("carol", ""));
        assert_eq!(users.plain_count(), 1);
        assert!(format!("{users:?}").contains("***") && !format!("{users:?}").contains("secret"));
    }

    #[test]
    fn a_bad_line_is_named() {
        for (text, says) in [
            ("nocolon\n", "line 1"),
            ("ok:pw\n:pw\n", "line 2: no user name"),
            ("u:scram-sha-256:0:AA==:AA==:AA==\n", "iterations"),
            ("u:scram-sha-256:4096:AA==:AA==\n", "needs ITERATIONS"),
            ("u:scram-sha-256:4096:AA==:!!:AA==\n", "stored key"),
        ] {
            let e = Users::parse(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    /// RFC 7677's example exchange, as a client would compute it.
    fn client_proof(password: &str, salt: &[u8], iterations: u32, auth_message: &str) -> String {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let signature = hmac_sha256(&sha256(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        B64.encode(proof)
    }

    fn exchange(users: &Users, user: &str, password: &str) -> SaslStep {
        let mut logins = Logins::new(Arc::new(users.clone()), true);
        let first = format!("n,,n={user},r=rOprNGfwEbeRWgbNEkqO");
        let SaslStep::Challenge(server_first) = logins.start(SCRAM_SHA_256, first.as_bytes())
        else {
            panic!("no challenge");
        };
        let server_first = String::from_utf8(server_first.to_vec()).expect("text");
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(k))
                .expect("field")
                .to_owned()
        };
        let (nonce, salt, iterations) = (field("r="), field("s="), field("i="));
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", &first[3..]);
        let proof = client_proof(
            password,
            &B64.decode(salt).expect("salt"),
            iterations.parse().expect("iterations"),
            &auth_message,
        );
        logins.respond(format!("{without_proof},p={proof}").as_bytes())
    }

    #[test]
    fn an_unknown_user_is_challenged_with_the_iterations_of_the_known_ones() {
        let iterations = |users: &str, who: &str| {
            let users = Users::parse(users).expect("parses");
            let mut logins = Logins::new(Arc::new(users), true);
            let first = format!("n,,n={who},r=abc");
            let SaslStep::Challenge(server_first) = logins.start(SCRAM_SHA_256, first.as_bytes())
            else {
                panic!("no challenge");
            };
            let text = String::from_utf8(server_first.to_vec()).expect("text");
            text.rsplit_once(",i=").expect("i=").1.to_owned()
        };
        let one = "u:scram-sha-256:1:dGFuZGVtLWZ1enotc2FsdA==:\
                   VGekg1fUKj72YoS981METOWOpQzLhiCIVuUHhTepsMA=:\
                   i1ij3ihhX+WQ17wXPbvMMRf9Ymv0bw8bltS8rRVbQDU=\n";
        assert_eq!(iterations(one, "u"), "1");
        assert_eq!(iterations(one, "nobody"), "1");
        assert_eq!(iterations("", "nobody"), ITERATIONS.to_string());
        assert_eq!(iterations("clear:pw\n", "nobody"), ITERATIONS.to_string());
    }

    #[test]
    fn scram_logs_in_with_the_right_password_only_and_proves_the_server() {
        let mut users = Users::parse("clear:pencil\n").expect("parses");
        users.insert("user", Credential::scram("pencil").expect("salted"));
        for who in ["user", "clear"] {
            match exchange(&users, who, "pencil") {
                SaslStep::Done { user, additional } => {
                    assert_eq!(user, who);
                    assert!(additional.is_some_and(|v| v.starts_with(b"v=")));
                }
                other => panic!("{who}: {other:?}"),
            }
            assert!(matches!(
                exchange(&users, who, "crayon"),
                SaslStep::Refused(_)
            ));
        }
        assert!(matches!(
            exchange(&users, "nobody", "pencil"),
            SaslStep::Refused(_)
        ));
        let mut logins = Logins::new(Arc::new(users), true);
        assert!(matches!(
            logins.start(SCRAM_SHA_256, b"p=tls-unique,,n=user,r=x"),
            SaslStep::Refused(_)
        ));
        assert!(matches!(
            logins.respond(b"c=biws,r=x,p=AAAA"),
            SaslStep::Refused(_)
        ));
    }
}
