//! The host's own files under `data_dir`: the SQLite database, the development session
//! issuer's key, the demo's credentials and the plugin cache (native code the host loads). They
//! are the owner's alone: directories 0700, files 0600, and a `data_dir` that others can write to
//! is refused, since whoever can write there can plant code or keys the host trusts.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Why a private directory or file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(
        "{path} can be written by others (mode {mode:o}): the host keeps keys and the plugin \
         cache (native code it loads) there; `chmod 700` it or choose another data_dir"
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes `dir` (and any missing parents) a directory only its owner can enter: created 0700, or
/// tightened to 0700 if it was readable by others.
///
/// # Errors
/// [`FilesError::WritableByOthers`] for a directory group or others can write to (it is not
/// changed: someone else may already have written there), or the filesystem's error.
pub fn private_dir(dir: &Path) -> Result<(), FilesError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let metadata = std::fs::metadata(dir).map_err(io(dir))?;
    if !metadata.is_dir() {
        return Err(FilesError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FilesError::WritableByOthers {
            path: dir.to_owned(),
            mode,
        });
    }
    if mode & 0o077 != 0 {
        tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"), "tightening to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` as a file only its owner can read (0600), replacing it.
///
/// # Errors
/// The filesystem's error.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    // An existing file keeps its mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Makes the files that exist of `paths` owner-only (0600): a SQLite database and its `-wal`
/// and `-shm` files, which SQLite creates with the database's own mode.
///
/// # Errors
/// The filesystem's error.
pub fn make_private<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<(), FilesError> {
    for path in paths {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(io(path))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn data_directories_and_key_files_are_the_owners_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data").join("nested");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let key = dir.join("a.key");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&key, b"secret").unwrap();
        assert_eq!(
            (mode(&key), std::fs::read(&key).unwrap()),
            (0o600, b"secret".to_vec())
        );
        // A directory others could read is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("x.db");
        std::fs::write(&db, "").unwrap();
        make_private([db.as_path(), dir.join("x.db-wal").as_path()]).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn a_data_dir_others_can_write_is_refused_and_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&dir).unwrap_err();
        assert!(
            matches!(err, FilesError::WritableByOthers { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 700"), "{err}");
        assert_eq!(mode(&dir), 0o777);
    }
}
