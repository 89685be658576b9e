//! The node file: how `warren ctl` finds and authenticates to the local node with no
//! flags. `warren serve` writes `<data dir>/node.json` (mode 0600: only the broker's own
//! user can read it) with the HTTP API's address and a random token that the API accepts
//! as an administrator, and registers the same under its node name in the runtime
//! registry ([`registry_dir`]), where `warren ctl` looks first, whatever data dir the
//! node has.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The file's name inside the data dir.
pub const NODE_FILE: &str = "node.json";

/// What the node file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:15672`.
    pub url: String,
    /// The secret that authenticates as the node's operator (`Authorization: Bearer`).
    pub token: String,
    /// The broker's process id.
    pub pid: u32,
    /// The node's name.
    pub node: String,
    /// The node's data dir (empty if the file did not say).
    pub data_dir: String,
}

impl NodeFile {
    /// Path of the node file in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(NODE_FILE)
    }

    /// Writes the file in `data_dir`, readable by its owner only, replacing any earlier one.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<PathBuf> {
        let path = Self::path(data_dir);
        self.write_at(&path)?;
        Ok(path)
    }

    /// Writes the file at `path` (through a temporary file and a rename, mode 0600).
    fn write_at(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        let doc = json!({
            "url": self.url,
            "token": self.token,
            "pid": self.pid,
            "node": self.node,
            "data_dir": self.data_dir,
        });
        f.write_all(doc.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reads the node file of `data_dir`.
    pub fn read(data_dir: &Path) -> Result<NodeFile, String> {
        Self::read_at(&Self::path(data_dir))
            .map_err(|e| format!("{e} (is `warren serve` running with this data dir?)"))
    }

    /// Reads a node file at `path`.
    fn read_at(path: &Path) -> Result<NodeFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a node file: {e}", path.display()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{} has no '{k}'", path.display()))
        };
        Ok(NodeFile {
            url: field("url")?,
            token: field("token")?,
            pid: v.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32,
            node: field("node").unwrap_or_default(),
            data_dir: field("data_dir").unwrap_or_default(),
        })
    }

    /// Registers the node under its name in the runtime registry, unless another live
    /// process holds that name there. Returns the registry file written.
    pub fn register(&self) -> Result<PathBuf, String> {
        let dir = registry_dir()?;
        let path = dir.join(format!("{}.json", file_stem(&self.node)));
        if let Ok(other) = Self::read_at(&path)
            && other.pid != self.pid
            && alive(other.pid)
        {
            return Err(format!(
                "node {} is already registered in {} by process {} (data dir {}); `warren ctl` reaches this one with --data-dir",
                self.node,
                dir.display(),
                other.pid,
                other.data_dir
            ));
        }
        self.write_at(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// Removes a registry file written by [`NodeFile::register`] if it is still this
/// process's.
pub fn unregister(path: &Path) {
    if NodeFile::read_at(path).is_ok_and(|nf| nf.pid == std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The local nodes registered and running, by name, from every registry this user may
/// read ([`registry_dirs_to_read`]).
pub fn registered() -> Vec<NodeFile> {
    let mut nodes: Vec<NodeFile> = Vec::new();
    for dir in registry_dirs_to_read() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        nodes.extend(
            entries
                .flatten()
                .take(MAX_REGISTERED)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| NodeFile::read_at(&e.path()).ok())
                .filter(|nf| alive(nf.pid)),
        );
    }
    nodes.sort_by(|a, b| (&a.node, a.pid).cmp(&(&b.node, b.pid)));
    nodes.dedup_by(|a, b| a.node == b.node && a.pid == b.pid);
    nodes
}

/// Most registry entries read (a registry is a handful of local nodes).
const MAX_REGISTERED: usize = 1024;

/// The system registry, where a node run as a service registers (systemd's
/// `RuntimeDirectory=warren`).
const SYSTEM_REGISTRY: &str = "/run/warren";

fn env_dir(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The registry of this user: `$XDG_RUNTIME_DIR/warren`, else `<temp dir>/warren-<uid>`.
fn user_registry(uid: rustix::process::Uid) -> PathBuf {
    match env_dir("XDG_RUNTIME_DIR") {
        Some(run) => run.join("warren"),
        None => std::env::temp_dir().join(format!("warren-{}", uid.as_raw())),
    }
}

/// Where a node registers: `$WARREN_RUNTIME_DIR`, else `/run/warren` for root, else
/// this user's registry. The directory is made with mode 0700 and refused unless it is
/// this user's and private.
pub fn registry_dir() -> Result<PathBuf, String> {
    let uid = rustix::process::geteuid();
    let dir = if let Some(dir) = env_dir("WARREN_RUNTIME_DIR") {
        dir
    } else if uid.is_root() {
        PathBuf::from(SYSTEM_REGISTRY)
    } else {
        user_registry(uid)
    };
    private_dir(&dir, uid)?;
    Ok(dir)
}

/// Where `warren ctl` looks: `$WARREN_RUNTIME_DIR` alone if set; else the system registry
/// and this user's. A directory is read only if no one but its owner may write to it,
/// and its owner is this user, root, or (for root) anyone: a service's registry is its
/// own user's.
pub fn registry_dirs_to_read() -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::geteuid();
    let candidates = match env_dir("WARREN_RUNTIME_DIR") {
        Some(dir) => vec![dir],
        None => vec![PathBuf::from(SYSTEM_REGISTRY), user_registry(uid)],
    };
    candidates
        .into_iter()
        .filter(|dir| {
            std::fs::symlink_metadata(dir).is_ok_and(|m| {
                m.is_dir()
                    && m.mode() & 0o022 == 0
                    && (uid.is_root() || m.uid() == uid.as_raw() || m.uid() == 0)
            })
        })
        .collect()
}

/// Makes `dir` (mode 0700) if missing; fails unless it is a directory owned by `uid` that
/// no one else may write or read.
fn private_dir(dir: &Path, uid: rustix::process::Uid) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid.as_raw() || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private directory of this user (mode 0700): not used",
            dir.display()
        ));
    }
    Ok(())
}

/// A node name as a file name: what is not alphanumeric, `@`, `-`, `_` or `.` becomes `_`.
fn file_stem(node: &str) -> String {
    node.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// A fresh secret: 32 random bytes from the operating system, hex-encoded.
pub fn new_token() -> std::io::Result<String> {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut raw)
        .map_err(std::io::Error::other)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The node's name, RabbitMQ style: `warren@<hostname>`.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("warren@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_file_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let nf = NodeFile {
            url: "http://127.0.0.1:1".into(),
            token: new_token().unwrap(),
            pid: 7,
            node: "warren@h".into(),
            data_dir: "/somewhere".into(),
        };
        assert_eq!(nf.token.len(), 64);
        let path = nf.write(dir.path()).unwrap();
        assert_eq!(NodeFile::read(dir.path()).unwrap(), nf);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
