//! The data dir holds secrets: the CA key, the admin and join tokens, the database (job
//! environments, `HF_TOKEN`s among them, pass through its WAL) and job logs. Only the coordinator's
//! user may read anything in it: directories are 0700 and files 0600. They are created so here
//! ([`create_dir_all`], [`private_file`], [`write_private`]), whatever the process umask, and
//! [`prepare`] tightens at start what an older version or an operator left wider.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directories under the data dir, the data dir included.
pub const DIR_MODE: u32 = 0o700;
/// Files under the data dir.
pub const FILE_MODE: u32 = 0o600;
/// Tightened paths named one by one in the log; past that, only counted.
const NAMED: usize = 10;

#[derive(Debug, thiserror::Error)]
#[error("cannot make {path} private to the coordinator's user")]
pub struct DataDirError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError { path: path.to_owned(), source }
}

/// Creates the data dir (0700) if it is missing and tightens everything in it to 0700 / 0600
/// (group and other bits removed, the owner's kept). Returns how many paths it tightened. A path
/// it cannot change (owned by another user) is a warning; the data dir itself is an error.
pub fn prepare(dir: &Path) -> Result<usize, DataDirError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The parents are the operator's (`~/.local/share`): default permissions, not ours.
        fs::create_dir_all(parent).map_err(error(parent))?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(error(dir)(e)),
    }
    let mut tightened = Vec::new();
    if tighten(dir).map_err(error(dir))? {
        tightened.push(dir.to_owned());
    }
    walk(dir, &mut tightened);
    for path in tightened.iter().take(NAMED) {
        tracing::warn!(path = %path.display(), "was readable by other users; now private to the coordinator's user");
    }
    if tightened.len() > NAMED {
        tracing::warn!(count = tightened.len(), dir = %dir.display(), "paths in the data dir made private");
    }
    Ok(tightened.len())
}

/// Tightens everything below `dir`, depth first. Symbolic links are left alone (a chmod would
/// follow them out of the data dir).
fn walk(dir: &Path, tightened: &mut Vec<PathBuf>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %dir.display(), "cannot read the directory to check its permissions: {e}");
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match tighten(&path) {
            Ok(true) => tightened.push(path.clone()),
            Ok(false) => {}
            Err(e) => tracing::warn!(path = %path.display(), "cannot make it private: {e}"),
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, tightened);
        }
    }
}

/// Removes the group and other bits of a file or directory (and gives a directory's owner all
/// three); returns whether it changed anything.
fn tighten(path: &Path) -> std::io::Result<bool> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = if meta.is_dir() { (mode | DIR_MODE) & !0o077 } else { mode & !0o077 };
    if wanted == mode {
        return Ok(false);
    }
    fs::set_permissions(path, Permissions::from_mode(wanted))?;
    Ok(true)
}

/// `create_dir_all` for directories inside the data dir: each one it creates is 0700.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// Options that create a file 0600 (an existing file keeps its mode: [`prepare`] tightened it).
/// Say how to open it: `private_file().append(true).create(true).open(path)`.
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Writes `contents` to a file created 0600, replacing what it held.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    private_file().write(true).create(true).truncate(true).open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_fresh_data_dir_is_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/corral");
        assert_eq!(prepare(&dir).expect("prepare"), 0, "nothing to tighten in a new dir");
        assert_eq!(mode(&dir), 0o700);
        create_dir_all(&dir.join("logs/deeper")).expect("mkdir");
        assert_eq!(mode(&dir.join("logs")), 0o700);
        assert_eq!(mode(&dir.join("logs/deeper")), 0o700);
        write_private(&dir.join("secret"), b"s").expect("write");
        assert_eq!(mode(&dir.join("secret")), 0o600);
        private_file().append(true).create(true).open(dir.join("log")).expect("open");
        assert_eq!(mode(&dir.join("log")), 0o600);
    }

    #[test]
    fn wide_permissions_are_tightened_and_links_left_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("corral");
        let outside = tmp.path().join("outside");
        fs::write(&outside, "not ours").expect("write");
        fs::set_permissions(&outside, Permissions::from_mode(0o644)).expect("chmod");
        fs::create_dir_all(dir.join("logs")).expect("mkdir");
        fs::write(dir.join("corral.db"), "").expect("write");
        fs::write(dir.join("logs/j1.log"), "hello").expect("write");
        fs::write(dir.join("ca.key"), "").expect("write");
        for (path, m) in
            [(".", 0o755), ("logs", 0o775), ("corral.db", 0o644), ("logs/j1.log", 0o666), ("ca.key", 0o400)]
        {
            fs::set_permissions(dir.join(path), Permissions::from_mode(m)).expect("chmod");
        }
        std::os::unix::fs::symlink(&outside, dir.join("link")).expect("symlink");

        assert_eq!(prepare(&dir).expect("prepare"), 4, "the dir, logs/, corral.db and j1.log");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("logs")), 0o700);
        assert_eq!(mode(&dir.join("corral.db")), 0o600);
        assert_eq!(mode(&dir.join("logs/j1.log")), 0o600);
        assert_eq!(mode(&dir.join("ca.key")), 0o400, "stricter than 0600 stays");
        assert_eq!(mode(&outside), 0o644, "a link's target is not the data dir's");
        assert_eq!(prepare(&dir).expect("prepare again"), 0, "idempotent");
    }
}
