//! Writing key and certificate files safely: exact permissions from creation, no clobbering.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::IdentityError;

/// Permissions of private key files: owner read/write only.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Permissions of certificate files: public material.
pub(crate) const CERT_MODE: u32 = 0o644;

/// Reads a whole text file, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|e| IdentityError::io("read", path, e))
}

/// Writes `contents` to `path`, created with `mode` (unix) so it is never readable by others
/// even for an instant.
///
/// Without `overwrite`, an existing file is an [`IdentityError::Exists`] (checked atomically by
/// `O_EXCL`). With `overwrite`, the data goes to a fresh temporary file in the same directory
/// that is then renamed over `path`, so the old file's permissions never leak onto new contents
/// and a crash never leaves a half-written key.
pub(crate) fn write_new(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), IdentityError> {
    if !overwrite {
        let mut file = open_exclusive(path, mode).map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => IdentityError::Exists {
                path: path.to_owned(),
            },
            _ => IdentityError::io("create", path, e),
        })?;
        return file
            .write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|e| IdentityError::io("write", path, e));
    }
    let tmp = temp_path(path);
    let written = open_exclusive(&tmp, mode)
        .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // Best effort: do not leave a stray temporary file behind.
        let _ = fs::remove_file(&tmp);
        return Err(IdentityError::io("write", path, e));
    }
    Ok(())
}

fn open_exclusive(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    path.with_file_name(format!(".{name}.{}.{nonce:016x}.tmp", std::process::id()))
}

/// Refuses a private key file that group or others may read or write (unix), as ssh does.
pub(crate) fn check_private(path: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|e| IdentityError::io("read", path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyExposed {
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
