//! Claiming a name in a rendezvous directory: the checked directory, the name's lock (held for
//! the service's life), the generation it records, and what is left at the socket's path.

use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ipc::rendezvous::{temp_name, Names, RendezvousDir, Trust};
use crate::os;

/// A name claimed for publishing: the opened, checked directory and the name's exclusive lock.
/// Whatever socket was left at the name's path has been found stale (a dead publisher's).
#[derive(Debug)]
pub(crate) struct Claim {
    names: Names,
    dir: RendezvousDir,
    group: Option<u32>,
    /// Holds the name's `flock` while the claim lives.
    lock: std::fs::File,
    previous_generation: u64,
}

impl Claim {
    /// Opens (creating) the rendezvous directory of `names` with the sharing `group`, takes the
    /// name's lock, and identifies whatever is at the socket's path: nothing, or a stale
    /// socket of this user that nothing answers on, may be replaced; anything else is
    /// [`Error::NameInUse`], saying what it is.
    pub fn take(names: &Names, group: Option<u32>) -> Result<Claim> {
        let trust = Trust {
            uids: Vec::new(),
            group,
        };
        let dir = RendezvousDir::create(&names.dir, &trust)?;
        let (lock, previous_generation) = take_lock(&dir, names)?;
        check_leftover(&dir, names)?;
        Ok(Claim {
            names: names.clone(),
            dir,
            group,
            lock,
            previous_generation,
        })
    }

    /// The name's files.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The directory, opened and checked.
    pub fn dir(&self) -> &RendezvousDir {
        &self.dir
    }

    /// The last generation published under the name (0: none), as the lock file records it.
    pub fn previous_generation(&self) -> u64 {
        self.previous_generation
    }

    /// Checks what sits at `entry`, a file this publisher is about to replace (such as the
    /// descriptor): see [`check_own_entry`].
    pub fn check_replaced_entry(&self, entry: &str) -> Result<()> {
        check_own_entry(&self.dir, &self.names, entry, Entry::Replaced)
    }

    /// Records `generation` in the lock file, for the next publisher of the name.
    pub fn record_generation(&self, generation: u64) -> Result<()> {
        let text = format!("generation {generation}\n");
        let write = || -> std::io::Result<()> {
            self.lock.set_len(0)?;
            self.lock.write_all_at(text.as_bytes(), 0)?;
            let _ = (&self.lock).rewind();
            Ok(())
        };
        write().map_err(|e| {
            Error::io(
                format!("recording the generation in {}", self.names.lock.display()),
                e,
            )
        })
    }

    /// Binds the name's socket: under a temporary name, with its group and mode (0660 with a
    /// group, else 0600) set through the directory, then renamed into place, so the published
    /// name never has looser permissions and replacing a stale socket is atomic. Returns the
    /// listener (non-blocking) and the socket's inode.
    pub fn bind(&self) -> Result<(UnixListener, u64)> {
        let dir = &self.dir;
        let sock_name = self.names.socket_name();
        let sock_mode = match self.group {
            Some(_) => 0o660,
            None => 0o600,
        };
        let tmp = temp_name(&sock_name)?;
        let listener = UnixListener::bind(dir.proc_path(&tmp))
            .map_err(|e| Error::io(format!("binding {}", dir.shown(&tmp).display()), e))?;
        let placed = (|| {
            if let Some(g) = self.group {
                os::chgrp_at(dir.fd(), &tmp, g).map_err(|e| {
                    Error::io(format!("chgrp {g} {}", dir.shown(&tmp).display()), e)
                })?;
            }
            os::chmod_at(dir.fd(), &tmp, sock_mode).map_err(|e| {
                Error::io(
                    format!("chmod {sock_mode:04o} {}", dir.shown(&tmp).display()),
                    e,
                )
            })?;
            dir.rename(&tmp, &sock_name)?;
            dir.stat_entry(&sock_name)
                .map_err(|e| Error::io(format!("stat {}", self.names.socket.display()), e))
        })();
        let socket_inode = match placed {
            Ok(st) => st.ino,
            Err(e) => {
                let _ = dir.unlink(&tmp);
                return Err(e);
            }
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        Ok((listener, socket_inode))
    }
}

fn in_use(names: &Names, detail: String) -> Error {
    Error::NameInUse {
        path: names.dir.join(&names.name),
        detail,
    }
}

/// Under the lock, what sits at the socket's path: nothing, or a dead publisher's socket of
/// this user, is fine (it is replaced atomically); anything else is named.
fn check_leftover(dir: &RendezvousDir, names: &Names) -> Result<()> {
    let sock_name = names.socket_name();
    let shown = names.socket.display();
    let st = match dir.stat_entry(&sock_name) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("stat {shown}"), e)),
    };
    if !st.is_socket() {
        return Err(in_use(
            names,
            format!(
                "{} of uid {} sits at {shown}, where the socket goes (not a socket, and no \
                 publisher holds the lock): someone planted it or left it there; remove it, and \
                 check who can write in {}",
                st.kind_name(),
                st.uid,
                names.dir.display()
            ),
        ));
    }
    if st.nlink != 1 {
        return Err(in_use(
            names,
            format!(
                "the socket at {shown} has {} hard links: someone linked it there (or from \
                 there) by another name; remove it, and check who can write in {}",
                st.nlink,
                names.dir.display()
            ),
        ));
    }
    if st.uid != os::effective_uid() {
        return Err(in_use(
            names,
            format!(
                "a socket of uid {} sits at {shown}, and no publisher of this user holds the \
                 lock: another user planted or left it; remove it (it cannot be a stale socket \
                 of ours), and check who can write in {}",
                st.uid,
                names.dir.display()
            ),
        ));
    }
    match os::connect_unix(&dir.proc_path(&sock_name), Duration::from_millis(100)) {
        // A dead publisher's socket: nothing listens. Replaced when the new one binds.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            Ok(())
        }
        Ok(stream) => {
            let who = os::peer_credentials(stream.as_fd())
                .map(|c| format!("uid {}, pid {}", c.uid, c.pid))
                .unwrap_or_else(|_| "unknown".into());
            Err(in_use(
                names,
                format!(
                    "a process ({who}) is listening on {shown} without holding {}: another \
                     program, or a publisher of an older cuda-ipc version; stop it or choose \
                     another name",
                    names.lock.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(in_use(
            names,
            format!(
                "a process is listening on {shown} (its backlog is full) without holding {}; \
                 stop it or choose another name",
                names.lock.display()
            ),
        )),
        Err(e) => Err(in_use(
            names,
            format!("the socket at {shown} cannot be checked ({e}); remove it if it is stale"),
        )),
    }
}

/// What may sit at a name a publisher writes (besides nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A file it replaces with `rename` (the descriptor): anything of this user but a
    /// directory or a file with other links.
    Replaced,
    /// A file it opens (the lock): a regular file of this user with no other link.
    Opened,
}

/// Checks what sits at `entry`, a name this publisher writes (see [`Entry`]); anything else —
/// another user's file, a directory, a file linked elsewhere, a link or FIFO where a file is
/// opened — is named ([`Error::NameInUse`]) instead of failing later with a bare I/O error.
pub(crate) fn check_own_entry(
    dir: &RendezvousDir,
    names: &Names,
    entry: &str,
    kind: Entry,
) -> Result<()> {
    let shown = dir.shown(entry);
    let st = match dir.stat_entry(entry) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("stat {}", shown.display()), e)),
        Ok(st) => st,
    };
    let ours = st.uid == os::effective_uid();
    let linked = !st.is_dir() && st.nlink > 1;
    let usable = match kind {
        Entry::Replaced => !st.is_dir(),
        Entry::Opened => st.is_regular(),
    };
    if ours && usable && !linked {
        return Ok(());
    }
    Err(in_use(
        names,
        format!(
            "{} of uid {}{} sits at {}, where this publisher writes: someone put it there; \
             remove it, and check who can write in {}",
            st.kind_name(),
            st.uid,
            if linked {
                format!(" with {} hard links", st.nlink)
            } else {
                String::new()
            },
            shown.display(),
            names.dir.display()
        ),
    ))
}

/// Opens `<name>.lock` and takes its exclusive lock; returns it with the generation it records.
fn take_lock(dir: &RendezvousDir, names: &Names) -> Result<(std::fs::File, u64)> {
    let lock_name = names.lock_name();
    check_own_entry(dir, names, &lock_name, Entry::Opened)?;
    let fd = os::open_at(
        Some(dir.fd()),
        Path::new(&lock_name),
        os::OpenAt::ReadWriteCreate(0o600),
    )
    .map_err(|e| {
        Error::io(
            format!("opening {}{}", names.lock.display(), os::fd_limit_hint(&e)),
            e,
        )
    })?;
    let st = os::fstat(fd.as_fd()).map_err(|e| Error::io("fstat of the lock file", e))?;
    if !st.is_regular() || st.uid != os::effective_uid() {
        return Err(Error::UnsafeDirectory {
            path: names.lock.clone(),
            reason: format!(
                "{} owned by uid {}, not a regular file of this user: remove it",
                st.kind_name(),
                st.uid
            ),
        });
    }
    if !os::try_lock_exclusive(fd.as_fd()).map_err(|e| Error::io("flock", e))? {
        return Err(in_use(
            names,
            format!(
                "a live publisher holds {} (an exporter or a channel of this name): choose \
                 another name or stop it first",
                names.lock.display()
            ),
        ));
    }
    let mut file = std::fs::File::from(fd);
    let mut text = String::new();
    let _ = (&mut file).take(64).read_to_string(&mut text);
    let previous = text
        .trim()
        .strip_prefix("generation ")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    Ok((file, previous))
}
