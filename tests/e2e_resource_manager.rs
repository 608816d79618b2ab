//! The resource-manager integration with the real scripts: the test plays
//! rgmanager (per-node `tandemd` services restarted in place, one relocatable
//! `tandemd-primary` service carrying the clients' virtual IP, as in
//! `config/cluster.conf`) on three network namespaces, and plays Pacemaker's
//! resource executor with the OCF agent `scripts/ocf/tandem`, including
//! `ocf-tester` from Debian's `resource-agents`.
//!
//! The namespace test needs root and `ip`, and says so and passes without them.
//! The OCF tests need `ocf-tester` and `xmllint` (`scripts/test` installs
//! `resource-agents` and `libxml2-utils`).

mod common;
mod ha_cluster;
mod resource_manager;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{spawn_python, wait_until, ClientProcess, TempDir};
use ha_cluster::{connections, now, serial, settlements, signal, stdout, tool, STATUS_DEADLINE};
use resource_manager::{Cluster, OcfBrokers, Pacemaker, ScriptRun, PACEMAKER_DEADLINE};

/// How long the Proton clients may run before they give up.
const CLIENT_TIMEOUT: &str = "120";

/// Messages the client publishes (and consumes) through the fail-over.
const MESSAGES: usize = 2000;

/// How long, after the kill, the relocated service may take to settle a message.
const SERVICE_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn rgmanager_relocates_the_primary_and_its_virtual_ip_after_kill_9_and_no_settled_message_is_lost()
{
    if let Some(why) = resource_manager::unavailable() {
        eprintln!("SKIPPED rgmanager_relocates_the_primary...: {why}");
        return;
    }
    let _serial = serial();
    let cluster = Cluster::create();
    let [node1, node2, node3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

    // rgmanager starts the per-node services, then the primary service on one
    // node: its <ip> resource first, then its <script>.
    for node in &cluster.nodes {
        node.expect("tandemd", "start", 0);
        node.expect("tandemd", "status", 0);
        node.expect("tandemd-primary", "status", 3);
    }
    node1.add_vip(&cluster.vip);
    node1.expect("tandemd-primary", "start", 0);
    node1.expect("tandemd-primary", "status", 0);
    for node in [node2, node3] {
        let ready = wait_until(STATUS_DEADLINE, || {
            common::tools::status_is(&node.url(), "ready")
        });
        assert!(ready, "{} did not become a ready backup", node.name);
        node.expect("tandemd-primary", "status", 3);
    }
    assert_eq!(hook_saw(node1), "joining", "node1's pre-promote hook");

    // A client of the virtual IP only, consuming and publishing.
    let vip_url = format!("{}:{}", cluster.vip, resource_manager::PORT);
    let (sender, receiver) = publish_and_consume(&vip_url, "rm-orders");

    // kill -9 of the primary broker.
    let pid = node1.broker_pid().expect("node1's pid file");
    signal(pid, libc::SIGKILL);
    let killed = Instant::now();
    let t_kill = now();

    // rgmanager's status poll notices the primary service has failed...
    let detected = wait_until(SERVICE_DEADLINE, || {
        node1.script("tandemd-primary", "status").code != Some(0)
    });
    assert!(detected, "tandemd-primary status still 0 after the kill");
    let detection = killed.elapsed();
    // ...and relocates it: stop on the failed node (script, then ip), start
    // on the next node (ip, then script).
    node1.expect("tandemd-primary", "stop", 0);
    node1.del_vip(&cluster.vip);
    node2.add_vip(&cluster.vip);
    let started = node2.expect("tandemd-primary", "start", 0);
    let promoted = killed.elapsed();
    assert!(
        started.output.contains("is primary"),
        "tandemd-primary start on node2: {}",
        started.output
    );
    assert_eq!(hook_saw(node2), "ready", "node2's pre-promote hook");

    // The per-node service of node1 failed too: rgmanager restarts it there.
    let status = node1.script("tandemd", "status");
    assert_eq!(
        status.code,
        Some(1),
        "node1 tandemd status: {}",
        status.output
    );
    node1.expect("tandemd", "restart", 0);

    let (reconnected, kill_to_service) = time_to_service(&sender, t_kill);
    println!(
        "rgmanager fail-over after kill -9: detected {:.3}s, promoted {:.3}s, \
         publisher reconnected {reconnected:.3}s, first settlement {kill_to_service:.3}s",
        detection.as_secs_f64(),
        promoted.as_secs_f64()
    );

    // The publisher only ever used the virtual IP, and reconnected through it.
    let used = connections(&sender);
    assert!(
        used.len() >= 2 && used.iter().all(|(url, _)| url.contains(&cluster.vip)),
        "publisher connections: {used:?}"
    );

    expect_every_message(sender, receiver);

    // The restarted node1 is a ready backup of node2, and only node2 is primary.
    let ready = wait_until(STATUS_DEADLINE, || {
        common::tools::status_is(&node1.url(), "ready")
    });
    assert!(ready, "node1's restarted broker did not become ready");
    node2.expect("tandemd-primary", "status", 0);
    node1.expect("tandemd-primary", "status", 3);
    node3.expect("tandemd-primary", "status", 3);
}

/// Starts a consumer of `queue` (waiting until it is attached), then a publisher
/// of [`MESSAGES`] numbered messages, both failing over along `urls`; returns
/// once the publisher has had 500 messages settled.
fn publish_and_consume(urls: &str, queue: &str) -> (ClientProcess, ClientProcess) {
    let count = MESSAGES.to_string();
    let common = [
        "--urls",
        urls,
        "--address",
        queue,
        "--timeout",
        CLIENT_TIMEOUT,
    ];
    let mut receiver = spawn_python("ha_recv.py", &[&common[..], &["--expect", &count]].concat());
    receiver.wait_ready();
    let publish = ["--count", &count, "--interval-ms", "3"];
    let mut sender = spawn_python("ha_send.py", &[&common[..], &publish].concat());
    sender.wait_for(Duration::from_secs(60), "500 settlements", |lines| {
        lines.iter().filter(|l| l.has("settled")).count() >= 500
    });
    (sender, receiver)
}

/// Seconds from `t_kill` until the publisher connected again, and until it had
/// its first message settled on that connection; panics if that takes longer
/// than [`SERVICE_DEADLINE`].
fn time_to_service(sender: &ClientProcess, t_kill: f64) -> (f64, f64) {
    let mut service = None;
    let served = wait_until(SERVICE_DEADLINE, || {
        let after = |t: &f64| *t > t_kill;
        let back = connections(sender).into_iter().map(|(_, t)| t).find(after);
        service = back.and_then(|back| {
            let settled = settlements(sender).into_iter().map(|(_, t)| t);
            settled.filter(|t| *t >= back).map(|t| (back, t)).next()
        });
        service.is_some()
    });
    assert!(
        served,
        "no settlement on a new connection within {SERVICE_DEADLINE:?} of the kill"
    );
    service.map_or((0.0, 0.0), |(c, s)| (c - t_kill, s - t_kill))
}

/// Waits for both clients to finish: every message settled, every message received.
fn expect_every_message(sender: ClientProcess, receiver: ClientProcess) {
    let sent = sender.wait();
    sent.assert_success();
    let summary = sent.summary();
    assert_eq!(summary["settled_unique"].as_u64(), Some(MESSAGES as u64));
    let received = receiver.wait();
    received.assert_success();
    let summary = received.summary();
    assert_eq!(
        summary["missing"].as_array().map(|m| m.len()),
        Some(0),
        "messages lost: {summary:?}"
    );
    assert_eq!(summary["received_unique"].as_u64(), Some(MESSAGES as u64));
}

/// What the pre-promote hook of `node` recorded as its broker's status.
fn hook_saw(node: &resource_manager::Node) -> String {
    fs::read_to_string(&node.hook_record)
        .unwrap_or_else(|e| panic!("{}: no pre-promote hook record: {e}", node.name))
        .trim()
        .to_owned()
}

/// Exit codes of OCF agents.
const OCF_SUCCESS: i32 = 0;
const OCF_ERR_GENERIC: i32 = 1;
const OCF_NOT_RUNNING: i32 = 7;
const OCF_RUNNING_PROMOTED: i32 = 8;

/// Panics naming the Debian packages when `program` is missing.
fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{program} is missing: apt-get install {package} (scripts/test installs it)"
    );
}

#[test]
fn the_ocf_agent_passes_ocf_tester_against_a_real_broker() {
    require("ocf-tester", "resource-agents");
    require("xmllint", "libxml2-utils");
    let _serial = serial();
    // A one-broker cluster: ocf-tester promotes and demotes the same instance,
    // and a joining broker with no peers may become the first primary.
    let brokers = OcfBrokers::new(1);
    // ocf-tester runs meta-data as user nobody, who may not reach the source
    // tree: test a copy (agent and library, in their layout) in the temp dir.
    let copy = TempDir::new("ocf-agent");
    for file in ["ocf/tandem", "lib/tandem-daemon.sh"] {
        let to = copy.join(file);
        fs::create_dir_all(to.parent().expect("a parent")).expect("creating the copy's dirs");
        fs::copy(resource_manager::scripts_dir().join(file), &to).expect("copying the agent");
    }
    let agent = copy.join("ocf/tandem");
    let mut command = Command::new("timeout");
    command.args(["-k", "5", "300", "ocf-tester", "-n", "tandem-ocf-tester"]);
    for (key, value) in &brokers.params {
        // ocf-tester sets no clone instance number: name instance 0's files.
        command.args(["-o", &format!("{key}={}", value.replace("{clone}", "0"))]);
    }
    let started = Instant::now();
    let out = command
        .arg(&agent)
        .output()
        .unwrap_or_else(|e| panic!("running ocf-tester: {e}"));
    let run = ScriptRun::from(out);
    assert!(
        run.code == Some(0) && run.output.contains("passed all tests"),
        "ocf-tester failed ({:?}):\n{}",
        run.code,
        run.output
    );
    println!(
        "ocf-tester passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // ocf-tester ends with stop: nothing may be left running.
    assert_eq!(brokers.ocf("monitor", 0).code, Some(OCF_NOT_RUNNING));
}

#[test]
fn the_ocf_agent_promotes_only_a_ready_broker_and_demotes_by_restarting() {
    require("ocf-tester", "resource-agents");
    let _serial = serial();
    let brokers = OcfBrokers::new(3);
    for i in 0..3 {
        brokers.expect("monitor", i, OCF_NOT_RUNNING);
        brokers.expect("start", i, OCF_SUCCESS);
        brokers.expect("monitor", i, OCF_SUCCESS);
    }
    // A brand-new cluster: every broker joining, the first promote is allowed.
    brokers.expect("promote", 0, OCF_SUCCESS);
    brokers.expect("monitor", 0, OCF_RUNNING_PROMOTED);
    for i in [1, 2] {
        let ready = wait_until(STATUS_DEADLINE, || {
            common::tools::status_is(&brokers.url(i), "ready")
        });
        assert!(ready, "instance {i} did not become ready");
        brokers.expect("monitor", i, OCF_SUCCESS);
    }

    // The primary dies: its monitor says so, Pacemaker's demote and stop of
    // the failed instance succeed, and it starts again as a joining backup.
    let pid = brokers.pid(0).expect("instance 0's pid file");
    signal(pid, libc::SIGKILL);
    brokers.expect("monitor", 0, OCF_NOT_RUNNING);
    brokers.expect("demote", 0, OCF_SUCCESS);
    brokers.expect("stop", 0, OCF_SUCCESS);
    brokers.expect("start", 0, OCF_SUCCESS);
    // It is not ready and the others are: promoting it is refused...
    let refused = brokers.ocf("promote", 0);
    assert_eq!(refused.code, Some(OCF_ERR_GENERIC), "{}", refused.output);
    assert!(
        refused.output.contains("was not promoted"),
        "{}",
        refused.output
    );
    brokers.expect("monitor", 0, OCF_SUCCESS);
    // ...and promoting a ready backup works; the restarted broker follows it.
    brokers.expect("promote", 1, OCF_SUCCESS);
    brokers.expect("monitor", 1, OCF_RUNNING_PROMOTED);
    let ready = wait_until(STATUS_DEADLINE, || {
        common::tools::status_is(&brokers.url(0), "ready")
    });
    assert!(ready, "the restarted instance 0 did not become ready");

    // Demoting the primary restarts it: it comes back a backup.
    let old_pid = brokers.pid(1);
    brokers.expect("demote", 1, OCF_SUCCESS);
    brokers.expect("monitor", 1, OCF_SUCCESS);
    assert_ne!(brokers.pid(1), old_pid, "demote did not restart the broker");
    brokers.expect("promote", 2, OCF_SUCCESS);
    brokers.expect("monitor", 2, OCF_RUNNING_PROMOTED);

    for i in 0..3 {
        brokers.expect("stop", i, OCF_SUCCESS);
        brokers.expect("monitor", i, OCF_NOT_RUNNING);
    }
}

#[test]
fn pacemaker_promotes_a_ready_clone_instance_after_kill_9_and_no_settled_message_is_lost() {
    if let Some(why) = Pacemaker::unavailable() {
        eprintln!("SKIPPED pacemaker_promotes...: {why}");
        return;
    }
    let _serial = serial();
    let brokers = OcfBrokers::new(3);
    let mut pacemaker = Pacemaker::start();
    pacemaker.load(&pacemaker_config(&brokers, &pacemaker.provider));

    // Pacemaker starts three instances and promotes one.
    let mut primary = None;
    let settled = wait_until(PACEMAKER_DEADLINE, || {
        let statuses: Vec<String> = (0..3).map(|i| ha_status(&brokers.url(i))).collect();
        let primaries: Vec<usize> = (0..3).filter(|&i| statuses[i] == "active").collect();
        let ready = statuses.iter().filter(|s| *s == "ready").count();
        primary = primaries.first().copied();
        primaries.len() == 1 && ready == 2
    });
    assert!(
        settled,
        "no active primary with two ready backups:\n{}",
        pacemaker.describe()
    );
    let old = primary.expect("a primary");

    let (sender, receiver) = publish_and_consume(&brokers.urls(), "pcmk-orders");
    let pid = brokers.pid(old).expect("the primary's pid file");
    signal(pid, libc::SIGKILL);
    let killed = Instant::now();
    let t_kill = now();

    // Pacemaker's monitor notices, recovers the instance and promotes another.
    let mut new = None;
    let promoted = wait_until(SERVICE_DEADLINE, || {
        new = (0..3).find(|&i| i != old && ha_status(&brokers.url(i)) == "active");
        new.is_some()
    });
    assert!(
        promoted,
        "no other instance promoted:\n{}",
        pacemaker.describe()
    );
    let promotion = killed.elapsed();
    let (reconnected, kill_to_service) = time_to_service(&sender, t_kill);
    println!(
        "pacemaker fail-over after kill -9: instance {old} -> {new:?} promoted {:.3}s, \
         publisher reconnected {reconnected:.3}s, first settlement {kill_to_service:.3}s",
        promotion.as_secs_f64()
    );
    expect_every_message(sender, receiver);

    // The killed instance was restarted by Pacemaker and is a ready backup.
    let ready = wait_until(PACEMAKER_DEADLINE, || {
        ha_status(&brokers.url(old)) == "ready"
    });
    assert!(
        ready,
        "instance {old} did not come back ready:\n{}",
        pacemaker.describe()
    );
    assert_ne!(
        brokers.pid(old),
        Some(pid),
        "instance {old} was not restarted"
    );
}

/// `config/pacemaker.crm` for three instances of the clone on this one node:
/// the test's provider and parameters, `clone-node-max=3` with unique
/// instances, and without the virtual IP (there is one node).
fn pacemaker_config(brokers: &OcfBrokers, provider: &str) -> String {
    let example = resource_manager::repo_path("config/pacemaker.crm");
    let example = fs::read_to_string(&example)
        .unwrap_or_else(|e| panic!("reading {}: {e}", example.display()));
    let brokers_part = example
        .split("# The clients' virtual IP")
        .next()
        .unwrap_or_default();
    let params: Vec<String> = brokers
        .params
        .iter()
        .map(|(key, value)| format!("{key}=\"{value}\""))
        .collect();
    let text = brokers_part
        .replace("ocf:tandem:tandem", &format!("ocf:{provider}:tandem"))
        .replace(
            "params config=\"/etc/tandem/tandemd.toml\" check_timeout=2",
            &format!("params {}", params.join(" ")),
        )
        .replace("clone-node-max=1", "clone-node-max=3 globally-unique=true");
    assert!(
        text.contains(&format!("ocf:{provider}:tandem")) && text.contains("globally-unique"),
        "config/pacemaker.crm changed shape:\n{text}"
    );
    format!("property stonith-enabled=false no-quorum-policy=ignore\n{text}")
}

/// `tandem-ha status` of a broker, or "" when it does not answer.
fn ha_status(url: &str) -> String {
    let out = tool("tandem-ha", &["-b", url, "status"], 2);
    if out.status.success() {
        stdout(&out)
    } else {
        String::new()
    }
}

#[test]
fn the_ocf_agent_checks_and_promotes_an_auth_broker_that_requires_encryption() {
    require("ocf-tester", "resource-agents");
    // The agent is given nothing but the config: the address (amqps:, the
    // TLS port, the cluster's user), the password and the TLS files all come
    // from the broker's own options.
    let certs = common::certs::Certs::new("ocf-tls");
    let users = certs.dir.join("users");
    fs::write(&users, "ha:secret\nalice:pw\n").expect("users file");
    let ssl_port = common::free_port();
    let brokers = OcfBrokers::with_config(1, |_| {
        format!(
            "auth = true\nusers-file = \"{}\"\nha-username = \"ha\"\nha-password = \"secret\"\n\
             require-encryption = true\nssl-port = {ssl_port}\nssl-cert-file = \"{}\"\n\
             ssl-key-file = \"{}\"\nssl-ca-file = \"{}\"\n",
            users.display(),
            certs.broker_cert.display(),
            certs.broker_key.display(),
            certs.ca.display()
        )
    });
    // Its replication address is its TLS port too (plain ones are refused).
    let config = brokers.path("tandemd-0.toml");
    let text = fs::read_to_string(&config).expect("config");
    let plain = format!("ha-brokers-url = \"127.0.0.1:{}\"", brokers.ports[0]);
    assert!(text.contains(&plain), "{text}");
    let text = text.replace(
        &plain,
        &format!("ha-brokers-url = \"ssl:127.0.0.1:{ssl_port}\""),
    );
    fs::write(&config, text).expect("config");

    brokers.expect("start", 0, OCF_SUCCESS);
    brokers.expect("monitor", 0, OCF_SUCCESS);
    brokers.expect("promote", 0, OCF_SUCCESS);
    brokers.expect("monitor", 0, OCF_RUNNING_PROMOTED);
    // What the agent had to get right: on the plain port nobody is let in,
    // and on the TLS port an ordinary user may not act as the cluster.
    let refused = tool("tandem-ha", &["-b", &brokers.url(0), "status"], 10);
    assert!(!refused.status.success(), "plain status answered");
    let ca = certs.ca.display().to_string();
    let alice = format!("amqps:alice/pw@127.0.0.1:{ssl_port}");
    let ordinary = tool(
        "tandem-ha",
        &["--ssl-trustfile", &ca, "-b", &alice, "status"],
        10,
    );
    assert!(
        String::from_utf8_lossy(&ordinary.stderr).contains("unauthorized-access"),
        "{ordinary:?}"
    );
    brokers.expect("stop", 0, OCF_SUCCESS);
    brokers.expect("monitor", 0, OCF_NOT_RUNNING);
}
