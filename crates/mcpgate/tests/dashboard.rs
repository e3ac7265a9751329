//! The web dashboard in a real browser: Debian's Chromium driven by playwright-core
//! (tests/browser/dashboard.cjs) against the real daemon, filled with real MCP traffic
//! through `mcpgate mcp connect`. People log in with a password and TOTP; what each sees
//! follows their roles. Screenshots of the main pages are kept in target/dashboard/.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const ROLES: &str = "kind: role
version: v8
metadata: {name: dev, description: developers}
spec:
  allow:
    app_labels: {env: dev}
    mcp:
      tools: [echo, read_file]
";

/// A tool name that would run script if it were ever rendered as HTML. (JSON must escape
/// its quote, and the gate refuses escaped names: it is recorded as the refused request's
/// parameters, not as a tool.)
const HOSTILE: &str = "\"><img src=x onerror=alert(1)>";
/// The same without the quote: a tool name the gate decides on (and denies).
const HOSTILE_TOOL: &str = "<img src=x onerror=alert(1)>";

#[test]
fn the_dashboard_in_a_real_browser() {
    let (Some(playwright), Some(chromium)) = (
        needs("MCPGATE_TEST_PLAYWRIGHT"),
        needs("MCPGATE_TEST_CHROMIUM"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let marker = marker("dashboard");
    let apps = recorder_app("tools", "{env: dev}", &s.path("record.jsonl"), &marker);
    // The default: a second factor for everyone.
    let d = Daemon::start(&s, "dash", &format!("agent:\n  apps:\n{apps}"));
    // The start banner says where the dashboard is and which CA a browser trusts it by.
    let ca = d.data_dir.join("host-ca.pem");
    assert!(
        d.banner
            .contains(&format!("dashboard: https://{}/", d.addr))
            && d.banner.contains(ca.to_str().unwrap()),
        "{}",
        d.banner
    );
    let login = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(format!("https://{}/login", d.addr))
        .output()
        .unwrap();
    // Plain http:// on the same port is told to use https.
    let plain = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .arg(format!("http://{}/login", d.addr))
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.contains("use https://") && plain.ends_with("400"),
        "{plain}"
    );
    assert_eq!(
        String::from_utf8_lossy(&login.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    d.admin(&[
        "create",
        "-f",
        s.write("roles.yaml", ROLES).to_str().unwrap(),
    ])
    .ok();
    let mut secrets = serde_json::Map::new();
    let mut people = Vec::new();
    for (name, roles) in [("alice", "editor"), ("carol", "auditor"), ("bob", "dev")] {
        let p = Person::new(&s, name);
        let secret = p
            .signup(&d, &invite(&d, name, roles))
            .expect("a second factor is enrolled");
        secrets.insert(name.into(), Value::from(secret.clone()));
        people.push((p, secret));
    }
    let (bob, bob_secret) = &people[2];
    bob.login(&d, Some(bob_secret), &[]).ok();

    // A thousand calls to page through, and one whose tool name is hostile (denied).
    let mut bridge = Bridge::open(bob, "tools", &[]);
    bridge.initialize();
    for i in 0..1000 {
        let r = bridge.call("echo", json!({"i": i}));
        assert!(r.get("result").is_some(), "{r}");
    }
    for name in [HOSTILE, HOSTILE_TOOL] {
        let denied = bridge.call(name, json!({}));
        assert!(denied.get("error").is_some(), "{denied}");
    }

    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/dashboard");
    std::fs::create_dir_all(shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.cjs");
    let mut browser = Command::new("node")
        .arg(script)
        .env("PLAYWRIGHT", &playwright)
        .env("CHROMIUM", &chromium)
        .env("BASE", format!("https://{}", d.addr))
        .env("SHOTS", shots)
        .env("USERS", Value::Object(secrets).to_string())
        .env("PASSWORD", PASSWORD)
        .env("XSS_TOOL", HOSTILE_TOOL)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs the browser script");
    let mut to_browser = browser.stdin.take().unwrap();
    let mut result = None;
    let mut live_calls = 0;
    for line in BufReader::new(browser.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(step) = line.strip_prefix("STEP ") {
            // The browser watches the live tail: make the calls it is waiting for.
            let n = match step {
                "live-ready" => 5,
                "live-paused" => 2,
                other => panic!("unknown step {other}"),
            };
            for _ in 0..n {
                live_calls += 1;
                let r = bridge.call("read_file", json!({"n": live_calls}));
                assert!(r.get("result").is_some(), "{r}");
            }
            writeln!(to_browser, "go").unwrap();
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<Value>(json).unwrap());
        } else {
            eprintln!("browser: {line}");
        }
    }
    let status = browser.wait().unwrap();
    assert!(
        status.success(),
        "the browser script failed (see its output above)"
    );
    let r = result.expect("the browser script printed its result");

    // Paging: every one of the 1,000 calls, once.
    assert_eq!(r["explorerRows"], 1000, "{r}");
    assert_eq!(r["explorerUnique"], 1000);
    assert_eq!(r["explorerPages"], 20);
    assert_eq!(r["csvRows"], 1000, "export rows equal the filtered count");
    assert_eq!(r["ndjsonRows"], 1000);
    assert!(r["timelineRows"].as_u64().unwrap() > 1);
    // 1,002 calls and the initialize of the session, at least.
    assert!(r["overviewCalls"].as_u64().unwrap() >= 1003, "{r}");
    // The hostile name is shown as the text it is; nothing ran, nothing was blocked.
    assert_eq!(r["xssCells"], json!([HOSTILE_TOOL]));
    assert_eq!(r["xssImages"], 0);
    let mut names: Vec<&str> = r["xssEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["images"], 0);
            e["name"].as_str().unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(names, [HOSTILE, HOSTILE_TOOL]);
    assert_eq!(r["problems"]["dialogs"], json!([]));
    assert_eq!(r["problems"]["csp"], json!([]));
    assert_eq!(
        r["problems"]["foreign"],
        json!([]),
        "no request to another origin"
    );
    // The live tail showed the calls in the order they were made, within 2 s.
    let live: Vec<String> = audit(&d, &["--user", "bob", "--tool", "read_file"])
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(live.len(), 7);
    assert_eq!(r["liveFirstFive"], json!(live[..5]));
    assert_eq!(r["liveAfterResume"], json!(live), "no gap, no duplicate");
    assert!(r["liveMillis"].as_u64().unwrap() <= 2000);
    // The app's tools as its agent listed them, with annotations and the roles allowing each
    // (dev names echo and read_file; the preset "access" allows by the user's traits).
    let tools = &r["appTools"];
    assert_eq!(
        tools.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["big", "delete_all", "echo", "read_file", "slow"],
        "{tools}"
    );
    assert_eq!(tools["read_file"]["hints"], "read-only");
    assert_eq!(tools["delete_all"]["hints"], "destructive");
    assert_eq!(tools["echo"]["hints"], "");
    for (tool, allowed) in [("echo", true), ("read_file", true), ("delete_all", false)] {
        let roles = tools[tool]["roles"].as_str().unwrap();
        assert_eq!(roles.starts_with("dev"), allowed, "{tool}: {roles}");
        assert!(
            roles.contains("by the user's traits: access"),
            "{tool}: {roles}"
        );
    }
    // Who can call echo: the gateway's own answer.
    assert_eq!(r["who"]["user bob"], "true");
    assert_eq!(r["who"]["user carol"], "false");
    // The role editor.
    assert!(
        r["roleError"]
            .as_str()
            .unwrap()
            .contains("exactly one role, named dev"),
        "{r}"
    );
    assert!(
        r["roleDiff"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("edited in the dashboard"))
    );
    assert_eq!(r["roleSaved"], true);
    let saved = d.admin(&["get", "role", "dev", "--format", "yaml"]).ok();
    assert!(saved.contains("edited in the dashboard"), "{saved}");
    // The auditor: everything to read, nothing to change.
    assert_eq!(r["auditorEditor"], 403);
    assert_eq!(r["auditorLocksForm"], 0);
    assert_eq!(r["auditorSeesBob"], 50);
    // With JavaScript off, filtering and paging work as plain HTML.
    assert_eq!(r["noScriptPages"], json!([50, 50, 100]), "{r}");
    // A user: their own activity only.
    assert_eq!(r["userRowUsers"], json!(["bob"]));
    assert_eq!(r["userApps"], 403);
    assert_eq!(r["userEditor"], 403);
    assert_eq!(
        r["userWho"], 403,
        "which role allows what is for who may read roles"
    );
    // The lock ended bob's dashboard session, for good.
    assert_eq!(r["lockedStatus"], 403);
    assert!(r["lockedText"].as_str().unwrap().contains("dashboard test"));
    assert!(
        r["lockedAfterUnlock"]
            .as_str()
            .unwrap()
            .ends_with("/login?next=%2Faudit"),
        "{r}"
    );
    assert_eq!(r["afterLogout"], "/login");

    // Viewing, exporting and changing were themselves audited.
    let views = audit(&d, &["--type", "audit.view", "--user", "alice"]);
    assert!(views.iter().any(|e| e["view"] == "explorer"
        && e["filter"]["tool"] == "echo"
        && e["filter"]["user"] == "bob"));
    assert!(views.iter().any(|e| e["view"] == "event"));
    assert!(views.iter().any(|e| e["view"] == "live"));
    // The tail's stream itself is recorded, with the position it began after.
    assert!(
        views
            .iter()
            .any(|e| e["view"] == "live" && e["after"].as_i64().is_some())
    );
    let exports = audit(&d, &["--type", "audit.export"]);
    assert_eq!(exports.len(), 2, "{exports:?}");
    assert!(
        exports
            .iter()
            .all(|e| e["rows"] == 1000 && e["complete"] == true)
    );
    let logins = audit(&d, &["--type", "user.login", "--user", "carol"]);
    assert!(
        logins
            .iter()
            .any(|e| e["via"] == "web" && e["method"] == "password+otp")
    );
    let ends = audit(&d, &["--type", "web.session.end"]);
    assert!(
        ends.iter()
            .any(|e| e["user"] == "bob" && e["reason"] == "locked")
    );
    assert!(
        ends.iter()
            .any(|e| e["user"] == "alice" && e["reason"] == "logout")
    );
    assert!(
        !audit(&d, &["--type", "resource.update", "--user", "alice"]).is_empty(),
        "the role edit is audited"
    );
    // All of it — a thousand calls, the dashboard's own events — is one intact chain.
    let verified = d.admin(&["audit", "verify"]).ok();
    assert!(
        verified.starts_with("The audit log is intact"),
        "{verified}"
    );
    bridge.close();
}
