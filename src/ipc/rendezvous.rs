//! The rendezvous directory: where an exporter publishes a name and consumers find it.
//!
//! For the name `frames` in `/shared/cuda-ipc`, an exporter writes
//! - `frames.desc`: the [descriptor](super::Descriptor), written atomically (temp file, fsync,
//!   rename), mode 0600;
//! - `frames.sock`: its Unix socket, mode 0600, where consumers take a lease and, with the fd
//!   transport, receive the memory.
//!
//! The directory is created 0700 if missing. A directory that is writable by group or others,
//! or owned by another user (root excepted), is refused: whoever can write there could plant a
//! descriptor or socket of their own.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::os;

/// The files of one published name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The directory.
    pub dir: PathBuf,
    /// The name.
    pub name: String,
    /// `<dir>/<name>.desc`.
    pub descriptor: PathBuf,
    /// `<dir>/<name>.sock`.
    pub socket: PathBuf,
}

/// Longest name accepted (a socket path must fit in 108 bytes).
pub const MAX_NAME_LEN: usize = 64;

impl Names {
    /// Splits `path` (`<dir>/<name>`) and checks the name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not
    /// starting with `.`.
    pub fn for_path(path: impl AsRef<Path>) -> Result<Names> {
        let path = path.as_ref();
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "{}: not a usable rendezvous name: {why}",
                path.display()
            ))
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad("no file name"))?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(bad("the name must have 1 to 64 characters"));
        }
        if name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(bad(
                "use letters, digits, '.', '_' and '-', not starting with '.'",
            ));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let socket = dir.join(format!("{name}.sock"));
        if socket.as_os_str().len() >= 108 {
            return Err(bad(
                "the socket path would be longer than 107 bytes; use a shorter directory",
            ));
        }
        Ok(Names {
            descriptor: dir.join(format!("{name}.desc")),
            socket,
            dir,
            name: name.to_string(),
        })
    }
}

/// Creates `dir` with mode 0700 if it is missing (parents as needed), then checks it.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::io(
                    format!("creating rendezvous directory {}", dir.display()),
                    e,
                )
            })?;
    }
    check_dir(dir)
}

/// Checks that `dir` is a directory owned by this user (or root) and not writable by group or
/// others.
pub fn check_dir(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir)
        .map_err(|e| Error::io(format!("rendezvous directory {}", dir.display()), e))?;
    let refuse = |reason: String| Error::UnsafeDirectory {
        path: dir.to_path_buf(),
        reason,
    };
    if !meta.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    let uid = os::effective_uid();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(refuse(format!(
            "owned by uid {}, not by this user (uid {uid}) or root: another user could replace \
             the descriptors in it. Use a directory of your own (it is created 0700 if missing)",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "mode {mode:04o} lets group or others write in it, so they could plant a descriptor \
             or socket: `chmod go-w` it, or use a subdirectory (created 0700 if missing)"
        )));
    }
    Ok(())
}

/// Writes `bytes` to `target` atomically: a temporary file in the same directory (mode 0600),
/// fsync, rename over `target`, fsync of the directory.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let suffix: [u8; 6] = os::random_bytes().map_err(|e| Error::io("getrandom", e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("desc"),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(ctx("creating"), e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io(ctx("writing"), e))?;
        f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
        fs::rename(&tmp, target).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), target.display()),
                e,
            )
        })?;
        if let Ok(d) = File::open(dir) {
            d.sync_all()
                .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads at most `limit` bytes of `path`; a longer file gives `limit + 1` bytes so the caller
/// can tell it is too long.
pub fn read_limited(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Waits until `path` exists, polling with a growing interval (1 ms to 50 ms), for at most
/// `timeout`.
pub fn wait_for(path: &Path, timeout: Duration, what: &str) -> Result<()> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(1);
    loop {
        match fs::symlink_metadata(path) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("checking {}", path.display()), e)),
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Error::Timeout {
                what: format!(
                    "{what} to appear at {} (is the producer running, and does it use the same \
                     directory and name?)",
                    path.display()
                ),
                waited: timeout,
            });
        }
        std::thread::sleep(interval.min(timeout - waited));
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}
