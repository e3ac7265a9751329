//! Machine identity end to end (the seed's flows): bots join once with a single-use token,
//! renew with their own certificate, write an identity file LangGraph uses through
//! `mcp connect -i`, get locked when a copied credential shows up; locks end live sessions.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROLES: &str = "kind: role
version: v8
metadata: {name: dev}
spec:
  allow:
    app_labels: {env: dev}
    mcp: {tools: [echo, read_file]}
  deny:
    mcp: {tools: ['*delete*']}
";

struct Env {
    s: Scratch,
    d: Daemon,
    record: PathBuf,
}

fn cluster(tag: &str) -> Env {
    let s = Scratch::new();
    let record = s.path("record.jsonl");
    std::fs::write(&record, "").unwrap();
    let d = gateway_daemon(
        &s,
        &recorder_app("rec", "{env: dev}", &record, &marker(tag)),
        ROLES,
    );
    Env { s, d, record }
}

fn bot_token(d: &Daemon, name: &str) -> String {
    let out = d
        .admin(&["bots", "add", name, "--roles", "dev", "--format", "json"])
        .ok();
    serde_json::from_str::<Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Writes a bot.yaml (DESIGN.md §4 shape) under `dir`; returns its path.
fn bot_yaml(e: &Env, dir: &str, token: &str, extra: &str) -> PathBuf {
    let base = e.s.path(dir);
    e.s.write(
        &format!("{dir}.yaml"),
        &format!(
            "version: v1\nproxy_server: {}\nonboarding: {{join_method: token, token: \"{token}\", ca_pins: [\"{}\"]}}\nstorage: {{type: directory, path: {}}}\n{extra}services:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            e.d.addr,
            e.d.pin,
            base.join("state").display(),
            base.join("machine-id").display()
        ),
    )
}

fn identity_at(path: &Path) -> mcpgate_pki::Identity {
    mcpgate_pki::Identity::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_bot_joins_once_and_its_identity_file_is_private_and_ordered() {
    let e = cluster("join");
    let token = bot_token(&e.d, "ci");
    assert_eq!(token.len(), 64);
    let cfg = bot_yaml(
        &e,
        "ci",
        &token,
        "credential_ttl: 1h\nrenewal_interval: 20m\n",
    );
    let out = run(
        &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
        None,
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file = e.s.path("ci/machine-id/identity");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let pem = std::fs::read_to_string(&file).unwrap();
    let blocks: Vec<&str> = pem
        .lines()
        .filter(|l| l.starts_with("-----BEGIN"))
        .collect();
    assert_eq!(
        blocks,
        [
            "-----BEGIN PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----",
            "-----BEGIN CERTIFICATE-----",
            "-----BEGIN CERTIFICATE-----"
        ]
    );
    let id = identity_at(&file);
    assert_eq!(id.info.claims.kind, mcpgate_types::IdentityKind::Bot);
    assert_eq!(id.info.claims.generation, 1);
    assert_eq!(id.info.claims.roles, ["dev"]);
    let ttl = id
        .info
        .not_after
        .duration_since(id.info.not_before)
        .unwrap();
    assert!(
        ttl <= Duration::from_secs(3600 + 61) && ttl > Duration::from_secs(3500),
        "{ttl:?}"
    );

    // The same token never works twice.
    let again = bot_yaml(&e, "thief", &token, "");
    let err = run(
        &["bot", "start", "-c", again.to_str().unwrap(), "--oneshot"],
        None,
        &[],
    )
    .fails();
    assert!(err.contains("invalid, expired or already used"), "{err}");

    // With its state, the bot renews without the token: the next generation.
    assert_eq!(
        run(
            &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .code,
        0
    );
    assert_eq!(identity_at(&file).info.claims.generation, 2);
    let ls = e.d.admin(&["bots", "ls", "--format", "json"]).ok();
    let bots: Vec<Value> = serde_json::from_str(&ls).unwrap();
    assert_eq!(bots[0]["generation"], 2);
    let joins = audit(&e.d, &["--type", "bot.join"]);
    assert_eq!(joins.iter().filter(|j| j["success"] == true).count(), 1);
    assert_eq!(
        joins.iter().find(|j| j["success"] == true).unwrap()["generation"],
        1
    );

    // Bad configs fail in one line.
    let bad = e.s.write(
        "bad.yaml",
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("renewal_interval: 20m", "renewal_interval: 2h"),
    );
    assert!(
        run(
            &["bot", "start", "-c", bad.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .fails()
        .contains("renewal_interval must be shorter")
    );
    let typo = e.s.write(
        "typo.yaml",
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("credential_ttl", "credentials_ttl"),
    );
    assert!(
        run(
            &["bot", "start", "-c", typo.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .fails()
        .contains("unknown field `credentials_ttl`")
    );
}

#[test]
fn the_identity_file_works_with_mcp_connect_and_mcp_config() {
    let e = cluster("connect");
    let cfg = bot_yaml(&e, "ci", &bot_token(&e.d, "ci"), "");
    assert_eq!(
        run(
            &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .code,
        0
    );
    let file = e.s.path("ci/machine-id/identity");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "mcp",
        "connect",
        "-i",
        file.to_str().unwrap(),
        "--proxy",
        &e.d.addr,
        "rec",
    ]);
    let mut b = Bridge::spawn(cmd);
    b.initialize();
    assert_eq!(b.tools(), ["echo", "read_file"]);
    assert!(
        b.call("echo", json!({"from": "bot"}))
            .get("result")
            .is_some()
    );
    assert_eq!(b.close(), 0);
    let calls = audit(&e.d, &["--user", "ci", "--tool", "echo"]);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["user_kind"], "bot");
    assert!(
        std::fs::read_to_string(&e.record)
            .unwrap()
            .contains("\"bot\"")
    );
}

#[test]
fn langgraph_uses_the_bot_identity() {
    let Some(python) = needs("MCPGATE_TEST_LANGCHAIN_PYTHON") else {
        return;
    };
    let e = cluster("langgraph");
    let cfg = bot_yaml(&e, "agent", &bot_token(&e.d, "langgraph"), "");
    assert_eq!(
        run(
            &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .code,
        0
    );
    let file = e.s.path("agent/machine-id/identity");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/langgraph_client.py"
    );
    let out = std::process::Command::new(python)
        .args([
            script,
            BIN,
            file.to_str().unwrap(),
            &e.d.addr,
            "rec",
            "echo",
            r#"{"message": "from langgraph"}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["tools"],
        json!(["echo", "read_file"]),
        "exactly the bot's allowed tools"
    );
    assert!(
        v["result"].as_str().unwrap().contains("from langgraph"),
        "{v}"
    );
    // The adapters open a session per call: each is audited as the bot.
    let calls = audit(&e.d, &["--user", "langgraph", "--tool", "echo"]);
    assert_eq!(calls.len(), 1);
}

#[test]
fn a_daemon_bot_renews_and_readers_never_see_a_torn_file() {
    let e = cluster("renew");
    let cfg = bot_yaml(
        &e,
        "ci",
        &bot_token(&e.d, "ci"),
        "credential_ttl: 1m\nrenewal_interval: 1s\n",
    );
    let mut bot = std::process::Command::new(BIN)
        .args(["bot", "start", "-c", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = e.s.path("ci/machine-id/identity");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut generations = std::collections::BTreeSet::new();
    while Instant::now() < deadline && generations.len() < 4 {
        if let Ok(text) = std::fs::read_to_string(&file) {
            // Every read parses: the file is replaced atomically.
            let id = mcpgate_pki::Identity::parse(&text)
                .unwrap_or_else(|e| panic!("torn identity file: {e}"));
            generations.insert(id.info.claims.generation);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = bot.kill();
    let _ = bot.wait();
    assert!(generations.len() >= 4, "renewed: {generations:?}");
    assert_eq!(
        audit(&e.d, &["--type", "cert.create", "--user", "ci"]).len() + 1,
        *generations.last().unwrap() as usize,
        "every renewal is audited"
    );
}

#[test]
fn a_copied_older_generation_locks_the_bot() {
    let e = cluster("theft");
    let cfg = bot_yaml(&e, "ci", &bot_token(&e.d, "ci"), "");
    assert_eq!(
        run(
            &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .code,
        0
    );
    // A thief copies the bot's credential (generation 1); the bot renews (generation 2).
    let stolen = e.s.path("stolen");
    std::fs::create_dir_all(stolen.join("state")).unwrap();
    std::fs::copy(e.s.path("ci/state/identity"), stolen.join("state/identity")).unwrap();
    assert_eq!(
        run(
            &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .code,
        0
    );
    // The thief renews with the copy: the bot is locked.
    let thief = bot_yaml(&e, "stolen", "", "");
    let err = run(
        &["bot", "start", "-c", thief.to_str().unwrap(), "--oneshot"],
        None,
        &[],
    )
    .fails();
    assert!(err.contains("bot ci is locked"), "{err}");
    let ev = audit(&e.d, &["--type", "bot.lock.generation_mismatch"]);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["target"], "bot ci");
    let locks: Vec<Value> =
        serde_json::from_str(&e.d.admin(&["get", "locks", "--format", "json"]).ok()).unwrap();
    assert_eq!(locks[0]["target"]["bot"], "ci");
    // The real bot is locked out too until an admin looks into it.
    assert!(
        run(
            &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .fails()
        .contains("locked")
    );
    let mut cmd = std::process::Command::new(BIN);
    let file = e.s.path("ci/machine-id/identity");
    cmd.args([
        "mcp",
        "connect",
        "-i",
        file.to_str().unwrap(),
        "--proxy",
        &e.d.addr,
        "rec",
    ]);
    let mut b = Bridge::spawn(cmd);
    let r = b.request("initialize", json!({}));
    assert!(
        r["error"]["message"].as_str().unwrap().contains("locked"),
        "{r}"
    );
}

#[test]
fn a_lock_ends_a_live_session_within_five_seconds() {
    let e = cluster("lock");
    let alice = Person::new(&e.s, "alice");
    alice.signup(&e.d, &invite(&e.d, "alice", "dev"));
    alice.login(&e.d, None, &[]).ok();
    let mut b = Bridge::open(&alice, "rec", &[]);
    b.initialize();
    assert!(b.call("echo", json!({})).get("result").is_some());
    let locked_at = Instant::now();
    let out =
        e.d.admin(&[
            "lock",
            "--user",
            "alice",
            "--message",
            "incident 42",
            "--format",
            "json",
        ])
        .ok();
    let lock: Value = serde_json::from_str(&out).unwrap();
    let note = b.recv();
    let elapsed = locked_at.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "the session ended after {elapsed:?}"
    );
    assert_eq!(note["method"], "notifications/message");
    assert!(
        note["params"]["data"]
            .as_str()
            .unwrap()
            .contains("user alice is locked: incident 42"),
        "{note}"
    );
    // A request sent after the lock is answered too, with the reason.
    let after = b.call("echo", serde_json::json!({}));
    assert!(
        after["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("user alice is locked: incident 42"),
        "{after}"
    );
    assert_eq!(
        b.close(),
        1,
        "the bridge exits non-zero when the session is cut"
    );
    let ends = audit(&e.d, &["--type", "mcp.session.end", "--user", "alice"]);
    assert_eq!(ends.len(), 1);
    assert!(ends[0]["reason"].as_str().unwrap().contains("incident 42"));
    assert_eq!(audit(&e.d, &["--type", "lock.create"]).len(), 1);

    // No new session, no new certificate, while the lock stands.
    let mut b = Bridge::open(&alice, "rec", &[]);
    let r = b.request("initialize", json!({}));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user alice is locked: incident 42"),
        "{r}"
    );
    drop(b);
    assert!(alice.login(&e.d, None, &[]).fails().contains("locked"));

    // Lifting it restores access.
    e.d.admin(&["rm", &format!("lock/{}", lock["id"].as_str().unwrap())])
        .ok();
    alice.login(&e.d, None, &[]).ok();
    let mut b = Bridge::open(&alice, "rec", &[]);
    b.initialize();
    assert!(b.call("echo", json!({})).get("result").is_some());
    assert_eq!(audit(&e.d, &["--type", "lock.delete"]).len(), 1);
}

#[test]
fn a_bot_keeps_its_identity_while_the_auth_service_is_down_and_renews_when_it_returns() {
    // A fixed port, so the restarted gateway is where the bot looks for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Scratch::new();
    let extra = format!("auth: {{second_factor: off}}\nproxy: {{listen: 127.0.0.1:{port}}}\n");
    let config = |s: &Scratch| {
        s.write(
            "fixed.yaml",
            &format!(
                "version: v1\ncluster_name: e2e.local\ndata_dir: {}\n{extra}",
                s.path("fixed-data").display()
            ),
        )
    };
    let mut d = Daemon::start_with(&config(&s), s.path("fixed-data"));
    d.admin(&[
        "create",
        "-f",
        s.write("roles.yaml", ROLES).to_str().unwrap(),
    ])
    .ok();
    let token = bot_token(&d, "ci");
    let base = s.path("ci");
    let cfg = s.write(
        "ci.yaml",
        &format!(
            "version: v1\nproxy_server: {}\nonboarding: {{join_method: token, token: \"{token}\", ca_pins: [\"{}\"]}}\nstorage: {{type: directory, path: {}}}\ncredential_ttl: 1m\nrenewal_interval: 1s\nservices:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            d.addr, d.pin, base.join("state").display(), base.join("out").display()
        ),
    );
    let mut bot = std::process::Command::new(BIN)
        .args(["bot", "start", "-c", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = base.join("out/identity");
    let generation = || {
        mcpgate_pki::Identity::parse(&std::fs::read_to_string(&file).unwrap_or_default())
            .map(|i| i.info.claims.generation)
            .unwrap_or(0)
    };
    let wait_for = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while generation() < want {
            assert!(Instant::now() < deadline, "no renewal to generation {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(2);
    d.kill();
    std::thread::sleep(Duration::from_secs(3));
    let during = generation();
    let id = mcpgate_pki::Identity::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        id.info.valid_at(std::time::SystemTime::now()),
        "the last identity stays in place and valid"
    );
    assert!(bot.try_wait().unwrap().is_none(), "the bot keeps retrying");
    let _d = Daemon::start_with(&config(&s), s.path("fixed-data"));
    wait_for(during + 1);
    let _ = bot.kill();
    let _ = bot.wait();
}

#[test]
fn bots_and_tokens_are_managed_from_the_cli() {
    let e = cluster("manage");
    e.d.admin(&[
        "create",
        "-f",
        e.s.write("ops.yaml", &ROLES.replace("name: dev", "name: ops"))
            .to_str()
            .unwrap(),
    ])
    .ok();
    let text =
        e.d.admin(&["bots", "add", "ci", "--roles", "dev", "--ttl", "2h"])
            .ok();
    assert!(
        text.contains("Bot ci created.") && text.contains("Join token (single use"),
        "{text}"
    );
    assert!(
        e.d.admin(&["bots", "add", "ci", "--roles", "dev"])
            .fails()
            .contains("bot ci already exists")
    );
    assert!(
        e.d.admin(&["bots", "add", "x", "--roles", "nope"])
            .fails()
            .contains("role \"nope\" does not exist")
    );
    assert!(
        e.d.admin(&["bots", "update", "ci", "--add-roles", "ops"])
            .ok()
            .contains("roles: dev, ops")
    );
    assert!(
        e.d.admin(&["bots", "update", "ci", "--set-roles", "ops"])
            .ok()
            .contains("roles: ops")
    );
    let ls = e.d.admin(&["bots", "ls"]).ok();
    assert!(
        ls.lines()
            .any(|l| l.starts_with("ci") && l.contains("ops") && l.contains("2h")),
        "{ls}"
    );

    // Tokens: listed by a hash, never the token itself; removable.
    let out =
        e.d.admin(&[
            "tokens", "add", "--type", "bot", "--bot", "ci", "--format", "json",
        ])
        .ok();
    let token = serde_json::from_str::<Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let listed: Vec<Value> =
        serde_json::from_str(&e.d.admin(&["tokens", "ls", "--format", "json"]).ok()).unwrap();
    let mine = listed
        .iter()
        .find(|t| t["subject"] == "ci" && t["type"] == "bot")
        .cloned();
    assert!(
        listed.len() >= 2,
        "the bots add token and this one: {listed:?}"
    );
    assert!(
        !serde_json::to_string(&listed).unwrap().contains(&token),
        "the token is never listed"
    );
    for t in &listed {
        e.d.admin(&["tokens", "rm", t["id"].as_str().unwrap()]).ok();
    }
    assert!(mine.is_some());
    let cfg = bot_yaml(&e, "ci", &token, "");
    assert!(
        run(
            &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
            None,
            &[]
        )
        .fails()
        .contains("invalid, expired or already used"),
        "a removed token no longer works"
    );
    assert!(
        e.d.admin(&["tokens", "add", "--type", "bot", "--bot", "ghost"])
            .fails()
            .contains("bot \"ghost\" does not exist")
    );
    e.d.admin(&["bots", "rm", "ci"]).ok();
    assert_eq!(
        e.d.admin(&["bots", "ls", "--format", "json"]).ok().trim(),
        "[]"
    );
}
