//! File descriptors: the soft open-file limit is raised to the hard limit at start, and
//! the limits that consume descriptors (client connections, the store's open files) are
//! fitted under it, with room left for the HTTP server, sockets being accepted, and the
//! store's journals and the odd file.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for everything but AMQP connections and the store's table files:
/// the HTTP API's connections, the listeners, journals, the lock and config files,
/// sockets accepted and not yet refused. Under a low limit, a quarter of it.
pub const OTHER_DESCRIPTORS: u64 = 1024;

/// The fewest descriptors the store can work with (fjall's minimum cache).
pub const MIN_STORE_FILES: u64 = 10;

/// How the descriptors are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorPlan {
    /// The soft open-file limit in force.
    pub open_files: u64,
    /// Most AMQP client connections.
    pub max_connections: usize,
    /// Most table and blob files the store keeps open.
    pub store_files: usize,
}

/// Raises the soft open-file limit as far as the hard limit allows; returns the soft limit
/// in force afterwards (`None` if it cannot be read, or is unlimited).
pub fn raise_open_file_limit() -> Option<u64> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let wanted = maximum.or(current)?;
    if current != Some(wanted) {
        let raised = Rlimit {
            current: Some(wanted),
            maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, soft = ?current, hard = ?maximum, "cannot raise the open-file limit");
            return current;
        }
    }
    Some(wanted)
}

/// Shares `open_files` descriptors between connections (at most `wanted_connections`), the
/// store (at most `wanted_store_files`) and everything else ([`OTHER_DESCRIPTORS`], or a
/// quarter of a lower limit). The store gets at most a quarter of what is left, connections
/// the rest. `None` when the limit is too low to serve a single connection.
pub fn plan(
    open_files: Option<u64>,
    wanted_connections: usize,
    wanted_store_files: usize,
) -> Option<DescriptorPlan> {
    let Some(open_files) = open_files else {
        // No limit to fit under.
        return Some(DescriptorPlan {
            open_files: u64::MAX,
            max_connections: wanted_connections,
            store_files: wanted_store_files,
        });
    };
    let other = OTHER_DESCRIPTORS.min(open_files / 4);
    let left = open_files - other;
    let store_files = (left / 4)
        .max(MIN_STORE_FILES)
        .min(wanted_store_files as u64);
    let connections = left.checked_sub(store_files)?;
    let max_connections = connections.min(wanted_connections as u64);
    (max_connections > 0).then(|| DescriptorPlan {
        open_files,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        store_files: usize::try_from(store_files).unwrap_or(usize::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_under_the_limit_with_room_for_the_rest() {
        // A common hard limit: everything asked for fits.
        let p = plan(Some(1_048_576), 65_536, 900).unwrap();
        assert_eq!((p.max_connections, p.store_files), (65_536, 900));
        // A lower one: connections give way, the store keeps what it asked for.
        let p = plan(Some(20_000), 65_536, 900).unwrap();
        assert_eq!(p.store_files, 900);
        assert_eq!(p.max_connections, 20_000 - 1024 - 900);
        // Lower still: the store gets a quarter of what the rest leaves.
        let p = plan(Some(4096), 65_536, 900).unwrap();
        assert_eq!(p.store_files, (4096 - 1024) / 4);
        assert_eq!(p.max_connections as u64 + p.store_files as u64 + 1024, 4096);
        // A very low limit still serves a few connections.
        let p = plan(Some(64), 65_536, 900).unwrap();
        assert_eq!((p.max_connections, p.store_files), (36, 12));
        assert_eq!(plan(Some(13), 65_536, 900), None);
        assert_eq!(plan(Some(0), 65_536, 900), None);
        // Unlimited.
        let p = plan(None, 10, 900).unwrap();
        assert_eq!((p.max_connections, p.store_files), (10, 900));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let now = raise_open_file_limit();
        assert_eq!(getrlimit(Resource::Nofile).current, now);
        if let Some(hard) = hard {
            assert_eq!(now, Some(hard));
        }
    }
}
