//! Hosts made of network namespaces, for tests that cut networks under real
//! brokers: namespace `PREFIX-hI` per host, each with a `client` link (on a
//! bridge the clients reach) and a `cluster` link (on a bridge of the brokers'
//! own). The clients live in the root namespace (address 10.NET.1.254 on the
//! client bridge) or, with `clients_ns`, in a namespace of their own,
//! `PREFIX-cl`, with that address. Everything is removed on drop.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Runs `ip ARGS`; the error names the command and what it said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

pub fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// Runs `PROGRAM ARGS`; the error names the command and what it said.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Skips (with a note) where network namespaces cannot be made.
pub fn can_make_namespaces() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: network namespaces need root");
    }
    root
}

/// Makes `command` run in network namespace `netns` (made with `ip netns
/// add`).
pub fn in_netns(command: &mut Command, netns: &str) {
    let path = CString::new(format!("/run/netns/{netns}")).expect("a namespace name without NUL");
    // SAFETY: the closure runs between fork and exec and only calls open(2),
    // setns(2) and close(2), which are async-signal-safe, on a path made
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
}

/// The shape of a set of hosts: names and addresses.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Prefix of every namespace, link and bridge (a few letters: Linux
    /// allows 15 characters in a link name).
    pub prefix: &'static str,
    /// The second byte of the addresses: 10.NET.1.x clients, 10.NET.2.x
    /// cluster.
    pub net: u8,
    /// How many hosts.
    pub hosts: usize,
    /// The clients get a namespace of their own (else: the root namespace).
    pub clients_ns: bool,
}

impl Layout {
    pub fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// The clients' namespace, if they have one.
    pub fn clients_ns(&self) -> Option<String> {
        self.clients_ns.then(|| format!("{}-cl", self.prefix))
    }

    pub fn client_address(&self, i: usize) -> String {
        format!("10.{}.1.{}", self.net, i + 1)
    }

    pub fn cluster_address(&self, i: usize) -> String {
        format!("10.{}.2.{}", self.net, i + 1)
    }

    fn bridge(&self, net: &str) -> String {
        format!("{}-b{net}", self.prefix)
    }

    /// Makes the hosts (removing leftovers of an earlier run first).
    pub fn make(self) -> Hosts {
        let hosts = Hosts { layout: self };
        hosts.remove();
        for net in ["c", "k"] {
            ip_ok(&["link", "add", &self.bridge(net), "type", "bridge"]);
            ip_ok(&["link", "set", &self.bridge(net), "up"]);
        }
        let clients_address = format!("10.{}.1.254/24", self.net);
        match self.clients_ns() {
            None => ip_ok(&["addr", "add", &clients_address, "dev", &self.bridge("c")]),
            Some(ns) => {
                ip_ok(&["netns", "add", &ns]);
                ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
                self.plug(&ns, "cl", "c", "client", &clients_address);
            }
        }
        for i in 0..self.hosts {
            let ns = self.ns(i);
            ip_ok(&["netns", "add", &ns]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            let client = format!("{}/24", self.client_address(i));
            let cluster = format!("{}/24", self.cluster_address(i));
            self.plug(&ns, &format!("c{i}"), "c", "client", &client);
            self.plug(&ns, &format!("k{i}"), "k", "cluster", &cluster);
        }
        hosts
    }

    /// A veth pair from bridge `net` (outside end `PREFIX-OUTSIDE`) into
    /// namespace `ns` (inside end `inside`, with `address`).
    fn plug(&self, ns: &str, outside: &str, net: &str, inside: &str, address: &str) {
        let outside = format!("{}-{outside}", self.prefix);
        ip_ok(&[
            "link", "add", &outside, "type", "veth", "peer", "name", inside, "netns", ns,
        ]);
        ip_ok(&["link", "set", &outside, "master", &self.bridge(net), "up"]);
        ip_ok(&["-n", ns, "addr", "add", address, "dev", inside]);
        ip_ok(&["-n", ns, "link", "set", inside, "up"]);
    }
}

/// Hosts made from a [`Layout`]; removed on drop.
pub struct Hosts {
    pub layout: Layout,
}

impl Hosts {
    /// Host `i`'s cluster link goes down (up again with `heal`).
    pub fn cut(&self, i: usize) {
        self.link(i, "cluster", "down");
    }

    /// Host `i` is unreachable from everywhere: both its links go down.
    pub fn isolate(&self, i: usize) {
        self.cut(i);
        self.cut_clients(i);
    }

    pub fn heal(&self, i: usize) {
        self.link(i, "cluster", "up");
    }

    /// Host `i`'s client link goes down: the clients cannot reach it, the
    /// other brokers still can.
    pub fn cut_clients(&self, i: usize) {
        self.link(i, "client", "down");
    }

    pub fn heal_clients(&self, i: usize) {
        self.link(i, "client", "up");
    }

    fn link(&self, i: usize, name: &str, state: &str) {
        ip_ok(&["-n", &self.layout.ns(i), "link", "set", name, state]);
    }

    /// An asymmetric cut: what host `i` sends on its cluster link is
    /// dropped (an nftables rule in its namespace); what it receives still
    /// arrives. Needs `nft` (package nftables).
    pub fn drop_outgoing(&self, i: usize) -> Result<(), String> {
        let ns = self.layout.ns(i);
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns, "nft"];
            all.extend_from_slice(args);
            ip(&all)
        };
        nft(&["add", "table", "inet", "tandem-cut"])?;
        nft(&[
            "add",
            "chain",
            "inet",
            "tandem-cut",
            "out",
            "{",
            "type",
            "filter",
            "hook",
            "output",
            "priority",
            "0",
            ";",
            "}",
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            "tandem-cut",
            "out",
            "oifname",
            "cluster",
            "drop",
        ])
    }

    /// Undoes [`Hosts::drop_outgoing`].
    pub fn allow_outgoing(&self, i: usize) -> Result<(), String> {
        ip(&[
            "netns",
            "exec",
            &self.layout.ns(i),
            "nft",
            "delete",
            "table",
            "inet",
            "tandem-cut",
        ])
    }

    fn remove(&self) {
        let layout = &self.layout;
        let mut namespaces: Vec<(String, Vec<String>)> = (0..layout.hosts)
            .map(|i| {
                let outside = ["c", "k"].map(|net| format!("{}-{net}{i}", layout.prefix));
                (layout.ns(i), outside.to_vec())
            })
            .collect();
        if let Some(ns) = layout.clients_ns() {
            namespaces.push((ns, vec![format!("{}-cl", layout.prefix)]));
        }
        for (ns, links) in namespaces {
            let _ = ip(&["netns", "del", &ns]);
            // The pairs go with their namespace only once nothing runs in it.
            for link in links {
                let _ = ip(&["link", "del", &link]);
            }
        }
        for net in ["c", "k"] {
            let _ = ip(&["link", "del", &layout.bridge(net)]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}
