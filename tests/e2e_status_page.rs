//! The cluster status page (`http-port`'s `/`) in a real browser: headless
//! Chromium driven over WebDriver by Debian's `chromedriver` (`scripts/test`
//! installs both). A backup's page shows the whole cluster: one primary and two
//! ready backups; after kill -9 of the primary and a promotion it shows the new
//! primary within seconds. The test saves screenshots under the target
//! directory (`docs/monitoring-status.png` is one of them). A stand-alone
//! broker with TLS and auth = yes serves the page over HTTPS to a browser
//! that logs in with Basic credentials.
//!
//! Without chromium and chromedriver the test says so and passes, unless
//! `TANDEM_REQUIRE_TOOLS` is set (as `scripts/test` does), when it fails.

mod common;
mod ha_cluster;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{get, http_address, http_url, request_with};
use common::{free_port, wait_until, Broker, Json, TempDir};
use ha_cluster::{serial, HaCluster};

const PAGE_DEADLINE: Duration = Duration::from_secs(20);

/// A chromedriver process and one headless Chromium session of it.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    fn start() -> Option<Browser> {
        let found = |bin: &str| Command::new(bin).arg("--version").output().is_ok();
        if !found("chromedriver") || !found("chromium") {
            assert!(
                std::env::var_os("TANDEM_REQUIRE_TOOLS").is_none(),
                "chromium and chromedriver are required (scripts/test installs them)"
            );
            eprintln!("no chromium/chromedriver (scripts/test installs them): not checked");
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr = format!("127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        assert!(up, "chromedriver did not listen on {}", browser.addr);
        // acceptInsecureCerts: the test CA is not one Chromium trusts.
        let capabilities = r#"{"capabilities":{"alwaysMatch":{"browserName":"chrome",
            "acceptInsecureCerts":true,"goog:chromeOptions":{"binary":"/usr/bin/chromium",
            "args":["--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage",
                    "--window-size=1400,800"]}}}}"#;
        let created = browser.command("POST", "/session", Some(capabilities));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(browser)
    }

    /// A WebDriver command; its `value`.
    fn command(&self, method: &str, path: &str, body: Option<&str>) -> Json {
        let answer = request_with(&self.addr, method, path, body, Duration::from_secs(60));
        let json = Json::parse(&answer.body)
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}: {}", answer.body));
        assert_eq!(answer.status, 200, "WebDriver {method} {path}: {json}");
        json["value"].clone()
    }

    fn open(&self, url: &str) {
        let body = format!(r#"{{"url":"{url}"}}"#);
        self.command(
            "POST",
            &format!("/session/{}/url", self.session),
            Some(&body),
        );
    }

    /// What the page shows of each broker: `address=status`, and `:N` for
    /// the depth of queue `orders` when it shows the queue, in page order.
    fn brokers_shown(&self) -> Vec<String> {
        let script = r#"{"script":"return Array.from(document.querySelectorAll('section.broker')).map(s => { const row = Array.from(s.querySelectorAll('tr')).find(tr => tr.cells[0] && tr.cells[0].textContent === 'orders'); return s.dataset.address + '=' + s.dataset.status + (row ? ':' + row.cells[1].textContent : ''); }).join(' ')","args":[]}"#;
        let value = self.command(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(script),
        );
        value
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Saves a PNG of the page as `name` under the test's target directory.
    fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let value = self.command(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        );
        let png = decode_base64(value.as_str().expect("base64 PNG"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).expect("screenshot written");
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request_with(
                &self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
                Duration::from_secs(10),
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Waits until the page shows exactly `expected` statuses (any order), with
/// `address=status` entries; panics with what it last showed.
fn wait_for_page(
    browser: &Browser,
    what: &str,
    expected: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut last = Vec::new();
    let shown = wait_until(PAGE_DEADLINE, || {
        last = browser.brokers_shown();
        expected(&last)
    });
    assert!(shown, "{what}: the page showed {last:?}");
    last
}

fn count(shown: &[String], status: &str) -> usize {
    shown
        .iter()
        .filter(|s| s.ends_with(&format!("={status}:30")))
        .count()
}

#[test]
fn a_backups_page_shows_the_cluster_and_follows_a_fail_over() {
    let _serial = serial();
    let Some(browser) = Browser::start() else {
        return;
    };
    let mut cluster = HaCluster::start_with_args(Some("all"), &["--http-port", "0"]);
    cluster.promote_ok(0);
    for i in [1, 2] {
        cluster.wait_status(i, "ready");
    }
    cluster.config(0, &["add", "queue", "orders"]);
    common::clients::send(
        common::clients::Lang::Proton,
        cluster.broker(0),
        "orders",
        30,
        &[],
    );

    // Broker 1 is a backup: its page still shows all three.
    let page = http_address(cluster.broker(1));
    assert_eq!(get(&page, "/").status, 200);
    browser.open(&format!("http://{page}/"));
    let primary = format!("127.0.0.1:{}", cluster.broker(0).port());
    wait_for_page(
        &browser,
        "one primary and two ready backups, 30 on orders",
        |s| {
            s.len() == 3
                && count(s, "active") == 1
                && count(s, "ready") == 2
                && s.contains(&format!("{primary}=active:30"))
        },
    );
    browser.screenshot("status-page-running.png");

    cluster.kill(0);
    cluster.promote_ok(1);
    let new_primary = format!("127.0.0.1:{}", cluster.broker(1).port());
    let shown = wait_for_page(&browser, "the new primary", |s| {
        s.contains(&format!("{new_primary}=active:30"))
            && s.contains(&format!("{primary}=unreachable"))
    });
    eprintln!("after the fail-over the page shows {shown:?}");
    browser.screenshot("status-page-after-fail-over.png");
}

#[test]
fn the_page_works_over_https_with_basic_credentials() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = TempDir::new("status-page-https");
    let certs = common::certs::Certs::new("status-page-https");
    let users = dir.join("users");
    std::fs::write(&users, "admin:secret\n").expect("users file");
    let mut args = certs.broker_args();
    let users = users.to_str().expect("path").to_owned();
    args.extend(
        [
            "--auth",
            "yes",
            "--users-file",
            &users,
            "--ha-username",
            "admin",
            "--ha-password",
            "secret",
            "--http-port",
            "0",
        ]
        .map(String::from),
    );
    let broker = Broker::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(http_url(&broker).starts_with("https://"));
    let port = http_address(&broker)
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    browser.open(&format!("https://admin:secret@localhost:{port}/"));
    let own = format!("127.0.0.1:{}", broker.port());
    wait_for_page(&browser, "the stand-alone broker", |s| {
        s.len() == 1 && s[0].starts_with(&format!("{own}=standalone"))
    });
}
