//! Agents on other hosts: a second daemon process, agent only, joins with a single-use token
//! and serves its apps through the proxy; several agents share an app; a dead agent gives a
//! clear, fast error; a client that stops reading stalls only its own session.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLES: &str = "kind: role
version: v8
metadata: {name: dev}
spec:
  allow:
    app_labels: {env: dev}
    mcp: {tools: [echo]}
";

struct Env {
    s: Scratch,
    d: Daemon,
    alice: Person,
}

fn gateway() -> Env {
    let s = Scratch::new();
    let d = gateway_daemon(&s, "", ROLES);
    let alice = Person::admitted(&s, &d, "alice", "dev");
    Env { s, d, alice }
}

fn agent_token(d: &Daemon) -> String {
    scoped_token(d, &[])
}

/// An agent token with `admin tokens add --type agent` options (`--apps`, `--name` ...).
fn scoped_token(d: &Daemon, extra: &[&str]) -> String {
    let mut args = vec!["tokens", "add", "--type", "agent", "--format", "json"];
    args.extend_from_slice(extra);
    let out = d.admin(&args).ok();
    serde_json::from_str::<Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Starts an agent-only daemon serving a recorder app `app`; returns it and its record file.
fn agent(e: &Env, name: &str, app: &str, token: &str, marker: &str) -> (Daemon, PathBuf) {
    agent_at(e, name, name, app, token, marker)
}

/// [`agent`] with its files under `tag` (a second agent of the same name elsewhere).
fn agent_at(
    e: &Env,
    name: &str,
    tag: &str,
    app: &str,
    token: &str,
    marker: &str,
) -> (Daemon, PathBuf) {
    let record = e.s.path(&format!("{tag}-record.jsonl"));
    std::fs::write(&record, "").unwrap();
    let apps = recorder_app(app, "{env: dev}", &record, marker);
    let data_dir = e.s.path(&format!("{tag}-data"));
    let cfg = e.s.write(
        &format!("{tag}.yaml"),
        &format!(
            "version: v1\ncluster_name: e2e.local\ndata_dir: {}\nauth: {{enabled: false}}\nproxy: {{enabled: false}}\nagent:\n  name: {name}\n  proxy_addr: {}\n  join_token: \"{token}\"\n  ca_pin: \"{}\"\n  apps:\n{apps}",
            data_dir.display(),
            e.d.addr,
            e.d.pin
        ),
    );
    (Daemon::start_with(&cfg, data_dir), record)
}

/// An agent admitted with a plain token, serving recorder app `app`, once it is connected.
fn connected_agent(e: &Env, name: &str, app: &str, tag: &str) -> Daemon {
    let (d, _) = agent(e, name, app, &agent_token(&e.d), &marker(tag));
    wait_for_agent(&e.d, name);
    d
}

fn wait_for_agent(d: &Daemon, name: &str) {
    wait_agent(d, name, true, Duration::from_secs(10));
}

/// Waits until agent `name` holds no tunnel (`admin status`), at most `within`.
fn wait_agent_gone(d: &Daemon, name: &str, within: Duration) {
    wait_agent(d, name, false, within);
}

/// Waits until `admin status` lists agent `name` as connected (or not), at most `within`.
fn wait_agent(d: &Daemon, name: &str, connected: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status: Value =
            serde_json::from_str(&d.admin(&["status", "--format", "json"]).ok()).unwrap();
        let listed = status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == name);
        if listed == connected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {name}: connected should be {connected}: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_events(d: &Daemon, filters: &[&str], n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = audit(d, filters);
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_remote_agent_joins_once_and_serves_its_app_through_the_proxy() {
    let e = gateway();
    let token = agent_token(&e.d);
    let m = marker("remote");
    let (mut edge, record) = agent(&e, "edge-1", "remote-rec", &token, &m);
    assert!(
        edge.banner.contains("agent edge-1 of cluster e2e.local"),
        "{}",
        edge.banner
    );
    wait_for_agent(&e.d, "edge-1");
    let status = e.d.admin(&["status"]).ok();
    assert!(status.contains("Agent:    edge-1 (remote-rec)"), "{status}");
    let agents = e.d.admin(&["get", "agents"]).ok();
    assert!(
        agents
            .lines()
            .any(|l| l.starts_with("edge-1") && l.contains("remote-rec")),
        "{agents}"
    );
    assert!(
        e.alice
            .run(&["mcp", "ls"], None)
            .ok()
            .contains("remote-rec")
    );

    let mut b = Bridge::open(&e.alice, "remote-rec", &[]);
    assert_eq!(b.initialize()["result"]["serverInfo"]["name"], "recorder");
    assert_eq!(b.tools(), ["echo"]);
    assert!(
        b.call("echo", json!({"via": "edge"}))
            .get("result")
            .is_some()
    );
    let denied = b.call("delete_all", json!({}));
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("access denied")
    );
    assert_eq!(b.close(), 0);
    assert!(
        !std::fs::read_to_string(&record)
            .unwrap()
            .contains("delete_all")
    );
    // The agent's audit events reach the auth service.
    let calls = wait_for_events(
        &e.d,
        &["--app", "remote-rec", "--type", "mcp.session.request"],
        3,
    );
    assert!(
        calls
            .iter()
            .any(|c| c["tool"] == "echo" && c["decision"] == "allow"),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c["tool"] == "delete_all" && c["decision"] == "deny"),
        "{calls:?}"
    );
    assert_eq!(audit(&e.d, &["--type", "agent.join"]).len(), 1);

    // Its host identity is private; a restart reuses it (the token was single-use).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(edge.data_dir.join("agent/identity"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    edge.kill();
    let (_edge, _) = agent(&e, "edge-1", "remote-rec", &token, &m);
    wait_for_agent(&e.d, "edge-1");
    let mut b = Bridge::open(&e.alice, "remote-rec", &[]);
    b.initialize();
    assert!(b.call("echo", json!({})).get("result").is_some());
    drop(b);

    // A second agent cannot join with the used token.
    let cfg = e.s.write("reuse.yaml", &format!(
        "version: v1\ndata_dir: {}\nauth: {{enabled: false}}\nproxy: {{enabled: false}}\nagent:\n  proxy_addr: {}\n  join_token: \"{token}\"\n  ca_pin: \"{}\"\n  apps:\n{}",
        e.s.path("reuse-data").display(), e.d.addr, e.d.pin, recorder_app("x", "{env: dev}", &record, &m)));
    let err = run(&["start", "--config", cfg.to_str().unwrap()], None, &[]).fails();
    assert!(err.contains("invalid, expired or already used"), "{err}");
    // The events the agent shipped joined the cluster's audit chain as they arrived.
    let verified = e.d.admin(&["audit", "verify"]).ok();
    assert!(
        verified.starts_with("The audit log is intact"),
        "{verified}"
    );
}

#[test]
fn several_agents_share_an_app_and_a_dead_one_gives_a_fast_clear_error() {
    let e = gateway();
    let m = marker("shared");
    // Both are admitted for the app (without it, the first to claim "shared" holds it).
    let admit = || scoped_token(&e.d, &["--apps", "shared"]);
    let (mut one, rec1) = agent(&e, "edge-a", "shared", &admit(), &m);
    let (two, rec2) = agent(&e, "edge-b", "shared", &admit(), &m);
    wait_for_agent(&e.d, "edge-a");
    wait_for_agent(&e.d, "edge-b");
    for i in 0..6 {
        let mut b = Bridge::open(&e.alice, "shared", &[]);
        b.initialize();
        assert!(b.call("echo", json!({"i": i})).get("result").is_some());
        b.close();
    }
    let (n1, n2) = (
        std::fs::read_to_string(&rec1).unwrap(),
        std::fs::read_to_string(&rec2).unwrap(),
    );
    assert!(
        n1.contains("\"echo\"") && n2.contains("\"echo\""),
        "sessions are spread across both agents"
    );

    // A live session on an agent that dies ends; new sessions go to the other.
    let mut live = Bridge::open(&e.alice, "shared", &[]);
    live.initialize();
    drop(two);
    one.kill();
    let started = Instant::now();
    let mut b = Bridge::open(&e.alice, "shared", &[]);
    let r = b.request("initialize", json!({}));
    let elapsed = started.elapsed();
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("app \"shared\" not found: no agent serves it"),
        "{r}"
    );
    assert!(elapsed < Duration::from_secs(3), "answered in {elapsed:?}");
    assert_eq!(
        live.close(),
        1,
        "the live session's bridge exits non-zero when its agent dies"
    );
    assert!(
        wait_no_processes(&m).is_empty(),
        "no upstream outlives its agent"
    );
}

#[test]
fn a_lock_ends_a_session_on_a_remote_agent_within_five_seconds() {
    let e = gateway();
    let _edge = connected_agent(&e, "edge-l", "remote-rec", "remotelock");
    let mut b = Bridge::open(&e.alice, "remote-rec", &[]);
    b.initialize();
    assert!(b.call("echo", json!({})).get("result").is_some());
    let locked_at = Instant::now();
    e.d.admin(&["lock", "--user", "alice", "--message", "remote incident"])
        .ok();
    let note = b.recv();
    assert!(
        locked_at.elapsed() < Duration::from_secs(5),
        "ended after {:?}",
        locked_at.elapsed()
    );
    assert!(
        note["params"]["data"]
            .as_str()
            .unwrap()
            .contains("remote incident"),
        "{note}"
    );
    assert_eq!(b.close(), 1, "a cut session's bridge exits non-zero");
    assert_alice_session_ended(&e, "remote incident");
}

/// An end of one of alice's sessions reaches the audit log, its reason saying `why`.
fn assert_alice_session_ended(e: &Env, why: &str) {
    let ends = wait_for_events(&e.d, &["--type", "mcp.session.end", "--user", "alice"], 1);
    assert!(
        ends.iter()
            .any(|ev| ev["reason"].as_str().is_some_and(|r| r.contains(why))),
        "{ends:?}"
    );
}

/// An agent on another host asked to stop (SIGTERM) ends its sessions as the daemon does:
/// the client is told why, the server is stopped, and the end reaches the audit log.
#[test]
fn a_stopped_remote_agent_ends_its_sessions_and_ships_their_end() {
    let e = gateway();
    let m = marker("remotestop");
    let (mut edge, _) = agent(&e, "edge-t", "remote-rec", &agent_token(&e.d), &m);
    wait_for_agent(&e.d, "edge-t");
    let mut b = Bridge::open(&e.alice, "remote-rec", &[]);
    b.initialize();
    assert!(b.call("echo", json!({})).get("result").is_some());
    let status = edge.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let note = b.recv();
    assert_ended(b, &note, "the gateway is shutting down", &m);
    assert_alice_session_ended(&e, "shutting down");
}

/// Large answers the client never reads: more than the bridge's pipe, the sockets' buffers
/// and the tunnel stream's window together hold.
const UNREAD_ANSWERS: usize = 16;

#[test]
fn a_client_that_stops_reading_stalls_only_its_own_session() {
    let e = gateway();
    let role = "kind: role\nversion: v8\nmetadata: {name: bulk}\nspec:\n  allow:\n    app_labels: {env: dev}\n    mcp: {tools: [echo, big]}\n";
    e.d.admin(&[
        "create",
        "-f",
        e.s.write("bulk.yaml", role).to_str().unwrap(),
    ])
    .ok();
    let bob = Person::new(&e.s, "bob");
    bob.signup(&e.d, &invite(&e.d, "bob", "bulk"));
    bob.login(&e.d, None, &[]).ok();
    let m = marker("stall");
    let (_edge, record) = agent(&e, "edge-s", "bulk-rec", &agent_token(&e.d), &m);
    wait_for_agent(&e.d, "edge-s");

    // Session A asks for large answers and never reads its stdout.
    let mut stalled = Command::new(BIN)
        .args(["mcp", "connect", "bulk-rec"])
        .env("MCPGATE_HOME", &bob.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _unread = stalled.stdout.take();
    let mut to_stalled = stalled.stdin.take().unwrap();
    let mut requests = String::from(concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"stalled","version":"1"}}}"#,
        "\n",
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        "\n"
    ));
    for i in 0..UNREAD_ANSWERS {
        requests.push_str(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"tools/call\",\"params\":{{\"name\":\"big\",\"arguments\":{{}}}}}}\n",
            10 + i
        ));
    }
    to_stalled.write_all(requests.as_bytes()).unwrap();
    to_stalled.flush().unwrap();
    // The upstream answers one request at a time: once it has taken a few, its answers back
    // up towards the agent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&record)
        .unwrap()
        .matches("\"big\"")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));

    // Session B opens after A stalled, and every call answers promptly.
    let mut b = Bridge::open(&bob, "bulk-rec", &[]);
    assert_eq!(b.initialize()["result"]["serverInfo"]["name"], "recorder");
    let started = Instant::now();
    for i in 0..20 {
        let t = Instant::now();
        let r = b.call("echo", json!({"i": i}));
        assert!(r.get("result").is_some(), "call {i}: {r}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "call {i} took {:?}",
            t.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "20 calls took {:?}",
        started.elapsed()
    );
    // A third session opened afterwards works too, and A is still there, only stalled.
    let mut c = Bridge::open(&bob, "bulk-rec", &[]);
    c.initialize();
    assert!(c.call("echo", json!({"c": 1})).get("result").is_some());
    assert_eq!(c.close(), 0);
    assert_eq!(b.close(), 0);
    assert!(
        stalled.try_wait().unwrap().is_none(),
        "the stalled session was not cut"
    );
    let taken = std::fs::read_to_string(&record)
        .unwrap()
        .matches("\"big\"")
        .count();
    assert!(
        taken < UNREAD_ANSWERS,
        "the upstream answered all {taken} requests: session A never stalled"
    );

    let _ = stalled.kill();
    let _ = stalled.wait();
    drop(to_stalled);
}

/// A gateway whose own agent serves the recorder app `rec` (so it holds that name).
fn gateway_with_rec(m: &str) -> (Env, PathBuf) {
    let s = Scratch::new();
    let record = s.path("local-record.jsonl");
    std::fs::write(&record, "").unwrap();
    let d = gateway_daemon(&s, &recorder_app("rec", "{env: dev}", &record, m), ROLES);
    let alice = Person::admitted(&s, &d, "alice", "dev");
    (Env { s, d, alice }, record)
}

#[test]
fn a_rogue_agent_cannot_take_apps_forge_events_or_stay_once_locked() {
    let m = marker("rogue");
    let (e, local_record) = gateway_with_rec(&m);
    // The rogue joins with a valid token admitting it for `edge-app` only, and declares
    // that app, the gateway's own `rec`, and `sneaky`.
    let token = scoped_token(&e.d, &["--apps", "edge-app"]);
    let rogue_record = e.s.path("rogue-record.jsonl");
    std::fs::write(&rogue_record, "").unwrap();
    let apps: String = ["edge-app", "rec", "sneaky"]
        .iter()
        .map(|a| recorder_app(a, "{env: dev}", &rogue_record, &m))
        .collect();
    let data_dir = e.s.path("rogue-data");
    let cfg = e.s.write(
        "rogue.yaml",
        &format!(
            "version: v1\ncluster_name: e2e.local\ndata_dir: {}\nauth: {{enabled: false}}\nproxy: {{enabled: false}}\nagent:\n  name: local\n  proxy_addr: {}\n  join_token: \"{token}\"\n  ca_pin: \"{}\"\n  apps:\n{apps}",
            data_dir.display(),
            e.d.addr,
            e.d.pin
        ),
    );
    // It even asks for the name of the gateway's own agent: one name, one registration.
    let err = run(&["start", "--config", cfg.to_str().unwrap()], None, &[]).fails();
    assert!(err.contains("already registered"), "{err}");
    let cfg = e.s.write(
        "rogue.yaml",
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("name: local", "name: rogue")
            .replace(&token, &scoped_token(&e.d, &["--apps", "edge-app"])),
    );
    let _rogue = Daemon::start_with(&cfg, data_dir.clone());
    wait_for_agent(&e.d, "rogue");

    // 0 of 20 sessions of `rec` reach the rogue; its scope is what is routed to it.
    for i in 0..20 {
        let mut b = Bridge::open(&e.alice, "rec", &[]);
        b.initialize();
        assert!(b.call("echo", json!({"i": i})).get("result").is_some());
        b.close();
    }
    assert!(
        !recorded_text(&rogue_record).contains("\"echo\""),
        "a session reached the rogue"
    );
    assert_eq!(
        recorded_text(&local_record).matches("tools/call").count(),
        20
    );
    let err = Bridge::refused(&e.alice, "sneaky");
    assert!(err.contains("not found"), "{err}");
    let denied = audit(&e.d, &["--type", "agent.announce.denied"]);
    for app in ["rec", "sneaky"] {
        assert!(
            denied
                .iter()
                .any(|ev| ev["app"] == app && ev["agent"] == "rogue"),
            "{app}: {denied:?}"
        );
    }
    let agents: Value =
        serde_json::from_str(&e.d.admin(&["get", "agents", "--format", "json"]).ok()).unwrap();
    let rogue = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "rogue")
        .unwrap();
    assert_eq!(rogue["scope"]["apps"], json!(["edge-app"]), "{agents}");
    assert_eq!(rogue["apps"], json!(["edge-app"]), "{agents}");
    assert_eq!(rogue["tunnels"], 1, "{agents}");

    // Its own app works, and its events are stored naming it.
    let mut own = Bridge::open(&e.alice, "edge-app", &[]);
    own.initialize();
    assert!(own.tools().contains(&"echo".to_string()));
    assert!(own.call("echo", json!({"own": 1})).get("result").is_some());
    let calls = wait_for_events(&e.d, &["--app", "edge-app", "--tool", "echo"], 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["agent"], "rogue");

    // Forged events: another identity's login, a call in a session routed to another
    // agent, a call in a session that never was. None is stored; each is audited.
    let identity = std::fs::read_to_string(data_dir.join("agent").join("identity")).unwrap();
    let local_session = audit(&e.d, &["--app", "rec", "--tool", "echo"])[0]["session_id"].clone();
    let forged = |id: &str, kind: &str, user: &str, session: &Value| {
        json!({"id": id, "time": "2026-01-01T00:00:00.000000Z", "type": kind, "code": "MG5002I",
               "cluster": "e2e.local", "user": user, "user_kind": "user", "roles": ["editor"],
               "success": true, "session_id": session, "app": "rec", "tool": "delete_everything"})
    };
    let events = json!([
        forged("forged-login", "user.login", "admin", &Value::Null),
        forged(
            "forged-other-session",
            "mcp.session.request",
            "alice",
            &local_session
        ),
        forged(
            "forged-no-session",
            "mcp.session.request",
            "bob",
            &json!("no-such-session")
        ),
    ]);
    let (status, answer) = api_as(&e.d, &identity, "POST", "/v1/agent/events", &events);
    assert_eq!(
        (status, &answer["stored"], &answer["refused"]),
        (200, &json!(0), &json!(3)),
        "{answer}"
    );
    let refusals = audit(&e.d, &["--type", "agent.event.refused"]);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["agent"], "rogue");
    assert_eq!(refusals[0]["refused"], 3);
    for kind in ["user.login", "mcp.session.request"] {
        assert!(
            audit(&e.d, &["--type", kind])
                .iter()
                .all(|ev| !ev["id"].as_str().unwrap().starts_with("forged")),
            "a forged {kind} was stored"
        );
    }
    // Identity assertions: for a session routed to it, naming that session's caller, for the
    // app's URI as announced when the session opened and no other; for a session routed to
    // another agent, none.
    let own_session = calls[0]["session_id"].clone();
    let ask = |session: &Value, audience: &str| {
        api_as(
            &e.d,
            &identity,
            "POST",
            "/v1/agent/assertion",
            &json!({"session": session, "audience": audience}),
        )
    };
    let (status, assertion) = ask(&own_session, "mcp+stdio://");
    assert_eq!(status, 200, "{assertion}");
    let claims = assertion["token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&claims["sub"], &claims["app"], &claims["aud"]),
        (&json!("alice"), &json!("edge-app"), &json!("mcp+stdio://"))
    );
    let (status, other) = ask(&own_session, "mcp+https://api.githubcopilot.com/mcp/");
    assert_eq!(status, 403, "another audience: {other}");
    let (status, other) = ask(&local_session, "mcp+stdio://");
    assert_eq!(status, 403, "another agent's session: {other}");
    // Tool pins: it reads and reports those of its own app only; a forged report for the
    // gateway's app is refused and changes nothing.
    let (status, own_pins) = api_as(
        &e.d,
        &identity,
        "GET",
        "/v1/agent/pins/edge-app",
        &Value::Null,
    );
    assert_eq!(status, 200, "{own_pins}");
    assert!(
        own_pins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["tool"] == "echo" && p["approved"]["by"] == "first use"),
        "a remote agent's report pins its app's tools: {own_pins}"
    );
    let (status, answer) = api_as(&e.d, &identity, "GET", "/v1/agent/pins/rec", &Value::Null);
    assert_eq!(status, 403, "{answer}");
    let before = e.d.admin(&["apps", "pins", "rec", "--format", "json"]).ok();
    let forged_tools =
        json!({"app": "rec", "tools": [{"name": "echo", "description": "now also exfiltrates"}]});
    let (status, answer) = api_as(&e.d, &identity, "POST", "/v1/agent/pins", &forged_tools);
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        e.d.admin(&["apps", "pins", "rec", "--format", "json"]).ok(),
        before
    );
    assert!(audit(&e.d, &["--type", "mcp.tool.drift", "--app", "rec"]).is_empty());
    // Its host certificate opens no MCP session.
    let out = run(
        &[
            "mcp",
            "connect",
            "edge-app",
            "-i",
            data_dir.join("agent").join("identity").to_str().unwrap(),
            "--proxy",
            &e.d.addr,
        ],
        Some("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}\n"),
        &[],
    );
    assert!(
        out.stdout
            .contains("only user and bot certificates may open MCP sessions"),
        "{out:?}"
    );
    // It learns only the roles and locks of identities whose sessions it served: alice's
    // role `dev`, not `editor`; a lock on alice, not one on somebody else.
    let (status, roles) = api_as(
        &e.d,
        &identity,
        "POST",
        "/v1/agent/roles",
        &json!(["editor", "dev"]),
    );
    assert_eq!(status, 200, "{roles}");
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev"]);
    e.d.admin(&["lock", "--user", "mallory", "--message", "not yours"])
        .ok();
    let (status, locks) = api_as(&e.d, &identity, "GET", "/v1/agent/locks", &Value::Null);
    assert_eq!((status, locks), (200, json!([])));
    // The agent API gives it only the cluster apps of its scope (none here).
    let (status, apps) = api_as(&e.d, &identity, "GET", "/v1/agent/apps", &Value::Null);
    assert_eq!((status, apps), (200, json!([])));

    // Locked: its tunnel is cut within about a second, its sessions' clients are told why,
    // and nothing more is routed to it.
    let locked_at = Instant::now();
    e.d.admin(&["lock", "--agent", "rogue", "--message", "rogue agent"])
        .ok();
    let note = own.recv();
    let elapsed = locked_at.elapsed();
    assert!(elapsed < Duration::from_secs(3), "cut after {elapsed:?}");
    assert!(
        note["params"]["data"]
            .as_str()
            .unwrap()
            .contains("rogue agent"),
        "{note}"
    );
    assert_eq!(own.close(), 1, "a cut session's bridge exits non-zero");
    // From the lock on, no new session is routed to it, tunnel or not.
    let err = Bridge::refused(&e.alice, "edge-app");
    assert!(err.contains("not found"), "{err}");
    // Its tunnel is gone within about a second.
    wait_agent_gone(&e.d, "rogue", Duration::from_secs(3));
    // Nor does its certificate read or ship anything any more.
    for (method, path, body) in [
        ("GET", "/v1/agent/locks", Value::Null),
        ("POST", "/v1/agent/roles", json!(["editor"])),
        ("POST", "/v1/agent/events", json!([])),
    ] {
        let (status, answer) = api_as(&e.d, &identity, method, path, &body);
        assert_eq!(status, 403, "{path}: {answer}");
    }
}

#[test]
fn a_copied_agent_certificate_that_renews_after_the_original_locks_the_agent() {
    let e = gateway();
    let _edge = connected_agent(&e, "edge-c", "copied-app", "copy");
    let copy =
        std::fs::read_to_string(e.s.path("edge-c-data").join("agent").join("identity")).unwrap();
    let renew = |identity: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let (status, answer) = api_as(
            &e.d,
            identity,
            "POST",
            "/v1/agent/renew",
            &json!({"public_key": key.public_key_pem()}),
        );
        (status, answer, key)
    };
    // The original renews first: generation 2.
    let (status, answer, key) = renew(&copy);
    assert_eq!(status, 200, "{answer}");
    let renewed = mcpgate_pki::Identity::new(
        &key.serialize_pem(),
        answer["cert"].as_str().unwrap(),
        &serde_json::from_value::<Vec<String>>(answer["cas"].clone()).unwrap(),
    )
    .unwrap()
    .to_pem();
    // The copy (generation 1) renews after it: refused, and the agent is locked.
    let (status, answer, _) = renew(&copy);
    assert_eq!(status, 403, "{answer}");
    // From now on the newest certificate is refused too.
    let (status, answer, _) = renew(&renewed);
    assert_eq!(status, 403, "{answer}");
    assert!(answer.to_string().contains("locked"), "{answer}");
    let mismatch = audit(&e.d, &["--type", "agent.lock.generation_mismatch"]);
    assert_eq!(mismatch.len(), 1, "{mismatch:?}");
    assert_eq!(mismatch[0]["presented"], 1);
    assert_eq!(mismatch[0]["current"], 2);
    let locks: Value =
        serde_json::from_str(&e.d.admin(&["get", "locks", "--format", "json"]).ok()).unwrap();
    assert!(locks.to_string().contains("edge-c"), "{locks}");
    // Its tunnel (generation 1, locked) is cut.
    wait_agent_gone(&e.d, "edge-c", Duration::from_secs(5));
}

#[test]
fn a_removed_agent_loses_its_tunnel_and_its_name_can_be_admitted_again() {
    let e = gateway();
    let _edge = connected_agent(&e, "edge-rm", "rm-app", "rm");
    e.d.admin(&["rm", "agent/edge-rm"]).ok();
    wait_agent_gone(&e.d, "edge-rm", Duration::from_secs(5));
    let err = e.d.admin(&["rm", "agent/edge-rm"]).fails();
    assert!(err.contains("not found"), "{err}");
    // Admitted again under the same name, the new agent owes nothing to the old
    // certificate, which stays useless.
    let old =
        std::fs::read_to_string(e.s.path("edge-rm-data").join("agent").join("identity")).unwrap();
    let token = scoped_token(&e.d, &["--name", "edge-rm", "--apps", "rm-app"]);
    let (_again, _) = agent_at(&e, "edge-rm", "edge-rm2", "rm-app", &token, &marker("rm2"));
    wait_for_agent(&e.d, "edge-rm");
    let key = rcgen::KeyPair::generate().unwrap();
    let (status, answer) = api_as(
        &e.d,
        &old,
        "POST",
        "/v1/agent/renew",
        &json!({"public_key": key.public_key_pem()}),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.to_string().contains("earlier registration"),
        "{answer}"
    );
    let locks = e.d.admin(&["get", "locks", "--format", "json"]).ok();
    assert!(
        !locks.contains("edge-rm"),
        "the new agent was not blamed: {locks}"
    );
    let mut b = Bridge::open(&e.alice, "rm-app", &[]);
    b.initialize();
    assert!(b.call("echo", json!({})).get("result").is_some());
}

#[test]
fn a_static_app_name_an_agent_holds_never_becomes_a_cluster_app() {
    let e = gateway();
    let _edge = connected_agent(&e, "edge-h", "payments", "hold");
    let app = "kind: app\nversion: v3\nmetadata: {name: payments, labels: {env: prod}}\nspec:\n  uri: mcp+stdio://\n  mcp: {command: pay-server, env: {PAY_KEY: \"${env:PAY_KEY}\"}}\n";
    let err =
        e.d.admin(&["create", "-f", e.s.write("pay.yaml", app).to_str().unwrap()])
            .fails();
    assert!(
        err.contains("agent edge-h serves a static app of this name"),
        "{err}"
    );
}

fn recorded_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
