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
        let mut child = Command::new(BIN)
            .args(["start", "--config"])
            .arg(config)
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
                if !sent && line.starts_with("  mcpgate signup") {
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
        let pin = field("CA pin:");
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
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

    /// Signs up with an invite; returns the TOTP secret if one was enrolled.
    pub fn signup(&self, d: &Daemon, invite: &str) -> Option<String> {
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
                ],
                Some(&format!("{PASSWORD}\n")),
            )
            .ok();
        out.split("secret=")
            .nth(1)
            .map(|s| s.split('&').next().unwrap_or_default().to_string())
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

    pub fn identity(&self) -> PathBuf {
        self.home.join("identity")
    }
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
