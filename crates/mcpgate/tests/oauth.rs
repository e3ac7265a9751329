//! MCP clients that speak only Streamable HTTP with OAuth reach apps at
//! `https://PROXY/mcp/apps/NAME`: the proxy is their authorization server (discovery,
//! registration, login and consent, PKCE, audience-bound tokens that rotate), and a session
//! over it is the same person, policy and audit as over the bridge.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const ROLES: &str = "kind: role
version: v8
metadata: {name: remote}
spec:
  allow:
    app_labels: {env: remote}
    mcp: {tools: [echo]}
";

/// The path of a fixture file of these tests.
macro_rules! fixture {
    ($name:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $name)
    };
}

/// A daemon (no second factor) serving two recorder apps, `notes` and `files`, and alice of
/// role `remote` (echo only).
fn cluster(s: &Scratch, marker: &str) -> (Daemon, Person) {
    let apps = format!(
        "{}{}",
        recorder_app("notes", "{env: remote}", &s.path("notes.jsonl"), marker),
        recorder_app("files", "{env: remote}", &s.path("files.jsonl"), marker)
    );
    let d = gateway_daemon(s, &apps, ROLES);
    let alice = Person::new(s, "alice");
    alice.signup(&d, &invite(&d, "alice", "remote"));
    (d, alice)
}

/// Runs a Python fixture as an OAuth client of `d`: the cluster's CA trusted, alice's
/// password given.
fn python_oauth(python: &str, d: &Daemon, args: &[&str]) -> Value {
    let ca = d.data_dir.join("host-ca.pem");
    let mut cmd = Command::new(python);
    cmd.args(args)
        .env("SSL_CERT_FILE", &ca)
        .env("MCPGATE_PASSWORD", PASSWORD);
    json_of(cmd)
}

/// `curl` over the cluster's CA: the status and the body.
fn curl(d: &Daemon, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(d.data_dir.join("host-ca.pem"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// POSTs `body` to an app's URL with `token` as the bearer: the status and the body.
fn post_mcp(d: &Daemon, url: &str, token: &str, body: &str) -> (u16, String) {
    curl(
        d,
        &[
            "-X",
            "POST",
            "-H",
            &format!("authorization: Bearer {token}"),
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-d",
            body,
            url,
        ],
    )
}

/// An `initialize` whose client names itself `name` (to find its session in the audit).
fn initialize(name: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"{name}","version":"1"}}}}}}"#
    )
}

#[test]
fn the_python_sdk_logs_in_with_oauth_and_acts_as_the_person_under_their_roles() {
    let Some(python) = needs("MCPGATE_TEST_PYTHON") else {
        return;
    };
    let s = Scratch::new();
    let marker = marker("oauth-sdk");
    let (d, _alice) = cluster(&s, &marker);
    let url = format!("https://{}/mcp/apps/notes", d.addr);

    // Discovery: the authorization server's metadata, as clients read it.
    let (status, body) = curl(
        &d,
        &[&format!(
            "https://{}/.well-known/oauth-authorization-server",
            d.addr
        )],
    );
    assert_eq!(status, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["issuer"], format!("https://{}", d.addr));
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    let (status, openid) = curl(
        &d,
        &[&format!(
            "https://{}/.well-known/openid-configuration",
            d.addr
        )],
    );
    assert_eq!((status, &openid), (200, &body));

    // The SDK finds all of it from the 401, registers, and its browser logs in and allows.
    let v = python_oauth(
        &python,
        &d,
        &[
            fixture!("oauth_client.py"),
            &url,
            "alice",
            "echo",
            r#"{"message": "over OAuth"}"#,
            "delete_all",
        ],
    );
    assert_eq!(v["pages"], json!(["login", "consent"]), "{v}");
    assert_eq!(v["iss"], format!("https://{}", d.addr), "RFC 9207: {v}");
    // The role's policy, as over the bridge: the list filtered, the call run, a denial.
    assert_eq!(v["tools"], json!(["echo"]), "{v}");
    assert_eq!(v["is_error"], false, "{v}");
    assert_eq!(v["text"], json!([r#"{"message": "over OAuth"}"#]), "{v}");
    assert!(
        v["denied"]
            .as_str()
            .unwrap_or_default()
            .starts_with("access denied"),
        "{v}"
    );
    let client = v["client_id"].as_str().unwrap().to_string();
    assert!(client.starts_with("mcpgate-"), "{v}");

    // The audit names the person and the client; no token is in it.
    let calls = audit(&d, &["--tool", "echo", "--app", "notes"]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["user"], "alice");
    assert_eq!(calls[0]["oauth_client"], client.as_str());
    assert_eq!(calls[0]["params"]["arguments"]["message"], "over OAuth");
    let denied = audit(&d, &["--tool", "delete_all", "--decision", "deny"]);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["oauth_client"], client.as_str());
    let grants = audit(&d, &["--type", "oauth.grant"]);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["user"], "alice");
    assert_eq!(grants[0]["app"], "notes");
    let everything = serde_json::to_string(&audit(&d, &[])).unwrap();
    assert!(everything.contains(&client), "the search reads every event");
    for secret in ["access_token", "refresh_token"] {
        let token = v[secret].as_str().unwrap();
        assert!(!everything.contains(token), "{secret} in the audit log");
    }
    // Stored only as hashes.
    let db = std::fs::read(d.data_dir.join("state.db")).unwrap();
    let wal = std::fs::read(d.data_dir.join("state.db-wal")).unwrap_or_default();
    for secret in ["access_token", "refresh_token"] {
        let token = v[secret].as_str().unwrap().as_bytes();
        for file in [&db, &wal] {
            assert!(
                !file.windows(token.len()).any(|w| w == token),
                "{secret} stored"
            );
        }
    }

    // The client the SDK registered is listed for admins, and removing it ends its tokens.
    let listed = d.admin(&["oauth", "clients", "ls"]).ok();
    assert!(
        listed.contains(&client) && listed.contains("sdk test client") && listed.contains("dcr"),
        "{listed}"
    );
    let access = v["access_token"].as_str().unwrap();
    let post = |d: &Daemon| post_mcp(d, &url, access, &initialize("c"));
    assert_eq!(post(&d).0, 200);
    let out = d.admin(&["oauth", "clients", "rm", &client]).ok();
    assert!(out.contains("removed"), "{out}");
    let (status, body) = post(&d);
    assert_eq!(status, 401, "{body}");
    let out = d.admin(&["oauth", "clients", "rm", &client]).fails();
    assert!(out.contains("not found"), "{out}");
}

#[test]
fn the_2026_sdk_speaks_the_2026_07_28_revision_over_oauth() {
    let Some(python) = needs("MCPGATE_TEST_MCP2_PYTHON") else {
        return;
    };
    let s = Scratch::new();
    let server = fixture!("modern_server.py");
    let apps = format!(
        "    - name: modern\n      labels: {{env: remote}}\n      uri: mcp+stdio://\n      mcp: {{command: \"{python}\", args: [\"{server}\"]}}\n"
    );
    let d = gateway_daemon(&s, &apps, ROLES);
    Person::new(&s, "alice").signup(&d, &invite(&d, "alice", "remote"));
    let url = format!("https://{}/mcp/apps/modern", d.addr);
    let v = python_oauth(
        &python,
        &d,
        &[
            fixture!("oauth_client2.py"),
            &url,
            "alice",
            "echo",
            r#"{"message": "hello"}"#,
        ],
    );
    assert_eq!(v["protocol"], "2026-07-28", "{v}");
    assert_eq!(v["tools"], json!(["echo"]), "the role's filter: {v}");
    assert_eq!(v["text"], "modern: hello", "{v}");
    let requests = audit(&d, &["--app", "modern", "--type", "mcp.session.request"]);
    assert!(
        requests
            .iter()
            .any(|e| e["method"] == "server/discover" && e["user"] == "alice"),
        "{requests:?}"
    );
    assert!(
        requests.iter().all(|e| e["oauth_client"]
            .as_str()
            .is_some_and(|c| c.starts_with("mcpgate-"))),
        "{requests:?}"
    );
}

#[test]
fn mcp_remote_authorizes_through_its_browser_and_bridges_stdio_to_the_app() {
    let (Some(python), Some(mcp_remote)) = (
        needs("MCPGATE_TEST_PYTHON"),
        needs("MCPGATE_TEST_MCP_REMOTE"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let marker = marker("oauth-mcp-remote");
    let (d, _alice) = cluster(&s, &marker);
    // The browser mcp-remote opens (through xdg-open's $BROWSER): a person logging in.
    let browser = s.write(
        "browser.sh",
        &format!(
            "#!/bin/sh\nexec \"{python}\" \"{}\" \"$1\"\n",
            fixture!("oauth_browser.py")
        ),
    );
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let home = s.path("remote-home");
    std::fs::create_dir_all(&home).unwrap();
    let ca = d.data_dir.join("host-ca.pem");
    let mut cmd = Command::new("node");
    cmd.arg(&mcp_remote)
        .arg(format!("https://{}/mcp/apps/notes", d.addr))
        .arg(free_port().to_string())
        .env("HOME", &home)
        .env("MCP_REMOTE_CONFIG_DIR", home.join("auth"))
        .env("BROWSER", &browser)
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("SSL_CERT_FILE", &ca)
        .env("MCPGATE_USER", "alice")
        .env("MCPGATE_PASSWORD", PASSWORD);
    let mut remote = Bridge::spawn(cmd);
    let init = remote.initialize();
    assert_eq!(init["result"]["serverInfo"]["name"], "recorder", "{init}");
    assert_eq!(remote.tools(), ["echo"]);
    let r = remote.call("echo", json!({"message": "via mcp-remote"}));
    assert_eq!(
        r["result"]["content"][0]["text"], r#"{"message": "via mcp-remote"}"#,
        "{r}"
    );
    let denied = remote.call("delete_all", json!({}));
    assert!(
        denied["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("access denied"),
        "{denied}"
    );
    let calls = audit(&d, &["--tool", "echo", "--app", "notes"]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["user"], "alice");
    let client = calls[0]["oauth_client"].as_str().unwrap().to_string();
    let listed = d.admin(&["oauth", "clients", "ls"]).ok();
    assert!(
        listed.contains(&client) && listed.contains("MCP CLI Proxy"),
        "{listed}"
    );
}

#[test]
fn a_bot_gets_tokens_with_its_certificate_for_an_http_only_agent() {
    let Some(python) = needs("MCPGATE_TEST_PYTHON") else {
        return;
    };
    let s = Scratch::new();
    let marker = marker("oauth-bot");
    let (d, alice) = cluster(&s, &marker);
    let out = d
        .admin(&["bots", "add", "ci", "--roles", "remote", "--format", "json"])
        .ok();
    let token: Value = serde_json::from_str(&out).unwrap();
    let base = s.path("ci");
    let cfg = s.write(
        "ci.yaml",
        &format!(
            "version: v1\nproxy_server: {}\nonboarding: {{join_method: token, token: \"{}\", ca_pins: [\"{}\"]}}\nstorage: {{type: directory, path: {}}}\nservices:\n  - type: identity\n    destination: {{type: directory, path: {}}}\n",
            d.addr,
            token["token"].as_str().unwrap(),
            d.pin,
            base.join("state").display(),
            base.join("out").display()
        ),
    );
    let joined = run(
        &["bot", "start", "-c", cfg.to_str().unwrap(), "--oneshot"],
        None,
        &[],
    );
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    let identity = base.join("out/identity");
    let url = format!("https://{}/mcp/apps/notes", d.addr);
    let ask = |cert: Option<&Path>, resource: &str| {
        let mut args: Vec<String> = Vec::new();
        if let Some(c) = cert {
            let c = c.to_str().unwrap().to_string();
            args.extend(["--cert".into(), c.clone(), "--key".into(), c]);
        }
        args.extend([
            "-d".into(),
            format!("grant_type=client_credentials&resource={}", enc(resource)),
            format!("https://{}/oauth/token", d.addr),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, body) = curl(&d, &args);
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    let (status, tokens) = ask(Some(&identity), &url);
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let expires = tokens["expires_in"].as_u64().unwrap();
    assert!(expires <= 600 && expires > 500, "{tokens}");
    let v = python_oauth(
        &python,
        &d,
        &[
            fixture!("bearer_client.py"),
            &url,
            tokens["access_token"].as_str().unwrap(),
            "echo",
            r#"{"message": "from the bot"}"#,
        ],
    );
    assert_eq!(v["tools"], json!(["echo"]), "the bot's roles: {v}");
    assert_eq!(v["text"], json!([r#"{"message": "from the bot"}"#]), "{v}");
    let calls = audit(&d, &["--tool", "echo", "--app", "notes"]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["user"], "ci");
    assert_eq!(calls[0]["user_kind"], "bot");
    assert_eq!(calls[0]["oauth_client"], "bot:ci");

    // Bots only, with a certificate, for an app's URL.
    let (status, e) = ask(None, &url);
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("invalid_client")),
        "{e}"
    );
    alice.login(&d, None, &[]).ok();
    let (status, e) = ask(Some(&alice.identity()), &url);
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{e}"
    );
    let (status, e) = ask(Some(&identity), "https://evil.example/mcp/apps/notes");
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_target")),
        "{e}"
    );
    // A locked bot gets nothing, and its tokens stop working.
    d.admin(&["lock", "--bot", "ci", "--message", "rotated"])
        .ok();
    let (status, e) = ask(Some(&identity), &url);
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("invalid_client")),
        "{e}"
    );
    let (status, body) = post_mcp(&d, &url, tokens["access_token"].as_str().unwrap(), "{}");
    assert_eq!(status, 401, "{body}");
}

/// The fake identity provider: its port and the file of its certificate.
fn fake_idp(python: &str, s: &Scratch) -> (std::process::Child, u16, std::path::PathBuf) {
    let ca = s.path("idp-ca.pem");
    let mut child = Command::new(python)
        .arg(fixture!("fake_idp.py"))
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    (child, port, ca)
}

#[test]
fn an_app_accepts_the_companys_identity_provider_tokens() {
    let Some(python) = needs("MCPGATE_TEST_PYTHON") else {
        return;
    };
    let s = Scratch::new();
    let (mut idp_process, port, idp_ca) = fake_idp(&python, &s);
    let idp = format!("https://127.0.0.1:{port}");
    let marker = marker("oauth-idp");
    let apps = format!(
        "{}{}",
        recorder_app("notes", "{env: remote}", &s.path("notes.jsonl"), &marker),
        recorder_app("files", "{env: remote}", &s.path("files.jsonl"), &marker)
    );
    let d = Daemon::start(
        &s,
        "gate",
        &format!(
            "auth:\n  second_factor: off\n  trusted_issuers:\n    - {{issuer: \"{idp}\", jwks_url: \"{idp}/jwks.json\", user_claim: preferred_username, apps: [notes], scopes: [\"mcp:tools\"], ca_file: \"{}\"}}\nagent:\n  apps:\n{apps}",
            idp_ca.display()
        ),
    );
    d.admin(&[
        "create",
        "-f",
        s.write("roles.yaml", ROLES).to_str().unwrap(),
    ])
    .ok();
    Person::new(&s, "alice").signup(&d, &invite(&d, "alice", "remote"));
    let notes = format!("https://{}/mcp/apps/notes", d.addr);
    let files = format!("https://{}/mcp/apps/files", d.addr);
    let mint = |query: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&idp_ca)
            .arg(format!(
                "{idp}/token?iss={}&scope={}&{query}",
                enc(&idp),
                enc("openid mcp:tools")
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let good = mint(&format!(
        "sub=00u1&preferred_username=alice&azp=okta-ide&aud={}",
        enc(&notes)
    ));
    // Its protected resource metadata names the identity provider too.
    let (_, prm) = curl(
        &d,
        &[&format!(
            "https://{}/.well-known/oauth-protected-resource/mcp/apps/notes",
            d.addr
        )],
    );
    let prm: Value = serde_json::from_str(&prm).unwrap();
    assert_eq!(
        prm["authorization_servers"],
        json!([format!("https://{}", d.addr), idp]),
        "{prm}"
    );

    let v = python_oauth(
        &python,
        &d,
        &[
            fixture!("bearer_client.py"),
            &notes,
            &good,
            "echo",
            r#"{"message": "with the company's token"}"#,
        ],
    );
    assert_eq!(v["tools"], json!(["echo"]), "alice's roles: {v}");
    assert_eq!(
        v["text"],
        json!([r#"{"message": "with the company's token"}"#])
    );
    let calls = audit(&d, &["--tool", "echo", "--app", "notes"]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["user"], "alice");
    assert_eq!(calls[0]["oauth_client"], "idp:okta-ide");

    let refused = |url: &str, token: &str, why: &str| {
        let (code, body) = post_mcp(&d, url, token, "{}");
        assert_eq!(code, 401, "{why}: {body}");
        assert!(body.contains(why), "{why}: {body}");
    };
    // Only the apps that trust the provider; only for the audience; only valid tokens.
    refused(&files, &good, "invalid or revoked");
    let for_files = mint(&format!(
        "sub=00u1&preferred_username=alice&aud={}",
        enc(&files)
    ));
    refused(&notes, &for_files, "audience");
    refused(
        &notes,
        &mint(&format!(
            "sub=00u1&preferred_username=alice&exp_in=-120&aud={}",
            enc(&notes)
        )),
        "expired",
    );
    refused(
        &notes,
        &mint(&format!(
            "sub=00u1&preferred_username=alice&key=stranger&aud={}",
            enc(&notes)
        )),
        "signature",
    );
    refused(
        &notes,
        &mint(&format!(
            "sub=00u9&preferred_username=mallory&aud={}",
            enc(&notes)
        )),
        "not a user",
    );
    refused(
        &notes,
        &mint(&format!(
            "iss=https://other.example&sub=00u1&preferred_username=alice&aud={}",
            enc(&notes)
        )),
        "not accepted",
    );
    // A valid token without the scope the issuer's configuration asks for: 403, and which
    // scope to ask for (step-up).
    let unscoped = {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&idp_ca)
            .arg(format!(
                "{idp}/token?iss={}&sub=00u1&preferred_username=alice&aud={}",
                enc(&idp),
                enc(&notes)
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(d.data_dir.join("host-ca.pem"))
        .args([
            "-X",
            "POST",
            "-H",
            &format!("authorization: Bearer {unscoped}"),
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &notes,
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(
        head.contains("www-authenticate: bearer error=\"insufficient_scope\", scope=\"mcp:tools\""),
        "{head}"
    );
    // alg none: the same claims, no signature.
    let claims = good.split('.').nth(1).unwrap();
    refused(
        &notes,
        &format!("eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.{claims}."),
        "alg",
    );
    // A lock on the person ends what the provider's tokens can do.
    d.admin(&["lock", "--user", "alice", "--message", "left the company"])
        .ok();
    refused(&notes, &good, "left the company");
    let _ = idp_process.kill();
    let _ = idp_process.wait();
}

#[test]
fn oauth_attacks_are_refused() {
    let Some(python) = needs("MCPGATE_TEST_PYTHON") else {
        return;
    };
    let s = Scratch::new();
    let marker = marker("oauth-attacks");
    let (d, _alice) = cluster(&s, &marker);
    let issuer = format!("https://{}", d.addr);
    let admin_client: Value = serde_json::from_str(
        &d.admin(&[
            "oauth",
            "clients",
            "add",
            "--name",
            "team IDE",
            "--redirect-uri",
            "http://127.0.0.1/callback",
            "--format",
            "json",
        ])
        .ok(),
    )
    .unwrap();
    let v = python_oauth(
        &python,
        &d,
        &[
            fixture!("oauth_attacks.py"),
            &issuer,
            "notes",
            "files",
            "alice",
            admin_client["client_id"].as_str().unwrap(),
        ],
    );
    // A redirect URI the client did not register is never redirected to.
    for name in ["foreign", "suffix", "userinfo", "path", "scheme"] {
        assert_eq!(
            v[format!("redirect_{name}")],
            json!([400, null]),
            "{name}: {v}"
        );
    }
    assert_eq!(v["redirect_other_port"], 200, "loopback, any port: {v}");
    // Other errors go back to an admin's client, with its state and the issuer; a client
    // that registered itself is not redirected to before a login: the page says what is wrong.
    for (name, error, state) in [
        ("pkce_missing", "invalid_request", "st4te"),
        ("pkce_plain", "invalid_request", "st4te"),
        ("no_resource", "invalid_target", "st4te"),
        ("foreign_resource", "invalid_target", "st4te"),
        ("huge_state", "invalid_request", "(long)"),
    ] {
        assert_eq!(v[name], json!([303, error, state, issuer]), "{name}: {v}");
        assert_eq!(
            v[format!("{name}_self_registered")],
            json!([400, null, true]),
            "{name}: {v}"
        );
    }
    let challenge = format!(
        "Bearer resource_metadata=\"{issuer}/.well-known/oauth-protected-resource/mcp/apps/notes\", scope=\"mcp\""
    );
    assert_eq!(v["unauthenticated"], json!([401, challenge]), "{v}");
    assert_eq!(v["prm"]["resource"], format!("{issuer}/mcp/apps/notes"));
    assert_eq!(v["prm"]["authorization_servers"], json!([issuer]));
    assert_eq!(v["wrong_verifier"], "invalid_grant", "{v}");
    assert_eq!(v["no_verifier"], "invalid_request", "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 600, "access tokens live 10 minutes: {v}");
    assert_eq!(v["app_a"], 200, "{v}");
    assert_eq!(
        v["app_b"], 401,
        "a token for one app is refused by another: {v}"
    );
    assert_eq!(v["query_token"], 400, "{v}");
    assert_eq!(v["garbage_token"], 401, "{v}");
    assert_eq!(v["code_replay"], "invalid_grant", "{v}");
    assert_eq!(v["after_code_replay"], 401, "a replayed code revokes: {v}");
    assert_eq!(v["code_of_another_client"], "invalid_grant", "{v}");
    assert_eq!(v["refreshed_differs"], true, "{v}");
    assert_eq!(v["refreshed_works"], 200, "{v}");
    assert_eq!(v["refresh_reuse"], "invalid_grant", "{v}");
    assert_eq!(
        v["after_refresh_reuse"], 401,
        "reuse revokes the grant: {v}"
    );
    assert_eq!(v["newest_refresh_after_reuse"], "invalid_grant", "{v}");
    assert_eq!(v["revoke"], 200, "{v}");
    assert_eq!(v["after_revoke"], 401, "{v}");
    assert_eq!(v["b_token_on_b"], 200, "{v}");
    assert_eq!(v["b_token_on_a"], 401, "{v}");
    // Two clients registered above, then a flood: 20 per address per window.
    assert_eq!(
        v["register_flood"],
        json!({"created": 18, "refused": 7, "last": 429}),
        "{v}"
    );
    assert_eq!(
        v["json_token_request"],
        json!([400, "invalid_request"]),
        "{v}"
    );
    let reuse = audit(&d, &["--type", "oauth.token.reuse"]);
    assert_eq!(reuse.len(), 2, "code replay and refresh reuse: {reuse:?}");

    // Client ID Metadata Documents that point inside: refused before any connection (a
    // canary listening on loopback sees nothing).
    let canary = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    canary.set_nonblocking(true).unwrap();
    let port = canary.local_addr().unwrap().port();
    for (id, why) in [
        (
            format!("https://127.0.0.1:{port}/client.json"),
            "not a public internet address",
        ),
        (
            format!("https://localhost:{port}/client.json"),
            "not a public internet address",
        ),
        (
            format!("https://[::1]:{port}/client.json"),
            "not a public internet address",
        ),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/client.json"),
            "not a public internet address",
        ),
        (
            format!("https://[::ffff:7f00:1]:{port}/client.json"),
            "not a public internet address",
        ),
        (
            "https://169.254.169.254/latest/meta-data".into(),
            "not a public internet address",
        ),
        (
            "https://[fd00:ec2::254]/latest".into(),
            "not a public internet address",
        ),
        (
            format!("https://2130706433:{port}/client.json"),
            "client_id",
        ),
        (
            format!("http://127.0.0.1:{port}/client.json"),
            "unknown client",
        ),
        (format!("https://127.0.0.1:{port}/"), "has no path"),
    ] {
        let q = format!(
            "response_type=code&client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fcb&code_challenge={}&code_challenge_method=S256&resource={}",
            enc(&id),
            "a".repeat(43),
            enc(&format!("{issuer}/mcp/apps/notes"))
        );
        let (status, page) = curl(
            &d,
            &[
                "-D",
                "/dev/stderr",
                &format!("{issuer}/oauth/authorize?{q}"),
            ],
        );
        assert_eq!(status, 400, "{id}: {page}");
        assert!(page.contains(why), "{id}: {page}");
    }
    assert!(
        matches!(canary.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a metadata fetch reached the canary"
    );

    // A revoked grant's open session ends (not only its next request).
    let revoke = v["revoke_token"].as_str().unwrap();
    let notes = format!("{issuer}/mcp/apps/notes");
    let (status, body) = post_mcp(&d, &notes, revoke, &initialize("revocation-probe"));
    assert_eq!(status, 200, "{body}");
    let session = audit(&d, &["--method", "initialize", "--app", "notes"])
        .into_iter()
        .find(|e| e["params"]["clientInfo"]["name"] == "revocation-probe")
        .expect("the probe's initialize is audited")["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = curl(
        &d,
        &[
            "-d",
            &format!(
                "token={revoke}&client_id={}",
                v["client_id"].as_str().unwrap()
            ),
            &format!("{issuer}/oauth/revoke"),
        ],
    );
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ended = audit(&d, &["--session", &session, "--type", "mcp.session.end"]);
        if !ended.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked grant's session is still open"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    // A lock on the person ends their tokens at once.
    let live = v["live_token"].as_str().unwrap();
    d.admin(&["lock", "--user", "alice", "--message", "offboarded"])
        .ok();
    let (status, body) = post_mcp(&d, &notes, live, "{}");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("offboarded"), "{body}");
}

/// The conformance suite's authorization-server scenarios, its login step driven in
/// Chromium by Playwright.
#[test]
fn the_conformance_suite_authorization_scenarios_pass_with_a_browser() {
    let (Some(conformance), Some(node22), Some(playwright), Some(chromium)) = (
        needs("MCPGATE_TEST_CONFORMANCE"),
        needs("MCPGATE_TEST_NODE22_BIN"),
        needs("MCPGATE_TEST_PLAYWRIGHT"),
        needs("MCPGATE_TEST_CHROMIUM"),
    ) else {
        return;
    };
    let s = Scratch::new();
    let marker = marker("oauth-conformance");
    let (d, _alice) = cluster(&s, &marker);
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/callback");
    let client: Value = serde_json::from_str(
        &d.admin(&[
            "oauth",
            "clients",
            "add",
            "--name",
            "conformance suite",
            "--redirect-uri",
            &callback,
            "--format",
            "json",
        ])
        .ok(),
    )
    .unwrap();
    let issuer = format!("https://{}", d.addr);
    let out = s.path("conformance-out");
    let path = format!("{node22}:{}", std::env::var("PATH").unwrap_or_default());
    let mut suite = Command::new(format!("{node22}/node"))
        .arg(&conformance)
        .args(["authorization", "--url", &issuer, "--client-id"])
        .arg(client["client_id"].as_str().unwrap())
        .args(["--resource", &format!("{issuer}/mcp/apps/notes")])
        .args(["-p", &port.to_string(), "-o"])
        .arg(&out)
        .env("PATH", &path)
        .env("NODE_EXTRA_CA_CERTS", d.data_dir.join("host-ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut printed = String::new();
    let mut lines = BufReader::new(suite.stdout.take().unwrap()).lines();
    // The suite prints the URL a person opens, then waits for the browser's redirect.
    let url = loop {
        let line = lines.next().expect("the suite printed no URL").unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with(&format!("{issuer}/oauth/authorize?")) {
            break line;
        }
    };
    let browser = Command::new(format!("{node22}/node"))
        .arg(fixture!("../browser/oauth_login.cjs"))
        .env("PLAYWRIGHT", &playwright)
        .env("CHROMIUM", &chromium)
        .env("URL", &url)
        .env("USER_NAME", "alice")
        .env("PASSWORD", PASSWORD)
        .env("CALLBACK", &callback)
        .output()
        .unwrap();
    assert!(
        browser.status.success(),
        "{}{}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    for line in lines {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
    }
    assert!(suite.wait().unwrap().success(), "{printed}");
    for scenario in [
        "authorization-server-metadata-endpoint",
        "authorization-code-grant",
    ] {
        assert!(
            printed.contains(&format!("✓ {scenario}: ")),
            "{scenario}: {printed}"
        );
    }
    let total = printed.lines().find(|l| l.starts_with("Total: ")).unwrap();
    assert!(total.ends_with(" passed, 0 failed"), "{printed}");
    // Every check of both scenarios, warnings included.
    let mut checks = Vec::new();
    collect_checks(&out, &mut checks);
    assert!(checks.len() >= 3, "{checks:?}");
    for c in &checks {
        assert_eq!(c["status"], "SUCCESS", "{c}");
    }
    let grants = audit(&d, &["--type", "oauth.grant"]);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["oauth_client"], client["client_id"]);
}

fn collect_checks(dir: &Path, into: &mut Vec<Value>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_checks(&path, into);
        } else if path.file_name().is_some_and(|n| n == "checks.json") {
            let v: Vec<Value> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            into.extend(v);
        }
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A TCP port free now on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
