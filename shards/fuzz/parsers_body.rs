// The bodies of the `broker_url`, `users_file` and `sasl_login` fuzz
// targets, shared with their stable stand-in `shards/tests/fuzz_parsers.rs`:
// both `include!` this file, so it names its own imports.

/// A broker URL: parsing never panics, and what parses prints as a URL that
/// parses to the same thing.
fn broker_url_body(data: &[u8]) {
    use tandem_shards::url::BrokerUrl;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = text.parse::<BrokerUrl>() {
        let again: BrokerUrl = url
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{url} printed from {text:?} does not parse: {e}"));
        assert_eq!(again, url, "{text:?}");
    }
}

/// A users file: parsing never panics, and what parses writes back as a file
/// that parses to the same users.
fn users_file_body(data: &[u8]) {
    use tandem_shards::users::Users;
    let text = String::from_utf8_lossy(data);
    if let Ok(users) = Users::parse(&text) {
        let written = users.to_text();
        let again = Users::parse(&written).unwrap_or_else(|e| panic!("{written:?}: {e}"));
        assert_eq!(again.names(), users.names());
        for name in users.names() {
            assert!(again.get(&name) == users.get(&name), "{name}");
        }
    }
}

/// A SASL exchange with the broker's logins (PLAIN and SCRAM-SHA-256 for one
/// user whose password is "pw"): `data[0]` picks the mechanism, then the rest
/// splits at the first 0xff into the initial message and the response to a
/// challenge. Nothing panics; success needs the right password.
///
/// The user's credential is salted with 1 iteration, not `tandem-passwd`'s
/// 4096: a login checks the same way whatever the count, and 4096 rounds of
/// PBKDF2 per PLAIN login or SCRAM challenge were nearly all the target's time.
fn sasl_login_body(data: &[u8]) {
    use std::sync::Arc;
    use tandem_shards::amqp::connection::{SaslServer, SaslStep};
    use tandem_shards::users::{Logins, Users};
    thread_local! {
        static USERS: Arc<Users> = Arc::new(
            Users::parse(
                "u:scram-sha-256:1:dGFuZGVtLWZ1enotc2FsdA==:\
                 VGekg1fUKj72YoS981METOWOpQzLhiCIVuUHhTepsMA=:\
                 i1ij3ihhX+WQ17wXPbvMMRf9Ymv0bw8bltS8rRVbQDU=\n",
            )
            .expect("the fuzz user parses"),
        );
    }
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mechanism = ["PLAIN", "SCRAM-SHA-256", "ANONYMOUS", "X"][usize::from(pick % 4)];
    let (first, second) = match rest.iter().position(|b| *b == 0xff) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let mut logins = Logins::new(USERS.with(Arc::clone), true);
    let step = logins.start(mechanism, first);
    let step = match (step, second) {
        (SaslStep::Challenge(_), Some(response)) => logins.respond(response),
        (step, _) => step,
    };
    if let SaslStep::Done { user, .. } = step {
        // Only PLAIN with the password, or a SCRAM proof (which random bytes
        // cannot forge), gets in.
        assert_eq!(mechanism, "PLAIN", "{data:?}");
        assert_eq!(user, "u", "{data:?}");
        assert!(first == b"\0u\0pw" || first == b"u\0u\0pw", "{data:?}");
    }
}

/// An ACL file: parsing never panics, and what parses answers questions
/// without panicking.
fn acl_file_body(data: &[u8]) {
    use tandem_shards::acl::Rules;
    let text = String::from_utf8_lossy(data);
    if let Ok(rules) = Rules::parse(&text) {
        let _ = rules.checks_messages();
        let _ = rules.cluster_subjects();
        for user in [Some("alice"), Some("ha@QPID"), None] {
            let _ = rules.acts_as_cluster(user);
        }
    }
}
