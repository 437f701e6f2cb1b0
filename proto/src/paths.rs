//! Where the daemons keep their state by default. The one place in this crate that looks at the
//! environment: both daemons (and nothing else) call it once, at start.

use std::path::PathBuf;

/// `/var/lib/NAME` for root; `$XDG_DATA_HOME/NAME` or `~/.local/share/NAME` for anyone else, so that
/// a daemon started by hand finds a writable place without flags.
pub fn default_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let user_base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    match user_base {
        Some(base) if !root => base.join(name),
        _ => PathBuf::from("/var/lib").join(name),
    }
}
