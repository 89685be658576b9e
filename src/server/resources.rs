//! Watching memory and disk for resource alarms (Linux `/proc` and `statvfs`).

use std::path::Path;

/// Limits that raise alarms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmLimits {
    /// Memory alarm when resident memory exceeds this fraction of physical memory.
    pub memory_high_watermark: f64,
    /// Disk alarm when free space on the data directory's file system falls below this.
    pub disk_free_limit_bytes: u64,
}

impl Default for AlarmLimits {
    /// RabbitMQ's defaults: 40% of memory, 50 MB of disk.
    fn default() -> Self {
        AlarmLimits {
            memory_high_watermark: 0.4,
            disk_free_limit_bytes: 50_000_000,
        }
    }
}

/// This process's resident memory in bytes, if it can be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Physical memory in bytes, if it can be read.
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether each alarm should be on now: (memory, disk). Unreadable figures raise nothing.
pub fn check(limits: &AlarmLimits, data_dir: &Path) -> (bool, bool) {
    let memory = match (resident_bytes(), total_memory_bytes()) {
        (Some(rss), Some(total)) => rss as f64 > limits.memory_high_watermark * total as f64,
        _ => false,
    };
    let disk = free_disk_bytes(data_dir).is_some_and(|free| free < limits.disk_free_limit_bytes);
    (memory, disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_readable_here() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(total_memory_bytes().is_some_and(|b| b > 0));
        assert!(free_disk_bytes(Path::new("/")).is_some());
        let never = AlarmLimits {
            memory_high_watermark: 1e9,
            disk_free_limit_bytes: 0,
        };
        assert_eq!(check(&never, Path::new("/")), (false, false));
        let always = AlarmLimits {
            memory_high_watermark: 0.0,
            disk_free_limit_bytes: u64::MAX,
        };
        assert_eq!(check(&always, Path::new("/")), (true, true));
    }
}
