//! An access-control list in qpidd's file syntax (the subset operators use),
//! as an [`AccessPolicy`]:
//!
//! ```text
//! group admins alice@QPID bob@QPID \
//!              carol@QPID
//! acl allow ha@QPID all all
//! acl allow admins all all
//! acl deny-log all publish exchange name=amq.direct routingkey=secret.#
//! acl allow all consume queue name=public*
//! acl deny all all
//! ```
//!
//! Rules are `acl PERMISSION SUBJECT ACTION [OBJECT [PROPERTY=VALUE ...]]`:
//! permission `allow`, `deny`, `allow-log` or `deny-log`; subject a user, a
//! group or `all`; action `access`, `consume`, `publish`, `create`, `delete`,
//! `bind`, `unbind`, `purge`, `update` or `all`; object `broker`,
//! `connection`, `queue`, `exchange`, `method`, `link` or `all`; properties
//! `name` (a trailing `*` matches any rest), `durable` (true or false) and
//! `routingkey` (topic wildcards `*` and `#`). `group NAME MEMBER...` names
//! users and groups; a trailing `\` continues a line; `#` starts a comment
//! line. The first rule that matches decides; when none does, the request is
//! denied (so the file's last line, usually `acl allow|deny all all`, is the
//! default). A user matches with or without its `@realm`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::access::{Access, AccessPolicy, Principal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Access,
    Consume,
    Publish,
    Create,
    Delete,
    Bind,
    Unbind,
    Purge,
    Update,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    Broker,
    Connection,
    Queue,
    Exchange,
    Method,
    Link,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Property {
    Name(String),
    Durable(bool),
    RoutingKey(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    log: bool,
    /// `None`: `all`.
    subject: Option<String>,
    action: Action,
    object: Object,
    properties: Vec<Property>,
    line: usize,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    groups: HashMap<String, Vec<String>>,
    rules: Vec<Rule>,
}

/// What one request is, in the ACL's terms.
struct Request<'a> {
    action: Action,
    object: Object,
    name: Option<&'a str>,
    durable: Option<bool>,
    routing_key: Option<&'a str>,
}

fn bare(user: &str) -> &str {
    user.split_once('@').map_or(user, |(n, _)| n)
}

fn parse_action(word: &str) -> Option<Action> {
    Some(match word {
        "access" => Action::Access,
        "consume" => Action::Consume,
        "publish" => Action::Publish,
        "create" => Action::Create,
        "delete" => Action::Delete,
        "bind" => Action::Bind,
        "unbind" => Action::Unbind,
        "purge" => Action::Purge,
        "update" => Action::Update,
        "all" => Action::All,
        _ => return None,
    })
}

fn parse_object(word: &str) -> Option<Object> {
    Some(match word {
        "broker" => Object::Broker,
        "connection" => Object::Connection,
        "queue" => Object::Queue,
        "exchange" => Object::Exchange,
        "method" => Object::Method,
        "link" => Object::Link,
        "all" => Object::All,
        _ => return None,
    })
}

impl Rules {
    /// Reads an ACL file's text; an error names the line and what is wrong.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut out = Rules::default();
        let mut lines = text.lines().enumerate();
        while let Some((n, first)) = lines.next() {
            let number = n + 1;
            let mut line = first.trim_end().to_owned();
            while line.ends_with('\\') {
                line.pop();
                match lines.next() {
                    Some((_, more)) => {
                        line.push(' ');
                        line.push_str(more.trim());
                    }
                    None => {
                        return Err(format!(
                            "line {number}: '\\' continues past the end of the file"
                        ))
                    }
                }
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |why: String| format!("line {number}: {why}");
            match words.first().copied() {
                None => continue,
                Some(w) if w.starts_with('#') => continue,
                Some("group") => {
                    let Some(name) = words.get(1) else {
                        return Err(at("group without a name".into()));
                    };
                    if out.groups.contains_key(*name) {
                        return Err(at(format!("group '{name}' is defined twice")));
                    }
                    let members = words[2..].iter().map(|m| m.to_string()).collect();
                    out.groups.insert(name.to_string(), members);
                }
                Some("acl") => out.rules.push(parse_rule(&words[1..], number).map_err(at)?),
                Some(other) => {
                    return Err(at(format!(
                        "'{}' is neither acl nor group",
                        crate::shown::shown(other)
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Whether `user` is `subject`: the user itself, or in that group (or a
    /// group in it).
    fn is(&self, user: Option<&str>, subject: &str) -> bool {
        let Some(user) = user else {
            return false;
        };
        let mut seen = HashSet::new();
        self.member(bare(user), subject, &mut seen)
    }

    fn member<'a>(&'a self, user: &str, subject: &'a str, seen: &mut HashSet<&'a str>) -> bool {
        if bare(subject) == user && !self.groups.contains_key(subject) {
            return true;
        }
        let Some(members) = self.groups.get(subject) else {
            return false;
        };
        if !seen.insert(subject) {
            return false; // a group that contains itself
        }
        members.iter().any(|m| self.member(user, m, seen))
    }

    /// The first rule matching `request` by `user`.
    fn decide(&self, user: Option<&str>, request: &Request<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.subject.as_deref().is_none_or(|s| self.is(user, s))
                && (r.action == Action::All || r.action == request.action)
                && (r.object == Object::All
                    || r.object == request.object
                    || (r.object == Object::Broker && request.object == Object::Connection))
                && r.properties.iter().all(|p| match p {
                    Property::Name(pattern) => {
                        request.name.is_some_and(|n| name_matches(pattern, n))
                    }
                    Property::Durable(d) => request.durable == Some(*d),
                    Property::RoutingKey(pattern) => request
                        .routing_key
                        .is_some_and(|k| crate::exchange::topic_matches(pattern, k)),
                })
        })
    }

    /// Whether any rule looks at routing keys (then every message is asked).
    pub fn checks_messages(&self) -> bool {
        self.rules.iter().any(|r| {
            r.properties
                .iter()
                .any(|p| matches!(p, Property::RoutingKey(_)))
        })
    }

    /// Users (and groups) that hold the cluster's privileges: named (not
    /// `all`) by an allow rule without properties for `update broker`, `all
    /// broker`, `all all` or `create link`.
    pub fn cluster_subjects(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.allow && r.properties.is_empty())
            .filter(|r| {
                matches!(
                    (r.action, r.object),
                    (Action::Update, Object::Broker)
                        | (Action::All, Object::Broker)
                        | (Action::All, Object::All)
                        | (Action::Create, Object::Link)
                )
            })
            .filter_map(|r| r.subject.clone())
            .collect()
    }

    /// Whether `user` holds the cluster's privileges.
    pub fn acts_as_cluster(&self, user: Option<&str>) -> bool {
        self.cluster_subjects().iter().any(|s| self.is(user, s))
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn parse_rule(words: &[&str], line: usize) -> Result<Rule, String> {
    let (allow, log) = match words.first().copied() {
        Some("allow") => (true, false),
        Some("allow-log") => (true, true),
        Some("deny") => (false, false),
        Some("deny-log") => (false, true),
        Some(other) => {
            return Err(format!(
                "permission '{}' is not allow, deny, allow-log or deny-log",
                crate::shown::shown(other)
            ))
        }
        None => return Err("acl without a permission".into()),
    };
    let subject = match words.get(1).copied() {
        Some("all") => None,
        Some(s) => Some(s.to_owned()),
        None => return Err("acl without a subject (a user, a group or all)".into()),
    };
    let action = match words.get(2).copied() {
        Some(a) => parse_action(a).ok_or_else(|| {
            format!(
                "action '{}' is not one of access, consume, publish, create, delete, bind, unbind, purge, update, all",
                crate::shown::shown(a)
            )
        })?,
        None => return Err("acl without an action".into()),
    };
    let object = match words.get(3).copied() {
        Some(o) => parse_object(o).ok_or_else(|| {
            format!(
                "object '{}' is not one of broker, connection, queue, exchange, method, link, all",
                crate::shown::shown(o)
            )
        })?,
        None => Object::All,
    };
    let mut properties = Vec::new();
    for word in words.iter().skip(4) {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "property '{}' is not name=value",
                crate::shown::shown(word)
            ));
        };
        properties.push(match key {
            "name" | "queuename" => Property::Name(value.to_owned()),
            "routingkey" => Property::RoutingKey(value.to_owned()),
            "durable" => Property::Durable(match value {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(format!(
                        "durable={} must be true or false",
                        crate::shown::shown(value)
                    ))
                }
            }),
            other => {
                return Err(format!(
                    "property '{}' is not supported (name, durable, routingkey)",
                    crate::shown::shown(other)
                ))
            }
        });
    }
    Ok(Rule {
        allow,
        log,
        subject,
        action,
        object,
        properties,
        line,
    })
}

/// The management method that reads the ACL file again (entity type `acl`),
/// as qpidd names it.
pub const RELOAD_ACL_FILE: &str = "reloadACLFile";

/// An ACL file loaded as the broker's access policy, reloadable in place.
#[derive(Debug)]
pub struct Acl {
    path: PathBuf,
    rules: crate::swapped::Swapped<Rules>,
    /// Set at load: whether routing keys are ever looked at.
    checks_messages: bool,
}

impl Acl {
    /// Reads `path`; an error names the file, the line and what is wrong.
    pub fn load(path: &Path) -> Result<Acl, String> {
        let rules = read(path)?;
        Ok(Acl {
            path: path.to_owned(),
            checks_messages: rules.checks_messages(),
            rules: crate::swapped::Swapped::new(rules),
        })
    }

    /// Reads the file again; on an error the rules in use stay. (Rules that
    /// start looking at routing keys only take effect at the next start.)
    pub fn reload(&self) -> Result<usize, String> {
        let fresh = read(&self.path)?;
        let n = fresh.rules.len();
        self.rules.set(fresh);
        Ok(n)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&Rules) -> T) -> T {
        f(&self.rules.get())
    }
}

fn read(path: &Path) -> Result<Rules, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("acl-file {}: {e}", path.display()))?;
    Rules::parse(&text).map_err(|e| format!("acl-file {}: {e}", path.display()))
}

/// `what` in the ACL's terms.
fn request<'a>(what: &Access<'a>) -> Request<'a> {
    let plain = |action, object, name| Request {
        action,
        object,
        name,
        durable: None,
        routing_key: None,
    };
    match *what {
        Access::Connect { .. } => plain(Action::Access, Object::Connection, None),
        Access::Publish { node } => plain(Action::Publish, Object::Exchange, Some(node)),
        Access::Consume { node, .. } => plain(Action::Consume, Object::Queue, Some(node)),
        Access::Send { node, subject } => Request {
            action: Action::Publish,
            object: Object::Exchange,
            name: Some(node),
            durable: None,
            routing_key: Some(subject.unwrap_or("")),
        },
        // qpidd checks a method call as `access method name=METHOD`, with
        // the method's own spelling (requests arrive upper-cased).
        Access::Manage {
            operation,
            entity_type: "acl",
            ..
        } => {
            let method = if operation.eq_ignore_ascii_case(RELOAD_ACL_FILE) {
                RELOAD_ACL_FILE
            } else {
                operation
            };
            plain(Action::Access, Object::Method, Some(method))
        }
        Access::Manage {
            operation,
            entity_type,
            name,
            durable,
        } => {
            let object = match entity_type {
                "queue" => Object::Queue,
                "exchange" => Object::Exchange,
                "binding" => Object::Exchange,
                "broker" | "ha-broker" => Object::Broker,
                "connection" => Object::Connection,
                _ => Object::Method,
            };
            let action = match (operation, entity_type) {
                ("CREATE", "binding") => Action::Bind,
                ("DELETE", "binding") => Action::Unbind,
                ("CREATE", _) => Action::Create,
                ("DELETE", _) => Action::Delete,
                ("PURGE", _) => Action::Purge,
                ("READ" | "QUERY", _) => Action::Access,
                _ => Action::Update,
            };
            Request {
                durable,
                ..plain(action, object, name)
            }
        }
    }
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Access => "access",
        Action::Consume => "consume",
        Action::Publish => "publish",
        Action::Create => "create",
        Action::Delete => "delete",
        Action::Bind => "bind",
        Action::Unbind => "unbind",
        Action::Purge => "purge",
        Action::Update => "update",
        Action::All => "all",
    }
}

fn object_word(o: Object) -> &'static str {
    match o {
        Object::Broker => "broker",
        Object::Connection => "connection",
        Object::Queue => "queue",
        Object::Exchange => "exchange",
        Object::Method => "method",
        Object::Link => "link",
        Object::All => "all",
    }
}

impl AccessPolicy for Acl {
    fn check(&self, who: &Principal<'_>, what: &Access<'_>) -> Result<(), String> {
        // The management node's links are not asked about: each request on
        // them is. A temporary (dynamic) queue is the connection's own and
        // goes with it (management tools' reply queues).
        match what {
            Access::Publish { node } | Access::Consume { node, .. } | Access::Send { node, .. }
                if *node == crate::management::NODE =>
            {
                return Ok(())
            }
            Access::Consume { dynamic: true, .. } => return Ok(()),
            _ => {}
        }
        let request = request(what);
        let user = who.user.unwrap_or("anonymous");
        let (allowed, log, line) = self.with(|rules| match rules.decide(Some(user), &request) {
            Some(rule) => (rule.allow, rule.log, Some(rule.line)),
            None => (false, false, None),
        });
        let described = || {
            let mut text = format!(
                "ACL: user '{}' may not {} {}",
                crate::shown::shown(user),
                action_word(request.action),
                object_word(request.object)
            );
            if let Some(name) = request.name {
                text.push_str(&format!(" '{}'", crate::shown::shown(name)));
            }
            if let Some(key) = request.routing_key {
                text.push_str(&format!(" with routing key '{}'", crate::shown::shown(key)));
            }
            match line {
                Some(line) => text.push_str(&format!(" (rule at line {line})")),
                None => text.push_str(" (no rule allows it)"),
            }
            text
        };
        if log {
            tracing::info!(
                "ACL: {} user '{}' {} {} {:?} (rule at line {})",
                if allowed { "allowed" } else { "denied" },
                crate::shown::shown(user),
                action_word(request.action),
                object_word(request.object),
                request.name.map(crate::shown::shown),
                line.unwrap_or(0)
            );
        }
        if allowed {
            Ok(())
        } else {
            Err(described())
        }
    }

    fn checks_messages(&self) -> bool {
        self.checks_messages
    }

    fn acts_as_cluster(&self, user: Option<&str>) -> Option<bool> {
        Some(self.with(|rules| rules.acts_as_cluster(user)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# the seeds' HA user, and a group
group admins alice@QPID \\
             bob
acl allow ha@QPID all all
acl allow admins all all
acl deny-log all publish exchange name=amq.topic routingkey=secret.#
acl allow all publish exchange
acl allow all consume queue name=public*
acl allow all access connection
acl deny all all
";

    fn check(rules: &Rules, user: &str, what: Access<'_>) -> bool {
        rules
            .decide(Some(user), &request(&what))
            .is_some_and(|r| r.allow)
    }

    #[test]
    fn first_match_wins_groups_and_wildcards_apply() {
        let r = Rules::parse(FILE).expect("parses");
        let consume = |node| Access::Consume {
            node,
            browse: false,
            dynamic: false,
        };
        assert!(check(&r, "eve", consume("public-news")));
        assert!(!check(&r, "eve", consume("payroll")));
        assert!(check(&r, "bob@QPID", consume("payroll")), "bob is an admin");
        assert!(
            check(&r, "alice", consume("payroll")),
            "alice@QPID matches alice"
        );
        let send = |subject| Access::Send {
            node: "amq.topic",
            subject: Some(subject),
        };
        assert!(!check(&r, "eve", send("secret.plans")));
        assert!(check(&r, "eve", send("public.plans")));
        assert!(check(&r, "eve", Access::Connect { properties: None }));
        let create = |durable| Access::Manage {
            operation: "CREATE",
            entity_type: "queue",
            name: Some("q"),
            durable,
        };
        assert!(!check(&r, "eve", create(None)));
        let durable_only = Rules::parse(
            "acl allow all create queue durable=true
acl deny all all
",
        )
        .expect("parses");
        assert!(check(&durable_only, "eve", create(Some(true))));
        assert!(!check(&durable_only, "eve", create(Some(false))));
        assert!(!check(&durable_only, "eve", create(None)));
        assert!(r.checks_messages());
    }

    #[test]
    fn only_named_subjects_with_the_right_rules_act_as_the_cluster() {
        let r = Rules::parse(FILE).expect("parses");
        assert!(r.acts_as_cluster(Some("ha")));
        assert!(r.acts_as_cluster(Some("alice@QPID")), "admins have all all");
        assert!(!r.acts_as_cluster(Some("eve")));
        assert!(!r.acts_as_cluster(None));
        // `all` subjects and access-only rules never grant it.
        let r = Rules::parse("acl allow all all\nacl allow eve access broker\n").expect("parses");
        assert!(!r.acts_as_cluster(Some("eve")));
        assert!(!r.acts_as_cluster(Some("anyone")));
        let r = Rules::parse("acl allow link-user create link\n").expect("parses");
        assert!(r.acts_as_cluster(Some("link-user")));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, says) in [
            ("acl permit all all\n", "line 1: permission 'permit'"),
            ("acl allow\n", "without a subject"),
            ("\nacl allow all fly\n", "line 2: action 'fly'"),
            ("acl allow all all moon\n", "object 'moon'"),
            ("acl allow all all queue colour=red\n", "property 'colour'"),
            ("acl allow all all queue durable=maybe\n", "durable=maybe"),
            ("acl allow all all queue name\n", "not name=value"),
            (
                "group g a\ngroup g b\n",
                "line 2: group 'g' is defined twice",
            ),
            ("group g a \\", "continues past the end"),
            ("permit all\n", "neither acl nor group"),
        ] {
            let e = Rules::parse(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_group_that_contains_itself_does_not_loop() {
        let r = Rules::parse("group a b\ngroup b a\nacl allow a all\n").expect("parses");
        assert!(!check(&r, "c", Access::Connect { properties: None }));
    }
}
