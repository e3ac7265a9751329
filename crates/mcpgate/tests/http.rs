//! HTTP upstreams end to end: a client on `mcpgate mcp connect` reaches MCP servers that
//! speak Streamable HTTP (a recording fixture, and npm's server-everything) and the legacy
//! HTTP+SSE transport, with the same policy and audit as stdio, the app's credentials added
//! on the agent, and the caller named by a cluster-signed assertion the upstream can verify.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const ROLES: &str = "kind: role
version: v8
metadata: {name: remote}
spec:
  allow:
    app_labels: {env: remote}
    mcp: {tools: [echo, stream_echo, headers, forget_sessions, deploy, resumable, get-sum, trigger-long-running-operation]}
  deny:
    mcp: {tools: ['*delete*']}
";

/// The path of a fixture file of these tests.
macro_rules! fixture {
    ($name:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $name)
    };
}

/// One MCP server as two apps of label env=remote: `NAME-stdio`, run by the agent as
/// `COMMAND ARGS...`, and `NAME-http`, the same server already serving Streamable HTTP on
/// `port` (YAML list items for `gateway_daemon`).
fn stdio_and_http(name: &str, command: &str, args: &[&str], port: u16) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "    - name: {name}-stdio\n      labels: {{env: remote}}\n      uri: mcp+stdio://\n      mcp: {{command: \"{command}\", args: [{}]}}\n    - name: {name}-http\n      labels: {{env: remote}}\n      uri: mcp+http://127.0.0.1:{port}/mcp\n",
        args.join(", ")
    )
}

/// The recording server's tools the role `remote` allows, in the server's order.
const RECORDER_TOOLS: [&str; 6] = [
    "echo",
    "stream_echo",
    "headers",
    "forget_sessions",
    "resumable",
    "deploy",
];

/// A child process killed when the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the recording HTTP MCP server; returns it and its port.
fn http_recorder(record: &Path) -> (Server, u16) {
    http_recorder_with(record, &[])
}

/// The recording server with more environment (`TLS_CERT`, `TLS_KEY` for HTTPS).
fn http_recorder_with(record: &Path, env: &[(&str, &Path)]) -> (Server, u16) {
    let script = fixture!("http_recorder.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("RECORD_FILE", record)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap();
    (Server(child), port)
}

/// The requests the recorder received.
fn requests(record: &Path) -> Vec<Value> {
    std::fs::read_to_string(record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"))
        .to_string()
}

/// Checks an ES256 JWT against the cluster's published keys; returns its claims.
fn verified_claims(d: &Daemon, identity: &str, token: &str) -> Value {
    let (status, jwks) = api_as(d, identity, "GET", "/.well-known/jwks.json", &Value::Null);
    assert_eq!(status, 200, "{jwks}");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS: {token}");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} is not in the JWKS {jwks}", header["kid"]));
    let mut point = vec![4u8];
    point.extend(B64.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(B64.decode(key["y"].as_str().unwrap()).unwrap());
    let signed = format!("{}.{}", parts[0], parts[1]);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(signed.as_bytes(), &B64.decode(parts[2]).unwrap())
        .expect("the assertion's signature verifies against the JWKS");
    serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap()
}

#[test]
fn an_http_app_gets_its_credentials_on_the_agent_and_the_callers_assertion() {
    let s = Scratch::new();
    let record = s.path("http-record.jsonl");
    std::fs::write(&record, "").unwrap();
    let (_server, port) = http_recorder(&record);
    let token = s.write("upstream-token", "ghp-e2e-upstream-7c1f\n");
    let uri = format!("mcp+http://127.0.0.1:{port}/mcp");
    let apps = format!(
        "    - name: remote\n      labels: {{env: remote}}\n      uri: {uri}\n      rewrite:\n        headers: [\"Authorization: Bearer ${{file:{}}}\", \"X-Team: blue\"]\n",
        token.display()
    );
    let d = gateway_daemon(&s, &apps, ROLES);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    let mut b = Bridge::open(&alice, "remote", &[]);
    let init = b.initialize();
    assert_eq!(
        init["result"]["serverInfo"]["name"], "http-recorder",
        "{init}"
    );
    assert_eq!(
        b.tools(),
        [
            "deploy",
            "echo",
            "forget_sessions",
            "headers",
            "resumable",
            "stream_echo"
        ],
        "the allowed tools of the HTTP server, delete_all filtered out"
    );
    assert_eq!(
        text(&b.call("echo", json!({"say": "hi"}))),
        r#"{"say": "hi"}"#
    );

    // An answer streamed as server-sent events: the progress notification, then the answer
    // (sent across several data lines), arrive as lines.
    b.send(r#"{"jsonrpc":"2.0","id":"s1","method":"tools/call","params":{"name":"stream_echo","arguments":{"n":1},"_meta":{"progressToken":"tok"}}}"#);
    let progress = b.recv();
    assert_eq!(progress["method"], "notifications/progress", "{progress}");
    assert_eq!(progress["params"]["progressToken"], "tok");
    let streamed = b.answer(&json!("s1"));
    assert_eq!(text(&streamed), r#"{"n": 1}"#);

    // An argument the tool's schema declares `x-mcp-header` travels as a header too,
    // written by the agent from the body.
    assert!(b.call("deploy", json!({"region": "eu-west-1", "version": "7"}))["result"].is_object());
    let deploy = requests(&record)
        .into_iter()
        .find(|r| r["body"].as_str().is_some_and(|b| b.contains("\"deploy\"")))
        .unwrap();
    assert_eq!(
        deploy["headers"]["mcp-param-region"], "eu-west-1",
        "{deploy}"
    );
    assert!(deploy["headers"].get("mcp-param-version").is_none());

    // A stream that breaks off before its answer is resumed with Last-Event-ID.
    b.send(r#"{"jsonrpc":"2.0","id":"r","method":"tools/call","params":{"name":"resumable","arguments":{},"_meta":{"progressToken":"rt"}}}"#);
    assert_eq!(b.recv()["method"], "notifications/progress");
    assert_eq!(text(&b.answer(&json!("r"))), "resumed");
    let resumed = requests(&record)
        .into_iter()
        .find(|r| r["method"] == "GET" && r["headers"]["last-event-id"].is_string())
        .expect("a GET naming the last event");
    assert!(
        resumed["headers"]["last-event-id"]
            .as_str()
            .unwrap()
            .starts_with("r1-")
    );

    // `_meta` (a trace context, say) reaches the server as the client wrote it.
    let traced = r#"{"jsonrpc":"2.0","id":"t","method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}"#;
    b.send(traced);
    b.answer(&json!("t"));
    assert!(
        requests(&record).iter().any(|r| r["body"]
            .as_str()
            .is_some_and(|body| body.contains("b7ad6b7169203331"))),
        "the traceparent passes through"
    );

    // A denied tool is answered by the gateway and never reaches the server.
    let denied = b.call("delete_all", json!({}));
    assert_eq!(denied["error"]["code"], -32602, "{denied}");
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("access denied")
    );

    // What the server saw: the app's credential (resolved on the agent), the mirror headers,
    // the session, and the caller's assertion.
    let seen: Value = serde_json::from_str(&text(&b.call("headers", json!({})))).unwrap();
    assert!(
        requests(&record)
            .iter()
            .all(|r| r["headers"]["authorization"] == "Bearer ghp-e2e-upstream-7c1f"),
        "every request carries the credential"
    );
    // The server echoes its headers back: the credential it was given does not reach the
    // client.
    assert_eq!(seen["authorization"], "Bearer [REDACTED]");
    // An error page quoting it, cut short for the message where the credential would be cut
    // in two: not even its beginning reaches the client.
    let failed = b.call("echo", json!({"fail_with_headers": true}));
    let message = failed.to_string();
    assert!(message.contains("answered HTTP 500"), "{failed}");
    assert!(!message.contains("ghp-e2e"), "{failed}");
    assert_eq!(seen["x-team"], "blue");
    assert_eq!(seen["mcp-method"], "tools/call");
    assert_eq!(seen["mcp-name"], "headers");
    assert_eq!(seen["mcp-protocol-version"], "2025-06-18");
    assert!(
        seen["mcp-session-id"]
            .as_str()
            .is_some_and(|v| v.len() == 32)
    );
    let identity = std::fs::read_to_string(alice.identity()).unwrap();
    let claims = verified_claims(
        &d,
        &identity,
        seen["mcpgate-jwt-assertion"].as_str().unwrap(),
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["kind"], "user");
    assert_eq!(claims["roles"], json!(["remote"]));
    assert_eq!(claims["aud"], uri.as_str());
    assert_eq!(claims["iss"], "e2e.local");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(
        (1..=600).contains(&lifetime),
        "at most 10 minutes: {lifetime}"
    );

    // The server forgets its sessions (a restart): the gateway initialises again with the
    // client's own initialize, and the call goes through.
    assert_eq!(text(&b.call("forget_sessions", json!({}))), "forgotten");
    assert_eq!(
        text(&b.call("echo", json!({"again": true}))),
        r#"{"again": true}"#
    );
    // And again, later in the same session.
    assert_eq!(text(&b.call("forget_sessions", json!({}))), "forgotten");
    assert_eq!(
        text(&b.call("echo", json!({"third": 3}))),
        r#"{"third": 3}"#
    );
    assert_eq!(b.close(), 0);

    let reqs = requests(&record);
    let bodies: Vec<&str> = reqs.iter().filter_map(|r| r["body"].as_str()).collect();
    assert!(
        !bodies.iter().any(|b| b.contains("delete_all")),
        "the denied call never reached the server"
    );
    assert_eq!(
        bodies
            .iter()
            .filter(|b| b.contains("\"initialize\""))
            .count(),
        3,
        "one initialize, and one more each time the server forgot the session"
    );
    let delete = wait_for(|| {
        requests(&record)
            .into_iter()
            .find(|r| r["method"] == "DELETE")
    });
    assert!(
        delete["headers"]["mcp-session-id"].is_string(),
        "the session is ended upstream"
    );
    for r in &reqs {
        assert!(
            r["headers"]["mcpgate-jwt-assertion"].is_string(),
            "every request names the caller: {r}"
        );
    }

    // A client that sends without waiting (`printf ... | mcpgate mcp connect`): initialize
    // completes upstream before what follows it is sent.
    for _ in 0..5 {
        let mut p = Bridge::open(&alice, "remote", &[]);
        p.send_bytes(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"pipe","version":"1"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            "\n"
        ).as_bytes());
        assert!(p.answer(&json!(1))["result"].is_object());
        let listed = p.answer(&json!(2));
        assert!(listed["result"]["tools"].is_array(), "{listed}");
        assert_eq!(p.close(), 0);
    }

    // A rotated key signs the next session's assertion; both keys are published.
    let rotated: Value =
        serde_json::from_str(&d.admin(&["jwt", "rotate", "--format", "json"]).ok()).unwrap();
    let mut b = Bridge::open(&alice, "remote", &[]);
    b.initialize();
    let seen: Value = serde_json::from_str(&text(&b.call("headers", json!({})))).unwrap();
    let token = seen["mcpgate-jwt-assertion"].as_str().unwrap();
    let header: Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["kid"], rotated["kid"]);
    assert_eq!(verified_claims(&d, &identity, token)["sub"], "alice");
    let (_, jwks) = api_as(&d, &identity, "GET", "/.well-known/jwks.json", &Value::Null);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert_eq!(b.close(), 0);

    // The same audit as stdio: the calls, the denial, with the app's name.
    let calls = audit(&d, &["--app", "remote", "--tool", "echo"]);
    assert_eq!(calls.len(), 5, "four answered, one failed: {calls:?}");
    assert!(
        calls.iter().any(|c| c["outcome"] == "error"
            && c["error"].as_str().unwrap().ends_with("Bearer [REDACTED")),
        "{calls:?}"
    );
    assert_eq!(calls[0]["user"], "alice");
    let denials = audit(&d, &["--app", "remote", "--decision", "deny"]);
    assert!(
        denials.iter().any(|e| e["tool"] == "delete_all"),
        "{denials:?}"
    );
    let log = d
        .admin(&["audit", "search", "--since", "1h", "--format", "json"])
        .ok();
    assert!(
        !log.contains("ghp-e2e-upstream-7c1f"),
        "the credential is not in the audit log"
    );
}

#[test]
fn an_unreachable_http_upstream_answers_each_request_with_an_error() {
    let s = Scratch::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let apps = format!(
        "    - name: gone\n      labels: {{env: remote}}\n      uri: mcp+http://127.0.0.1:{port}/mcp\n"
    );
    let d = gateway_daemon(&s, &apps, ROLES);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    let mut b = Bridge::open(&alice, "gone", &[]);
    let init = b.request("initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}));
    let message = init["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("app \"gone\"") && message.contains("cannot be reached"),
        "{init}"
    );
    // The session goes on: the next request gets its own answer.
    let again = b.request("tools/list", json!({}));
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be reached")
    );
    assert_eq!(b.close(), 0);
}

#[test]
fn server_everything_over_streamable_http_and_sse() {
    let Some(everything) = needs("MCPGATE_TEST_EVERYTHING") else {
        return;
    };
    let s = Scratch::new();
    let (_http, http_port) = everything_http(&everything, "streamableHttp");
    let (_sse, sse_port) = everything_http(&everything, "sse");
    let apps = format!(
        "    - name: everything-http\n      labels: {{env: remote}}\n      uri: mcp+http://127.0.0.1:{http_port}/mcp\n    - name: everything-sse\n      labels: {{env: remote}}\n      uri: mcp+sse+http://127.0.0.1:{sse_port}/sse\n"
    );
    let d = gateway_daemon(&s, &apps, ROLES);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    for app in ["everything-http", "everything-sse"] {
        let mut b = Bridge::open(&alice, app, &[]);
        let init = b.initialize();
        assert_eq!(
            init["result"]["serverInfo"]["name"], "mcp-servers/everything",
            "{app}: {init}"
        );
        assert_eq!(
            b.tools(),
            ["echo", "get-sum", "trigger-long-running-operation"],
            "{app}: exactly the allowed tools"
        );
        assert_eq!(
            text(&b.call("echo", json!({"message": "hi"}))),
            "Echo: hi",
            "{app}"
        );
        assert_eq!(
            text(&b.call("get-sum", json!({"a": 2, "b": 3}))),
            "The sum of 2 and 3 is 5.",
            "{app}"
        );
        // Progress notifications reach the client before the answer.
        b.send(r#"{"jsonrpc":"2.0","id":"long","method":"tools/call","params":{"name":"trigger-long-running-operation","arguments":{"duration":0.3,"steps":3},"_meta":{"progressToken":"p1"}}}"#);
        let mut progress = 0;
        let answer = loop {
            let m = b.recv();
            if m["method"] == "notifications/progress" {
                assert_eq!(m["params"]["progressToken"], "p1");
                progress += 1;
            } else if m["id"] == "long" {
                break m;
            }
        };
        assert!(answer["result"].is_object(), "{app}: {answer}");
        assert_eq!(progress, 3, "{app}: one progress notification per step");
        let denied = b.call("get-env", json!({}));
        assert!(
            denied["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("access denied"),
            "{app}: {denied}"
        );
        assert_eq!(b.close(), 0, "{app}");
        let started = audit(&d, &["--app", app, "--type", "mcp.session.start"]);
        assert_eq!(started.len(), 1, "{app}: {started:?}");
    }
}

/// Polls `f` every 20 ms for up to 20 s.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `mcpgate mcp proxy APP` run by `person`; killed when dropped.
struct LocalEndpoint {
    server: Server,
    url: String,
}

impl LocalEndpoint {
    fn start(person: &Person, app: &str) -> LocalEndpoint {
        LocalEndpoint::start_with(person, app, &[])
    }

    fn start_with(person: &Person, app: &str, extra: &[&str]) -> LocalEndpoint {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcpgate"))
            .args(["mcp", "proxy", app, "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("MCPGATE_HOME", &person.home)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut url = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        LocalEndpoint {
            server: Server(child),
            url: url.trim().to_string(),
        }
    }
}

/// What an HTTP answer held: status, headers (lower-case names), and its JSON-RPC messages
/// (the JSON body, or each event's data).
struct Answer {
    status: u16,
    headers: String,
    messages: Vec<Value>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
        })
    }

    /// The one answer (a message with a result or an error).
    fn answer(&self) -> &Value {
        self.messages
            .iter()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no answer among {:?}", self.messages))
    }
}

/// Sends an HTTP request with curl (a real client); `headers` as `Name: value`.
fn curl(method: &str, url: &str, headers: &[&str], body: Option<&str>) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "-X", method, "--max-time", "30"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text}"));
    let messages = if body.trim_start().starts_with('{') {
        vec![serde_json::from_str(body.trim()).unwrap()]
    } else {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    };
    Answer {
        status,
        headers: head.to_string(),
        messages,
    }
}

const JSON: &str = "Content-Type: application/json";
const ACCEPT: &str = "Accept: application/json, text/event-stream";

#[test]
fn mcp_proxy_serves_http_clients_with_the_gateways_policy_and_no_client_credentials() {
    let s = Scratch::new();
    let record = s.path("http-record.jsonl");
    std::fs::write(&record, "").unwrap();
    let (_server, port) = http_recorder(&record);
    let token = s.write("upstream-token", "ghp-e2e-upstream-7c1f\n");
    let apps = format!(
        "    - name: remote\n      labels: {{env: remote}}\n      uri: mcp+http://127.0.0.1:{port}/mcp\n      rewrite:\n        headers: [\"Authorization: Bearer ${{file:{}}}\"]\n",
        token.display()
    );
    let d = gateway_daemon(&s, &apps, ROLES);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    let ep = LocalEndpoint::start(&alice, "remote");
    let url = ep.url.as_str();

    // The client's own credentials go nowhere.
    let creds = [
        "Authorization: Bearer client-token-leak",
        "Cookie: sid=client-cookie-leak",
    ];
    let init = curl(
        "POST",
        url,
        &[JSON, ACCEPT, creds[0], creds[1]],
        Some(
            r#"{"jsonrpc":"2.0","id":"init-1","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#,
        ),
    );
    assert_eq!(init.status, 200, "{:?}", init.messages);
    assert_eq!(
        init.answer()["id"],
        "init-1",
        "the client's id comes back as written"
    );
    assert_eq!(
        init.answer()["result"]["serverInfo"]["name"],
        "http-recorder"
    );
    let sid = init.header("mcp-session-id").expect("a session id");
    let sid_h = format!("Mcp-Session-Id: {sid}");
    let note = curl(
        "POST",
        url,
        &[JSON, ACCEPT, &sid_h],
        Some(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
    );
    assert_eq!(note.status, 202);

    let list = curl(
        "POST",
        url,
        &[JSON, ACCEPT, &sid_h],
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    );
    let names: Vec<&str> = list.answer()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, RECORDER_TOOLS, "delete_all is filtered");

    let call = |name: &str, extra: &[&str]| {
        let mut h = vec![JSON, ACCEPT, sid_h.as_str(), creds[0], creds[1]];
        h.extend_from_slice(extra);
        curl(
            "POST",
            url,
            &h,
            Some(&format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
            )),
        )
    };
    let seen: Value = serde_json::from_str(&text(call("headers", &[]).answer())).unwrap();
    assert_eq!(
        seen["authorization"], "Bearer [REDACTED]",
        "the app's credential (taken out of the echo), not the client's"
    );
    assert!(seen.get("cookie").is_none(), "{seen}");
    let denied = call("delete_all", &[]);
    assert!(
        denied.answer()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("access denied")
    );

    // Mirror headers that disagree with the body are refused before any decision.
    let lying = call("delete_all", &["Mcp-Method: tools/call", "Mcp-Name: echo"]);
    assert_eq!(lying.status, 400);
    assert!(
        lying.answer()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Name")
    );
    let agreeing = call("echo", &["Mcp-Method: tools/call", "Mcp-Name: echo"]);
    assert_eq!(agreeing.status, 200);
    assert_eq!(text(agreeing.answer()), "{}");

    // A 2026-07-28 call whose Mcp-Param-* header disagrees with its arguments is refused
    // before anything is decided or forwarded.
    let stateless = r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"deploy","arguments":{"region":"eu-west-1"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let lying = curl(
        "POST",
        url,
        &[
            JSON,
            ACCEPT,
            "MCP-Protocol-Version: 2026-07-28",
            "Mcp-Method: tools/call",
            "Mcp-Name: deploy",
            "Mcp-Param-Region: us-east-1",
        ],
        Some(stateless),
    );
    assert_eq!(lying.status, 400);
    assert_eq!(
        lying.answer()["error"]["code"],
        -32020,
        "{:?}",
        lying.messages
    );
    assert!(
        lying.answer()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcp-param-region")
    );
    let unmirrored = curl(
        "POST",
        url,
        &[
            JSON,
            ACCEPT,
            "MCP-Protocol-Version: 2026-07-28",
            "Mcp-Method: tools/call",
            "Mcp-Name: deploy",
        ],
        Some(stateless),
    );
    assert_eq!(
        unmirrored.status, 400,
        "a declared argument must be mirrored"
    );

    // DNS rebinding: a foreign Host or Origin is refused, a page served from another local
    // port included; preflights get no grant.
    for foreign in [
        "Host: evil.example",
        "Origin: https://evil.example",
        "Origin: http://127.0.0.1:1",
    ] {
        let r = curl(
            "POST",
            url,
            &[JSON, ACCEPT, &sid_h, foreign],
            Some(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#),
        );
        assert_eq!(r.status, 403, "{foreign}");
    }
    assert_eq!(
        curl("OPTIONS", url, &["Origin: http://evil.example"], None).status,
        403
    );
    // A pretty-printed body is one message (its newlines are only whitespace).
    let pretty = curl(
        "POST",
        url,
        &[JSON, ACCEPT, &sid_h],
        Some("{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 9,\n  \"method\": \"tools/list\"\n}\n"),
    );
    assert_eq!(pretty.status, 200);
    assert_eq!(pretty.answer()["id"], 9);
    assert!(
        pretty.answer()["result"]["tools"].is_array(),
        "{:?}",
        pretty.messages
    );
    // Unknown sessions and requests without one.
    let unknown = curl(
        "POST",
        url,
        &[JSON, ACCEPT, "Mcp-Session-Id: nope"],
        Some(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#),
    );
    assert_eq!(unknown.status, 404);
    let sessionless = curl(
        "POST",
        url,
        &[JSON, ACCEPT],
        Some(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#),
    );
    assert_eq!(sessionless.status, 400);
    // A bad body gets a JSON-RPC error; the session goes on.
    let bad = curl(
        "POST",
        url,
        &[JSON, ACCEPT, &sid_h],
        Some(r#"{"jsonrpc":"2.0","id":4,"Method":"tools/list"}"#),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.answer()["error"]["code"].as_i64().unwrap() < 0);
    assert_eq!(curl("DELETE", url, &[&sid_h], None).status, 200);
    assert_eq!(
        curl(
            "POST",
            url,
            &[JSON, ACCEPT, &sid_h],
            Some(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#)
        )
        .status,
        404
    );

    let recorded = std::fs::read_to_string(&record).unwrap();
    assert!(!recorded.contains("client-token-leak") && !recorded.contains("client-cookie-leak"));
    assert!(
        !recorded.contains("delete_all\""),
        "no denied call reached the server"
    );
    let events = audit(&d, &["--app", "remote", "--decision", "deny"]);
    assert!(
        events
            .iter()
            .any(|e| e["tool"] == "delete_all" && e["user"] == "alice"),
        "{events:?}"
    );
    drop(ep.server);

    // --allow-origin lets one web page in (the Inspector's web UI), with a CORS grant; others
    // stay out.
    let ui = LocalEndpoint::start_with(
        &alice,
        "remote",
        &["--allow-origin", "http://localhost:6274"],
    );
    let preflight = curl(
        "OPTIONS",
        &ui.url,
        &[
            "Origin: http://localhost:6274",
            "Access-Control-Request-Method: POST",
        ],
        None,
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin").as_deref(),
        Some("http://localhost:6274")
    );
    assert!(
        preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("mcp-session-id")
    );
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"ui","version":"1"}}}"#;
    let from_ui = curl(
        "POST",
        &ui.url,
        &[JSON, ACCEPT, "Origin: http://localhost:6274"],
        Some(body),
    );
    assert_eq!(from_ui.status, 200);
    assert_eq!(
        from_ui.header("access-control-allow-origin").as_deref(),
        Some("http://localhost:6274")
    );
    assert!(
        from_ui
            .header("access-control-expose-headers")
            .unwrap()
            .contains("mcp-session-id")
    );
    let other = curl(
        "POST",
        &ui.url,
        &[JSON, ACCEPT, "Origin: http://localhost:6275"],
        Some(body),
    );
    assert_eq!(other.status, 403);
    assert!(other.header("access-control-allow-origin").is_none());
    assert_eq!(
        curl("OPTIONS", &ui.url, &["Origin: http://localhost:6275"], None).status,
        403
    );
    drop(ui);
    let bad = alice
        .run(
            &["mcp", "proxy", "remote", "--allow-origin", "localhost:6274"],
            None,
        )
        .fails();
    assert!(bad.contains("SCHEME://HOST"), "{bad}");

    // With --token-file only who holds the token may use the endpoint.
    let token_file = s.path("endpoint-token");
    let guarded = LocalEndpoint::start_with(
        &alice,
        "remote",
        &["--token-file", token_file.to_str().unwrap()],
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;
    let anonymous = curl("POST", &guarded.url, &[JSON, ACCEPT], Some(body));
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some());
    let wrong = curl(
        "POST",
        &guarded.url,
        &[JSON, ACCEPT, "Authorization: Bearer nope"],
        Some(body),
    );
    assert_eq!(wrong.status, 401);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let holder = curl("POST", &guarded.url, &[JSON, ACCEPT, &bearer], Some(body));
    assert_eq!(holder.status, 200);
    assert_eq!(
        holder.answer()["result"]["serverInfo"]["name"],
        "http-recorder"
    );
    assert!(
        !std::fs::read_to_string(&record)
            .unwrap()
            .contains(token.trim()),
        "the token goes nowhere"
    );
    drop(guarded);

    // An app you may not use is said at start, not inside the client.
    let err = alice
        .run(&["mcp", "proxy", "nosuchapp", "--listen", "0"], None)
        .fails();
    assert!(
        err.contains("not available") && err.contains("mcp ls"),
        "{err}"
    );

    // Loopback only.
    let out = alice.run(&["mcp", "proxy", "remote", "--listen", "0.0.0.0:0"], None);
    let err = out.fails();
    assert!(err.contains("loopback only"), "{err}");
}

/// Starts server-everything in `mode` (`streamableHttp` or `sse`) on a free port; returns it
/// and the port once it accepts connections.
fn everything_http(everything: &str, mode: &str) -> (Server, u16) {
    serve(|port| {
        let mut cmd = Command::new("node");
        cmd.args([everything, mode]).env("PORT", port.to_string());
        cmd
    })
}

/// Starts a server on a free port (`cmd` given the port) and returns it once it listens
/// there. Between choosing a port and the server binding it another test may take it: the
/// listener must be the server's own (its sockets against /proc/net/tcp*), and a server that
/// exits (the port was taken) is started again on another.
fn serve(mut cmd: impl FnMut(u16) -> Command) -> (Server, u16) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Server(
            cmd(port)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = wait_for(|| match server.0.try_wait() {
            Ok(Some(_)) => Some(false),
            _ => listens(server.0.id(), port).then_some(true),
        });
        if started {
            return (server, port);
        }
    }
    panic!("no server started in 5 tries");
}

/// Whether process `pid` holds a socket listening on `port`.
fn listens(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 9 && f[3] == "0A" && f[1].ends_with(&suffix))
                        .then(|| format!("socket:[{}]", f[9]))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
}

/// A cluster serving server-everything as `everything-stdio` and, run over Streamable HTTP,
/// as `everything-http`; alice has the role `remote`.
fn everything_both_ways(everything: &str) -> (Scratch, Server, Daemon, Person) {
    let s = Scratch::new();
    let (upstream, port) = everything_http(everything, "streamableHttp");
    let apps = stdio_and_http("everything", "node", &[everything, "stdio"], port);
    let d = gateway_daemon(&s, &apps, ROLES);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    (s, upstream, d, alice)
}

/// Starts a Python fixture server (`SCRIPT http PORT`) on a free port; returns it and the port
/// once it accepts connections.
fn python_http(python: &str, script: &str) -> (Server, u16) {
    serve(|port| {
        let mut cmd = Command::new(python);
        cmd.args([script, "http", &port.to_string()]);
        cmd
    })
}

#[test]
fn the_python_sdk_over_http_reaches_stdio_and_http_apps_through_mcp_proxy() {
    let (Some(python), Some(everything)) = (
        needs("MCPGATE_TEST_PYTHON"),
        needs("MCPGATE_TEST_EVERYTHING"),
    ) else {
        return;
    };
    let (_s, _upstream, d, alice) = everything_both_ways(&everything);
    let script = fixture!("sdk_client.py");
    for app in ["everything-stdio", "everything-http"] {
        let ep = LocalEndpoint::start(&alice, app);
        let v = python_json(
            &python,
            &[script, &ep.url, "-", "echo", r#"{"message": "over HTTP"}"#],
            &alice.home,
        );
        assert_eq!(v["server"], "mcp-servers/everything", "{app}: {v}");
        assert_eq!(
            v["tools"],
            json!(["echo", "get-sum", "trigger-long-running-operation"]),
            "{app}"
        );
        assert_eq!(v["text"], json!(["Echo: over HTTP"]), "{app}");
        let denied = python_json(
            &python,
            &[script, &ep.url, "-", "get-env", "{}"],
            &alice.home,
        );
        assert!(
            denied["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("access denied"),
            "{app}: {denied}"
        );
        let calls = audit(&d, &["--tool", "echo", "--app", app]);
        assert_eq!(calls.len(), 1, "{app}: {calls:?}");
        assert_eq!(calls[0]["params"]["arguments"]["message"], "over HTTP");
    }
}

#[test]
fn the_2026_sdk_over_http_through_mcp_proxy_to_stdio_and_http_servers() {
    let Some(python) = needs("MCPGATE_TEST_MCP2_PYTHON") else {
        return;
    };
    let s = Scratch::new();
    let server = fixture!("modern_server.py");
    let (_upstream, port) = python_http(&python, server);
    let apps = stdio_and_http("modern", &python, &[server], port);
    let roles = "kind: role\nversion: v8\nmetadata: {name: remote}\nspec:\n  allow:\n    app_labels: {env: remote}\n    mcp: {tools: ['*']}\n  deny:\n    mcp: {tools: ['*delete*']}\n";
    let d = gateway_daemon(&s, &apps, roles);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    let client = fixture!("modern_client.py");
    let bin = env!("CARGO_BIN_EXE_mcpgate");
    for app in ["modern-stdio", "modern-http"] {
        let ep = LocalEndpoint::start(&alice, app);
        // Over HTTP through the local endpoint, and over stdio through the bridge.
        for args in [vec![client, ep.url.as_str()], vec![client, bin, app]] {
            let v = python_json(&python, &args, &alice.home);
            assert_eq!(
                v["tools"],
                json!(["approve", "echo"]),
                "{app} {args:?}: {v}"
            );
            assert_eq!(
                v["approved"], "approved release: {'yes': True}",
                "{app}: {v}"
            );
            assert_eq!(v["echo"], "modern: hello", "{app}");
            assert!(
                v["denied"].as_str().unwrap().contains("access denied"),
                "{app}: {v}"
            );
            assert_eq!(
                v["cache_scope"], "private",
                "{app}: the server said public; the list was filtered for alice"
            );
        }
        // The multi-round-trip call and its retry: each decided and audited on its own.
        let rounds = audit(&d, &["--tool", "approve", "--app", app]);
        assert_eq!(rounds.len(), 4, "{app}: two rounds per client: {rounds:?}");
        assert!(rounds.iter().all(|e| e["decision"] == "allow"));
        assert!(
            rounds
                .iter()
                .any(|e| e["params"]["inputResponses"].is_object()),
            "{app}: the retry carries the responses: {rounds:?}"
        );
        let calls = audit(&d, &["--tool", "echo", "--app", app]);
        assert_eq!(
            calls.len(),
            2,
            "{app}: every request audited on its own: {calls:?}"
        );
        let requests = audit(&d, &["--app", app, "--type", "mcp.session.request"]);
        assert!(
            requests.iter().any(|e| e["method"] == "server/discover"),
            "{app}: the discovery probe passed and was audited: {requests:?}"
        );
    }
}

/// Runs the official conformance suite (server mode) against `url` for `spec`; returns each
/// scenario's (passed, failed) counts as it printed them.
fn conformance(
    url: &str,
    spec: &str,
    out: &Path,
) -> std::collections::BTreeMap<String, (u32, u32)> {
    let (suite, node_bin) = (
        std::env::var("MCPGATE_TEST_CONFORMANCE").unwrap(),
        std::env::var("MCPGATE_TEST_NODE22_BIN").unwrap(),
    );
    let path = format!("{node_bin}:{}", std::env::var("PATH").unwrap_or_default());
    let run = Command::new(format!("{node_bin}/node"))
        .args([
            suite.as_str(),
            "server",
            "--url",
            url,
            "--spec-version",
            spec,
        ])
        // Every scenario of the revision, pending ones included (server-stateless, caching,
        // http-header-validation, input-required-result-*), not only the "active" suite.
        .args(["--suite", "all", "-o"])
        .arg(out)
        .env("PATH", path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    let mut scenarios = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("✓ ").or_else(|| line.strip_prefix("✗ ")) else {
            continue;
        };
        let Some((name, counts)) = rest.split_once(": ") else {
            continue;
        };
        let nums: Vec<u32> = counts
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [passed, failed, ..] = nums[..] {
            scenarios.insert(name.to_string(), (passed, failed));
        }
    }
    assert!(
        !scenarios.is_empty(),
        "the suite printed no scenario for {url}:\n{text}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    scenarios
}

/// The failed checks of `scenario` in a suite run's output folder, as `id: message`.
fn failed_checks(out: &Path, scenario: &str) -> Vec<String> {
    let prefix = format!("server-{scenario}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // `server-NAME-TIME`: the rest must be the time, not a longer scenario's name.
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let checks: Value = std::fs::read_to_string(entry.path().join("checks.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        for c in checks.as_array().into_iter().flatten() {
            if c["status"] == "FAILURE" {
                found.push(format!("{}: {}", c["id"], c["errorMessage"]));
            }
        }
    }
    found
}

#[test]
fn the_conformance_suite_passes_through_mcp_proxy_every_scenario_it_passes_directly() {
    let (Some(everything), Some(python), Some(python1), Some(_), Some(_)) = (
        needs("MCPGATE_TEST_EVERYTHING"),
        needs("MCPGATE_TEST_MCP2_PYTHON"),
        needs("MCPGATE_TEST_PYTHON"),
        needs("MCPGATE_TEST_CONFORMANCE"),
        needs("MCPGATE_TEST_NODE22_BIN"),
    ) else {
        return;
    };
    let s = Scratch::new();
    // The project's own fixture, written from the scenario list: every 2025 scenario's tools,
    // resources and prompts, so sampling, elicitation, progress and logging cross the gateway.
    let fixture = fixture!("conformance_server.py");
    let (_fixture, fixture_port) = python_http(&python1, fixture);
    // Its 2026-07-28 sibling on the Python SDK 2.x: the multi-round-trip scenarios
    // (input_required with elicitation, sampling and roots, request state, several rounds).
    let fixture26 = fixture!("conformance_server_2026.py");
    let (_fixture26, fixture26_port) = python_http(&python, fixture26);
    let (_everything, everything_port) = everything_http(&everything, "streamableHttp");
    let modern = fixture!("modern_server.py");
    let (_modern, modern_port) = python_http(&python, modern);
    let apps = [
        stdio_and_http("fixture26", &python, &[fixture26], fixture26_port),
        stdio_and_http("fixture", &python1, &[fixture], fixture_port),
        stdio_and_http(
            "everything",
            "node",
            &[&everything, "stdio"],
            everything_port,
        ),
        stdio_and_http("modern", &python, &[modern], modern_port),
    ]
    .concat();
    let roles = "kind: role\nversion: v8\nmetadata: {name: remote}\nspec:\n  allow:\n    app_labels: {env: remote}\n    mcp: {tools: ['*'], resources: ['*'], prompts: ['*']}\n";
    let d = gateway_daemon(&s, &apps, roles);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    let runs = [
        (
            "2025-11-25",
            fixture_port,
            ["fixture-http", "fixture-stdio"],
        ),
        (
            "2025-11-25",
            everything_port,
            ["everything-http", "everything-stdio"],
        ),
        ("2026-07-28", modern_port, ["modern-http", "modern-stdio"]),
        (
            "2026-07-28",
            fixture26_port,
            ["fixture26-http", "fixture26-stdio"],
        ),
    ];
    // The three servers' runs go side by side (each suite run mostly waits on its server).
    let total = |r: &std::collections::BTreeMap<String, (u32, u32)>| {
        r.values().fold((0, 0), |(p, f), (a, b)| (p + a, f + b))
    };
    let reports: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|(spec, port, apps)| {
                let (s, alice) = (&s, &alice);
                scope.spawn(move || {
                    let mut report = String::new();
                    let direct = conformance(
                        &format!("http://127.0.0.1:{port}/mcp"),
                        spec,
                        &s.path(&format!("direct-{spec}-{port}")),
                    );
                    let (p, f) = total(&direct);
                    report += &format!(
                        "{spec} directly to the server of {}: {p} checks passed, {f} failed\n",
                        apps[0]
                    );
                    for app in apps {
                        let ep = LocalEndpoint::start(alice, app);
                        let out = s.path(&format!("{app}-{spec}"));
                        let through = conformance(&ep.url, spec, &out);
                        let (tp, tf) = total(&through);
                        report += &format!(
                            "{spec} through mcp proxy to {app}: {tp} checks passed, {tf} failed\n"
                        );
                        for (scenario, counts) in &through {
                            if direct.get(scenario) != Some(counts) {
                                report += &format!(
                                    "  {scenario}: directly {:?}, through {counts:?}\n",
                                    direct.get(scenario)
                                );
                                for why in failed_checks(&out, scenario) {
                                    report += &format!("    through: {why}\n");
                                }
                            }
                        }
                        for (scenario, (passed, failed)) in &direct {
                            if *failed == 0 {
                                assert_eq!(
                                    through.get(scenario).map(|(_, f)| *f),
                                    Some(0),
                                    "{spec}, {app}: {scenario} passes directly ({passed} checks) but not through the gateway:\n{report}"
                                );
                            }
                        }
                    }
                    report
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for r in reports {
        print!("{r}");
    }
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM files in the scratch folder:
/// (CA certificate, server certificate, server key).
fn tls_files(s: &Scratch) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.pem(), &ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        s.write("upstream-ca.pem", &ca.pem()),
        s.write("upstream-cert.pem", &leaf.pem()),
        s.write("upstream-key.pem", &key.serialize_pem()),
    )
}

#[test]
fn an_https_upstream_is_verified_and_an_unverifiable_one_refused() {
    let s = Scratch::new();
    let record = s.path("https-record.jsonl");
    std::fs::write(&record, "").unwrap();
    let (ca, cert, key) = tls_files(&s);
    let (_server, port) = http_recorder_with(&record, &[("TLS_CERT", &cert), ("TLS_KEY", &key)]);
    let uri = format!("mcp+https://127.0.0.1:{port}/mcp");
    let apps = format!(
        "    - name: pinned\n      labels: {{env: remote}}\n      uri: {uri}\n      tls: {{ca_file: \"{}\"}}\n    - name: unverified\n      labels: {{env: remote}}\n      uri: {uri}\n    - name: skip-verify\n      labels: {{env: remote}}\n      uri: {uri}\n      tls: {{insecure_skip_verify: true}}\n",
        ca.display()
    );
    let d = gateway_daemon(&s, &apps, ROLES);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    // Verified against the app's CA file.
    let mut b = Bridge::open(&alice, "pinned", &[]);
    assert_eq!(
        b.initialize()["result"]["serverInfo"]["name"],
        "http-recorder"
    );
    assert_eq!(text(&b.call("echo", json!({"tls": 1}))), r#"{"tls": 1}"#);
    assert_eq!(b.close(), 0);
    // The system's CAs do not know this server: fail closed, and say why.
    let mut b = Bridge::open(&alice, "unverified", &[]);
    let refused = b.request("initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}));
    let message = refused["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("cannot be reached") && message.contains("certificate"),
        "{refused}"
    );
    assert_eq!(b.close(), 0);
    // Only an app that names the danger skips verification.
    let mut b = Bridge::open(&alice, "skip-verify", &[]);
    assert_eq!(
        b.initialize()["result"]["serverInfo"]["name"],
        "http-recorder"
    );
    assert_eq!(b.close(), 0);
    let initializes = requests(&record)
        .iter()
        .filter(|r| {
            r["body"]
                .as_str()
                .is_some_and(|b| b.contains("\"initialize\""))
        })
        .count();
    assert_eq!(initializes, 2, "the unverified server never got a request");
}

#[test]
fn the_mcp_inspector_cli_lists_and_calls_through_mcp_proxy() {
    let Some(inspector) = needs("MCPGATE_TEST_INSPECTOR") else {
        return;
    };
    let s = Scratch::new();
    let record = s.path("inspector-record.jsonl");
    std::fs::write(&record, "").unwrap();
    let (_server, port) = http_recorder(&record);
    let apps = format!(
        "    - name: remote\n      labels: {{env: remote}}\n      uri: mcp+http://127.0.0.1:{port}/mcp\n"
    );
    let d = gateway_daemon(&s, &apps, ROLES);
    let alice = Person::admitted(&s, &d, "alice", "remote");
    let ep = LocalEndpoint::start(&alice, "remote");
    let inspect = |args: &[&str]| {
        let out = Command::new("node")
            .arg(&inspector)
            .args(["--cli", &ep.url, "--transport", "http"])
            .args(args)
            .env("HOME", s.path("inspector-home"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, listed) = inspect(&["--method", "tools/list"]);
    assert!(ok, "{listed}");
    let v: Value = serde_json::from_str(&listed).unwrap_or_else(|e| panic!("{e}: {listed}"));
    let names: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, RECORDER_TOOLS, "delete_all is filtered");
    let (ok, called) = inspect(&[
        "--method",
        "tools/call",
        "--tool-name",
        "echo",
        "--tool-arg",
        "say=hi",
    ]);
    assert!(ok && called.contains(r#"{\"say\": \"hi\"}"#), "{called}");
    let (_, denied) = inspect(&["--method", "tools/call", "--tool-name", "delete_all"]);
    assert!(denied.contains("access denied"), "{denied}");
    assert!(
        !std::fs::read_to_string(&record)
            .unwrap()
            .contains("delete_all\"")
    );
}

#[test]
fn the_2026_sdk_client_reaches_a_2025_server_through_connect_and_mcp_proxy() {
    let (Some(python), Some(everything)) = (
        needs("MCPGATE_TEST_MCP2_PYTHON"),
        needs("MCPGATE_TEST_EVERYTHING"),
    ) else {
        return;
    };
    let (_s, _upstream, d, alice) = everything_both_ways(&everything);
    let script = fixture!("sdk2_call.py");
    let bin = env!("CARGO_BIN_EXE_mcpgate");
    for app in ["everything-stdio", "everything-http"] {
        let ep = LocalEndpoint::start(&alice, app);
        // Its server/discover probe gets "method not found" from a 2025 server; it then
        // initialises, over stdio and over HTTP alike.
        for target in [vec![bin, app], vec![ep.url.as_str(), "-"]] {
            let mut args = vec![script];
            args.extend(&target);
            args.extend(["echo", r#"{"message": "from 2.x"}"#]);
            let v = python_json(&python, &args, &alice.home);
            assert_eq!(
                v["tools"],
                json!(["echo", "get-sum", "trigger-long-running-operation"]),
                "{app} {target:?}: {v}"
            );
            assert_eq!(v["text"], "Echo: from 2.x", "{app} {target:?}");
        }
        let calls = audit(&d, &["--tool", "echo", "--app", app]);
        assert_eq!(calls.len(), 2, "{app}: {calls:?}");
    }
}

#[test]
fn two_cluster_apps_may_front_one_http_server() {
    let s = Scratch::new();
    let record = s.path("two-record.jsonl");
    std::fs::write(&record, "").unwrap();
    let (_server, port) = http_recorder(&record);
    let d = Daemon::start(
        &s,
        "two",
        "auth: {second_factor: off}\nagent:\n  resources:\n    - labels: {env: remote}\n",
    );
    let uri = format!("mcp+http://127.0.0.1:{port}/mcp");
    let apps = format!(
        "kind: app\nversion: v3\nmetadata: {{name: tools-ro, labels: {{env: remote}}}}\nspec: {{uri: \"{uri}\"}}\n---\nkind: app\nversion: v3\nmetadata: {{name: tools-rw, labels: {{env: remote}}}}\nspec: {{uri: \"{uri}\"}}\n---\n{ROLES}"
    );
    d.admin(&[
        "create",
        "-f",
        s.write("apps.yaml", &apps).to_str().unwrap(),
    ])
    .ok();
    let alice = Person::admitted(&s, &d, "alice", "remote");
    let identity = std::fs::read_to_string(alice.identity()).unwrap();
    for app in ["tools-ro", "tools-rw"] {
        let mut b = Bridge::open(&alice, app, &[]);
        b.initialize();
        let seen: Value = serde_json::from_str(&text(&b.call("headers", json!({})))).unwrap();
        let claims = verified_claims(
            &d,
            &identity,
            seen["mcpgate-jwt-assertion"].as_str().unwrap(),
        );
        assert_eq!((&claims["app"], &claims["aud"]), (&json!(app), &json!(uri)));
        assert_eq!(b.close(), 0);
    }
}
