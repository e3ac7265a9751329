//! Stdio upstreams: one child process per client session, in its own process group, with
//! only the environment it is given; stopped with SIGINT, then SIGKILL after a grace period,
//! so no process outlives its session.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::process::Stdio;
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
    #[error("cannot start {command:?}: {error}")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
}

/// A running stdio upstream.
pub struct Upstream {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
}

impl Upstream {
    /// Starts `cmd` with its `env` resolved on this host.
    pub fn start(cmd: &McpCommand) -> Result<Upstream, StartError> {
        let mut command = Command::new(&cmd.command);
        command.args(&cmd.args).env_clear();
        for key in PASS_THROUGH {
            if let Some(v) = std::env::var_os(key) {
                command.env(key, v);
            }
        }
        for (k, v) in &cmd.env {
            command.env(k, secrets::resolve(v)?);
        }
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
            .stderr(Stdio::inherit())
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
        Ok(Upstream {
            child,
            stdin: Some(stdin),
            stdout: Some(stdout),
        })
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
        let Some(pid) = self.child.id() else { return };
        let group = Pid::from_raw(pid as i32);
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
