//! Credentials on disk: the user's profile in `~/.mcpgate/` and the admin identity in the
//! data dir. Files holding keys are written atomically with mode 0600 in 0700 folders.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use mcpgate_pki::Identity;

/// Where a client finds its proxy and what it trusts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub proxy: String,
    pub cluster: String,
    pub ca_pin: String,
    #[serde(default)]
    pub user: String,
}

/// `$MCPGATE_HOME`, or `~/.mcpgate`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MCPGATE_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .context("HOME is not set; set MCPGATE_HOME to a folder for credentials")?;
    Ok(PathBuf::from(home).join(".mcpgate"))
}

/// A folder for credentials: created with mode 0700.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename), mode 0600: a reader
/// sees the old file or the new one, never a torn one.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// A profile and identity stored together in one folder.
pub struct Stored {
    pub profile: Profile,
    pub identity: Identity,
}

/// Saves the profile as the current one, and a copy under `clusters/CLUSTER/`: a person
/// logged in to several clusters sees them all in `mcpgate status`.
pub fn save(dir: &Path, profile: &Profile, identity: &Identity) -> anyhow::Result<()> {
    for dir in [dir.to_path_buf(), cluster_dir(dir, &profile.cluster)] {
        private_dir(&dir)?;
        write_private(&dir.join("identity"), identity.to_pem().as_bytes())?;
        write_private(
            &dir.join("profile.json"),
            &serde_json::to_vec_pretty(profile)?,
        )?;
    }
    Ok(())
}

fn cluster_dir(dir: &Path, cluster: &str) -> PathBuf {
    dir.join("clusters").join(cluster)
}

/// Every cluster profile saved at login (the current one among them), by cluster name.
pub fn all(dir: &Path) -> Vec<Stored> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("clusters")) else {
        return out;
    };
    for entry in entries.flatten() {
        if let Ok(Some(stored)) = load(&entry.path()) {
            out.push(stored);
        }
    }
    out.sort_by(|a, b| a.profile.cluster.cmp(&b.profile.cluster));
    out
}

pub fn load_profile(dir: &Path) -> anyhow::Result<Option<Profile>> {
    let path = dir.join("profile.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is corrupt", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn load(dir: &Path) -> anyhow::Result<Option<Stored>> {
    let Some(profile) = load_profile(dir)? else {
        return Ok(None);
    };
    let identity = read_identity(&dir.join("identity"))?;
    Ok(Some(Stored { profile, identity }))
}

/// Reads an identity file.
pub fn read_identity(path: &Path) -> anyhow::Result<Identity> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    Identity::parse(&text)
        .with_context(|| format!("{} is not a valid identity file", path.display()))
}

/// The profile logged in to now, or else the last one (kept by `logout`, without
/// credentials): where and as whom to log in next, and the cluster's pin.
pub fn load_remembered(dir: &Path) -> anyhow::Result<Option<Profile>> {
    if let Some(p) = load_profile(dir)? {
        return Ok(Some(p));
    }
    match std::fs::read(dir.join("last.json")) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(_) => Ok(None),
    }
}

/// Removes the user's credentials; false if there were none. The profile (proxy, user,
/// pin; nothing secret) is kept as `last.json` for the next login.
pub fn remove(dir: &Path) -> anyhow::Result<bool> {
    let mut any = false;
    if let Ok(Some(current)) = load_profile(dir) {
        let _ = std::fs::remove_dir_all(cluster_dir(dir, &current.cluster));
    }
    if dir.join("profile.json").exists() {
        let _ = std::fs::rename(dir.join("profile.json"), dir.join("last.json"));
        any = true;
    }
    for name in ["identity", "profile.json"] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => any = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot remove {}: {e}", dir.join(name).display()),
        }
    }
    Ok(any)
}
