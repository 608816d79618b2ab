//! End to end with the admin tools: the real `tandem-config` and `tandem-stat`
//! binaries against a real `tandemd`, with Qpid Proton clients moving the
//! messages, and a raw Proton management client for requests the tools never send.
//!
//! Counters are read with `tandem-stat --json` and compared exactly. Statistics
//! are gathered from the shards asynchronously, so a check polls (with a
//! deadline) until the expected numbers appear, and fails with the last row seen.

mod common;

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use common::*;

/// Two shards, so queues, connections and the management node land on
/// different shards and counters have to be summed across them.
const BROKER_ARGS: &[&str] = &["--worker-threads", "2"];

const PROTON: Lang = Lang::Proton;

const CONFIG: &str = env!("CARGO_BIN_EXE_tandem-config");
const STAT: &str = env!("CARGO_BIN_EXE_tandem-stat");

/// How long one tool run may take before it is killed.
const TOOL_DEADLINE: Duration = Duration::from_secs(20);

/// The `--timeout` the tools get: well inside [`TOOL_DEADLINE`].
const TOOL_TIMEOUT: &str = "10";

/// How long counters may take to reach the expected values.
const COUNTER_DEADLINE: Duration = Duration::from_secs(10);

const BUILT_IN_EXCHANGES: [&str; 4] = ["amq.direct", "amq.fanout", "amq.match", "amq.topic"];

/// One finished run of a tool.
struct ToolRun {
    label: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl ToolRun {
    fn describe(&self) -> String {
        format!(
            "{}: {}{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.label,
            self.status,
            if self.timed_out {
                " (killed after its deadline)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }

    /// Asserts exit status 0 and returns stdout.
    fn ok(&self) -> &str {
        assert!(
            self.status.success() && !self.timed_out,
            "expected success: {}",
            self.describe()
        );
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    fn json(&self) -> Json {
        Json::parse(self.ok().trim())
            .unwrap_or_else(|e| panic!("{e}: output is not JSON: {}", self.describe()))
    }

    /// Asserts the tool failed as tools must: exit status 1, nothing on stdout,
    /// exactly one line on stderr, `{tool}: reason`; returns the reason.
    fn fails(&self, tool: &str) -> String {
        assert!(!self.timed_out, "timed out: {}", self.describe());
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit 1: {}",
            self.describe()
        );
        assert!(
            self.stdout.is_empty(),
            "expected no stdout: {}",
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line: {}", self.describe());
        let prefix = format!("{tool}: ");
        lines[0]
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("expected '{prefix}': {}", self.describe()))
            .to_owned()
    }
}

/// Runs `exe` with exactly `args` to completion; kills it after [`TOOL_DEADLINE`].
fn run_program(exe: &str, args: &[&str]) -> ToolRun {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    let label = format!("{name} {}", args.join(" "));
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {label}: {e}"));
    let readers = [
        read_to_end(child.stdout.take().expect("piped stdout")),
        read_to_end(child.stderr.take().expect("piped stderr")),
    ];
    let mut status = None;
    let exited = wait_until(TOOL_DEADLINE, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        status = child.wait().ok();
    }
    let [stdout, stderr] = readers.map(|r| r.join().expect("reader thread"));
    ToolRun {
        label,
        status: status.expect("reaped"),
        stdout,
        stderr,
        timed_out: !exited,
    }
}

fn read_to_end(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// `tandem-config -b URL --timeout T ARGS`.
fn config(broker: &Broker, args: &[&str]) -> ToolRun {
    let url = broker.url();
    let mut all = vec!["-b", &url, "--timeout", TOOL_TIMEOUT];
    all.extend_from_slice(args);
    run_program(CONFIG, &all)
}

/// `tandem-stat -b URL --timeout T ARGS`.
fn stat(broker: &Broker, args: &[&str]) -> ToolRun {
    let url = broker.url();
    let mut all = vec!["-b", &url, "--timeout", TOOL_TIMEOUT];
    all.extend_from_slice(args);
    run_program(STAT, &all)
}

/// Runs `tandem-config ARGS` and asserts it succeeded with no output.
fn configure(broker: &Broker, args: &[&str]) {
    let out = config(broker, args);
    assert_eq!(out.ok(), "", "{}", out.describe());
}

/// A JSON array's elements.
fn rows(json: &Json) -> Vec<Json> {
    json.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array: {json}"))
        .to_vec()
}

fn names(rows: &[Json]) -> Vec<String> {
    rows.iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn named<'a>(rows: &'a [Json], name: &str) -> Option<&'a Json> {
    rows.iter().find(|r| r["name"].as_str() == Some(name))
}

/// Queues the tests made: not the tools' own (auto-delete) reply queues.
fn user_queue_names(broker: &Broker) -> Vec<String> {
    let queues = rows(&config(broker, &["queues", "--json"]).json());
    let mine: Vec<Json> = queues
        .into_iter()
        .filter(|q| q["auto-delete"].as_bool() == Some(false))
        .collect();
    names(&mine)
}

fn exchange_names(broker: &Broker) -> Vec<String> {
    names(&rows(&config(broker, &["exchanges", "--json"]).json()))
}

/// Data rows of a tool's table, split into whitespace-separated words (empty
/// cells vanish); checks the rule under the header.
fn table_rows(table: &str, first_header: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.len() >= 2 && lines[0].starts_with(first_header),
        "not a table headed '{first_header}':\n{table}"
    );
    assert!(
        !lines[1].is_empty() && lines[1].chars().all(|c| c == '='),
        "no rule under the header:\n{table}"
    );
    lines[2..]
        .iter()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The table row whose first cell is `first`.
fn table_row(table: &str, first_header: &str, first: &str) -> Vec<String> {
    table_rows(table, first_header)
        .into_iter()
        .find(|r| r.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row '{first}' in:\n{table}"))
}

fn words(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Polls `tandem-stat VIEW --json` until entity `name` shows every `expected`
/// counter exactly; returns the row, or panics with the last one seen.
fn wait_for_counters(broker: &Broker, view: &str, name: &str, expected: &[(&str, u64)]) -> Json {
    let mut last = Json::Null;
    let reached = wait_until(COUNTER_DEADLINE, || {
        let all = rows(&stat(broker, &[view, "--json"]).json());
        last = named(&all, name).cloned().unwrap_or(Json::Null);
        expected
            .iter()
            .all(|(key, value)| last[*key].as_u64() == Some(*value))
    });
    assert!(
        reached,
        "tandem-stat {view}: '{name}' never showed {expected:?}; last: {last}"
    );
    last
}

#[test]
fn config_creates_lists_and_deletes_queues_exchanges_and_bindings() {
    let broker = Broker::start(BROKER_ARGS);
    assert_eq!(user_queue_names(&broker), Vec::<String>::new());
    assert_eq!(exchange_names(&broker), words(&BUILT_IN_EXCHANGES));

    configure(
        &broker,
        &[
            "add",
            "queue",
            "q1",
            "--durable",
            "--max-queue-count",
            "10",
            "--max-queue-size",
            "2048",
            "--limit-policy",
            "reject",
            "--replicate",
            "all",
        ],
    );
    configure(&broker, &["add", "queue", "lv", "--lvq-key", "k"]);
    configure(&broker, &["add", "exchange", "direct", "ex1"]);
    configure(
        &broker,
        &[
            "add",
            "exchange",
            "headers",
            "hx",
            "--durable",
            "--replicate",
            "configuration",
        ],
    );
    configure(&broker, &["bind", "ex1", "q1", "key1"]);
    // `any` right after the queue is the match mode, not a binding key.
    configure(&broker, &["bind", "hx", "q1", "any", "a=1"]);

    // Queues: JSON carries every setting; the table shows them in columns.
    assert_eq!(user_queue_names(&broker), words(&["lv", "q1"]));
    let queues = rows(&config(&broker, &["queues", "--json"]).json());
    let q1 = named(&queues, "q1").expect("q1 listed");
    assert_eq!(q1["durable"].as_bool(), Some(true), "{q1}");
    assert_eq!(q1["auto-delete"].as_bool(), Some(false), "{q1}");
    assert_eq!(q1["max-queue-count"].as_u64(), Some(10), "{q1}");
    assert_eq!(q1["max-queue-size"].as_u64(), Some(2048), "{q1}");
    assert_eq!(q1["limit-policy"].as_str(), Some("reject"), "{q1}");
    assert_eq!(q1["replicate"].as_str(), Some("all"), "{q1}");
    assert!(q1["lvq-key"].is_null(), "{q1}");
    assert_eq!(q1["depth"].as_u64(), Some(0), "{q1}");
    let lv = named(&queues, "lv").expect("lv listed");
    assert_eq!(lv["lvq-key"].as_str(), Some("k"), "{lv}");
    assert_eq!(lv["durable"].as_bool(), Some(false), "{lv}");
    assert!(lv["replicate"].is_null(), "{lv}");

    let table = config(&broker, &["queues"]).ok().to_owned();
    assert_eq!(
        table_row(&table, "Queue Name", "q1"),
        words(&["q1", "Y", "10", "2048", "reject", "all", "0"])
    );
    let lv_row = table_row(&table, "Queue Name", "lv");
    assert!(lv_row.contains(&"k".to_owned()), "{lv_row:?}");

    // Exchanges.
    let mut expected = words(&BUILT_IN_EXCHANGES);
    expected.extend(words(&["ex1", "hx"]));
    assert_eq!(exchange_names(&broker), expected);
    let exchanges = rows(&config(&broker, &["exchanges", "--json"]).json());
    let ex1 = named(&exchanges, "ex1").expect("ex1 listed");
    assert_eq!(ex1["type"].as_str(), Some("direct"), "{ex1}");
    assert_eq!(ex1["bindings"].as_u64(), Some(1), "{ex1}");
    assert_eq!(ex1["durable"].as_bool(), Some(false), "{ex1}");
    let hx = named(&exchanges, "hx").expect("hx listed");
    assert_eq!(hx["type"].as_str(), Some("headers"), "{hx}");
    assert_eq!(hx["durable"].as_bool(), Some(true), "{hx}");
    assert_eq!(hx["replicate"].as_str(), Some("configuration"), "{hx}");
    // Type comes first in this table, the name second.
    let table = config(&broker, &["exchanges"]).ok().to_owned();
    let names_and_rows: Vec<(String, Vec<String>)> = table_rows(&table, "Type")
        .into_iter()
        .map(|r| (r[1].clone(), r))
        .collect();
    let row_of = |name: &str| {
        names_and_rows
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no exchange row '{name}':\n{table}"))
    };
    assert_eq!(row_of("amq.match"), words(&["headers", "amq.match", "0"]));
    assert_eq!(row_of("ex1"), words(&["direct", "ex1", "1"]));
    assert_eq!(
        row_of("hx"),
        words(&["headers", "hx", "Y", "configuration", "1"])
    );

    // Bindings: both, with the headers binding's match arguments.
    let bindings = rows(&config(&broker, &["bindings", "--json"]).json());
    assert_eq!(bindings.len(), 2, "{bindings:?}");
    assert_eq!(bindings[0]["exchange"].as_str(), Some("ex1"));
    assert_eq!(bindings[0]["queue"].as_str(), Some("q1"));
    assert_eq!(bindings[0]["key"].as_str(), Some("key1"));
    assert!(bindings[0]["arguments"].is_null(), "{}", bindings[0]);
    assert_eq!(bindings[1]["exchange"].as_str(), Some("hx"));
    assert_eq!(bindings[1]["queue"].as_str(), Some("q1"));
    assert_eq!(bindings[1]["key"].as_str(), Some(""));
    assert_eq!(bindings[1]["arguments"]["x-match"].as_str(), Some("any"));
    assert_eq!(bindings[1]["arguments"]["a"].as_str(), Some("1"));
    let table = config(&broker, &["bindings"]).ok().to_owned();
    assert_eq!(
        table_rows(&table, "Exchange"),
        vec![
            words(&["ex1", "q1", "key1"]),
            words(&["hx", "q1", r#"{"x-match":"any","a":"1"}"#]),
        ]
    );

    // The summary counts them (the tool's own reply queue is the third queue;
    // earlier tools' reply queues are deleted as their connections close).
    let mut summary = String::new();
    let counted = wait_until(COUNTER_DEADLINE, || {
        summary = config(&broker, &[]).ok().to_owned();
        summary == "Total Exchanges: 6\n   Total Queues: 3\n"
    });
    assert!(counted, "summary: {summary:?}");

    // Unbind, then delete: each change shows in the lists.
    configure(&broker, &["unbind", "ex1", "q1", "key1"]);
    let bindings = rows(&config(&broker, &["bindings", "--json"]).json());
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0]["exchange"].as_str(), Some("hx"));
    let exchanges = rows(&config(&broker, &["exchanges", "--json"]).json());
    assert_eq!(
        named(&exchanges, "ex1").unwrap()["bindings"].as_u64(),
        Some(0)
    );

    // Deleting a queue removes its bindings too.
    configure(&broker, &["del", "queue", "q1"]);
    assert_eq!(user_queue_names(&broker), words(&["lv"]));
    assert_eq!(
        config(&broker, &["bindings", "--json"]).ok().trim(),
        "[]",
        "q1's headers binding outlived q1"
    );
    let exchanges = rows(&config(&broker, &["exchanges", "--json"]).json());
    assert_eq!(
        named(&exchanges, "hx").unwrap()["bindings"].as_u64(),
        Some(0)
    );

    configure(&broker, &["del", "queue", "lv"]);
    configure(&broker, &["del", "exchange", "ex1"]);
    configure(&broker, &["del", "exchange", "hx"]);
    assert_eq!(user_queue_names(&broker), Vec::<String>::new());
    assert_eq!(exchange_names(&broker), words(&BUILT_IN_EXCHANGES));
    assert_eq!(
        table_rows(config(&broker, &["bindings"]).ok(), "Exchange"),
        Vec::<Vec<String>>::new()
    );
}

#[test]
fn binding_made_with_config_routes_proton_messages_and_stat_counts_them() {
    let broker = Broker::start(BROKER_ARGS);
    configure(&broker, &["add", "exchange", "topic", "news"]);
    configure(&broker, &["add", "queue", "uk"]);
    configure(&broker, &["bind", "news", "uk", "uk.#"]);

    let sent = send(
        PROTON,
        &broker,
        "news",
        3,
        &["--subject", "uk.weather", "--prefix", "uk-"],
    );
    assert_eq!(sent["settled"].as_u64(), Some(3), "{sent}");
    let sent = send(
        PROTON,
        &broker,
        "news",
        2,
        &["--subject", "fr.weather", "--prefix", "fr-"],
    );
    assert_eq!(sent["settled"].as_u64(), Some(2), "{sent}");

    // The exchange counted 3 routed and 2 dropped; the queue holds the 3.
    wait_for_counters(
        &broker,
        "-e",
        "news",
        &[("routed", 3), ("dropped", 2), ("bindings", 1)],
    );
    let uk = wait_for_counters(
        &broker,
        "-q",
        "uk",
        &[
            ("depth", 3),
            ("enqueues", 3),
            ("dequeues", 0),
            ("acquired", 0),
            ("consumers", 0),
            ("redeliveries", 0),
        ],
    );
    assert!(uk["depth-bytes"].as_u64().unwrap_or(0) > 0, "{uk}");
    let exchanges = rows(&stat(&broker, &["-e", "--json"]).json());
    for name in BUILT_IN_EXCHANGES {
        let ex = named(&exchanges, name).expect("built-in listed");
        assert_eq!(ex["routed"].as_u64(), Some(0), "{ex}");
        assert_eq!(ex["dropped"].as_u64(), Some(0), "{ex}");
    }
    let table = stat(&broker, &["-e"]).ok().to_owned();
    assert_eq!(
        table_row(&table, "exchange", "news"),
        words(&["news", "topic", "1", "3", "2"])
    );

    // Two more queues with fewer messages, for sorting and limits.
    configure(&broker, &["add", "queue", "few"]);
    configure(&broker, &["add", "queue", "more"]);
    send(PROTON, &broker, "few", 1, &[]);
    send(PROTON, &broker, "more", 2, &[]);
    wait_for_counters(&broker, "-q", "more", &[("depth", 2), ("enqueues", 2)]);
    wait_for_counters(&broker, "-q", "few", &[("depth", 1), ("enqueues", 1)]);

    let by_depth = rows(&stat(&broker, &["-q", "-S", "msg", "-L", "2", "--json"]).json());
    assert_eq!(names(&by_depth), words(&["uk", "more"]));
    let by_enqueues = rows(&stat(&broker, &["-q", "-S", "enqueues", "-L", "3", "--json"]).json());
    assert_eq!(names(&by_enqueues), words(&["uk", "more", "few"]));
    let by_name = rows(&stat(&broker, &["-q", "-S", "queue", "-L", "2", "--json"]).json());
    assert_eq!(names(&by_name), words(&["few", "more"]));
    let table = stat(&broker, &["-q", "-S", "msg", "-L", "3"])
        .ok()
        .to_owned();
    let firsts: Vec<String> = table_rows(&table, "queue")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(firsts, words(&["uk", "more", "few"]), "{table}");
    let one = stat(&broker, &["-q", "-L", "1"]).ok().to_owned();
    assert_eq!(table_rows(&one, "queue").len(), 1, "{one}");
    let busiest = rows(&stat(&broker, &["-e", "-S", "msgIn", "-L", "1", "--json"]).json());
    assert_eq!(names(&busiest), words(&["news"]));

    // Broker summary: -b alone (here with a URL) and --json.
    let mut summary = Json::Null;
    let summed = wait_until(COUNTER_DEADLINE, || {
        summary = stat(&broker, &["--json"]).json()[0].clone();
        summary["queue-depth"].as_u64() == Some(6)
            && summary["exchanges"].as_u64() == Some(5)
            && summary["connections"].as_u64() == Some(1)
            && summary["queues"].as_u64() == Some(4)
    });
    assert!(summed, "broker summary: {summary}");
    assert_eq!(summary["shards"].as_u64(), Some(2), "{summary}");
    let table = stat(&broker, &["-g"]).ok().to_owned();
    assert_eq!(table_rows(&table, "broker").len(), 1, "{table}");

    // A Proton receiver takes exactly the 3 routed messages and stays connected.
    let mut receiver = spawn_receiver(PROTON, &broker, "uk", 3, &["--hold"]);
    receiver.wait_for_line(Duration::from_secs(20), |l| {
        l["holding"].as_bool() == Some(true)
    });
    assert_eq!(
        bodies(&receiver.messages()),
        words(&["uk-0", "uk-1", "uk-2"])
    );
    let uk = wait_for_counters(
        &broker,
        "-q",
        "uk",
        &[
            ("depth", 0),
            ("enqueues", 3),
            ("dequeues", 3),
            ("acquired", 0),
            ("consumers", 1),
            ("redeliveries", 0),
        ],
    );
    assert_eq!(uk["depth-bytes"].as_u64(), Some(0), "{uk}");

    // Connections: the receiver's and tandem-stat's own.
    let mut connections = Vec::new();
    let listed = wait_until(COUNTER_DEADLINE, || {
        connections = rows(&stat(&broker, &["-c", "--json"]).json());
        connections.len() == 2
            && connections
                .iter()
                .any(|c| c["messages-out"].as_u64() == Some(3))
    });
    assert!(listed, "connections: {connections:?}");
    let (tools, proton): (Vec<Json>, Vec<Json>) = connections.into_iter().partition(|c| {
        c["container-id"]
            .as_str()
            .is_some_and(|id| id.starts_with("tandem-client-"))
    });
    assert_eq!((tools.len(), proton.len()), (1, 1));
    let (tool, proton) = (&tools[0], &proton[0]);
    assert_eq!(proton["messages-out"].as_u64(), Some(3), "{proton}");
    assert_eq!(proton["messages-in"].as_u64(), Some(0), "{proton}");
    assert_eq!(proton["user"].as_str(), Some("anonymous"), "{proton}");
    assert!(
        proton["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{proton}"
    );
    // The QUERY it is waiting for is the stat connection's only message so far.
    assert_eq!(tool["messages-in"].as_u64(), Some(1), "{tool}");
    assert_eq!(tool["messages-out"].as_u64(), Some(0), "{tool}");
    let table = stat(&broker, &["-c"]).ok().to_owned();
    assert_eq!(table_rows(&table, "connection").len(), 2, "{table}");
    let by_out = rows(&stat(&broker, &["-c", "-S", "msgOut", "-L", "1", "--json"]).json());
    assert_eq!(by_out.len(), 1);
    assert_eq!(by_out[0]["messages-out"].as_u64(), Some(3), "{}", by_out[0]);

    receiver.kill();
    wait_for_counters(&broker, "-q", "uk", &[("consumers", 0), ("depth", 0)]);
}

#[test]
fn ring_queue_drops_the_oldest_when_full() {
    let broker = Broker::start(BROKER_ARGS);
    configure(
        &broker,
        &[
            "add",
            "queue",
            "r",
            "--max-queue-count",
            "3",
            "--limit-policy",
            "ring",
        ],
    );
    let table = config(&broker, &["queues"]).ok().to_owned();
    let row = table_row(&table, "Queue Name", "r");
    assert_eq!(row[1], "3", "{row:?}");
    assert!(row.contains(&"ring".to_owned()), "{row:?}");

    let sent = send(
        PROTON,
        &broker,
        "r",
        5,
        &["--settle", "unsettled", "--prefix", "m"],
    );
    assert_eq!(sent["accepted"].as_u64(), Some(5), "{sent}");
    wait_for_counters(
        &broker,
        "-q",
        "r",
        &[
            ("depth", 3),
            ("enqueues", 5),
            ("ring-dropped", 2),
            ("dequeues", 2),
            ("acquired", 0),
        ],
    );

    let received = receive(PROTON, &broker, "r", 3, &[]);
    assert_eq!(received.bodies(), words(&["m2", "m3", "m4"]));
    wait_for_counters(
        &broker,
        "-q",
        "r",
        &[
            ("depth", 0),
            ("enqueues", 5),
            ("ring-dropped", 2),
            ("dequeues", 5),
            ("acquired", 0),
        ],
    );
}

#[test]
fn last_value_queue_keeps_only_the_latest_message_per_key() {
    let broker = Broker::start(BROKER_ARGS);
    configure(&broker, &["add", "queue", "prices", "--lvq-key", "sym"]);

    // send.py gives every message of a run the same properties: one run each.
    for (n, sym) in ["A", "B", "A", "C", "B"].iter().enumerate() {
        let properties = format!(r#"{{"sym": "{sym}"}}"#);
        let prefix = format!("{sym}{}-", n + 1);
        let sent = send(
            PROTON,
            &broker,
            "prices",
            1,
            &["--properties", &properties, "--prefix", &prefix],
        );
        assert_eq!(sent["accepted"].as_u64(), Some(1), "{sent}");
    }
    wait_for_counters(
        &broker,
        "-q",
        "prices",
        &[
            ("depth", 3),
            ("enqueues", 5),
            ("lvq-replaced", 2),
            ("dequeues", 2),
        ],
    );

    let received = receive(PROTON, &broker, "prices", 3, &[]);
    let mut latest: Vec<(String, String)> = received
        .messages()
        .iter()
        .map(|m| {
            (
                m["properties"]["sym"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                m["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    latest.sort();
    assert_eq!(
        latest,
        vec![
            ("A".to_owned(), "A3-0".to_owned()),
            ("B".to_owned(), "B5-0".to_owned()),
            ("C".to_owned(), "C4-0".to_owned()),
        ]
    );
    wait_for_counters(
        &broker,
        "-q",
        "prices",
        &[("depth", 0), ("enqueues", 5), ("dequeues", 5)],
    );
}

#[test]
fn bad_input_is_a_one_line_error_and_the_broker_keeps_serving() {
    let broker = Broker::start(BROKER_ARGS);
    configure(&broker, &["add", "queue", "dup", "--max-queue-count", "10"]);
    configure(&broker, &["add", "exchange", "topic", "tx"]);

    let cases: &[(&[&str], &str)] = &[
        (
            &["del", "queue", "nosuch"],
            "queue 'nosuch' not found (status 404)",
        ),
        (
            &["del", "exchange", "nosuch"],
            "exchange 'nosuch' not found (status 404)",
        ),
        (
            &["bind", "nosuch", "dup", "k"],
            "exchange 'nosuch' not found (status 404)",
        ),
        (
            &["bind", "tx", "nosuch", "k"],
            "queue 'nosuch' not found (status 404)",
        ),
        (
            &["add", "queue", "dup", "--max-queue-count", "5"],
            "queue 'dup' already exists with different arguments (status 409)",
        ),
        (
            &["add", "exchange", "direct", "tx"],
            "exchange 'tx' exists with type topic (status 409)",
        ),
        (
            &["add", "queue", "bad", "--max-queue-size", "abc"],
            "max-queue-size: 'abc' is not a non-negative whole number (status 400)",
        ),
        (
            &["add", "queue", "bad", "--max-queue-count", "-1"],
            "max-queue-count: '-1' is not a non-negative whole number (status 400)",
        ),
        (
            &["add", "queue", "bad", "--limit-policy", "bogus"],
            "limit-policy: 'bogus' is not one of flow, reject, ring (status 400)",
        ),
        (
            &["add", "queue", "bad", "--replicate", "sometimes"],
            "replicate: 'sometimes' is not one of none, configuration, all (status 400)",
        ),
        (
            &["add", "exchange", "bogus", "bad"],
            "type: 'bogus' is not one of direct, topic, fanout, headers (status 400)",
        ),
        (
            &["del", "exchange", "amq.topic"],
            "'amq.topic' is built in (status 403)",
        ),
        (
            &["add", "queue", "amq.direct"],
            "'amq.direct' is an exchange, not a queue (status 403)",
        ),
    ];
    for (args, reason) in cases {
        assert_eq!(config(&broker, args).fails("tandem-config"), *reason);
    }
    // The same declaration again is not an error.
    configure(&broker, &["add", "queue", "dup", "--max-queue-count", "10"]);
    configure(&broker, &["add", "exchange", "topic", "tx"]);

    // Errors before any request reaches the broker are one line too.
    let refused = run_program(CONFIG, &["-b", "127.0.0.1:1", "--timeout", "5", "queues"]);
    assert!(
        refused.fails("tandem-config").contains("127.0.0.1:1"),
        "{}",
        refused.describe()
    );
    let bad_url = run_program(CONFIG, &["-b", "amqp://127.0.0.1", "queues"]);
    assert!(
        bad_url.fails("tandem-config").starts_with("--broker: "),
        "{}",
        bad_url.describe()
    );
    let bad_sort = stat(&broker, &["-q", "-S", "bogus"]).fails("tandem-stat");
    assert!(
        bad_sort.starts_with("-S bogus: unknown field"),
        "{bad_sort}"
    );

    // A queue with messages is deleted only with --force.
    configure(&broker, &["add", "queue", "full"]);
    send(PROTON, &broker, "full", 1, &[]);
    wait_for_counters(&broker, "-q", "full", &[("depth", 1)]);
    assert_eq!(
        config(&broker, &["del", "queue", "full"]).fails("tandem-config"),
        "queue 'full' has 1 messages and 0 consumers; delete with force to discard them (status 409)"
    );
    assert_eq!(user_queue_names(&broker), words(&["dup", "full"]));
    configure(&broker, &["del", "queue", "full", "--force"]);

    // Nothing half-made, nothing lost, and messages still flow.
    assert_eq!(user_queue_names(&broker), words(&["dup"]));
    let mut expected = words(&BUILT_IN_EXCHANGES);
    expected.push("tx".to_owned());
    assert_eq!(exchange_names(&broker), expected);
    let sent = send(PROTON, &broker, "dup", 2, &["--prefix", "after-"]);
    assert_eq!(sent["accepted"].as_u64(), Some(2), "{sent}");
    let received = receive(PROTON, &broker, "dup", 2, &[]);
    assert_eq!(received.bodies(), expected_bodies("after-", 2));
}

#[test]
fn malformed_management_requests_get_status_codes_and_the_broker_keeps_serving() {
    let broker = Broker::start(BROKER_ARGS);
    let url = broker.url();
    let requests = [
        r#"{"properties": {"type": "queue", "name": "q"}}"#,
        r#"{"properties": {"operation": "READ", "type": "broker"}, "body": "not a map"}"#,
        r#"{"properties": {"operation": "FROB", "type": "queue"}}"#,
        r#"{"properties": {"operation": "READ", "type": "widget"}}"#,
        r#"{"properties": {"operation": "READ", "type": "queue", "name": "nosuch"}}"#,
        r#"{"properties": {"operation": "READ"}}"#,
        r#"{"properties": {"operation": "READ", "type": "broker"}, "reply_to": false}"#,
        r#"{"properties": {"operation": "READ", "type": "broker"}, "reply_to": "nowhere"}"#,
        r#"{"properties": {"operation": "READ", "type": "broker"}}"#,
        r#"{"properties": {"operation": "QUERY", "type": "exchange"},
            "body": {"attributeNames": ["name", "type"]}}"#,
    ];
    let mut args = vec!["--url", url.as_str()];
    args.extend(requests);
    let out = run_python("mgmt_raw", &args);
    out.assert_success();
    let lines = out.json_lines();
    let line = |i: u64| {
        lines
            .iter()
            .find(|l| l["request"].as_u64() == Some(i))
            .unwrap_or_else(|| panic!("no line for request {i}: {}", out.stdout()))
    };
    let status = |i: u64| {
        let l = line(i);
        (
            l["statusCode"].as_u64().unwrap_or(0),
            l["statusDescription"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let (code, why) = status(0);
    assert_eq!(code, 400, "{why}");
    assert!(why.contains("'operation'"), "{why}");
    let (code, why) = status(1);
    assert_eq!(code, 400, "{why}");
    assert!(why.contains("body must be a map"), "{why}");
    assert_eq!(status(2), (400, "unknown operation 'FROB'".to_owned()));
    let (code, why) = status(3);
    assert_eq!(code, 501, "{why}");
    assert!(why.contains("'widget'"), "{why}");
    assert_eq!(status(4), (404, "queue 'nosuch' not found".to_owned()));
    let (code, why) = status(5);
    assert_eq!(code, 400, "{why}");
    assert!(why.contains("'type'"), "{why}");
    // No reply-to, or one naming nothing: the broker drops the request...
    assert_eq!(line(6)["settled"].as_bool(), Some(true));
    assert_eq!(line(7)["settled"].as_bool(), Some(true));
    // ...and answers the next one: the replies are exactly those asked for, in
    // order (mgmt_raw.py fails on a reply it did not wait for).
    assert_eq!(status(8), (200, "OK".to_owned()));
    assert_eq!(line(8)["body"]["shards"].as_u64(), Some(2), "{}", line(8));
    let correlations: Vec<u64> = lines
        .iter()
        .filter(|l| l.has("statusCode"))
        .map(|l| l["correlation_id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(correlations, vec![1, 2, 3, 4, 5, 6, 9, 10]);
    let summary = out.summary();
    assert_eq!(summary["replies"].as_u64(), Some(8), "{summary}");
    assert_eq!(summary["requests"].as_u64(), Some(10), "{summary}");

    // QUERY with attributeNames returns just those columns.
    let query = &line(9)["body"];
    assert_eq!(
        query["attributeNames"],
        Json::parse(r#"["name","type"]"#).unwrap()
    );
    let results = rows(&query["results"]);
    assert_eq!(results.len(), 4, "{query}");
    assert_eq!(
        results[0],
        Json::parse(r#"["amq.direct","direct"]"#).unwrap()
    );

    // The broker still serves the tools and clients.
    configure(&broker, &["add", "queue", "still"]);
    send(PROTON, &broker, "still", 1, &["--prefix", "ok-"]);
    assert_eq!(
        receive(PROTON, &broker, "still", 1, &[]).bodies(),
        words(&["ok-0"])
    );
}

#[test]
fn both_tools_accept_ha_admin() {
    let broker = Broker::start(&[]);
    let url = broker.url();
    let listed = run_program(CONFIG, &["--ha-admin", "-b", &url, "queues"]);
    table_rows(listed.ok(), "Queue Name");
    // Connection options may also follow the command, as with qpid-config.
    let listed = run_program(CONFIG, &["exchanges", "-b", &url, "--ha-admin"]);
    assert_eq!(
        table_rows(listed.ok(), "Type").len(),
        BUILT_IN_EXCHANGES.len()
    );
    let summary = run_program(STAT, &["--ha-admin", "-b", &url, "--json"]).json();
    assert_eq!(summary[0]["connections"].as_u64(), Some(1), "{summary}");
    let queues = run_program(STAT, &["-b", &url, "--ha-admin", "-q"]);
    table_rows(queues.ok(), "queue");
}

#[test]
fn one_management_connection_answers_many_requests() {
    // Tools that retry (tandem-ha promote) make many requests on one connection;
    // the reply link's credit must be topped up, not run out after a few.
    let broker = Broker::start(&["--worker-threads", "2"]);
    let mut mc = tandem::tools::connect(&broker.url(), false, 10.0).expect("connect");
    for i in 0..40 {
        tandem::tools::read(&mut mc, "broker", None)
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
    }
}

#[test]
fn the_stall_detector_counts_polls_over_its_threshold_and_stat_shows_the_longest() {
    // 1 µs: every poll that does anything is a stall (and the log says so).
    let broker = Broker::start(&["--stall-threshold", "1us", "--worker-threads", "2"]);
    let sent = common::clients::run_python(
        "send.py",
        &[
            "--url",
            &broker.url(),
            "--address",
            "stalled",
            "--count",
            "50",
        ],
    );
    sent.assert_success();
    let mut summary = Json::Null;
    let counted = wait_until(Duration::from_secs(10), || {
        summary = rows(&stat(&broker, &["--json"]).json())
            .into_iter()
            .next()
            .unwrap_or(Json::Null);
        summary["executor-stalls"].as_u64().is_some_and(|n| n > 0)
    });
    assert!(counted, "no stall counted with a 1 µs threshold: {summary}");
    assert!(
        summary["longest-poll-us"].as_u64().is_some_and(|us| us > 0),
        "{summary}"
    );
    let at = summary["longest-poll-at"].as_str().unwrap_or("");
    assert!(at.starts_with("shard "), "{summary}");
    let table = stat(&broker, &[]).ok().to_owned();
    assert!(table.contains("longestPoll(us)"), "{table}");
    assert!(
        broker.stderr().contains("executor stall: one poll used"),
        "no stall in the log"
    );

    // Off by default: nothing measured, no stalls table.
    let quiet = Broker::start(&[]);
    let row = rows(&stat(&quiet, &["--json"]).json())
        .into_iter()
        .next()
        .unwrap_or(Json::Null);
    assert_eq!(row["executor-stalls"].as_u64(), Some(0), "{row}");
    assert_eq!(row["longest-poll-us"].as_u64(), Some(0), "{row}");
    assert!(!stat(&quiet, &[]).ok().contains("longestPoll"));
}
