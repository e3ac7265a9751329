//! End-to-end harness: the real `mcpgate` binary, started on port 0 in a scratch folder.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mcpgate");
pub const PASSWORD: &str = "correct horse battery staple";

/// A scratch folder: data dirs, user homes, files.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

/// A running `mcpgate start`.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub pin: String,
    pub data_dir: PathBuf,
    pub banner: String,
}

impl Daemon {
    /// Starts the daemon with `extra` YAML appended to a config listening on port 0.
    pub fn start(scratch: &Scratch, name: &str, extra: &str) -> Daemon {
        let data_dir = scratch.path(&format!("{name}-data"));
        let config = format!(
            "version: v1\ncluster_name: e2e.local\ndata_dir: {}\nproxy:\n  listen: 127.0.0.1:0\n{extra}",
            data_dir.display()
        );
        let path = scratch.write(&format!("{name}.yaml"), &config);
        Daemon::start_with(&path, data_dir)
    }

    pub fn start_with(config: &Path, data_dir: PathBuf) -> Daemon {
        Daemon::start_args(config, data_dir, &[])
    }

    pub fn start_args(config: &Path, data_dir: PathBuf, args: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .args(["start", "--config"])
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mcpgate start");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = String::new();
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                banner.push_str(&line);
                banner.push('\n');
                if !sent
                    && (line.starts_with("  mcpgate signup") || line.starts_with("  identity:"))
                {
                    let _ = tx.send(banner.clone());
                    sent = true;
                }
            }
            if !sent {
                let _ = tx.send(banner);
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("mcpgate start printed nothing in 30s");
        let field = |label: &str| {
            banner
                .lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {label} in banner:\n{banner}"))
        };
        let addr = field("proxy:");
        // Agent-only daemons print no pin.
        let pin = if banner.contains("CA pin:") {
            field("CA pin:")
        } else {
            String::new()
        };
        Daemon {
            child,
            addr,
            pin,
            data_dir,
            banner,
        }
    }

    /// `mcpgate admin ... --data-dir <this daemon's>`.
    pub fn admin(&self, args: &[&str]) -> Out {
        let mut all = vec![
            "admin",
            "--data-dir",
            self.data_dir.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        run(&all, None, &[])
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the daemon to stop as a service manager does (SIGTERM) and waits for it: its
    /// exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "SIGTERM not sent");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a command did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Asserts a clean failure (exit 1, one line on stderr starting `error:`) and returns it.
    pub fn fails(self) -> String {
        assert_eq!(
            self.code, 1,
            "expected failure, got {}:\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with("warning:"))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got:\n{}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        lines[0].to_string()
    }
}

/// Runs `mcpgate ARGS` with optional stdin and extra environment.
pub fn run(args: &[&str], stdin: Option<&str>, env: &[(&str, &Path)]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mcpgate");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            let _ = pipe.write_all(input.as_bytes());
        }
    }
    // Read both pipes while waiting: output larger than a pipe's buffer must not stall it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    Out {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A person with their own credentials folder.
pub struct Person {
    pub name: String,
    pub home: PathBuf,
}

impl Person {
    pub fn new(scratch: &Scratch, name: &str) -> Person {
        Person {
            name: name.into(),
            home: scratch.path(&format!("home-{name}")),
        }
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        run(args, stdin, &[("MCPGATE_HOME", &self.home)])
    }

    /// Signs up with an invite (enrolling a TOTP secret of the test's own and confirming it
    /// with a code, when the cluster asks for a second factor); returns the secret if one
    /// was enrolled.
    pub fn signup(&self, d: &Daemon, invite: &str) -> Option<String> {
        let secret = mcpgate_auth::login::new_otp_secret().expect("secret");
        let code = current_code(&secret);
        let out = self
            .run(
                &[
                    "signup",
                    "--proxy",
                    &d.addr,
                    "--ca-pin",
                    &d.pin,
                    "--invite",
                    invite,
                    "--password-stdin",
                    "--otp-secret",
                    &secret,
                    "--otp",
                    &code,
                ],
                Some(&format!("{PASSWORD}\n")),
            )
            .ok();
        out.contains("Second factor confirmed").then_some(secret)
    }

    pub fn login(&self, d: &Daemon, secret: Option<&str>, extra: &[&str]) -> Out {
        let code = secret.map(current_code);
        let mut args = vec![
            "login",
            "--proxy",
            &d.addr,
            "--user",
            &self.name,
            "--ca-pin",
            &d.pin,
            "--password-stdin",
        ];
        if let Some(c) = &code {
            args.extend(["--otp", c]);
        }
        args.extend_from_slice(extra);
        self.run(&args, Some(&format!("{PASSWORD}\n")))
    }

    /// A person invited with `roles`, signed up and logged in (a cluster without a second
    /// factor).
    pub fn admitted(scratch: &Scratch, d: &Daemon, name: &str, roles: &str) -> Person {
        let p = Person::new(scratch, name);
        p.signup(d, &invite(d, name, roles));
        p.login(d, None, &[]).ok();
        p
    }

    pub fn identity(&self) -> PathBuf {
        self.home.join("identity")
    }
}

/// A daemon without a second factor whose agent serves `apps` (YAML list items, may be
/// empty), with the roles of `roles_yaml` created.
pub fn gateway_daemon(s: &Scratch, apps: &str, roles_yaml: &str) -> Daemon {
    let agent = if apps.is_empty() {
        String::new()
    } else {
        format!("agent:\n  apps:\n{apps}")
    };
    let d = Daemon::start(s, "gate", &format!("auth: {{second_factor: off}}\n{agent}"));
    d.admin(&[
        "create",
        "-f",
        s.write("roles.yaml", roles_yaml)
            .to_str()
            .expect("utf-8 path"),
    ])
    .ok();
    d
}

/// Runs a Python MCP client fixture; asserts it succeeded and returns the JSON it printed.
pub fn python_json(python: &str, args: &[&str], home: &Path) -> serde_json::Value {
    let mut cmd = Command::new(python);
    cmd.args(args).env("MCPGATE_HOME", home);
    json_of(cmd)
}

/// Runs a client fixture; asserts it succeeded and returns the JSON it printed.
pub fn json_of(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("run the client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

/// The TOTP code for `secret` now.
pub fn current_code(secret: &str) -> String {
    mcpgate_auth::login::otp_code(secret, std::time::SystemTime::now()).expect("totp")
}

/// The invite token printed by `admin users add --format json`.
pub fn invite(d: &Daemon, user: &str, roles: &str) -> String {
    let out = d
        .admin(&["users", "add", user, "--roles", roles, "--format", "json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["token"].as_str().expect("token").to_string()
}

/// Events from `admin audit search ... --format json` (one object per line).
pub fn audit(d: &Daemon, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "search", "--since", "1h", "--format", "json"];
    args.extend_from_slice(filters);
    d.admin(&args)
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Runs `sql` (one or more statements) on the PostgreSQL server at `url`.
pub fn pg_exec(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute(sql).await.unwrap();
    });
}

/// A test dependency installed by `scripts/test` and named by an environment variable.
/// Without it the test is skipped — except under CI, where that is a failure.
pub fn needs(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{var} is not set: run the tests with scripts/test")
        }
        _ => {
            eprintln!("SKIPPED: {var} is not set (scripts/test installs and sets it)");
            None
        }
    }
}

/// The recorder fixture: a stdio MCP server that logs every line it receives.
pub fn recorder_app(name: &str, labels: &str, record: &Path, marker: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/recorder.py");
    format!(
        "    - name: {name}\n      labels: {labels}\n      uri: mcp+stdio://\n      mcp:\n        command: python3\n        args: [\"{script}\", \"{marker}\"]\n        env: {{RECORD_FILE: \"{}\"}}\n",
        record.display()
    )
}

/// `mcpgate mcp connect APP` driven line by line, as a raw JSON-RPC client.
pub struct Bridge {
    pub child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    rx: std::sync::mpsc::Receiver<String>,
    next_id: i64,
}

impl Bridge {
    pub fn open(person: &Person, app: &str, extra: &[&str]) -> Bridge {
        let mut cmd = Command::new(BIN);
        cmd.args(["mcp", "connect", app])
            .args(extra)
            .env("MCPGATE_HOME", &person.home);
        Bridge::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Bridge {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bridge");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Bridge {
            child,
            stdin,
            rx,
            next_id: 100,
        }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("open");
        stdin.write_all(bytes).expect("write to bridge");
        stdin.flush().expect("flush");
    }

    pub fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes());
    }

    /// The next message from the gateway.
    pub fn recv(&self) -> serde_json::Value {
        let line = self
            .rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no answer within 30s");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not JSON from the bridge: {line}: {e}"))
    }

    /// The next line from the gateway, as it was written.
    pub fn recv_raw(&self) -> String {
        self.rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no answer within 30s")
    }

    /// Waits for the answer with `id`, skipping notifications and other messages.
    pub fn answer(&self, id: &serde_json::Value) -> serde_json::Value {
        loop {
            let m = self.recv();
            if m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some()) {
                return m;
            }
        }
    }

    /// Sends a request and waits for its answer.
    pub fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = serde_json::Value::from(self.next_id);
        let msg =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&msg.to_string());
        self.answer(&id)
    }

    /// The answer with `id`, or `None` if the bridge closed or nothing came within 10 s.
    pub fn rx_answer(&self, id: &serde_json::Value) -> Option<serde_json::Value> {
        loop {
            let line = self.rx.recv_timeout(Duration::from_secs(10)).ok()?;
            let m: serde_json::Value = serde_json::from_str(&line).ok()?;
            if m.get("id") == Some(id) {
                return Some(m);
            }
        }
    }

    /// Opens a session to `app` and returns the error its `initialize` gets
    /// (panics if it gets none): what a person sees for an app they cannot reach.
    pub fn refused(person: &Person, app: &str) -> String {
        let mut b = Bridge::open(person, app, &[]);
        let r = b.request("initialize", serde_json::json!({}));
        r["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("initialize was not refused: {r}"))
            .to_string()
    }

    pub fn initialize(&mut self) -> serde_json::Value {
        let r = self.request("initialize", serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e-raw", "version": "1"}}));
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        r
    }

    pub fn tools(&mut self) -> Vec<String> {
        let r = self.request("tools/list", serde_json::json!({}));
        let mut names: Vec<String> = r["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools: {r}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    }

    pub fn call(&mut self, tool: &str, args: serde_json::Value) -> serde_json::Value {
        self.request(
            "tools/call",
            serde_json::json!({"name": tool, "arguments": args}),
        )
    }

    /// Closes stdin and waits for the bridge to exit; returns its exit code.
    pub fn close(mut self) -> i32 {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the bridge did not exit after stdin closed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if text.contains(marker) && !text.contains("cargo") {
                    out.push(text);
                }
            }
        }
    }
    out
}

/// Waits until no process carries `marker` (up to 10 s); returns the stragglers.
pub fn wait_no_processes(marker: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A unique marker for this test's upstream processes.
pub fn marker(tag: &str) -> String {
    format!(
        "mcpgate-e2e-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Calls the proxy's HTTPS API as the holder of `identity` (PEM text); returns the status
/// and the JSON body.
pub fn api_as(
    d: &Daemon,
    identity: &str,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let id = mcpgate_pki::Identity::parse(identity).unwrap();
        let config = mcpgate_pki::tls::client_config(
            &id.ca_certs,
            Some(&id),
            std::sync::Arc::new(mcpgate_types::SystemClock),
            &[mcpgate_pki::tls::ALPN_HTTP1],
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
        let host = d.addr.rsplit_once(':').unwrap().0.to_string();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let body = body.to_string();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: mcpgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    })
}

/// The gateway ended the session of `b`: `note`, the message it sent last, says `why`, the
/// bridge exits non-zero, and the session's server (marked `marker`) is stopped.
pub fn assert_ended(b: Bridge, note: &serde_json::Value, why: &str, marker: &str) {
    assert_eq!(note["method"], "notifications/message", "{note}");
    assert!(
        note["params"]["data"].as_str().unwrap().contains(why),
        "{note}"
    );
    assert_eq!(b.close(), 1, "an ended session's bridge exits non-zero");
    assert!(
        wait_no_processes(marker).is_empty(),
        "the server of an ended session is stopped"
    );
}
