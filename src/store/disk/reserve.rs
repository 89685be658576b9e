//! The space reserve: a file of allocated (not sparse) blocks in the data directory,
//! deleted when a write fails for lack of space so that the writes the broker keeps making
//! while it refuses publishes (acks, paging) find room, and allocated again once the disk
//! has space.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The reserve's file name in the data directory.
pub const RESERVE_FILE: &str = "space-reserve";

/// Below this many free bytes, an I/O failure with no cause given is taken for lack of
/// space.
pub const NEARLY_FULL_BYTES: u64 = 1024 * 1024;

/// Zeros written per call where the file system cannot allocate without writing.
const ZERO_CHUNK_BYTES: usize = 64 * 1024;

/// A reserve of `bytes` in a directory.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// The file is allocated in full.
    held: bool,
}

impl Reserve {
    /// A reserve for `dir`, not yet allocated.
    pub fn new(dir: &Path, bytes: u64) -> Self {
        Reserve {
            path: dir.join(RESERVE_FILE),
            bytes,
            held: false,
        }
    }

    /// Whether the reserve is allocated.
    pub fn is_held(&self) -> bool {
        self.held || self.bytes == 0
    }

    /// Allocates the reserve if it is not yet; on failure nothing is left allocated.
    pub fn restore(&mut self) -> std::io::Result<()> {
        if self.is_held() {
            return Ok(());
        }
        match self.allocate() {
            Ok(()) => {
                self.held = true;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                Err(e)
            }
        }
    }

    /// Frees the reserve's space; returns whether there was any to free.
    pub fn release(&mut self) -> bool {
        let had = self.held;
        self.held = false;
        match std::fs::remove_file(&self.path) {
            Ok(()) => had,
            Err(_) => false,
        }
    }

    fn allocate(&self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.path)?;
        // A reserve left by a run with a larger setting shrinks to this one's.
        file.set_len(self.bytes)?;
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes) {
            Ok(()) => {}
            // Some file systems cannot allocate without writing: write zeros instead.
            Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(&file, self.bytes)?,
            Err(e) => return Err(e.into()),
        }
        file.sync_all()
    }
}

fn write_zeros(mut file: &File, bytes: u64) -> std::io::Result<()> {
    let zeros = [0u8; ZERO_CHUNK_BYTES];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(ZERO_CHUNK_BYTES as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_released_and_allocated_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut reserve = Reserve::new(dir.path(), 1024 * 1024);
        assert!(!reserve.is_held());
        reserve.restore().unwrap();
        let path = dir.path().join(RESERVE_FILE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1024 * 1024);
        // Allocated blocks, not a sparse file.
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= 1024 * 1024,
            "{} blocks",
            meta.blocks()
        );
        assert!(reserve.release());
        assert!(!path.exists());
        assert!(!reserve.release(), "nothing left to release");
        reserve.restore().unwrap();
        assert!(reserve.is_held() && path.exists());
    }

    #[test]
    fn a_zero_reserve_is_always_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut reserve = Reserve::new(dir.path(), 0);
        reserve.restore().unwrap();
        assert!(reserve.is_held());
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }
}
