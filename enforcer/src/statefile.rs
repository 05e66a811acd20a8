//! Files the daemon keeps in its state directory (grants, rule-name history): private
//! (0600 in a 0700 directory) and replaced atomically and durably, so a crash or power
//! loss leaves the old content or the new, never a torn or empty file.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Creates `dir` (and its parents) if needed and makes it 0700: state files name sources
/// and reasons an operator may not want other local users to read.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))
}

/// Replaces `path` with `data`: written to a temporary file beside it (0600), fsynced,
/// renamed over `path`, then the directory fsynced so the rename itself is on disk.
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // An earlier temporary file may have been made with another mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("replacing {}", path.display()));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Moves a file that cannot be read aside as `NAME.corrupt-UNIXTIME` (kept for a look,
/// never read again) and returns its new path.
pub fn set_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{}", crate::clock::now_unix()));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("enforcer-statefile-{name}-{}", std::process::id()))
    }

    #[test]
    fn writes_are_private_whole_and_leave_no_temporary_file() {
        let dir = temp("write");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let f = dir.join("grants.json");
        // A file others could read is replaced by a private one.
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&f, b"[1]").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "[1]");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        write_atomic(&f, b"[1,2]").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "[1,2]");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["grants.json"]);
        // A failed write leaves the old content.
        let missing = dir.join("no-such-dir").join("x.json");
        assert!(write_atomic(&missing, b"x").is_err());
        let aside = set_aside(&f).unwrap();
        assert!(!f.exists());
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("grants.json.corrupt-"));
        assert_eq!(std::fs::read_to_string(&aside).unwrap(), "[1,2]");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn private_dir_creates_missing_parents() {
        let top = temp("mkdir");
        let dir = top.join("a").join("b");
        let _ = std::fs::remove_dir_all(&top);
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(&top);
    }
}
