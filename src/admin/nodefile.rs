//! The node file: how `warren ctl` finds and authenticates to the local node with no
//! flags. `warren serve` writes `<data dir>/node.json` (mode 0600: only the broker's own
//! user can read it) with the HTTP API's address and a random token that the API accepts
//! as an administrator; `warren ctl` reads it from the same default data dir.

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
}

impl NodeFile {
    /// Path of the node file in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(NODE_FILE)
    }

    /// Writes the file, readable by its owner only, replacing any earlier one.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<PathBuf> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!("{NODE_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        let doc =
            json!({ "url": self.url, "token": self.token, "pid": self.pid, "node": self.node });
        f.write_all(doc.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Reads the node file of `data_dir`.
    pub fn read(data_dir: &Path) -> Result<NodeFile, String> {
        let path = Self::path(data_dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {e} (is `warren serve` running with this data dir?)",
                path.display()
            )
        })?;
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
        })
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
