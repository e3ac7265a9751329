//! Stdio upstreams: one child process per client session, in its own process group, with
//! only the environment it is given; stopped with SIGINT, then SIGKILL after a grace period,
//! so no process outlives its session. Its standard error goes to the agent's log with the
//! app's name, and its last lines are kept to say why a server that exited did.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use mcpgate_types::resource::McpCommand;

use crate::secrets::{self, SecretError};

/// How long an upstream has to exit after SIGINT before it is killed.
pub const GRACE: Duration = Duration::from_secs(3);

/// Variables passed through from the agent's environment; everything else is withheld, so an
/// upstream sees only its own secrets.
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "NODE_PATH",
    "NPM_CONFIG_CACHE",
    "npm_config_cache",
    "PYTHONPATH",
    "VIRTUAL_ENV",
];

/// Why an upstream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("host user {0:?} does not exist")]
    NoSuchUser(String),
    /// An app that cannot be used as configured (a bad URI, header or TLS setting).
    #[error("{0}")]
    Config(String),
    #[error("cannot start {command:?}: {error}")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
}

/// Lines of a server's standard error kept to explain its exit, and their longest length.
const STDERR_LINES: usize = 8;
const STDERR_LINE_MAX: usize = 300;

/// A running stdio upstream.
pub struct Upstream {
    child: Child,
    /// The process group (the leader's pid), kept: once the leader is reaped its id is gone,
    /// but what it started may live on in its group.
    group: Option<Pid>,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    /// The last lines of its standard error.
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Ends when its standard error closes.
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    /// The secrets it was given, to take out of what it sends.
    scrubber: secrets::Scrubber,
}

impl Upstream {
    /// Starts `cmd` (the server of app `app`) with its `env` resolved on this host.
    pub fn start(app: &str, cmd: &McpCommand) -> Result<Upstream, StartError> {
        let mut command = Command::new(&cmd.command);
        command.args(&cmd.args).env_clear();
        for key in PASS_THROUGH {
            if let Some(v) = std::env::var_os(key) {
                command.env(key, v);
            }
        }
        // What the server gets from this host's secrets is taken out of what it sends back.
        let mut given = Vec::new();
        for (k, v) in &cmd.env {
            let value = secrets::resolve_into(v, &mut given)?;
            if mcpgate_types::secrets::secret_name(k) {
                given.push(value.clone());
            }
            command.env(k, value);
        }
        let scrubber = secrets::Scrubber::new(given.iter().map(String::as_str));
        if let Some(user) = &cmd.run_as_host_user {
            let u = nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(|| StartError::NoSuchUser(user.clone()))?;
            command.uid(u.uid.as_raw()).gid(u.gid.as_raw());
            command
                .env("HOME", &u.dir)
                .env("USER", user)
                .env("LOGNAME", user);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|error| StartError::Spawn {
            command: cmd.command.clone(),
            error,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(StartError::Spawn {
                command: cmd.command.clone(),
                error: std::io::Error::other("no pipes"),
            });
        };
        let group = child.id().map(|pid| Pid::from_raw(pid as i32));
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES)));
        let stderr_done = child.stderr.take().map(|pipe| {
            let (kept, app, scrub) = (stderr.clone(), app.to_string(), scrubber.clone());
            tokio::spawn(async move {
                // Read to the end whatever it writes (a server whose stderr closes would die
                // of SIGPIPE), one bounded line at a time (a small buffer: most servers
                // say little there, and every session holds one).
                let mut pipe = tokio::io::BufReader::with_capacity(1 << 10, pipe);
                let mut buf = Vec::new();
                loop {
                    match crate::lines::read_line(&mut pipe, &mut buf, 16 << 10).await {
                        Ok(crate::lines::Line::Ok) => {}
                        Ok(crate::lines::Line::TooLong) => continue,
                        Ok(crate::lines::Line::Eof) | Err(_) => break,
                    }
                    if let Some(clean) = scrub.scrub(&buf) {
                        buf = clean;
                    }
                    let line = String::from_utf8_lossy(&buf);
                    tracing::info!(app = %app, "server: {line}");
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() == STDERR_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.chars().take(STDERR_LINE_MAX).collect());
                }
            })
        });
        Ok(Upstream {
            child,
            group,
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr,
            stderr_done,
            scrubber,
        })
    }

    /// What takes the secrets it was given out of what it sends.
    pub fn scrubber(&self) -> secrets::Scrubber {
        self.scrubber.clone()
    }

    /// Why the server ended on its own: its exit status (waited for up to `wait`) and the
    /// last lines of its standard error, as one sentence.
    pub async fn exit_report(&mut self, wait: Duration) -> String {
        let status: Option<ExitStatus> = tokio::time::timeout(wait, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(done) = self.stderr_done.take() {
            let _ = tokio::time::timeout(wait, done).await;
        }
        let mut out = match status {
            Some(s) => match s.code() {
                Some(code) => format!("exited with status {code}"),
                None => format!("was ended ({s})"),
            },
            None => "closed its output".to_string(),
        };
        let tail: Vec<String> = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect();
        if !tail.is_empty() {
            out.push_str("; its last output: ");
            out.push_str(&tail.join(" | "));
        }
        out
    }

    /// The pipe to the upstream's standard input (once).
    pub fn take_stdin(&mut self) -> ChildStdin {
        // Sound: set in `start`, taken once by the session.
        self.stdin
            .take()
            .unwrap_or_else(|| unreachable!("stdin taken twice"))
    }

    /// The pipe from the upstream's standard output (once).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.stdout
            .take()
            .unwrap_or_else(|| unreachable!("stdout taken twice"))
    }

    /// Stops the process group: SIGINT, then SIGKILL after [`GRACE`].
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        let Some(group) = self.group.take() else {
            return;
        };
        let _ = killpg(group, Signal::SIGINT);
        if tokio::time::timeout(GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = self.child.wait().await;
        } else {
            // The leader exited; make sure nothing it started lingers in its group.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for Upstream {
    /// An upstream dropped without `stop` (its task aborted, the daemon shutting down): its
    /// whole process group goes, not only the leader `kill_on_drop` would take.
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}
