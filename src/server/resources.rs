//! Watching memory and disk for resource alarms (Linux `/proc` and `statvfs`).

use std::path::Path;

use crate::broker::ResourceReading;

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

/// Memory and disk as they are now, for [`crate::broker::Broker::handle_resources`].
pub fn read(data_dir: &Path) -> ResourceReading {
    ResourceReading {
        memory_used_bytes: resident_bytes(),
        memory_total_bytes: total_memory_bytes(),
        disk_free_bytes: free_disk_bytes(data_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::AlarmLimits;

    #[test]
    fn figures_are_readable_here() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(total_memory_bytes().is_some_and(|b| b > 0));
        assert!(free_disk_bytes(Path::new("/")).is_some());
        let reading = read(Path::new("/"));
        let never = AlarmLimits {
            memory_high_watermark: 1e9,
            disk_free_limit_bytes: 0,
        };
        assert_eq!(never.alarms(&reading), (false, false));
        let always = AlarmLimits {
            memory_high_watermark: 0.0,
            disk_free_limit_bytes: u64::MAX,
        };
        assert_eq!(always.alarms(&reading), (true, true));
    }
}
