//! Disk usage of a path for `sysmetrics`, the way `df` counts it: the
//! numbers come from statvfs(3) (std has no call for it, hence `libc`), the
//! arithmetic is a pure function tested on its own.

use std::io;
use std::path::Path;

use serde::Serialize;

use super::procfs::round_percent;

/// Usage of the file system holding one configured path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskUsage {
    /// The path as configured.
    pub path: String,
    pub total_bytes: u64,
    /// Bytes in use, by anybody.
    pub used_bytes: u64,
    /// Bytes an ordinary user can still write (blocks reserved for root are
    /// neither used nor available).
    pub available_bytes: u64,
    /// `used / (used + available)`, as `df` shows it: 100 means a user can
    /// write nothing more, even when root still can.
    pub used_percent: f64,
}

impl DiskUsage {
    /// From statvfs's numbers: fragment size, total, free and
    /// user-available blocks.
    pub fn from_blocks(path: &str, block_size: u64, blocks: u64, free: u64, available: u64) -> DiskUsage {
        let bytes = |count: u64| count.saturating_mul(block_size);
        let used = bytes(blocks.saturating_sub(free));
        let available = bytes(available);
        let used_percent = match used.saturating_add(available) {
            0 => 0.0,
            whole => round_percent(used as f64 * 100.0 / whole as f64),
        };
        DiskUsage {
            path: path.to_owned(),
            total_bytes: bytes(blocks),
            used_bytes: used,
            available_bytes: available,
            used_percent,
        }
    }
}

/// Reads the usage of the file system holding `path`. It can block as long
/// as that file system does: configure local paths, not network mounts.
#[cfg(unix)]
pub fn usage(path: &Path) -> io::Result<DiskUsage> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` points to room
    // for one `statvfs`; both outlive the call, which only writes `stat`.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled in the whole struct.
    let stat = unsafe { stat.assume_init() };
    // These fields are 32 bits wide on some targets and 64 on others, so the
    // conversion that is a no-op here is needed elsewhere.
    #[allow(clippy::useless_conversion)]
    let (block_size, blocks, free, available) = (
        u64::from(stat.f_frsize),
        u64::from(stat.f_blocks),
        u64::from(stat.f_bfree),
        u64::from(stat.f_bavail),
    );
    Ok(DiskUsage::from_blocks(
        &path.display().to_string(),
        block_size,
        blocks,
        free,
        available,
    ))
}

#[cfg(not(unix))]
pub fn usage(_path: &Path) -> io::Result<DiskUsage> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "disk usage is only read on Unix",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_like_df_with_reserved_blocks_neither_used_nor_available() {
        // 100 blocks of 4 KiB: 30 free, of which 20 are available to users.
        let usage = DiskUsage::from_blocks("/data", 4096, 100, 30, 20);
        assert_eq!(
            usage,
            DiskUsage {
                path: "/data".into(),
                total_bytes: 409_600,
                used_bytes: 286_720,
                available_bytes: 81_920,
                used_percent: 77.78,
            }
        );
        assert_eq!(DiskUsage::from_blocks("/", 4096, 0, 0, 0).used_percent, 0.0);
    }

    #[cfg(unix)]
    #[test]
    fn the_root_file_system_has_a_size_and_a_missing_path_is_an_error() {
        let root = usage(Path::new("/")).unwrap();
        assert!(root.total_bytes > 0, "{root:?}");
        assert!(root.used_bytes <= root.total_bytes, "{root:?}");
        let err = usage(Path::new("/no/such/path/here")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
