//! The rendezvous directory: where an exporter publishes a name and consumers find it.
//!
//! For the name `frames` in `/shared/cuda-ipc`, an exporter keeps
//! - `frames.lock`: held with an exclusive `flock` for the exporter's lifetime (a second
//!   exporter of the name is refused while it lives), and the last generation published under
//!   the name (so generations keep increasing across restarts). It is never removed;
//! - `frames.desc`: the [descriptor](super::Descriptor), written atomically (temporary file,
//!   `fchmod`, fsync, rename);
//! - `frames.sock`: its Unix socket, where consumers take a lease and, with the fd transport,
//!   receive the memory. It is bound under a temporary name, `chmod`ed through the directory
//!   and renamed into place, so it is never reachable with looser permissions and a stale
//!   socket of a dead exporter is replaced atomically (a live one is never unlinked).
//!
//! | | private (default) | group sharing ([`ExportOptions::group`](super::ExportOptions::group)) |
//! |---|---|---|
//! | directory (if created) | 0700 | 3770 (setgid, sticky), group-owned by the group |
//! | `.desc` | 0600 | 0640 |
//! | `.sock` | 0600 | 0660 |
//! | `.lock` | 0600 | 0600 |
//!
//! Exporters and importers make these checks themselves; [`prepare_dir`] and [`check_dir`] let
//! a deployment check a directory up front (at start-up, say, with a clear error instead of a
//! failed export later):
//!
//! ```no_run
//! use cuda_ipc::ipc::rendezvous;
//!
//! // The producer's side: create it 0700 if it is missing, then check it and its ancestors.
//! rendezvous::prepare_dir("/shared/cuda-ipc".as_ref())?;
//! // Any side: check an existing directory as an importer would.
//! rendezvous::check_dir("/shared/cuda-ipc".as_ref())?;
//! # Ok::<(), cuda_ipc::Error>(())
//! ```
//!
//! # The checks
//! Both sides open the directory once (`O_DIRECTORY | O_NOFOLLOW`) after resolving its path,
//! walking every ancestor with `O_NOFOLLOW` opens, and do everything else through that
//! descriptor (`openat`, `renameat`, and the socket through `/proc/self/fd/<fd>/<name>.sock`),
//! so swapping a path component afterwards changes nothing. With `fstat`:
//! - every ancestor must be owned by root, this user or a trusted exporter uid, and must not be
//!   writable by group or others unless it has the sticky bit (like `/tmp`): whoever can rename
//!   entries there could swap the directory for another — the sharing group's members too;
//! - the directory must be owned by root, this user or (consumer) a trusted exporter uid, not
//!   writable by others, and group-writable only when it is owned by the sharing group the
//!   caller names, setgid and sticky (3770): without the sticky bit a member could rename one
//!   exporter's socket and descriptor over another name;
//! - the descriptor must be a regular file (opened `O_NONBLOCK`: a FIFO cannot hang anyone)
//!   of at most [`MAX_DESCRIPTOR_LEN`](super::MAX_DESCRIPTOR_LEN) bytes, owned by a trusted uid, not
//!   writable by group or others.
//!
//! The consumer then checks who answers on the socket: `SO_PEERCRED` gives the uid of the
//! process that listens, which must equal the descriptor's `exporter_uid` and be a uid the
//! consumer trusts: its own, root, or one named in
//! [`ImportOptions::trusted_exporters`](super::ImportOptions::trusted_exporters). The exporter
//! in turn checks each consumer's `SO_PEERCRED` uid (and groups) against
//! [`AllowedUsers`](super::AllowedUsers).
//!
//! # Threat model
//! What holds depends on who can write where; the checks above refuse every setup where less
//! would hold.
//!
//! - **Private** (the default: directory 0700, files 0600, one uid): no other uid can reach the
//!   files or the socket. Nothing to defend against but processes of the same uid (below).
//! - **Group** (pods of one claim as different uids sharing an `fsGroup`; directory 3770 —
//!   owned by the group, setgid, sticky — descriptor 0640, socket 0660): a member can read the
//!   descriptor and connect, and is served only if the exporter allows its uid or groups
//!   (`SO_PEERCRED`, `SO_PEERGROUPS`). The sticky bit keeps it from renaming or replacing the
//!   exporter's files; what it plants under a free name is its own (an untrusted owner, an
//!   untrusted `SO_PEERCRED`) and refused. Even where it could rename, the substitution of
//!   another buffer of the same exporter fails twice: the hello names the name asked for, and
//!   a socket renamed into another name refuses its peers ([`Error::Refused`]); the hello
//!   names the buffer the descriptor file names (id and generation), and an exporter of
//!   another one says so without granting a lease ([`Error::OfferMismatch`]; the offer is
//!   checked against the file too). A directory without the sticky bit, or any group- or
//!   other-writable ancestor without it, is refused outright ([`Error::UnsafeDirectory`]).
//!   With the legacy transport the descriptor holds a bearer handle: every member who can read
//!   it can map the memory (use the fd transport across uids).
//! - **Cross-pod** (each pod its own PID namespace, a shared volume): the same as group or
//!   private, whichever the volume's modes give; the fd transport needs nothing else (no
//!   `hostPID`), and peers in PID namespaces this process cannot see count against the fair
//!   shares per uid only (the exporter's own uid included).
//!
//! What another uid can still do: deny service where it can write (plant a file under a name
//! before the exporter starts — the exporter then says what is in the way,
//! [`Error::NameInUse`]), and, as an allowed consumer, hold connections up to its share: at
//! most [`max_per_process`](super::ExportOptions::max_per_process) that one process opened
//! and [`max_per_uid`](super::ExportOptions::max_per_uid) per uid (half of
//! [`max_connections`](super::ExportOptions::max_connections) by default; `k` uids together
//! up to `k` shares, less the last eighth of the places, which is kept for peers that hold
//! none). When the exporter is full, a newcomer takes the place of a handshake that has not
//! completed (a silent or trickling connection) of whoever holds the most. A refused peer
//! learns only that it is not allowed. The checksum in the descriptor detects corruption, not
//! forgery: authenticity comes from these checks.
//!
//! Links: only symbolic links owned by a trusted uid are followed on the way to the directory
//! (another user's link could point a name at another exporter's directory), and a descriptor
//! or socket with more than one hard link is refused. The checks rely on
//! `fs.protected_hardlinks = 1` (the distributions' default) for availability only: where it
//! is 0, a member can link the exporter's files elsewhere and so make them refused, never
//! substituted.
//!
//! A process of the **same uid** is not a boundary: it can ptrace either side, read the
//! memory, replace the files or hold connections up to the service's limits (through children
//! that pass it their connections, or from a PID namespace the exporter cannot see, whose peers
//! of one uid share one uid share). The exporter still survives its protocol abuse (floods,
//! garbage, silent or trickling connections), and a full exporter answers "busy" instead of
//! resetting.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::os::{self, OpenAt, Stat};

/// The files of one published name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// The directory.
    pub dir: PathBuf,
    /// The name.
    pub name: String,
    /// `<dir>/<name>.desc`.
    pub descriptor: PathBuf,
    /// `<dir>/<name>.sock`.
    pub socket: PathBuf,
    /// `<dir>/<name>.lock`.
    pub lock: PathBuf,
}

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

impl Names {
    /// Splits `path` (`<dir>/<name>`) and checks the name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not
    /// starting with `.`. The directory's path may be of any length: the socket is reached
    /// through the opened directory.
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
        Ok(Names {
            descriptor: dir.join(format!("{name}.desc")),
            socket: dir.join(format!("{name}.sock")),
            lock: dir.join(format!("{name}.lock")),
            dir,
            name: name.to_string(),
        })
    }

    /// `<name>.desc`, relative to the directory.
    pub fn descriptor_name(&self) -> String {
        format!("{}.desc", self.name)
    }

    /// `<name>.sock`, relative to the directory.
    pub fn socket_name(&self) -> String {
        format!("{}.sock", self.name)
    }

    /// `<name>.lock`, relative to the directory.
    pub fn lock_name(&self) -> String {
        format!("{}.lock", self.name)
    }
}

/// Whom a side of the rendezvous trusts with the directory and its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Trust {
    /// Uids trusted besides this process's own and root (a consumer's trusted exporters).
    pub uids: Vec<u32>,
    /// The sharing group: a group-writable directory is accepted when it is setgid and owned
    /// by this group.
    pub group: Option<u32>,
}

impl Trust {
    /// Whether files and sockets of `uid` are trusted: this user, root, or one of `uids`.
    pub fn trusts_uid(&self, uid: u32) -> bool {
        uid == 0 || uid == os::effective_uid() || self.uids.contains(&uid)
    }

    fn owners(&self) -> String {
        let mut list = format!("this user (uid {}) or root", os::effective_uid());
        for u in &self.uids {
            list.push_str(&format!(", uid {u}"));
        }
        list
    }
}

/// An opened, checked rendezvous directory. Everything in it is reached through this
/// descriptor, never by path again.
#[derive(Debug)]
pub(crate) struct RendezvousDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn unsafe_dir(path: &Path, reason: String) -> Error {
    Error::UnsafeDirectory {
        path: path.to_path_buf(),
        reason,
    }
}

/// Whether `stat` (of an ancestor of the rendezvous directory, shown as `path`) lets someone
/// untrusted rename entries in it.
fn check_ancestor(path: &Path, st: &Stat, trust: &Trust) -> Result<()> {
    if !trust.trusts_uid(st.uid) {
        return Err(unsafe_dir(
            path,
            format!(
                "this ancestor of the rendezvous directory is owned by uid {}, not by {}: its \
                 owner could swap the directory. Use a directory under one owned by you or root",
                st.uid,
                trust.owners()
            ),
        ));
    }
    let mode = st.perm();
    let sticky = mode & 0o1000 != 0;
    let others_write = mode & 0o002 != 0;
    // Any group, the sharing group included: a member could rename the rendezvous directory
    // away and put another (another exporter's, of the same trusted uid) in its place.
    let group_write = mode & 0o020 != 0;
    if !sticky && (others_write || group_write) {
        let who = if others_write {
            "others".to_string()
        } else {
            format!("its group ({})", st.gid)
        };
        return Err(unsafe_dir(
            path,
            format!(
                "this ancestor of the rendezvous directory has mode {mode:04o}: it is writable \
                 by {who} without the sticky bit, so they could swap the rendezvous directory \
                 under it for another (even another exporter's). `chmod +t` or `chmod go-w` \
                 it, or use a directory elsewhere (in Kubernetes: see deploy/k8s, which \
                 prepares the volume)"
            ),
        ));
    }
    Ok(())
}

/// Checks the rendezvous directory itself.
fn check_leaf(path: &Path, st: &Stat, trust: &Trust) -> Result<()> {
    if !st.is_dir() {
        return Err(unsafe_dir(
            path,
            format!("{} is not a directory", st.kind_name()),
        ));
    }
    if !trust.trusts_uid(st.uid) {
        return Err(unsafe_dir(
            path,
            format!(
                "owned by uid {}, not by {}: another user could replace the descriptors in \
                 it. Use a directory of your own (it is created 0700 if missing){}",
                st.uid,
                trust.owners(),
                if trust.uids.is_empty() {
                    ", or, to import from another user, name its uid in \
                     ImportOptions::trusted_exporters"
                } else {
                    ""
                }
            ),
        ));
    }
    let mode = st.perm();
    if mode & 0o002 != 0 {
        return Err(unsafe_dir(
            path,
            format!(
                "mode {mode:04o} lets others write in it, so they could plant a descriptor or \
                 socket: `chmod go-w` it, or use a subdirectory (created 0700 if missing)"
            ),
        ));
    }
    if mode & 0o020 != 0 {
        let setgid = mode & 0o2000 != 0;
        let sticky = mode & 0o1000 != 0;
        match trust.group {
            Some(g) if g == st.gid && setgid && sticky => {}
            Some(g) => {
                return Err(unsafe_dir(
                    path,
                    format!(
                        "mode {mode:04o}, group {}: a group-writable rendezvous directory must be \
                         owned by the sharing group {g}, setgid (so the files are the group's) \
                         and sticky (so no member can rename or replace another's socket and \
                         descriptor): `chgrp {g}` and `chmod 3770` it",
                        st.gid
                    ),
                ))
            }
            None => {
                return Err(unsafe_dir(
                    path,
                    format!(
                        "mode {mode:04o} lets group {} write in it, so its members could plant a \
                         descriptor or socket: `chmod go-w` it, or, to share through that \
                         group, set the group option (ExportOptions::group, \
                         ImportOptions::group) and `chmod 3770` it",
                        st.gid
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn io_at(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(
        format!("{what} {}{}", path.display(), os::fd_limit_hint(&e)),
        e,
    )
}

/// Most symbolic links followed while resolving one path (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// `path` made absolute with every symbolic link resolved, like `canonicalize`, except that only
/// links owned by a uid `trust` trusts (root, this user, a trusted exporter) are followed: a
/// link another user made — in a directory it may write in, sticky or not — could point the
/// name at another exporter's directory, where every later check would pass. Such a link is
/// an [`Error::UnsafeDirectory`]; a missing component is an [`Error::Io`] of kind `NotFound`.
fn resolve(path: &Path, trust: &Trust) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| io_at("the current directory for", path, e))?
            .join(path)
    };
    let mut pending: std::collections::VecDeque<std::ffi::OsString> =
        std::collections::VecDeque::new();
    fn push_front(pending: &mut std::collections::VecDeque<std::ffi::OsString>, p: &Path) {
        let parts: Vec<std::ffi::OsString> = p
            .components()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        for part in parts.into_iter().rev() {
            pending.push_front(part);
        }
    }
    push_front(&mut pending, &absolute);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part.to_str() {
            Some("/") => resolved = PathBuf::from("/"),
            Some(".") => {}
            Some("..") => {
                resolved.pop();
            }
            _ => {
                let candidate = resolved.join(&part);
                let meta = std::fs::symlink_metadata(&candidate)
                    .map_err(|e| io_at("rendezvous directory", &candidate, e))?;
                if !meta.file_type().is_symlink() {
                    resolved = candidate;
                    continue;
                }
                if !trust.trusts_uid(meta.uid()) {
                    return Err(unsafe_dir(
                        &candidate,
                        format!(
                            "a symbolic link owned by uid {}, not by {}: another user's link \
                             could point this name at another exporter's directory, so it is \
                             not followed. Remove it, or use the real path",
                            meta.uid(),
                            trust.owners()
                        ),
                    ));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(unsafe_dir(
                        path,
                        format!("more than {MAX_LINKS} symbolic links in its path"),
                    ));
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(|e| io_at("reading the link", &candidate, e))?;
                push_front(&mut pending, &target);
            }
        }
    }
    Ok(resolved)
}

impl RendezvousDir {
    /// Opens and checks the directory at `path` (see the [module docs](self)): its path is
    /// resolved, every ancestor is opened with `O_NOFOLLOW` and checked, then the directory
    /// itself. A missing directory is an [`Error::Io`] of kind `NotFound`.
    pub fn open(path: &Path, trust: &Trust) -> Result<RendezvousDir> {
        let real = resolve(path, trust)?;
        let mut parts: Vec<&OsStr> = Vec::new();
        for c in real.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(p) => parts.push(p),
                _ => {
                    return Err(unsafe_dir(
                        path,
                        "its resolved path is not a plain absolute path".into(),
                    ))
                }
            }
        }
        let mut current = os::open_at(None, Path::new("/"), OpenAt::DirPath)
            .map_err(|e| io_at("opening", Path::new("/"), e))?;
        let mut shown = PathBuf::from("/");
        let Some((last, ancestors)) = parts.split_last() else {
            return Err(unsafe_dir(
                path,
                "the root directory cannot be a rendezvous".into(),
            ));
        };
        let check_here = |fd: BorrowedFd<'_>, shown: &Path| -> Result<()> {
            let st = os::fstat(fd).map_err(|e| io_at("fstat", shown, e))?;
            check_ancestor(shown, &st, trust)
        };
        check_here(current.as_fd(), &shown)?;
        for part in ancestors {
            shown.push(part);
            current = os::open_at(Some(current.as_fd()), Path::new(part), OpenAt::DirPath)
                .map_err(|e| io_at("opening (without following links)", &shown, e))?;
            check_here(current.as_fd(), &shown)?;
        }
        shown.push(last);
        let fd = os::open_at(Some(current.as_fd()), Path::new(last), OpenAt::Dir)
            .map_err(|e| io_at("opening rendezvous directory", &shown, e))?;
        let stat = os::fstat(fd.as_fd()).map_err(|e| io_at("fstat", &shown, e))?;
        check_leaf(path, &stat, trust)?;
        Ok(RendezvousDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Creates the directory if it is missing (parents 0700 as needed; the directory itself
    /// 0700, or 3770 group-owned by `trust.group`), then [opens](Self::open) it.
    pub fn create(path: &Path, trust: &Trust) -> Result<RendezvousDir> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    // Never create through a link another user made (it could point the new
                    // directory into another exporter's place): the parent's existing part is
                    // resolved as `open` resolves it.
                    match resolve(parent, trust) {
                        Ok(_) => {}
                        Err(Error::Io { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| io_at("creating", parent, e))?;
                }
                match os::mkdir_at(None, path, 0o700) {
                    Ok(()) => {
                        if let Some(g) = trust.group {
                            let fd = os::open_at(None, path, OpenAt::Dir)
                                .map_err(|e| io_at("opening", path, e))?;
                            os::fchgrp(fd.as_fd(), g).map_err(|e| {
                                io_at(
                                    &format!("giving group {g} (is this process a member?) to"),
                                    path,
                                    e,
                                )
                            })?;
                            os::fchmod(fd.as_fd(), 0o3770)
                                .map_err(|e| io_at("chmod 3770", path, e))?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_at("creating rendezvous directory", path, e)),
                }
            }
            Err(e) => return Err(io_at("rendezvous directory", path, e)),
        }
        Self::open(path, trust)
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `/proc/self/fd/<fd>/<name>`: a path to an entry that resolves through the opened
    /// directory (short enough for a socket address whatever the directory's path).
    pub fn proc_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// The entry `name` shown with the directory's path (for messages).
    pub fn shown(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` for reading, which must be a regular file owned by a uid in `trust` and
    /// not writable by group or others; reads at most `limit` bytes (`limit + 1` when it is
    /// longer, so the caller can tell). A FIFO or device is refused without blocking.
    pub fn read_trusted(&self, name: &str, limit: usize, trust: &Trust) -> Result<Vec<u8>> {
        let shown = self.shown(name);
        let fd = os::open_at(Some(self.fd()), Path::new(name), OpenAt::Read)
            .map_err(|e| io_at("reading", &shown, e))?;
        let st = os::fstat(fd.as_fd()).map_err(|e| io_at("fstat", &shown, e))?;
        if !st.is_regular() {
            return Err(unsafe_dir(
                &shown,
                format!(
                    "{} where the descriptor should be, not a regular file: remove it",
                    st.kind_name()
                ),
            ));
        }
        if !trust.trusts_uid(st.uid) {
            return Err(unsafe_dir(
                &shown,
                format!(
                    "owned by uid {}, not by {}: not reading a descriptor another user wrote",
                    st.uid,
                    trust.owners()
                ),
            ));
        }
        if st.perm() & 0o022 != 0 {
            return Err(unsafe_dir(
                &shown,
                format!(
                    "mode {:04o} lets others change it: not trusting it",
                    st.perm()
                ),
            ));
        }
        if st.nlink == 0 {
            // Removed since it was opened (an exporter withdrawing it): as if not there yet.
            return Err(io_at(
                "reading",
                &shown,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        if st.nlink > 1 {
            return Err(unsafe_dir(
                &shown,
                format!(
                    "it has {} hard links: another name points at the same file, and a link \
                     someone made elsewhere could stand in for another exporter's descriptor; \
                     not trusting it (keep fs.protected_hardlinks = 1, the distributions' \
                     default, so that no one can link files they do not own)",
                    st.nlink
                ),
            ));
        }
        read_fd_limited(fd, limit).map_err(|e| io_at("reading", &shown, e))
    }

    /// [`read_trusted`](Self::read_trusted) with the default trust (this user and root).
    pub fn read_file(&self, name: &str, limit: usize) -> Result<Vec<u8>> {
        self.read_trusted(name, limit, &Trust::default())
    }

    /// Writes `bytes` to `name` atomically with exactly `mode` (and group `group`): a
    /// temporary file, `fchmod`, fsync, `renameat` over `name`, fsync of the directory.
    pub fn write_atomic(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        group: Option<u32>,
    ) -> Result<()> {
        let tmp = temp_name(name)?;
        let shown = self.shown(&tmp);
        let result = (|| {
            let fd = os::open_at(Some(self.fd()), Path::new(&tmp), OpenAt::CreateNew(0o600))
                .map_err(|e| io_at("creating", &shown, e))?;
            if let Some(g) = group {
                os::fchgrp(fd.as_fd(), g).map_err(|e| io_at("chgrp", &shown, e))?;
            }
            os::fchmod(fd.as_fd(), mode).map_err(|e| io_at("chmod", &shown, e))?;
            let mut f = File::from(fd);
            f.write_all(bytes)
                .map_err(|e| io_at("writing", &shown, e))?;
            f.sync_all().map_err(|e| io_at("syncing", &shown, e))?;
            self.rename(&tmp, name)?;
            File::from(
                self.fd
                    .try_clone()
                    .map_err(|e| io_at("dup of", &self.path, e))?,
            )
            .sync_all()
            .map_err(|e| io_at("syncing", &self.path, e))
        })();
        if result.is_err() {
            let _ = os::unlink_at(self.fd(), &tmp);
        }
        result
    }

    /// `renameat` within the directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        os::rename_at(self.fd(), from, to).map_err(|e| {
            Error::io(
                format!(
                    "renaming {} to {}",
                    self.shown(from).display(),
                    self.shown(to).display()
                ),
                e,
            )
        })
    }

    /// `fstatat` of an entry, without following a link.
    pub fn stat_entry(&self, name: &str) -> std::io::Result<Stat> {
        os::stat_at(self.fd(), name)
    }

    /// `unlinkat` of an entry.
    pub fn unlink(&self, name: &str) -> std::io::Result<()> {
        os::unlink_at(self.fd(), name)
    }
}

/// `.<name>.tmp-<12 hex digits>`: a fresh name for a temporary entry.
pub(crate) fn temp_name(name: &str) -> Result<String> {
    let suffix: [u8; 6] = os::random_bytes().map_err(|e| Error::io("getrandom", e))?;
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(".{name}.tmp-{hex}"))
}

fn read_fd_limited(fd: OwnedFd, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::from(fd)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Creates `dir` with mode 0700 if it is missing (parents as needed), then checks it.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    RendezvousDir::create(dir, &Trust::default()).map(drop)
}

/// Checks that `dir` and its ancestors are safe (see the [module docs](self)) for this user.
pub fn check_dir(dir: &Path) -> Result<()> {
    RendezvousDir::open(dir, &Trust::default()).map(drop)
}
