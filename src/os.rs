//! The operating-system side of the FFI: the few libc calls the IPC layer needs, each behind a
//! safe function. Like [`crate::result`] for the driver, this is the only module that calls libc.
//!
//! File descriptors follow `std::os::fd`'s ownership types: functions take [`BorrowedFd`] and
//! return [`OwnedFd`], which closes on drop, so no received descriptor can leak.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Credentials of the process on the other end of a Unix socket (`SO_PEERCRED`), as the kernel
/// recorded them when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// PID in this process's PID namespace; 0 when the peer is in a namespace this one cannot
    /// see (e.g. a sibling pod).
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// `SO_PEERCRED` of a connected Unix socket.
pub fn peer_credentials(sock: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the buffer's size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// The address the peer of a connected Unix socket bound (`getpeername`): for a server, the
/// path it bound its listening socket to, as it spelled it. cuda-ipc exporters bind a random
/// temporary name before renaming it into place, so this names one exporter instance.
pub fn peer_socket_name(sock: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    // SAFETY: zeroed sockaddr_un is a valid, empty address.
    let mut addr: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes and `len` holds the buffer's size.
    let rc = unsafe {
        libc::getpeername(
            sock.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let n = (len as usize)
        .saturating_sub(offset)
        .min(addr.sun_path.len());
    Ok(addr.sun_path[..n]
        .iter()
        .map(|&c| c as u8)
        .take_while(|&c| c != 0)
        .collect())
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// `N` random bytes from the kernel (`getrandom`).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of `out`.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(out)
}

/// Most descriptors one message may carry; anything more is refused by the receiver.
pub const MAX_FDS_PER_MESSAGE: usize = 4;

/// Sends `data` with `fds` attached (`SCM_RIGHTS`), without SIGPIPE. Returns the bytes sent,
/// which may be fewer than `data.len()` (the fds go with the first byte).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Control buffer aligned for cmsghdr, large enough for MAX_FDS_PER_MESSAGE fds.
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = (fds.len() * size_of::<RawFd>()) as u32;
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        debug_assert!(space <= size_of::<[u64; 8]>());
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points to `space` writable, aligned bytes, so the first header
        // and its data (CMSG_LEN(payload) <= space) fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
            let dst = libc::CMSG_DATA(cmsg) as *mut RawFd;
            for (i, fd) in fds.iter().enumerate() {
                dst.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points to live iovec and control buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What one `recvmsg` returned.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0 means the peer closed the connection).
    pub bytes: usize,
    /// Descriptors that came with them, owned: dropping them closes them.
    pub fds: Vec<OwnedFd>,
    /// The kernel had more control data than fit (`MSG_CTRUNC`): descriptors were lost.
    pub control_truncated: bool,
}

/// One `recvmsg` into `buf`, collecting any `SCM_RIGHTS` descriptors (close-on-exec).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr is valid; we point it at our iovec and control buffer below.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>();
    let n = loop {
        // SAFETY: all pointers in `msg` are live for the call; the kernel writes at most the
        // lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_FIRSTHDR/NXTHDR walk only
    // within it, and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors
    // that now belong to this process, so wrapping each in an OwnedFd exactly once is right.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        bytes: n,
        fds,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Waits until `fd` is readable (or hung up), for at most `timeout`. `Ok(false)` on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollRequest::readable(fd.as_raw_fd())];
    Ok(poll(&mut fds, timeout)? > 0)
}

/// One entry of [`poll`].
#[derive(Debug, Clone, Copy)]
pub struct PollRequest {
    fd: RawFd,
    events: i16,
    revents: i16,
}

impl PollRequest {
    /// Watch `fd` for readability (and hang-up, which is always reported).
    pub fn readable(fd: RawFd) -> Self {
        PollRequest {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }
    }
    /// Whether the last poll found it readable, hung up or in error.
    pub fn is_ready(&self) -> bool {
        self.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// `poll(2)` on `requests` for at most `timeout`; returns how many are ready.
pub fn poll(requests: &mut [PollRequest], timeout: Duration) -> io::Result<usize> {
    let mut raw: Vec<libc::pollfd> = requests
        .iter()
        .map(|r| libc::pollfd {
            fd: r.fd,
            events: r.events,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let n = loop {
        // SAFETY: `raw` is a live array of `raw.len()` pollfd structs.
        let n = unsafe { libc::poll(raw.as_mut_ptr(), raw.len() as libc::nfds_t, ms) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    for (r, p) in requests.iter_mut().zip(&raw) {
        r.revents = p.revents;
    }
    Ok(n)
}

/// A hint to append to an error that ran out of file descriptors (`EMFILE`, `ENFILE`), else "".
pub fn fd_limit_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            " (this process has no free file descriptor: raise RLIMIT_NOFILE, e.g. `ulimit -n`, \
             or close descriptors; then try again)"
        }
        Some(libc::ENFILE) => " (the system is out of file descriptors; try again later)",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------------
// Files relative to an opened directory: the rendezvous opens its directory once and does
// everything else through that descriptor, so a path swapped underneath cannot redirect it.

/// What `fstat` says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Inode number.
    pub ino: u64,
    /// Device.
    pub dev: u64,
    /// Size in bytes.
    pub size: u64,
    /// Hard links to the file (names pointing at it).
    pub nlink: u64,
}

impl Stat {
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    /// A regular file.
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    /// A Unix socket.
    pub fn is_socket(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFSOCK
    }
    /// The permission bits, with setuid, setgid and sticky (`0o7777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
    /// A short name of the file type, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self.mode & libc::S_IFMT {
            libc::S_IFDIR => "a directory",
            libc::S_IFREG => "a regular file",
            libc::S_IFSOCK => "a socket",
            libc::S_IFIFO => "a FIFO",
            libc::S_IFLNK => "a symbolic link",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            _ => "an unknown kind of file",
        }
    }
}

fn stat_of(st: &libc::stat) -> Stat {
    Stat {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
        ino: st.st_ino,
        dev: st.st_dev,
        size: u64::try_from(st.st_size).unwrap_or(0),
        // `nlink_t` is 64 bits here, 32 on some other architectures.
        #[allow(clippy::unnecessary_cast)]
        nlink: st.st_nlink as u64,
    }
}

fn cstring(name: &str) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn cpath(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn dirfd_or_cwd(dir: Option<BorrowedFd<'_>>) -> RawFd {
    dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd())
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is valid for writes of one `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled `st` (and zeroed is a valid `stat` anyway).
    Ok(stat_of(&unsafe { st.assume_init() }))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, not what a link points to.
pub fn stat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Stat> {
    let name = cstring(name)?;
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `name` is NUL-terminated and `st` is valid for writes of one `stat`.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(stat_of(&unsafe { st.assume_init() }))
}

/// How [`open_at`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAt {
    /// A directory, without following a final symbolic link, as a handle for `*at` calls and
    /// `fstat` only (`O_PATH`): works where the directory is searchable but not readable.
    DirPath,
    /// A directory, without following a final symbolic link, readable (for `fchmod`,
    /// `fchown`, `fsync`).
    Dir,
    /// A file for reading, without following a symbolic link and without blocking on a FIFO
    /// or device (`O_NONBLOCK`).
    Read,
    /// A new file for writing, with these permission bits (before the umask); fails if the
    /// name exists (`O_EXCL`).
    CreateNew(u32),
    /// A file for reading and writing, created with these permission bits if missing, never
    /// through a symbolic link, without blocking.
    ReadWriteCreate(u32),
}

/// `openat(dir, name, ...)` (the current directory when `dir` is `None`), close-on-exec.
pub fn open_at(
    dir: Option<BorrowedFd<'_>>,
    name: &std::path::Path,
    how: OpenAt,
) -> io::Result<OwnedFd> {
    let name = cpath(name)?;
    let base = libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let (flags, mode) = match how {
        OpenAt::DirPath => (base | libc::O_PATH | libc::O_DIRECTORY, 0),
        OpenAt::Dir => (base | libc::O_RDONLY | libc::O_DIRECTORY, 0),
        OpenAt::Read => (base | libc::O_RDONLY | libc::O_NONBLOCK, 0),
        OpenAt::CreateNew(m) => (base | libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, m),
        OpenAt::ReadWriteCreate(m) => (base | libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK, m),
    };
    loop {
        // SAFETY: `name` is NUL-terminated; the mode argument is read only with O_CREAT.
        let fd = unsafe {
            libc::openat(
                dirfd_or_cwd(dir),
                name.as_ptr(),
                flags,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn check_rc(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mkdirat(dir, name, mode)` (the mode is reduced by the umask).
pub fn mkdir_at(dir: Option<BorrowedFd<'_>>, name: &std::path::Path, mode: u32) -> io::Result<()> {
    let name = cpath(name)?;
    // SAFETY: `name` is NUL-terminated.
    check_rc(unsafe { libc::mkdirat(dirfd_or_cwd(dir), name.as_ptr(), mode as libc::mode_t) })
}

/// `fchmod(2)`: exact permission bits, whatever the umask was.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed descriptor.
    check_rc(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

/// `fchown(fd, -1, gid)`: sets the group only.
pub fn fchgrp(fd: BorrowedFd<'_>, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed descriptor; uid -1 leaves the owner unchanged.
    check_rc(unsafe { libc::fchown(fd.as_raw_fd(), u32::MAX, gid) })
}

/// `fchmodat(dir, name, mode, 0)` on an entry of an opened directory (for a socket, which
/// cannot be opened).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: `name` is NUL-terminated.
    check_rc(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })
}

/// `fchownat(dir, name, -1, gid, AT_SYMLINK_NOFOLLOW)`: sets the group of an entry.
pub fn chgrp_at(dir: BorrowedFd<'_>, name: &str, gid: u32) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: `name` is NUL-terminated; uid -1 leaves the owner unchanged.
    check_rc(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            u32::MAX,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `renameat(dir, from, dir, to)`: atomically replaces `to`.
pub fn rename_at(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (cstring(from)?, cstring(to)?);
    // SAFETY: both names are NUL-terminated.
    check_rc(unsafe {
        libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr())
    })
}

/// `unlinkat(dir, name, 0)`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: `name` is NUL-terminated.
    check_rc(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
}

/// Takes an exclusive `flock` without waiting: `Ok(false)` when another open file holds it.
/// The lock lasts until every duplicate of the descriptor is closed.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        // SAFETY: plain syscall on a borrowed descriptor.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// `SO_PEERGROUPS` (Linux 4.13+; the value is the same on every architecture but sparc,
/// mips, parisc and alpha, whose libc crate does not name it either).
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of the process on the other end of a Unix socket, as the kernel
/// recorded them when it connected (`SO_PEERGROUPS`).
pub fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / size_of::<u32>());
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: `len` now says how much room is needed.
        if e.raw_os_error() == Some(libc::ERANGE) && (len as usize) > groups.len() * 4 {
            groups.resize((len as usize).div_ceil(size_of::<u32>()), 0);
            continue;
        }
        return Err(e);
    }
}

fn set_send_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval of the size given.
    check_rc(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
}

/// One `connect` of a new Unix stream socket to `path`, waiting at most `wait` (at least
/// 1 ms) while the listener's backlog is full: then it fails with `WouldBlock` (`EAGAIN`), so
/// the caller can retry until its own deadline. The socket returned is blocking, without a
/// send timeout.
pub fn connect_unix(
    path: &std::path::Path,
    wait: Duration,
) -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: zeroed sockaddr_un is valid (an empty path).
    let mut addr: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long for sockaddr_un (or contains NUL)",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A blocking connect waits for room in a full backlog, queued with other connectors, for
    // at most SO_SNDTIMEO.
    set_send_timeout(fd.as_fd(), wait.max(Duration::from_millis(1)))?;
    let len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EINPROGRESS) | Some(libc::EAGAIN) => {
                return Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
            _ => return Err(e),
        }
    }
    set_send_timeout(fd.as_fd(), Duration::ZERO)?;
    Ok(std::os::unix::net::UnixStream::from(fd))
}

/// A shared memory file for words that several processes read and write: a sealable `memfd`
/// of `len` bytes (zero-filled), sealed against shrinking and growing, so that a peer holding
/// it can never make this process's mapping of it fault (`SIGBUS`).
pub fn shared_words_file(name: &str, len: usize) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
    // SAFETY: plain syscall on an fd we own.
    check_rc(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
    // SAFETY: plain syscall on an fd we own.
    check_rc(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    })?;
    Ok(fd)
}

/// Seals `fd` (from [`shared_words_file`]) against new writable mappings
/// (`F_SEAL_FUTURE_WRITE`, Linux 5.1) and further seals: mappings made before stay writable,
/// every later one is read-only.
pub fn seal_future_writes(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check_rc(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL,
        )
    })
}

/// Checks that a received `fd` is a shared-words file a peer cannot resize: a sealed memfd of
/// exactly `len` bytes (`F_SEAL_SHRINK` and `F_SEAL_GROW` set).
pub fn check_shared_words_file(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let st = fstat(fd)?;
    if !st.is_regular() || st.size != len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "expected a {len}-byte memory file, got a {} of {} bytes",
                st.kind_name(),
                st.size
            ),
        ));
    }
    // SAFETY: plain syscall on a borrowed fd.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals & needed != needed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the memory file is not sealed against resizing",
        ));
    }
    Ok(())
}

/// Checks that `len` bytes of `fd` can be mapped and stay mappable: a regular file of at least
/// `len` bytes, sealed against shrinking (`F_SEAL_SHRINK`), so that no load or store through
/// the mapping can ever land past the file's end (`SIGBUS`), whatever the file's other holders
/// do later.
fn check_mappable(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
    }
    let st = fstat(fd)?;
    if !st.is_regular() || st.size < len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "cannot map {len} bytes of {} of {} bytes",
                st.kind_name(),
                st.size
            ),
        ));
    }
    // SAFETY: plain syscall on a borrowed fd.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is not sealed against shrinking (F_SEAL_SHRINK): another holder could \
             truncate it under the mapping",
        ));
    }
    Ok(())
}

/// `mmap(MAP_SHARED)` of `len` bytes of `fd` from offset 0, after [`check_mappable`].
fn map_shared(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int) -> io::Result<*mut libc::c_void> {
    check_mappable(fd, len)?;
    // SAFETY: a new mapping chosen by the kernel; nothing else is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr)
}

fn unmap(ptr: *mut libc::c_void, len: usize, what: &'static str) {
    // SAFETY: the caller's own mapping of `len` bytes at `ptr`, unmapped once, with no
    // reference into it left.
    if unsafe { libc::munmap(ptr, len) } != 0 {
        crate::drop_log::record(what, io::Error::last_os_error());
    }
}

/// A writable shared mapping of a file of 64-bit words (`mmap(MAP_SHARED)`, read-write),
/// unmapped on drop. Other processes may write the words at any time: they are accessed only
/// as atomics ([`words`](Self::words)).
///
/// [`map`](Self::map) checks that the file is long enough and sealed against shrinking, so no
/// access through the mapping can fault (`SIGBUS`), whatever the file's other holders do.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, accessed only through atomics; the pointer is
// owned by this value and unmapped once.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps the first `len` bytes of `fd` read-write. Refused unless `fd` is a regular file of
    /// at least `len` bytes sealed against shrinking (`F_SEAL_SHRINK`), and by the kernel for
    /// a file sealed against writes (`F_SEAL_WRITE` / `F_SEAL_FUTURE_WRITE`, `EPERM`).
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMapping> {
        let ptr = map_shared(fd, len, libc::PROT_READ | libc::PROT_WRITE)?;
        Ok(SharedMapping { ptr, len })
    }

    /// The start of the mapping (page-aligned). Do not unmap it: this value does.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.cast()
    }

    /// The 64-bit words of the mapping.
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is page-aligned, readable and writable, `len` bytes of a file
        // sealed against shrinking (so every byte stays backed) and lives as long as `self`;
        // AtomicU64 has the size and alignment of u64, and every access through it is atomic,
        // which is what memory shared with other processes needs.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.cast::<std::sync::atomic::AtomicU64>(),
                self.len / 8,
            )
        }
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // No reference from `words` outlives self.
        unmap(self.ptr, self.len, "munmap of shared words");
    }
}

/// A read-only shared mapping of a file of 64-bit words (`mmap(MAP_SHARED, PROT_READ)`),
/// unmapped on drop: what a process may do with a page another process writes (a channel's
/// control page, sealed with `F_SEAL_FUTURE_WRITE`).
///
/// It offers loads only. Rust allows no store, no read-modify-write and no atomic access but a
/// small `Relaxed` load on read-only memory, so the words are never handed out as
/// `&AtomicU64` (whose `store` would compile, and crash with `SIGSEGV`): this type has no
/// method that returns a reference to its memory.
///
/// Each [`load`](Self::load) is a `Relaxed` load between two `SeqCst` fences, which orders it
/// in the single total order of `SeqCst` operations as a `SeqCst` load would be: a store this
/// thread made before it and a store another thread makes before loading a word this thread
/// stored (Dekker's handshake, which the channel protocol relies on) cannot both miss the other.
#[derive(Debug)]
pub struct ReadOnlyMapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, only ever loaded from atomically; the pointer is
// owned by this value and unmapped once.
unsafe impl Send for ReadOnlyMapping {}
// SAFETY: as above.
unsafe impl Sync for ReadOnlyMapping {}

impl ReadOnlyMapping {
    /// Maps the first `len` bytes of `fd` read-only. Refused unless `fd` is a regular file of
    /// at least `len` bytes sealed against shrinking (`F_SEAL_SHRINK`).
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<ReadOnlyMapping> {
        let ptr = map_shared(fd, len, libc::PROT_READ)?;
        Ok(ReadOnlyMapping { ptr, len })
    }

    /// Words mapped.
    pub fn word_count(&self) -> usize {
        self.len / 8
    }

    /// Word `index`, loaded with the ordering of a `SeqCst` load (see the type's docs).
    ///
    /// # Panics
    /// If `index` is not below [`word_count`](Self::word_count), as a slice index would.
    pub fn load(&self, index: usize) -> u64 {
        use std::sync::atomic::{fence, AtomicU64, Ordering};
        let word: &AtomicU64 = self.word(index);
        fence(Ordering::SeqCst);
        let value = word.load(Ordering::Relaxed);
        fence(Ordering::SeqCst);
        value
    }

    /// Sleeps while the low 32 bits of word `index` equal `expected`, until [`futex_wake`] on
    /// it in any process, `timeout`, or a signal (the kernel only reads the word).
    ///
    /// # Panics
    /// If `index` is not below [`word_count`](Self::word_count).
    pub fn futex_wait(&self, index: usize, expected: u32, timeout: Duration) -> io::Result<()> {
        futex_wait_at(low_half(self.word(index)), expected, timeout)
    }

    /// A reference to word `index`, for `Relaxed` loads and the kernel's futex only (private:
    /// its `store` would fault).
    fn word(&self, index: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(
            index < self.word_count(),
            "word {index} is outside a mapping of {} words",
            self.word_count()
        );
        // SAFETY: in bounds (checked above) of a page-aligned, readable mapping of a file
        // sealed against shrinking that lives as long as `self`; AtomicU64 has the size and
        // alignment of u64. The reference is used only for Relaxed loads of 8 bytes, which Rust
        // allows on read-only memory ("sufficiently small" Relaxed loads, see
        // `std::sync::atomic`), and as an address for the futex syscall.
        unsafe { &*self.ptr.cast::<std::sync::atomic::AtomicU64>().add(index) }
    }
}

impl Drop for ReadOnlyMapping {
    fn drop(&mut self) {
        // No reference from `word` outlives self.
        unmap(self.ptr, self.len, "munmap of read-only shared words");
    }
}

/// The address of the low 32 bits of a 64-bit word (a futex is 32 bits wide).
fn low_half(word: &std::sync::atomic::AtomicU64) -> *const u32 {
    let p = (word as *const std::sync::atomic::AtomicU64).cast::<u32>();
    if cfg!(target_endian = "little") {
        p
    } else {
        p.wrapping_add(1)
    }
}

/// Sleeps while the 32-bit word at `addr` (in memory shared between processes) equals
/// `expected`, until [`futex_wake`] on the same word in any process, or `timeout`, or a signal;
/// returns at once if the word already differs. `addr` must be the low half of a live
/// `AtomicU64` (as [`low_half`] gives): the kernel only reads it.
fn futex_wait_at(addr: *const u32, expected: u32, timeout: Duration) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `addr` is valid, 4-byte aligned memory for the duration of the call (the caller
    // borrows the word); FUTEX_WAIT only reads it; `ts` is a valid relative timeout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            addr,
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) | Some(libc::EINTR) => Ok(()),
        _ => Err(e),
    }
}

/// Wakes every process sleeping on `word` ([`ReadOnlyMapping::futex_wait`]).
pub fn futex_wake(word: &std::sync::atomic::AtomicU64) -> io::Result<()> {
    // SAFETY: FUTEX_WAKE only uses the word's address as a key; it is valid memory.
    let rc = unsafe { libc::syscall(libc::SYS_futex, low_half(word), libc::FUTEX_WAKE, i32::MAX) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod shared_mapping_tests {
    //! The shared control pages of channels, without a GPU: what a peer that receives one can
    //! and cannot do with it, and what this process refuses to map (moved here from
    //! `tests/channel_pages.rs` when this module became crate-private).
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Instant;

    const PAGE: usize = 4096;

    /// A plain memory file (no seals).
    fn memfd(name: &str) -> io::Result<OwnedFd> {
        let cname = std::ffi::CString::new(name).expect("no NUL");
        // SAFETY: `cname` is a valid NUL-terminated string.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    #[test]
    fn a_shared_words_file_cannot_be_resized_by_a_peer() {
        let fd = shared_words_file("test", PAGE).unwrap();
        check_shared_words_file(fd.as_fd(), PAGE).unwrap();
        // SAFETY: plain syscalls on our own fd.
        let shrink = unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
        assert_eq!(
            shrink, -1,
            "a sealed page must not shrink (a peer would make us SIGBUS)"
        );
        // SAFETY: as above.
        let grow = unsafe { libc::ftruncate(fd.as_raw_fd(), (2 * PAGE) as libc::off_t) };
        assert_eq!(grow, -1, "a sealed page must not grow");
    }

    #[test]
    fn after_sealing_a_peer_maps_the_channel_page_read_only() {
        let fd = shared_words_file("chan", PAGE).unwrap();
        let mine = SharedMapping::map(fd.as_fd(), PAGE).unwrap();
        seal_future_writes(fd.as_fd()).unwrap();
        // What a hostile subscriber would try: a writable mapping of the channel page.
        let err = SharedMapping::map(fd.as_fd(), PAGE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let theirs = ReadOnlyMapping::map(fd.as_fd(), PAGE).unwrap();
        // Nor can it make its read-only mapping writable.
        // SAFETY: changes the protection of a mapping we own; nothing reads through it
        // meanwhile.
        let rc = unsafe { libc::mprotect(theirs.ptr, PAGE, libc::PROT_READ | libc::PROT_WRITE) };
        assert_eq!(rc, -1, "mprotect(PROT_WRITE) of a sealed page must fail");
        // The publisher's mapping made before the seal still writes, and the reader sees it.
        mine.words()[3].store(42, SeqCst);
        assert_eq!(theirs.load(3), 42);
        // And write(2) through the fd is refused too.
        // SAFETY: a valid buffer and our own fd.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
        assert_eq!(n, -1);
    }

    #[test]
    fn pages_that_a_peer_could_resize_or_of_the_wrong_size_are_refused() {
        // An unsealed memfd (what a hostile publisher might send).
        let plain = memfd("plain").unwrap();
        std::fs::File::from(plain.try_clone().unwrap())
            .set_len(PAGE as u64)
            .unwrap();
        let err = check_shared_words_file(plain.as_fd(), PAGE).unwrap_err();
        assert!(err.to_string().contains("sealed"), "{err}");
        // Sealed, but not a page.
        let small = shared_words_file("small", 64).unwrap();
        let err = check_shared_words_file(small.as_fd(), PAGE).unwrap_err();
        assert!(err.to_string().contains("4096"), "{err}");
        // Not a regular file at all.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(check_shared_words_file(a.as_fd(), PAGE).is_err());
    }

    #[test]
    fn an_empty_mapping_is_refused() {
        let fd = shared_words_file("empty", PAGE).unwrap();
        assert!(ReadOnlyMapping::map(fd.as_fd(), 0).is_err());
        assert!(SharedMapping::map(fd.as_fd(), 0).is_err());
    }

    #[test]
    fn map_refuses_a_file_shorter_than_the_mapping_or_unsealed() {
        // Too short: a load past the file's end would raise SIGBUS.
        let small = shared_words_file("small", 64).unwrap();
        let err = ReadOnlyMapping::map(small.as_fd(), PAGE).unwrap_err();
        assert!(err.to_string().contains("64 bytes"), "{err}");
        assert!(SharedMapping::map(small.as_fd(), PAGE).is_err());
        // Long enough today, but another holder could shrink it tomorrow (SIGBUS then).
        let plain = memfd("plain").unwrap();
        std::fs::File::from(plain.try_clone().unwrap())
            .set_len(PAGE as u64)
            .unwrap();
        let err = ReadOnlyMapping::map(plain.as_fd(), PAGE).unwrap_err();
        assert!(err.to_string().contains("F_SEAL_SHRINK"), "{err}");
        assert!(SharedMapping::map(plain.as_fd(), PAGE).is_err());
        // Not a file at all (its size is 0, it has no seals).
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(ReadOnlyMapping::map(a.as_fd(), PAGE).is_err());
        // A sealed file longer than the mapping: fine (only a prefix is mapped).
        let long = shared_words_file("long", 2 * PAGE).unwrap();
        assert!(ReadOnlyMapping::map(long.as_fd(), PAGE).is_ok());
        assert!(SharedMapping::map(long.as_fd(), 64).is_ok());
    }

    /// `ReadOnlyMapping::words`, were the type ever given an inherent method of that name
    /// (one handing out `&[AtomicU64]`, whose `store` compiles and crashes on read-only
    /// memory), would win over this trait's method and the test below would stop compiling.
    trait NoInherentWords {
        fn words(&self) -> &'static str {
            "loads only"
        }
    }
    impl NoInherentWords for ReadOnlyMapping {}

    #[test]
    fn a_read_only_mapping_offers_loads_only() {
        let fd = shared_words_file("ro", PAGE).unwrap();
        let writer = SharedMapping::map(fd.as_fd(), PAGE).unwrap();
        let reader = ReadOnlyMapping::map(fd.as_fd(), PAGE).unwrap();
        assert_eq!(ReadOnlyMapping::words(&reader), "loads only");
        assert_eq!(reader.word_count(), PAGE / 8);
        writer.words()[511].store(u64::MAX, SeqCst);
        assert_eq!(reader.load(511), u64::MAX);
        // Past the end: a panic, as a slice index, never a load outside the mapping.
        let past = std::panic::catch_unwind(|| reader.load(512));
        assert!(past.is_err());
    }

    #[test]
    fn a_read_only_load_takes_part_in_dekkers_handshake() {
        // Thread A stores x (its own writable page), then loads y through a read-only mapping;
        // thread B stores y, then loads x: at least one of them sees the other's store.
        let fx = shared_words_file("x", PAGE).unwrap();
        let fy = shared_words_file("y", PAGE).unwrap();
        let (x, y) = (
            SharedMapping::map(fx.as_fd(), PAGE).unwrap(),
            SharedMapping::map(fy.as_fd(), PAGE).unwrap(),
        );
        let y_ro = ReadOnlyMapping::map(fy.as_fd(), PAGE).unwrap();
        const ROUNDS: u64 = 50_000;
        let barrier = std::sync::Barrier::new(2);
        let (seen_by_a, seen_by_b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                (1..=ROUNDS)
                    .map(|round| {
                        barrier.wait();
                        x.words()[0].store(round, SeqCst);
                        y_ro.load(0)
                    })
                    .collect::<Vec<u64>>()
            });
            let b = s.spawn(|| {
                (1..=ROUNDS)
                    .map(|round| {
                        barrier.wait();
                        y.words()[0].store(round, SeqCst);
                        x.words()[0].load(SeqCst)
                    })
                    .collect::<Vec<u64>>()
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        for (i, (a, b)) in seen_by_a.iter().zip(&seen_by_b).enumerate() {
            let round = i as u64 + 1;
            assert!(
                *a >= round || *b >= round,
                "round {round}: both missed the other's store ({a}, {b})"
            );
        }
    }

    #[test]
    fn a_sleeper_on_a_read_only_mapping_is_woken_across_mappings() {
        let fd = shared_words_file("futex", PAGE).unwrap();
        let writer = SharedMapping::map(fd.as_fd(), PAGE).unwrap();
        seal_future_writes(fd.as_fd()).unwrap();
        let reader = ReadOnlyMapping::map(fd.as_fd(), PAGE).unwrap();
        // A value that differs: no sleep at all.
        writer.words()[4].store(7, SeqCst);
        let t = Instant::now();
        reader.futex_wait(4, 6, Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        // Nobody wakes it: the timeout.
        let t = Instant::now();
        reader.futex_wait(4, 7, Duration::from_millis(50)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(40));
        // Woken through the other mapping (another "process"'s address for the same page).
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                writer.words()[4].fetch_add(1, SeqCst);
                futex_wake(&writer.words()[4]).unwrap();
            });
            let t = Instant::now();
            while reader.load(4) == 7 {
                reader.futex_wait(4, 7, Duration::from_secs(10)).unwrap();
                assert!(t.elapsed() < Duration::from_secs(5), "never woken");
            }
        });
    }
}
