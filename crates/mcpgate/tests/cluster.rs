//! The cluster foundation end to end, as a user does it: the real binary started on port 0,
//! driven by the CLI. Start, admin status, resources from YAML (and their errors), invites,
//! signup with TOTP, login (wrong pin, wrong password, replayed code), status, logout, audit,
//! restart, expiry, PostgreSQL storage.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const ROLES: &str = "kind: role
version: v8
metadata: {name: dev}
spec:
  options: {max_session_ttl: 2h}
  allow:
    app_labels: {env: dev}
    mcp:
      tools: [\"read_*\", \"^(get|list)_.*$\", echo]
    rules: [{resources: [cluster], verbs: [read]}]
  deny:
    mcp:
      tools: [\"*delete*\"]
---
kind: app
version: v3
metadata: {name: everything, labels: {env: dev}, description: Reference MCP server}
spec:
  uri: mcp+stdio://
  mcp: {command: npx, args: [-y, \"@modelcontextprotocol/server-everything\"], env: {API_KEY: \"${env:EVERYTHING_API_KEY}\"}}
";

fn role_names(d: &Daemon) -> Vec<String> {
    let out = d.admin(&["get", "roles", "--format", "json"]).ok();
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json array");
    v.iter()
        .map(|r| {
            r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn start_prints_the_pin_and_admin_status_agrees() {
    let s = Scratch::new();
    let d = Daemon::start(&s, "a", "");
    assert!(
        d.pin.starts_with("sha256:") && d.pin.len() == 71,
        "{}",
        d.pin
    );
    assert!(
        d.banner.contains("mcpgate admin users add"),
        "the next step is printed:\n{}",
        d.banner
    );
    let status = d.admin(&["status"]).ok();
    assert!(status.contains("Cluster:  e2e.local"), "{status}");
    assert!(
        status.contains(&format!("CA pin:   {}   (for --ca-pin)", d.pin)),
        "{status}"
    );
    assert!(status.contains("Services: auth, proxy"), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&d.admin(&["status", "--format", "json"]).ok()).unwrap();
    assert_eq!(json["cluster"], "e2e.local");
    assert_eq!(json["ca_pins"]["host"], d.pin.as_str());
    // The admin identity is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.data_dir.join("admin/identity")), 0o600);
        assert_eq!(mode(&d.data_dir.join("admin")), 0o700);
        assert_eq!(mode(&d.data_dir), 0o700);
    }
}

#[test]
fn resources_from_yaml_with_clear_errors_and_nothing_half_written() {
    let s = Scratch::new();
    let d = Daemon::start(&s, "a", "");
    let presets = role_names(&d);
    assert_eq!(presets, ["access", "auditor", "editor"]);

    // A misspelled deny field: error naming file, document, line, field; nothing written.
    let bad = s.write(
        "bad.yaml",
        &ROLES.replace("  deny:\n    mcp:", "  deny:\n    mpc:"),
    );
    let err = d.admin(&["create", "-f", bad.to_str().unwrap()]).fails();
    assert!(
        err.contains("bad.yaml: document 1, line 12: unknown field `mpc`"),
        "{err}"
    );
    assert_eq!(role_names(&d), presets, "nothing half-written");

    // An error in the second document also writes nothing of the first.
    for (text, want) in [
        (ROLES.replace("version: v3", "version: v2"), "document 2"),
        (
            ROLES.replace("kind: app", "kind: widget"),
            "unknown kind \"widget\"",
        ),
        (
            ROLES.replace("\"read_*\",", "\"^(read$\","),
            "role dev: allow.mcp.tools[0]: invalid regular expression",
        ),
        (
            ROLES.replace("metadata: {name: dev}", "metadata: {name: dev"),
            "bad.yaml: document 1",
        ),
        ("just a string\n".to_string(), "bad.yaml"),
        (String::new(), "no resources found"),
        (
            ROLES.replace("uri: mcp+stdio://", "uri: ftp://x"),
            "must start with one of",
        ),
        // A literal secret would sit in the cluster's storage: refused, with the reference
        // form to write instead.
        (
            ROLES.replace("${env:EVERYTHING_API_KEY}", "hunter2-literal"),
            "env API_KEY holds a literal secret; write API_KEY: \"${env:API_KEY}\"",
        ),
        (
            ROLES.replace(
                "${env:EVERYTHING_API_KEY}",
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            ),
            "holds a literal secret",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let err = d.admin(&["create", "-f", bad.to_str().unwrap()]).fails();
        assert!(err.contains(want), "{err} should contain {want}");
        assert_eq!(role_names(&d), presets, "nothing half-written after: {err}");
        assert!(d.admin(&["get", "apps", "--format", "json"]).ok().trim() == "[]");
    }
    let missing = d
        .admin(&["create", "-f", s.path("nope.yaml").to_str().unwrap()])
        .fails();
    assert!(
        missing.contains("cannot read") && missing.contains("nope.yaml"),
        "{missing}"
    );

    // A misspelled allow field is a warning; the rest applies.
    let good = s.write(
        "roles.yaml",
        &ROLES.replace("    rules:", "    logins: [root]\n    rules:"),
    );
    let out = d.admin(&["create", "-f", good.to_str().unwrap()]);
    assert!(
        out.stderr.contains("warning: ") && out.stderr.contains("spec.allow.logins"),
        "{}",
        out.stderr
    );
    assert_eq!(out.ok(), "role dev created\napp everything created\n");
    let again = d.admin(&["create", "-f", good.to_str().unwrap()]).fails();
    assert!(
        again.contains("role dev already exists (use --force"),
        "{again}"
    );
    assert!(
        d.admin(&["create", "-f", good.to_str().unwrap(), "--force"])
            .ok()
            .contains("role dev updated")
    );

    // get: text, json, yaml; one by name.
    let text = d.admin(&["get", "roles"]).ok();
    assert!(
        text.lines().any(|l| l.starts_with("dev")
            && l.contains("env=dev")
            && l.contains("read_*")
            && l.contains("*delete*")),
        "{text}"
    );
    let app: serde_json::Value = serde_json::from_str(
        &d.admin(&["get", "app", "everything", "--format", "json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(
        app["spec"]["mcp"]["env"]["API_KEY"], "${env:EVERYTHING_API_KEY}",
        "references, never values"
    );
    let yaml = d.admin(&["get", "role", "dev", "--format", "yaml"]).ok();
    assert!(yaml.starts_with("kind: role\n"), "{yaml}");
    assert_eq!(
        d.admin(&["get", "role/dev", "--format", "yaml"]).ok(),
        yaml,
        "KIND/NAME as rm takes it"
    );
    // The YAML output round-trips through create.
    let round = s.write("round.yaml", &yaml);
    assert!(
        d.admin(&["create", "-f", round.to_str().unwrap(), "--force"])
            .ok()
            .contains("role dev updated")
    );
    let unknown = d.admin(&["get", "widgets"]).fails();
    assert!(unknown.contains("unknown kind \"widgets\""), "{unknown}");
    let nf = d.admin(&["get", "role", "nope"]).fails();
    assert!(nf.contains("role nope not found"), "{nf}");

    // rm.
    assert_eq!(
        d.admin(&["rm", "app/everything"]).ok(),
        "app everything removed\n"
    );
    assert!(
        d.admin(&["rm", "app/everything"])
            .fails()
            .contains("app everything not found")
    );
    assert!(
        d.admin(&["rm", "everything"])
            .fails()
            .contains("expected KIND/NAME")
    );
    assert!(d.admin(&["rm", "role/editor"]).fails().contains("preset"));

    // Every change is audited.
    let events = audit(&d, &["--type", "resource.create"]);
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "role" && e["name"] == "dev" && e["user"] == "admin"),
        "{events:?}"
    );
    let deleted = audit(&d, &["--type", "resource.delete"]);
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["name"], "everything");
    assert_eq!(deleted[0]["code"], "MG3002I");
}

#[test]
fn invite_signup_totp_login_status_logout() {
    let s = Scratch::new();
    let d = Daemon::start(&s, "a", "");
    d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
        .ok();
    let alice = Person::new(&s, "alice");

    // Bad invites.
    let none = d
        .admin(&["users", "add", "bob", "--roles", "nosuchrole"])
        .fails();
    assert!(
        none.contains("role \"nosuchrole\" does not exist"),
        "{none}"
    );
    let text = d.admin(&["users", "add", "carol", "--roles", "dev"]).ok();
    assert!(text.contains("Invite token (single use"), "{text}");
    // The command it prints is the one to run: this cluster's address and pin, no blanks.
    let printed = text
        .lines()
        .find_map(|l| l.strip_prefix("They set a password with: "))
        .unwrap_or_else(|| panic!("no signup command:\n{text}"));
    assert!(
        printed.starts_with(&format!(
            "mcpgate signup --proxy {} --ca-pin {} --invite ",
            d.addr, d.pin
        )),
        "{printed}"
    );
    let secret = mcpgate_auth::login::new_otp_secret().unwrap();
    let code = current_code(&secret);
    let mut as_printed: Vec<&str> = printed.split_whitespace().skip(1).collect();
    as_printed.extend(["--password-stdin", "--otp-secret", &secret, "--otp", &code]);
    let carol = Person::new(&s, "carol");
    let signed_up = carol.run(&as_printed, Some(&format!("{PASSWORD}\n"))).ok();
    assert!(signed_up.contains("Second factor confirmed"), "{signed_up}");
    let token = invite(&d, "alice", "dev");
    assert_eq!(token.len(), 64);
    assert!(
        d.admin(&["users", "add", "alice", "--roles", "dev"])
            .fails()
            .contains("user alice already exists")
    );

    // Signup: a wrong pin is refused before anything is sent; the invite stays usable.
    let zero_pin = format!("sha256:{}", "0".repeat(64));
    let out = alice.run(
        &[
            "signup",
            "--proxy",
            &d.addr,
            "--ca-pin",
            &zero_pin,
            "--invite",
            &token,
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.fails().contains("does not match the CA pin"));
    // The user CA's fingerprint taken for the pin by mistake: the same clear refusal.
    let status: serde_json::Value =
        serde_json::from_str(&d.admin(&["status", "--format", "json"]).ok()).unwrap();
    let user_pin = status["ca_pins"]["user"].as_str().unwrap().to_string();
    let mistaken = alice.run(
        &[
            "signup",
            "--proxy",
            &d.addr,
            "--ca-pin",
            &user_pin,
            "--invite",
            &token,
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(mistaken.fails().contains("does not match the CA pin"));
    let weak = alice.run(
        &[
            "signup",
            "--proxy",
            &d.addr,
            "--ca-pin",
            &d.pin,
            "--invite",
            &token,
            "--password-stdin",
        ],
        Some("short\n"),
    );
    assert!(weak.fails().contains("at least 12 characters"));
    let secret = alice.signup(&d, &token).expect("TOTP enrolled by default");
    let reuse = alice.run(
        &[
            "signup",
            "--proxy",
            &d.addr,
            "--ca-pin",
            &d.pin,
            "--invite",
            &token,
            "--password-stdin",
            "--otp-secret",
            &secret,
            "--otp",
            &current_code(&secret),
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(reuse.fails().contains("invalid, expired or already used"));

    // Login: wrong pin (never reaches the server), wrong password, missing code.
    let login = |pin: &str, password: &str, otp: Option<&str>| {
        let mut args = vec![
            "login",
            "--proxy",
            &d.addr,
            "--user",
            "alice",
            "--ca-pin",
            pin,
            "--password-stdin",
        ];
        args.extend(otp.map(|code| ["--otp", code]).into_iter().flatten());
        alice.run(&args, Some(&format!("{password}\n")))
    };
    let logins_before = audit(&d, &["--type", "user.login"]).len();
    assert!(
        login(&zero_pin, PASSWORD, Some("123456"))
            .fails()
            .contains("does not match the CA pin")
    );
    assert_eq!(
        audit(&d, &["--type", "user.login"]).len(),
        logins_before,
        "the password was never sent"
    );
    assert!(
        login("sha256:xyz", "x", None)
            .fails()
            .contains("invalid CA pin")
    );
    let wrong = login(&d.pin, "wrong password here", Some(&current_code(&secret)));
    assert!(
        wrong
            .fails()
            .contains("invalid user name, password or second factor code")
    );
    let nocode = login(&d.pin, PASSWORD, None);
    assert!(
        nocode
            .fails()
            .contains("requires a second factor: pass --otp")
    );
    assert!(!alice.identity().exists(), "no credentials after failures");

    // Login with the code.
    let code = current_code(&secret);
    let ok = login(&d.pin, PASSWORD, Some(&code)).ok();
    assert!(ok.contains("as alice (roles: dev)"), "{ok}");
    // The same code cannot be replayed, and the person is told why.
    let replay = login(&d.pin, PASSWORD, Some(&code));
    assert!(
        replay
            .fails()
            .contains("this one-time code was already used; wait for the next one")
    );
    // The code may come on the second line of standard input, as with signup (here the
    // used one again: it reached the server, which told why it refused it).
    let piped = login(&d.pin, &format!("{PASSWORD}\n{code}"), None);
    assert!(
        piped
            .fails()
            .contains("this one-time code was already used")
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(alice.identity())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "key file is owner-only");
    }
    let pem = std::fs::read_to_string(alice.identity()).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "identity file order: key first"
    );
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        3,
        "certificate then two CA certificates"
    );

    let status = alice.run(&["status"], None).ok();
    assert!(status.contains("User:     alice"), "{status}");
    assert!(status.contains("Roles:    dev"), "{status}");
    assert!(
        status.contains(&format!("Proxy:    {}", d.addr)),
        "{status}"
    );
    assert!(
        status.contains("Valid until")
            && (status.contains("(in 1h59m") || status.contains("(in 2h")),
        "capped by max_session_ttl 2h: {status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&alice.run(&["status", "--format", "json"], None).ok()).unwrap();
    assert_eq!(json["roles"][0], "dev");
    assert_eq!(json["valid"], true);

    // The user's certificate works against the API, within its roles only.
    let id = alice.identity();
    let as_alice = |args: &[&str]| {
        let mut all = vec!["admin", "-i", id.to_str().unwrap(), "--proxy", &d.addr];
        all.extend_from_slice(args);
        run(&all, None, &[])
    };
    assert!(as_alice(&["status"]).ok().contains("e2e.local"));
    assert!(
        as_alice(&["get", "users"])
            .fails()
            .contains("access denied: alice may not list user")
    );

    // Audit: success and failures, searchable by user and type.
    let logins = audit(&d, &["--type", "user.login", "--user", "alice"]);
    let outcomes: Vec<bool> = logins
        .iter()
        .map(|e| e["success"].as_bool().unwrap())
        .collect();
    // The missing code was caught by the client before anything was sent.
    assert_eq!(
        outcomes,
        [false, true, false, false],
        "wrong password, ok, replay, replay through standard input"
    );
    assert_eq!(logins[1]["method"], "password+otp");
    assert_eq!(logins[1]["code"], "MG1000I");
    assert_eq!(logins[0]["code"], "MG1000W");
    assert!(logins[0]["error"].as_str().unwrap().contains("invalid"));
    for e in &logins {
        assert!(e["id"].as_str().is_some() && e["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e["cluster"], "e2e.local");
        assert_eq!(e["user_kind"], "user");
    }
    let certs = audit(&d, &["--type", "cert.create", "--user", "alice"]);
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["ttl"], 7200);
    let all = d.admin(&["audit", "search", "--since", "1h"]).ok();
    assert!(
        all.contains("user.login") && all.contains("user=alice"),
        "{all}"
    );
    assert!(
        !all.contains(PASSWORD),
        "passwords never reach the audit log"
    );

    assert!(
        alice
            .run(&["logout"], None)
            .ok()
            .contains("Logged out of e2e.local")
    );
    assert!(!alice.identity().exists());
    assert!(
        alice
            .run(&["status"], None)
            .fails()
            .contains("not logged in")
    );
}

#[test]
fn restart_keeps_state_and_expired_certificates_are_refused() {
    let s = Scratch::new();
    let extra = "auth:\n  second_factor: off\n";
    let mut d = Daemon::start(&s, "a", extra);
    d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
        .ok();
    let bob = Person::new(&s, "bob");
    assert_eq!(
        bob.signup(&d, &invite(&d, "bob", "dev")),
        None,
        "no TOTP when second_factor is off"
    );
    let pin = d.pin.clone();

    d.kill();
    let d = Daemon::start(&s, "a", extra);
    assert_eq!(d.pin, pin, "the CA pin survives a restart");
    assert!(role_names(&d).contains(&"dev".to_string()));
    assert!(d.admin(&["get", "user", "bob"]).ok().contains("bob"));

    // --ttl asks for less; once expired the proxy refuses the certificate.
    // A --ttl longer than the roles allow is cut, and said.
    let capped = bob.login(&d, None, &["--ttl", "24h"]).ok();
    assert!(
        capped.contains("you asked for 24h; your roles allow at most"),
        "{capped}"
    );
    let out = bob.login(&d, None, &["--ttl", "2s"]).ok();
    assert!(out.contains("as bob"), "{out}");
    assert!(!out.contains("Note:"), "{out}");
    let id = bob.identity();
    let status = |id: &std::path::Path| {
        run(
            &[
                "admin",
                "-i",
                id.to_str().unwrap(),
                "--proxy",
                &d.addr,
                "status",
            ],
            None,
            &[],
        )
    };
    assert!(status(&id).ok().contains("e2e.local"));
    std::thread::sleep(Duration::from_millis(2600));
    let err = status(&id).fails();
    assert!(err.contains("expired"), "{err}");
    let expired = bob.run(&["status"], None);
    assert_eq!(expired.code, 1, "{expired:?}");
    assert!(expired.stdout.contains("EXPIRED"), "{expired:?}");
    assert!(expired.stderr.contains("expired"), "{expired:?}");
    let expired = bob.run(&["status", "--format", "json"], None);
    assert_eq!(expired.code, 1, "{expired:?}");
    let v: serde_json::Value = serde_json::from_str(&expired.stdout).unwrap();
    assert_eq!(v["valid"], false);

    // The proxy as people write it: https://HOST:PORT, or in MCPGATE_PROXY.
    let https = format!("https://{}/", d.addr);
    let out = bob
        .run(
            &[
                "login",
                "--proxy",
                &https,
                "--user",
                "bob",
                "--ca-pin",
                &d.pin,
                "--password-stdin",
            ],
            Some(&format!("{PASSWORD}\n")),
        )
        .ok();
    assert!(out.contains("as bob"), "{out}");
    let ls = run(
        &["mcp", "ls", "-i", id.to_str().unwrap(), "--format", "json"],
        None,
        &[("MCPGATE_PROXY", std::path::Path::new(&https))],
    );
    assert_eq!(ls.code, 0, "{ls:?}");
    // After logout, login remembers where, as whom and which pin.
    assert!(bob.run(&["logout"], None).ok().contains("Logged out"));
    let again = bob
        .run(
            &["login", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        )
        .ok();
    assert!(again.contains("as bob"), "{again}");
    let plain = bob.run(
        &["login", "--proxy", "http://127.0.0.1:1", "--user", "bob"],
        None,
    );
    assert_ne!(plain.code, 0);
    assert!(plain.stderr.contains("speaks only TLS"), "{plain:?}");

    // A reader that goes away early is not an error: more output than a pipe holds, read
    // one line of.
    let many: String = (0..800)
        .map(|i| {
            format!("kind: role\nversion: v8\nmetadata: {{name: filler-{i}}}\nspec: {{}}\n---\n")
        })
        .collect();
    d.admin(&[
        "create",
        "-f",
        s.write("many.yaml", &many).to_str().unwrap(),
    ])
    .ok();
    let sh = format!(
        "{} admin --data-dir {} get roles --format json | head -1 >/dev/null",
        BIN,
        d.data_dir.display()
    );
    let piped = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &sh])
        .output()
        .unwrap();
    assert!(piped.status.success(), "{piped:?}");
    assert!(
        !String::from_utf8_lossy(&piped.stderr).contains("panicked"),
        "{piped:?}"
    );

    let garbage = s.write("garbage", "not an identity");
    assert!(
        status(&garbage)
            .fails()
            .contains("not a valid identity file")
    );
}

#[test]
fn bad_configs_and_commands_fail_in_one_line() {
    let s = Scratch::new();
    for (config, want) in [
        ("version: v2\n", "config version \"v2\" is not supported"),
        (
            "version: v1\nstorage: {type: postgres}\n",
            "needs storage.url",
        ),
        (
            "version: v1\nproxy: {listen: 127.0.0.1:0, bogus: 1}\n",
            "unknown field `bogus`",
        ),
        ("version: v1\ncluster_name: \"a b\"\n", "invalid name"),
        (
            "version: v1\nproxy: {listen: \"not-an-address\"}\n",
            "cannot listen on not-an-address",
        ),
        ("version: [\n", "bad.yaml"),
        (
            "version: v1\nproxy: {listen: 127.0.0.1:0}\nauth: {audit_checkpoint: soon}\n",
            "auth.audit_checkpoint: \"soon\" is not a duration",
        ),
    ] {
        let path = s.write(
            "bad.yaml",
            &format!("data_dir: {}\n{config}", s.path("d").display()),
        );
        let err = run(&["start", "--config", path.to_str().unwrap()], None, &[]).fails();
        assert!(err.contains(want), "{err} should contain {want}");
        assert!(
            !s.path("d").exists(),
            "a first start that failed ({want}) left a half-made data directory"
        );
    }
    let err = run(
        &[
            "start",
            "--config",
            s.path("missing.yaml").to_str().unwrap(),
        ],
        None,
        &[],
    )
    .fails();
    assert!(err.contains("cannot read"), "{err}");
    let err = run(
        &[
            "admin",
            "--data-dir",
            s.path("nodaemon").to_str().unwrap(),
            "status",
        ],
        None,
        &[],
    )
    .fails();
    assert!(err.contains("no admin identity"), "{err}");
    let err = run(
        &[
            "login",
            "--proxy",
            "127.0.0.1:1",
            "--user",
            "x",
            "--ca-pin",
            &format!("sha256:{}", "a".repeat(64)),
            "--password-stdin",
        ],
        Some("p\n"),
        &[],
    )
    .fails();
    assert!(
        err.contains("cannot reach the proxy at 127.0.0.1:1"),
        "{err}"
    );
    let usage = run(&["admin", "frobnicate"], None, &[]);
    assert_eq!(usage.code, 2, "usage errors exit 2");
}

#[test]
fn postgres_storage_survives_restart() {
    let Ok(url) = std::env::var("MCPGATE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED: PostgreSQL end-to-end test (set MCPGATE_TEST_POSTGRES_URL to run it)");
        return;
    };
    let db = format!("mcpgate_e2e_{}", std::process::id());
    let psql = |sql: &str| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("postgres reachable");
            tokio::spawn(conn);
            for stmt in sql.split(';') {
                c.batch_execute(stmt).await.expect("sql");
            }
        });
    };
    psql(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"
    ));
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(url.clone());
    let s = Scratch::new();
    // Every auth instance of the cluster shares the key that seals the CA keys.
    let key_file = s.path("ca.key");
    let extra = format!(
        "storage: {{type: postgres, url: \"{base}/{db}\"}}\nauth: {{second_factor: off, ca_key_file: {}}}\n",
        key_file.display()
    );
    let (pin, bob) = {
        let d = Daemon::start(&s, "pg", &extra);
        assert!(d.banner.contains("storage:  postgres"), "{}", d.banner);
        d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
            .ok();
        let bob = Person::new(&s, "bob");
        bob.signup(&d, &invite(&d, "bob", "dev"));
        (d.pin.clone(), bob)
    };
    {
        // A second daemon with a fresh data dir on the same database is the same cluster.
        let d = Daemon::start(&s, "pg2", &extra);
        assert_eq!(d.pin, pin, "CA lives in PostgreSQL");
        assert!(role_names(&d).contains(&"dev".to_string()));
        assert!(bob.login(&d, None, &[]).ok().contains("as bob"));
        assert_eq!(
            audit(&d, &["--type", "user.login", "--user", "bob"]).len(),
            1
        );
        // Both instances wrote one audit chain.
        let verified = d.admin(&["audit", "verify"]).ok();
        assert!(
            verified.starts_with("The audit log is intact") && verified.contains("from seq 1"),
            "{verified}"
        );
    }
    // Without the cluster's CA key, the storage does not yield the CAs.
    let other = s.write(
        "other.yaml",
        &format!(
            "version: v1\ncluster_name: e2e.local\ndata_dir: {}\nproxy: {{listen: 127.0.0.1:0}}\nstorage: {{type: postgres, url: \"{base}/{db}\"}}\n",
            s.path("pg3-data").display()
        ),
    );
    let err = run(&["start", "--config", other.to_str().unwrap()], None, &[]).fails();
    assert!(err.contains("sealed with another CA key"), "{err}");
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

#[test]
fn people_without_admin_rights_cannot_change_the_cluster() {
    let s = Scratch::new();
    let d = Daemon::start(&s, "a", "auth:\n  second_factor: off\n");
    d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
        .ok();
    let eve = Person::new(&s, "eve");
    eve.signup(&d, &invite(&d, "eve", "dev"));
    eve.login(&d, None, &[]).ok();
    let id = eve.identity();
    let as_eve = |args: &[&str]| {
        let mut all = vec!["admin", "-i", id.to_str().unwrap(), "--proxy", &d.addr];
        all.extend_from_slice(args);
        run(&all, None, &[])
    };
    let evil = s.write("evil.yaml", "kind: role\nversion: v8\nmetadata: {name: dev}\nspec:\n  allow:\n    rules: [{resources: ['*'], verbs: ['*']}]\n");
    assert!(
        as_eve(&["create", "-f", evil.to_str().unwrap(), "--force"])
            .fails()
            .contains("access denied: eve may not create roles or apps")
    );
    assert!(
        as_eve(&["rm", "role/dev"])
            .fails()
            .contains("access denied")
    );
    assert!(
        as_eve(&["users", "add", "mallory", "--roles", "dev"])
            .fails()
            .contains("access denied")
    );
    assert!(
        as_eve(&["bots", "add", "b", "--roles", "dev"])
            .fails()
            .contains("access denied")
    );
    assert!(
        as_eve(&["lock", "--user", "admin"])
            .fails()
            .contains("access denied")
    );
    assert!(
        as_eve(&["audit", "search"])
            .fails()
            .contains("access denied")
    );
    // The role is unchanged.
    let role: serde_json::Value =
        serde_json::from_str(&d.admin(&["get", "role", "dev", "--format", "json"]).ok()).unwrap();
    assert!(
        role["spec"]["allow"]
            .get("rules")
            .is_none_or(|r| !r.to_string().contains("\"*\"")),
        "{role}"
    );
}

#[test]
fn every_data_command_prints_json_and_yaml() {
    let s = Scratch::new();
    let d = Daemon::start(&s, "f", "auth: {second_factor: off}\n");
    d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
        .ok();
    let alice = Person::new(&s, "alice");
    alice.signup(&d, &invite(&d, "alice", "dev"));
    alice.login(&d, None, &[]).ok();
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--data-dir", d.data_dir.to_str().unwrap()];
        all.extend_from_slice(args);
        all.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let commands: Vec<(Vec<String>, bool)> = vec![
        (admin(&["status"]), true),
        (admin(&["get", "roles"]), true),
        (admin(&["get", "role", "dev"]), true),
        (admin(&["get", "users"]), true),
        (admin(&["get", "agents"]), true),
        (admin(&["bots", "ls"]), true),
        (admin(&["tokens", "ls"]), true),
        (admin(&["audit", "search", "--since", "1h"]), false),
        (vec!["status".into()], true),
        (vec!["mcp".into(), "ls".into()], true),
    ];
    for (args, one_json) in commands {
        let run_as = |format: &str| {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(["--format", format]);
            alice.run(&a, None).ok()
        };
        let json = run_as("json");
        if one_json {
            serde_json::from_str::<serde_json::Value>(&json)
                .unwrap_or_else(|e| panic!("{args:?} --format json: {e}\n{json}"));
        } else {
            // audit search: one JSON object per line (DESIGN §5).
            for line in json.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{args:?}: {e}\n{line}"));
            }
        }
        let yaml = run_as("yaml");
        assert!(
            !yaml.trim().is_empty() || args.contains(&"ls".to_string()),
            "{args:?}"
        );
        for doc in yaml.split("\n---\n") {
            serde_saphyr::from_str::<serde_json::Value>(doc)
                .unwrap_or_else(|e| panic!("{args:?} --format yaml: {e}\n{yaml}"));
        }
        assert!(
            !yaml.trim_start().starts_with('{'),
            "{args:?} printed JSON for yaml:\n{yaml}"
        );
    }
    // The audit stream as JSON Lines, by its own name too.
    let jsonl = d
        .admin(&["audit", "search", "--since", "1h", "--format", "jsonl"])
        .ok();
    assert!(jsonl.lines().count() > 1);
    for line in jsonl.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    // A role someone holds is not removed by accident.
    let err = d.admin(&["rm", "role/dev"]).fails();
    assert!(err.contains("role dev is held by user alice"), "{err}");
    assert!(err.contains("--force"), "{err}");
    d.admin(&["rm", "role/dev", "--force"]).ok();
}

/// The README's quick start, its commands and its `roles.yaml` taken from the README itself
/// (so the two cannot drift), run against a fresh data directory. What differs from a person
/// at a terminal: the proxy listens on a free port, the password comes on stdin and the TOTP
/// code is computed, and the app runs the installed server-everything instead of `npx`.
#[test]
fn the_readme_quick_start_works_as_written() {
    let Some(everything) = needs("MCPGATE_TEST_EVERYTHING") else {
        return;
    };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = |after: &str, fence: &str| -> String {
        let start = readme
            .find(after)
            .unwrap_or_else(|| panic!("README lost {after:?}"));
        let rest = &readme[start..];
        let open = rest.find(fence).unwrap() + fence.len();
        let close = rest[open..].find("```").unwrap();
        rest[open..open + close].to_string()
    };
    let commands: Vec<Vec<String>> = block("In another terminal:", "```sh\n")
        .lines()
        .map(|l| l.split("  #").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert!(commands.len() >= 8, "{commands:?}");
    let roles = block("A `roles.yaml` to start from:", "```yaml\n").replace(
        "mcp: {command: npx, args: [-y, \"@modelcontextprotocol/server-everything\", stdio]}",
        &format!("mcp: {{command: node, args: [\"{everything}\", stdio]}}"),
    );
    assert!(
        roles.contains(&everything),
        "the README's app changed: {roles}"
    );

    let s = Scratch::new();
    let (cwd, home) = (s.path("work"), s.path("home"));
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(cwd.join("roles.yaml"), roles).unwrap();
    let mut daemon = Command::new(BIN)
        .args(["start", "--listen", "127.0.0.1:0"])
        .current_dir(&cwd)
        .env("HOME", &home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = daemon.stdout.take().unwrap();
    let daemon = Stop(daemon);
    let mut banner = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("  mcpgate signup") {
            break;
        }
    }
    let field = |label: &str| {
        banner
            .lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label} in:\n{banner}"))
    };
    let (addr, pin) = (field("proxy:"), field("CA pin:"));

    let (mut token, mut secret) = (String::new(), String::new());
    for words in commands {
        assert_eq!(words[0], "mcpgate", "{words:?}");
        let mut args: Vec<String> = words[1..]
            .iter()
            .map(|w| match w.as_str() {
                "127.0.0.1:3080" => addr.clone(),
                "sha256:..." => pin.clone(),
                "<token>" => token.clone(),
                w => w.to_string(),
            })
            .collect();
        let mut stdin = None;
        match args[0].as_str() {
            "signup" => {
                // What a person scans from the QR code, the test makes itself.
                secret = mcpgate_auth::login::new_otp_secret().unwrap();
                args.extend([
                    "--password-stdin".into(),
                    "--otp-secret".into(),
                    secret.clone(),
                    "--otp".into(),
                    current_code(&secret),
                ]);
                stdin = Some(format!("{PASSWORD}\n"));
            }
            "login" => {
                args.extend([
                    "--password-stdin".into(),
                    "--otp".into(),
                    current_code(&secret),
                ]);
                stdin = Some(format!("{PASSWORD}\n"));
            }
            _ => {}
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .current_dir(&cwd)
            .env("HOME", &home)
            .env_remove("MCPGATE_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut pipe = child.stdin.take().unwrap();
            if let Some(input) = &stdin {
                pipe.write_all(input.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(
            out.status.success(),
            "mcpgate {args:?}:\n{stdout}\n{stderr}"
        );
        match args[0].as_str() {
            "admin" if args[1] == "users" => {
                token = stdout
                    .lines()
                    .map(str::trim)
                    .find(|l| l.len() > 20 && !l.contains(' '))
                    .unwrap_or_else(|| panic!("no token in:\n{stdout}"))
                    .to_string();
            }
            "signup" => {
                assert!(stdout.contains("Second factor confirmed"), "{stdout}");
            }
            "status" => assert!(stdout.contains("alice"), "{stdout}"),
            "mcp" if args[1] == "ls" => assert!(stdout.contains("everything"), "{stdout}"),
            "admin" if args[1] == "audit" => {
                let logins: Vec<serde_json::Value> = stdout
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                assert!(
                    logins
                        .iter()
                        .any(|e| e["user"] == "alice" && e["success"] == true)
                );
            }
            "mcp" if args[1] == "config" => {
                let file = home.join(".config/Claude/claude_desktop_config.json");
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
                assert_eq!(v["mcpServers"]["everything"]["args"][2], "everything");
            }
            _ => {}
        }
    }
    drop(daemon);
}

#[test]
fn shell_completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completion", shell], None, &[]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains("mcpgate") && out.stdout.contains("login"),
            "{shell}"
        );
    }
    let bash = run(&["completion", "bash"], None, &[]).stdout;
    let mut check = Command::new("bash")
        .args(["-n"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(bash.as_bytes())
        .unwrap();
    assert!(check.wait().unwrap().success(), "the bash script parses");
}

#[test]
fn status_lists_every_cluster_a_person_logged_in_to() {
    let s = Scratch::new();
    let one = Daemon::start(&s, "one", "auth: {second_factor: off}\n");
    let data = s.path("two-data");
    let cfg = s.write(
        "two.yaml",
        &format!(
            "version: v1\ncluster_name: other.local\ndata_dir: {}\nauth: {{second_factor: off}}\nproxy:\n  listen: 127.0.0.1:0\n",
            data.display()
        ),
    );
    let two = Daemon::start_with(&cfg, data);
    for d in [&one, &two] {
        d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
            .ok();
    }
    let carol = Person::new(&s, "carol");
    carol.signup(&one, &invite(&one, "carol", "dev"));
    carol.login(&one, None, &[]).ok();
    carol.signup(&two, &invite(&two, "carol", "dev"));
    carol.login(&two, None, &[]).ok();
    let status: serde_json::Value =
        serde_json::from_str(&carol.run(&["status", "--format", "json"], None).ok()).unwrap();
    assert_eq!(status["cluster"], "other.local");
    assert_eq!(status["other_clusters"][0]["cluster"], "e2e.local");
    assert_eq!(status["other_clusters"][0]["valid"], true);
    let text = carol.run(&["status"], None).ok();
    assert!(text.contains("Also:     cluster e2e.local"), "{text}");
    // Logging out of the current cluster leaves the other.
    carol.run(&["logout"], None).ok();
    carol.login(&one, None, &[]).ok();
    let status: serde_json::Value =
        serde_json::from_str(&carol.run(&["status", "--format", "json"], None).ok()).unwrap();
    assert_eq!(status["cluster"], "e2e.local");
    assert_eq!(status["other_clusters"].as_array().unwrap().len(), 0);
}

/// `admin audit verify`: intact after real use; an event edited in the database behind
/// mcpgate's back is named by its seq, with exit code 1.
#[test]
fn audit_verify_names_an_event_edited_behind_mcpgates_back() {
    let s = Scratch::new();
    let mut d = Daemon::start(&s, "verify", "auth: {second_factor: off}\n");
    d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
        .ok();
    d.admin(&["users", "add", "carl", "--roles", "dev"]).ok();
    let intact = d.admin(&["audit", "verify"]).ok();
    assert!(
        intact.starts_with("The audit log is intact: ") && intact.contains("chained from seq 1"),
        "{intact}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&d.admin(&["audit", "verify", "--format", "json"]).ok()).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["events"].as_u64().unwrap() >= 3, "{v}");
    // Someone with the database file turns the role's creation into something else.
    let db = d.data_dir.join("state.db");
    let edit = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             (seq,) = c.execute(\"SELECT min(rowid) FROM audit WHERE type = 'resource.create'\").fetchone()\n\
             c.execute(\"UPDATE audit SET data = replace(data, '\\\"dev\\\"', '\\\"ops\\\"') WHERE rowid = ?\", (seq,))\n\
             c.commit()\n\
             print(seq)",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(edit.status.success(), "{edit:?}");
    let seq = String::from_utf8_lossy(&edit.stdout).trim().to_string();
    let err = d.admin(&["audit", "verify"]).fails();
    assert!(
        err.contains(&format!("the event at seq {seq} was altered")),
        "{err}"
    );
    let json = d.admin(&["audit", "verify", "--format", "json"]);
    assert_eq!(json.code, 1);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        (v["intact"].clone(), v["seq"].to_string()),
        (false.into(), seq.clone())
    );
    // With the daemon stopped, straight on its storage: the same answer.
    d.kill();
    let offline = d.admin(&["audit", "verify", "--offline"]).fails();
    assert!(
        offline.contains(&format!("the event at seq {seq} was altered")),
        "{offline}"
    );
}

/// `admin audit verify --offline` on a stopped daemon's data dir and config: intact, with
/// the checkpoint its host CA signed checked by the certificate alone.
#[test]
fn audit_verify_offline_reads_a_stopped_daemons_log_and_checkpoint() {
    let s = Scratch::new();
    let mut d = Daemon::start(
        &s,
        "offline",
        "auth: {second_factor: off, audit_checkpoint: 1s}\n",
    );
    d.admin(&["create", "-f", s.write("r.yaml", ROLES).to_str().unwrap()])
        .ok();
    // The daemon signs a checkpoint every second here (auth.audit_checkpoint).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let checkpointed = loop {
        let v: serde_json::Value =
            serde_json::from_str(&d.admin(&["audit", "verify", "--format", "json"]).ok()).unwrap();
        if v["checkpoint"].is_object() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    d.kill();
    let config = s.path("offline.yaml");
    let out = run(
        &[
            "admin",
            "audit",
            "verify",
            "--offline",
            "--config",
            config.to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
        &[],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["checkpoint"], checkpointed["checkpoint"]);
}
