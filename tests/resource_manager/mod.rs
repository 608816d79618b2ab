//! Three "nodes" for the resource-manager tests: Linux network namespaces with
//! their own addresses, joined by a bridge in the test's own namespace, each
//! running `tandemd` under the real init scripts (`scripts/init.d/`), plus the
//! clients' virtual IP that the test moves between them as rgmanager's `<ip>`
//! resource does.
//!
//! Every name (namespaces, bridge, veth pairs) and the subnet are unique to the
//! test run, so parallel runs do not collide; [`Cluster`]'s drop stops the
//! brokers and removes everything it created. Needs root and `ip`
//! ([`Cluster::unavailable`] says why a machine cannot run it).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::{tandemd_path, TempDir};

/// The AMQP port of every broker: each node is its own network namespace, so
/// nothing else can hold it there.
pub const PORT: u16 = 5672;

/// Host number of the virtual IP in the nodes' subnet (the seeds' `.200`).
pub const VIP_HOST: u8 = 200;

/// How long one run of an init script may take before `timeout` kills it (the
/// scripts bound their own waits well below this).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);

/// The outcome of one init-script action.
pub struct ScriptRun {
    /// The LSB exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// stdout and stderr, for assertion messages.
    pub output: String,
}

impl From<Output> for ScriptRun {
    fn from(out: Output) -> ScriptRun {
        let stdout = String::from_utf8_lossy(&out.stdout);
        ScriptRun {
            code: out.status.code(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

/// Why this machine cannot run the namespace tests, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: creating network namespaces needs root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("no `ip` command (iproute2)".into()),
    }
}

/// Runs `ip ARGS`; panics with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS`, ignoring failure (clean-up of what may already be gone).
fn ip_quietly(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// A /24 of 10.0.0.0/8 that no interface of this namespace uses yet, as
/// `10.A.B`.
fn free_subnet(seed: u32) -> String {
    let used = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (0..1000u32)
        .map(|i| seed.wrapping_mul(2_654_435_761).wrapping_add(i * 7919))
        .map(|n| format!("10.{}.{}", 100 + (n >> 8) % 150, n % 250))
        .find(|prefix| !used.contains(&format!(" {prefix}.")))
        .expect("a free 10.x.y.0/24")
}

/// One node: a network namespace with address `10.A.B.N` on its `eth0`.
pub struct Node {
    /// `node1`, `node2`, `node3`, as in `config/cluster.conf`.
    pub name: String,
    /// The namespace the node's processes run in.
    pub netns: String,
    /// The node's own (replication) address.
    pub address: String,
    /// The host side of the node's veth pair, on the bridge.
    host_veth: String,
    /// The node's defaults file for the init scripts (`TANDEMD_DEFAULTS`).
    defaults: PathBuf,
    pidfile: PathBuf,
    log: PathBuf,
    /// Where this node's pre-promote hook records the status it saw.
    pub hook_record: PathBuf,
    /// Announcements still running (reaped on drop).
    background: Mutex<Vec<Child>>,
}

impl Node {
    /// Runs `scripts/init.d/SCRIPT ACTION` inside the node's namespace, as
    /// rgmanager runs a `<script>` resource.
    pub fn script(&self, script: &str, action: &str) -> ScriptRun {
        let path = scripts_dir().join("init.d").join(script);
        let deadline = SCRIPT_DEADLINE.as_secs().to_string();
        let out = Command::new("timeout")
            .args(["-k", "5", &deadline, "ip", "netns", "exec", &self.netns])
            .arg(&path)
            .arg(action)
            .env("TANDEMD_DEFAULTS", &self.defaults)
            .output()
            .unwrap_or_else(|e| panic!("running {} {action}: {e}", path.display()));
        ScriptRun::from(out)
    }

    /// Runs the script and asserts its exit code.
    pub fn expect(&self, script: &str, action: &str, code: i32) -> ScriptRun {
        let run = self.script(script, action);
        assert_eq!(
            run.code,
            Some(code),
            "{}: {script} {action} exited {:?}, expected {code}: {}\n--- log ---\n{}",
            self.name,
            run.code,
            run.output,
            self.log_tail()
        );
        run
    }

    /// `address:5672`, as clients and tandem-ha reach the node's broker.
    pub fn url(&self) -> String {
        format!("{}:{PORT}", self.address)
    }

    /// The pid the init script recorded for the node's broker.
    pub fn broker_pid(&self) -> Option<u32> {
        read_pid(&self.pidfile)
    }

    /// The last lines of the node's broker log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Puts the virtual IP on this node and announces it with a gratuitous ARP
    /// in the background, as rgmanager's `<ip>` resource does (arping waits a
    /// second after its packet); without `arping`, the test's own neighbour
    /// entry is flushed instead.
    pub fn add_vip(&self, vip: &str) {
        ip(&[
            "-n",
            &self.netns,
            "addr",
            "add",
            &format!("{vip}/24"),
            "dev",
            "eth0",
        ]);
        let arping = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "arping",
                "-q",
                "-U",
                "-c",
                "1",
            ])
            .args(["-I", "eth0", "-s", vip, vip])
            .spawn();
        match arping {
            Ok(child) => self.background.lock().unwrap().push(child),
            Err(_) => ip_quietly(&["neigh", "flush", "to", vip]),
        }
    }

    /// Takes the virtual IP off this node.
    pub fn del_vip(&self, vip: &str) {
        ip(&[
            "-n",
            &self.netns,
            "addr",
            "del",
            &format!("{vip}/24"),
            "dev",
            "eth0",
        ]);
    }
}

/// Three nodes on one bridge, each with a `tandemd` config derived from
/// `config/tandemd.toml` (the example's 20.0.20.x addresses mapped to this
/// run's subnet, so the virtual IP is `10.A.B.200`).
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The clients' virtual IP address.
    pub vip: String,
    /// The brokers' `ha-brokers-url`.
    pub brokers_url: String,
    bridge: String,
    /// Holds configs, data directories, logs and pid files; dropped last.
    dir: TempDir,
}

impl Cluster {
    /// Creates the bridge (with address `10.A.B.254` for the test's clients),
    /// the three namespaces and each node's config; starts nothing.
    pub fn create() -> Cluster {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names have at most 15 characters: "tdb" + 8 hex + index.
        let tag = format!("{:06x}{run:02x}", pid & 0xff_ffff);
        let subnet = free_subnet(pid ^ (run << 20));
        let dir = TempDir::new("resource-manager");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            vip: format!("{subnet}.{VIP_HOST}"),
            brokers_url: (1..=3)
                .map(|n| format!("{subnet}.{n}:{PORT}"))
                .collect::<Vec<_>>()
                .join(","),
            bridge: format!("tdb{tag}"),
            dir,
        };
        // From here on, drop removes whatever was made.
        let bridge = cluster.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let example = repo_path("config/tandemd.toml");
        let example = fs::read_to_string(&example)
            .unwrap_or_else(|e| panic!("reading {}: {e}", example.display()));
        for n in 1..=3 {
            let node = cluster.make_node(n, &subnet, &tag, &example);
            cluster.nodes.push(node);
        }
        cluster
    }

    fn make_node(&self, n: u8, subnet: &str, tag: &str, example: &str) -> Node {
        let name = format!("node{n}");
        let netns = format!("tandem-rm-{tag}-{name}");
        let host_veth = format!("tdv{tag}{n}");
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["link", "set", &host_veth, "master", &self.bridge, "up"]);
        let address = format!("{subnet}.{n}");
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);

        let home = self.dir.join(&name);
        fs::create_dir_all(home.join("data")).expect("creating the node's data dir");
        let config = home.join("tandemd.toml");
        let data_dir = home.join("data");
        let text = example.replace("20.0.20.", &format!("{subnet}.")).replace(
            "data-dir = \"/var/lib/tandem\"",
            &format!("data-dir = \"{}\"", data_dir.display()),
        );
        fs::write(&config, text).expect("writing the node's config");

        let hooks = home.join("pre-promote.d");
        fs::create_dir_all(&hooks).expect("creating the hook dir");
        let hook_record = home.join("pre-promote.status");
        let hook = hooks.join("10-record-status");
        fs::write(
            &hook,
            format!(
                "#!/bin/sh\n\"$TANDEM_HA\" -b \"$TANDEM_HA_BROKER\" status > {}\n",
                hook_record.display()
            ),
        )
        .expect("writing the hook");
        make_executable(&hook);

        let pidfile = home.join("tandemd.pid");
        let log = home.join("tandemd.log");
        let defaults = home.join("tandemd.default");
        let bin = Path::new(tandemd_path())
            .parent()
            .expect("the binaries' directory");
        fs::write(
            &defaults,
            format!(
                "TANDEMD={}\nTANDEM_HA={}\nTANDEMD_CONFIG={}\nTANDEMD_OPTIONS=\"--worker-threads 2\"\n\
                 TANDEMD_PIDFILE={}\nTANDEMD_LOG={}\nTANDEM_HA_TIMEOUT=2\n\
                 TANDEMD_PRE_PROMOTE_DIR={}\nTANDEMD_POST_PROMOTE_DIR={}\n",
                bin.join("tandemd").display(),
                bin.join("tandem-ha").display(),
                config.display(),
                pidfile.display(),
                log.display(),
                hooks.display(),
                home.join("post-promote.d").display(),
            ),
        )
        .expect("writing the defaults file");
        Node {
            name,
            netns,
            address,
            host_veth,
            defaults,
            pidfile,
            log,
            hook_record,
            background: Mutex::new(Vec::new()),
        }
    }

    /// Stops each node's broker with its init script, and kills whatever the
    /// pid files still name (only processes these scripts started).
    fn stop_brokers(&self) {
        for node in &self.nodes {
            let run = node.script("tandemd", "stop");
            if run.code != Some(0) {
                eprintln!("{}: tandemd stop: {}", node.name, run.output);
            }
            kill_broker(&node.pidfile);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("--- {} broker log ---\n{}", node.name, node.log_tail());
            }
        }
        self.stop_brokers();
        for node in &self.nodes {
            for mut child in node.background.lock().unwrap().drain(..) {
                let _ = child.kill();
                let _ = child.wait();
            }
            ip_quietly(&["link", "del", &node.host_veth]);
            ip_quietly(&["netns", "del", &node.netns]);
        }
        ip_quietly(&["link", "del", &self.bridge]);
    }
}

/// SIGKILL to the broker a pid file names, if it is still a tandemd of ours.
fn kill_broker(pidfile: &Path) {
    if let Some(pid) = read_pid(pidfile).filter(|pid| is_tandemd(*pid)) {
        crate::ha_cluster::signal(pid, libc::SIGKILL);
    }
}

/// The pid a pid file names.
fn read_pid(pidfile: &Path) -> Option<u32> {
    fs::read_to_string(pidfile)
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Whether `pid` runs the tandemd binary these tests built.
fn is_tandemd(pid: u32) -> bool {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let want = fs::canonicalize(tandemd_path()).unwrap_or_default();
    exe.to_string_lossy().trim_end_matches(" (deleted)") == want.to_string_lossy()
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A path in the source tree.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `scripts/` of the source tree.
pub fn scripts_dir() -> PathBuf {
    repo_path("scripts")
}

/// Brokers of one cluster on 127.0.0.1 run by the OCF agent, one per clone
/// instance: the agent's `{clone}` placeholder picks each instance's config,
/// pid file and log, as in a Pacemaker clone with several instances per node.
pub struct OcfBrokers {
    /// Each instance's port.
    pub ports: Vec<u16>,
    /// The agent's parameters (`OCF_RESKEY_name=value`), the same for every instance.
    pub params: Vec<(String, String)>,
    dir: TempDir,
}

impl OcfBrokers {
    /// Writes `count` members' configs (fresh ports, short HA intervals).
    pub fn new(count: usize) -> OcfBrokers {
        OcfBrokers::with_config(count, |_| String::new())
    }

    /// Like [`OcfBrokers::new`], with `more(i)` appended to instance `i`'s
    /// config.
    pub fn with_config(count: usize, more: impl Fn(usize) -> String) -> OcfBrokers {
        let dir = TempDir::new("ocf");
        let ports: Vec<u16> = (0..count).map(|_| crate::common::free_port()).collect();
        let url = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        for (i, port) in ports.iter().enumerate() {
            let config = format!(
                "port = {port}\ninterface = \"127.0.0.1\"\ndata-dir = \"{}\"\n\
                 worker-threads = 2\nha-cluster = true\nha-brokers-url = \"{url}\"\n\
                 ha-replicate = \"all\"\nlink-heartbeat-interval = 1\n\
                 link-maintenance-interval = 0.2\nha-backup-timeout = 3\n{}",
                dir.join(&format!("data-{i}")).display(),
                more(i)
            );
            fs::write(dir.join(&format!("tandemd-{i}.toml")), config).expect("writing a config");
        }
        let bin = Path::new(tandemd_path())
            .parent()
            .expect("the binaries' directory");
        let in_dir = |name: &str| dir.join(name).display().to_string();
        let params = [
            ("config", in_dir("tandemd-{clone}.toml")),
            ("pidfile", in_dir("tandemd-{clone}.pid")),
            ("log", in_dir("tandemd-{clone}.log")),
            ("binary", bin.join("tandemd").display().to_string()),
            ("tandem_ha", bin.join("tandem-ha").display().to_string()),
            ("pre_promote_dir", in_dir("pre-promote.d")),
            ("post_promote_dir", in_dir("post-promote.d")),
            ("check_timeout", "2".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        OcfBrokers { ports, params, dir }
    }

    /// `127.0.0.1:PORT` of instance `i`.
    pub fn url(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// Every instance's address, comma-separated (the clients' URL list).
    pub fn urls(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A directory of the instances' files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs the agent's `action` for clone instance `i`, as Pacemaker's
    /// executor does (OCF environment, the parameters as `OCF_RESKEY_*`).
    pub fn ocf(&self, action: &str, i: usize) -> ScriptRun {
        let agent = scripts_dir().join("ocf/tandem");
        let deadline = SCRIPT_DEADLINE.as_secs().to_string();
        let mut command = Command::new("timeout");
        command
            .args(["-k", "5", &deadline])
            .arg(&agent)
            .arg(action)
            .env("OCF_ROOT", "/usr/lib/ocf")
            .env("OCF_RESOURCE_INSTANCE", format!("tandem:{i}"))
            .env("OCF_RESKEY_CRM_meta_clone", i.to_string())
            .env("OCF_RESKEY_CRM_meta_timeout", "60000");
        for (key, value) in &self.params {
            command.env(format!("OCF_RESKEY_{key}"), value);
        }
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("running {} {action}: {e}", agent.display()));
        ScriptRun::from(out)
    }

    /// Runs the agent and asserts its exit code.
    pub fn expect(&self, action: &str, i: usize, code: i32) {
        let run = self.ocf(action, i);
        assert_eq!(
            run.code,
            Some(code),
            "instance {i}: {action} exited {:?}, expected {code}: {}",
            run.code,
            run.output
        );
    }

    /// The pid of instance `i`'s broker, from its pid file.
    pub fn pid(&self, i: usize) -> Option<u32> {
        read_pid(&self.path(&format!("tandemd-{i}.pid")))
    }
}

impl Drop for OcfBrokers {
    fn drop(&mut self) {
        for i in 0..self.ports.len() {
            if std::thread::panicking() {
                let log = fs::read_to_string(self.path(&format!("tandemd-{i}.log")));
                eprintln!("--- instance {i} log ---\n{}", log.unwrap_or_default());
            }
            kill_broker(&self.path(&format!("tandemd-{i}.pid")));
        }
    }
}

/// A single-node Pacemaker cluster (Debian's corosync and pacemaker) started by
/// the test, with the OCF agent installed under a provider name of its own.
/// There can be only one per machine: [`Pacemaker::unavailable`] refuses when
/// corosync already runs. Drop stops the resources, erases the configuration
/// it loaded, and stops pacemaker and corosync.
pub struct Pacemaker {
    corosync: Child,
    pacemakerd: Child,
    /// `/usr/lib/ocf/resource.d/PROVIDER`, holding a link to `scripts/ocf/tandem`.
    provider_dir: PathBuf,
    /// The OCF provider name of the agent: `ocf:PROVIDER:tandem`.
    pub provider: String,
    /// Whether a configuration was loaded (and must be stopped and erased).
    loaded: bool,
    dir: TempDir,
}

/// How long Pacemaker may take to elect itself (dc-deadtime is 20 s) or to
/// stop its resources and itself.
pub const PACEMAKER_DEADLINE: Duration = Duration::from_secs(90);

impl Pacemaker {
    /// Why Pacemaker cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        if let Some(why) = unavailable() {
            return Some(why);
        }
        for program in [
            "corosync",
            "pacemakerd",
            "crm",
            "crm_mon",
            "crm_resource",
            "cibadmin",
        ] {
            if !Path::new("/usr/sbin").join(program).exists() {
                return Some(format!(
                    "/usr/sbin/{program} is missing (apt-get install corosync pacemaker crmsh)"
                ));
            }
        }
        if run_ok("corosync-cfgtool", &["-s"]) {
            return Some("corosync already runs on this machine: one cluster per machine".into());
        }
        None
    }

    /// Starts corosync (one node, 127.0.0.1) and pacemakerd, installs the agent
    /// and waits until the node is online with quorum.
    pub fn start() -> Pacemaker {
        let dir = TempDir::new("pacemaker");
        let conf = dir.join("corosync.conf");
        let name = format!("tandem{}", std::process::id());
        fs::write(
            &conf,
            format!(
                "totem {{\n version: 2\n cluster_name: {name}\n transport: knet\n \
                 crypto_cipher: none\n crypto_hash: none\n}}\n\
                 nodelist {{\n node {{\n ring0_addr: 127.0.0.1\n name: node1\n nodeid: 1\n }}\n}}\n\
                 quorum {{\n provider: corosync_votequorum\n}}\n\
                 logging {{\n to_stderr: yes\n to_logfile: no\n to_syslog: no\n}}\n"
            ),
        )
        .expect("writing corosync.conf");
        let corosync = spawn_logged("corosync", &["-f", "-c", &conf.display().to_string()], &dir);
        let mut pacemakerd = Command::new("pacemakerd");
        pacemakerd.env("PCMK_logfile", dir.join("pacemaker.log"));
        let pacemakerd = spawn_logged_command(pacemakerd, "pacemakerd", &dir);
        let provider_dir = Path::new("/usr/lib/ocf/resource.d").join(&name);
        let pacemaker = Pacemaker {
            corosync,
            pacemakerd,
            provider_dir,
            provider: name,
            loaded: false,
            dir,
        };
        fs::create_dir_all(&pacemaker.provider_dir).expect("creating the OCF provider dir");
        std::os::unix::fs::symlink(
            scripts_dir().join("ocf/tandem"),
            pacemaker.provider_dir.join("tandem"),
        )
        .expect("linking the agent");
        let online = crate::common::wait_until(PACEMAKER_DEADLINE, || {
            let status = output_of("crm_mon", &["-1"]);
            status.contains("partition with quorum") && status.contains("Online: [ node1 ]")
        });
        assert!(
            online,
            "pacemaker did not come online within {PACEMAKER_DEADLINE:?}:\n{}",
            output_of("crm_mon", &["-1"])
        );
        pacemaker
    }

    /// `crm configure load replace` of `text`.
    pub fn load(&mut self, text: &str) {
        let file = self.dir.join("config.crm");
        fs::write(&file, text).expect("writing the crm configuration");
        self.loaded = true;
        let out = Command::new("crm")
            .args(["configure", "load", "replace"])
            .arg(&file)
            .output()
            .expect("running crm");
        assert!(
            out.status.success(),
            "crm configure load failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `crm_mon -1` output, for assertion messages.
    pub fn describe(&self) -> String {
        output_of("crm_mon", &["-1", "-A"])
    }
}

impl Drop for Pacemaker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- crm_mon ---\n{}", self.describe());
        }
        if self.loaded {
            // Stop the resources, then forget them (an erased resource that
            // still runs is no longer stopped by anyone).
            let _ = Command::new("crm_resource")
                .args([
                    "--resource",
                    "tandem",
                    "--meta",
                    "--set-parameter",
                    "target-role",
                ])
                .args(["--parameter-value", "Stopped"])
                .output();
            let stopped = crate::common::wait_until(PACEMAKER_DEADLINE, || {
                output_of("crm_resource", &["--resource", "tandem", "--locate"])
                    .to_lowercase()
                    .contains("not running")
            });
            if !stopped {
                eprintln!("pacemaker did not stop the brokers:\n{}", self.describe());
            }
            let _ = Command::new("cibadmin")
                .args(["--erase", "--force"])
                .output();
        }
        for child in [&mut self.pacemakerd, &mut self.corosync] {
            crate::ha_cluster::signal(child.id(), libc::SIGTERM);
            let exited = crate::common::wait_until(PACEMAKER_DEADLINE, || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.provider_dir);
    }
}

/// Whether `program ARGS` exits 0.
fn run_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The stdout and stderr of `program ARGS` (empty when it cannot run).
fn output_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| ScriptRun::from(o).output)
        .unwrap_or_default()
}

/// Starts `program ARGS` with its output in `dir/PROGRAM.log`.
fn spawn_logged(program: &str, args: &[&str], dir: &TempDir) -> Child {
    let mut command = Command::new(program);
    command.args(args);
    spawn_logged_command(command, program, dir)
}

fn spawn_logged_command(mut command: Command, name: &str, dir: &TempDir) -> Child {
    let log = fs::File::create(dir.join(&format!("{name}.log"))).expect("creating a log");
    let err = log.try_clone().expect("cloning the log handle");
    command
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}
