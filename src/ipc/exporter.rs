//! The exporter: publishes a shared buffer under a name and serves its consumers.
//!
//! [`Exporter::bind`] opens (or creates) the rendezvous directory and checks it (see
//! [`rendezvous`](super::rendezvous) for the files, their modes and the threat model), takes
//! the name's lock file for its lifetime, picks the next generation, binds its socket under a
//! temporary name and renames it into place, and writes the descriptor last. A thread then
//! serves consumers: it checks each one's uid (and groups) with `SO_PEERCRED` against
//! [`AllowedUsers`], answers a hello with the descriptor (and, for the fd transport, the
//! memory's fd), and keeps the connection as the consumer's lease.
//!
//! ```no_run
//! use std::time::Duration;
//! use cuda_ipc::ipc::{AllowedUsers, ExportOptions, Exporter, SharedDeviceBuffer, Transport};
//! use cuda_ipc::prelude::*;
//!
//! let ctx = Context::new(Device::by_ordinal(0)?)?;
//! let buf = SharedDeviceBuffer::<f32>::zeroed(&ctx, 1 << 20, Transport::Fd)?;
//! // Pods of one claim running as different uids, sharing the group 2000 (fsGroup).
//! let options = ExportOptions {
//!     group: Some(2000),
//!     allowed: AllowedUsers::Group(2000),
//!     expected_consumers: 2,
//!     ..ExportOptions::default()
//! };
//! let exporter = Exporter::bind_with("/shared/cuda-ipc/frames", &buf, options)?;
//! exporter.wait_released(Duration::from_secs(60))?;
//! # Ok::<(), cuda_ipc::Error>(())
//! ```

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::os::{self, PollRequest};

use super::allocation::ExportLeases;
use super::descriptor::Descriptor;
use super::framing::{self, FrameReader, Kind, ReadError};
use super::rendezvous::{deadline_after, temp_name, Names, RendezvousDir, Trust};
use super::shared_buffer::SharedDeviceBuffer;

/// Which users may take the memory, checked on each connection with `SO_PEERCRED` (and
/// `SO_PEERGROUPS` for [`Group`](Self::Group)).
///
/// Another uid can only reach the socket when the files are group-accessible: with the
/// default (private) modes, only this user and root can connect whatever this says. To share
/// with other uids, set [`ExportOptions::group`] to a group they are in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowedUsers {
    /// Only processes running as the exporter's own effective uid (the default).
    #[default]
    SameUser,
    /// Only these uids (add the exporter's own if it should import too). Reachable by other
    /// uids only with [`ExportOptions::group`].
    Uids(Vec<u32>),
    /// Processes whose effective or supplementary groups include this gid (e.g. the pods'
    /// `fsGroup`), and the exporter's own uid. Use with [`ExportOptions::group`].
    Group(u32),
    /// Anyone who can reach the socket (with [`ExportOptions::group`]: the group's members).
    Any,
}

impl AllowedUsers {
    pub(crate) fn allows(
        &self,
        cred: &os::PeerCredentials,
        groups: impl FnOnce() -> Vec<u32>,
        own: u32,
    ) -> bool {
        match self {
            AllowedUsers::SameUser => cred.uid == own,
            AllowedUsers::Uids(list) => list.contains(&cred.uid),
            AllowedUsers::Group(g) => cred.uid == own || cred.gid == *g || groups().contains(g),
            AllowedUsers::Any => true,
        }
    }
}

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Who may connect (checked with `SO_PEERCRED`).
    pub allowed: AllowedUsers,
    /// How many consumers [`Exporter::wait_released`] waits for before "all released" counts.
    pub expected_consumers: usize,
    /// Most connections at once (handshaking and leased). When full, a new connection may
    /// replace a silent one (connected, nothing sent yet) of the uid holding the most
    /// connections, so each uid keeps a fair share; a connection that has sent bytes or holds
    /// a lease is never evicted. Otherwise the newcomer is told the exporter is busy
    /// ([`Error::Busy`] on its side).
    pub max_connections: usize,
    /// How long a connection may take to say hello.
    pub handshake_timeout: Duration,
    /// Share through this group, for consumers running as other uids: the directory, if
    /// created, is 3770 (setgid, sticky) and group-owned by it (an existing group-writable one
    /// must be setgid and group-owned by it), the descriptor 0640 and the socket 0660, both
    /// of this group. The process must be a member of the group. With the legacy transport
    /// the descriptor carries a bearer handle: every member of the group can map the memory.
    /// `None` (the default): the directory 0700, the files 0600.
    pub group: Option<u32>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            allowed: AllowedUsers::SameUser,
            expected_consumers: 1,
            max_connections: 128,
            handshake_timeout: Duration::from_secs(5),
            group: None,
        }
    }
}

/// What the exporter's thread has seen, for waiting and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Consumers holding a lease now.
    pub active_leases: usize,
    /// Leases granted so far.
    pub total_leases: usize,
    /// Connections refused because of their uid.
    pub refused_uid: usize,
    /// Connections closed for breaking the protocol or not saying hello in time.
    pub dropped_bad: usize,
    /// Connections closed because `max_connections` were open: silent ones evicted for a
    /// newcomer, and newcomers told the exporter is busy.
    pub dropped_full: usize,
}

#[derive(Default)]
struct Shared {
    stats: Mutex<ExportStats>,
    changed: Condvar,
    notify: Mutex<Notify>,
}

/// Where "ready" notifications go: the leased connections (duplicates of the server thread's
/// sockets), so that [`Exporter::notify_ready`] sends from the caller's thread without a hop
/// through the server thread.
#[derive(Default)]
struct Notify {
    last_ready: Option<u64>,
    targets: Vec<(u64, UnixStream)>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut ExportStats)) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        self.changed.notify_all();
    }
}

/// A published shared buffer. While it lives, consumers can import the buffer by its path;
/// dropping it stops serving and removes the published files.
///
/// The exporter does not borrow the buffer, so the producer can keep writing frames into it
/// while it is published, and may drop buffer and exporter in any order. The memory is never
/// freed under a consumer: each consumer holds a lease (its connection) for as long as it maps
/// the memory, and the buffer counts the leases of all its exporters. A legacy buffer dropped
/// while leases are held is freed when the last one ends — also after the exporter is dropped,
/// whose leased connections then drain on a background thread. With the fd transport every
/// mapping holds its own reference to the memory, so the owner's drop frees only its own.
/// [`wait_released`](Self::wait_released) waits for the consumers to finish.
pub struct Exporter {
    names: Names,
    descriptor: Descriptor,
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
    expected_consumers: usize,
    socket_inode: u64,
    dir: RendezvousDir,
    /// Holds the name's `flock` until the exporter is gone (dropped after `drop` ran).
    _lock: std::fs::File,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exporter({})", self.names.descriptor.display())
    }
}

impl Exporter {
    /// Publishes `buf` at `path` (`<dir>/<name>`) with the default options: only this user may
    /// import it, and [`wait_released`](Self::wait_released) waits for one consumer.
    pub fn bind<T: Pod>(path: impl AsRef<Path>, buf: &SharedDeviceBuffer<'_, T>) -> Result<Self> {
        Self::bind_with(path, buf, ExportOptions::default())
    }

    /// Publishes `buf` at `path` with `options`. The directory is created 0700 (3770 with
    /// [`ExportOptions::group`]) if missing and refused if others could write to it or swap
    /// it (see [`rendezvous`](super::rendezvous)); a live exporter of the same name (it holds
    /// the name's lock) is an error, a stale socket of a dead one is replaced atomically. Each
    /// publication of a name gets a higher generation than the last, also after a clean
    /// restart, so consumers never confuse it with the old one.
    pub fn bind_with<T: Pod>(
        path: impl AsRef<Path>,
        buf: &SharedDeviceBuffer<'_, T>,
        options: ExportOptions,
    ) -> Result<Self> {
        if !buf.is_owner() {
            return Err(Error::Unsupported(
                "only the process that allocated a shared buffer can export it".into(),
            ));
        }
        let fd = match buf.owned_export_fd() {
            Some(fd) => Some(
                fd.try_clone()
                    .map_err(|e| Error::io("dup of the exported fd", e))?,
            ),
            None => None,
        };
        Self::publish(
            path.as_ref(),
            *buf.descriptor(),
            fd,
            options,
            buf.export_leases(),
        )
    }

    /// Publishes an fd-transport descriptor and the memory's fd, for memory this crate did not
    /// allocate (exported by another library, say) or a crafted descriptor in tests. Safe: a
    /// consumer's mapping of a VMM fd holds its own reference to the memory. The generation is
    /// set as for [`bind_with`](Self::bind_with). A legacy descriptor is refused: use
    /// [`bind_raw_legacy`](Self::bind_raw_legacy).
    pub fn bind_raw(
        path: impl AsRef<Path>,
        descriptor: &Descriptor,
        fd: Option<OwnedFd>,
        options: ExportOptions,
    ) -> Result<Exporter> {
        if descriptor.transport == super::descriptor::WireTransport::Legacy {
            return Err(Error::Unsupported(
                "bind_raw publishes fd-transport descriptors only: a legacy handle's memory is \
                 not kept alive by its consumers, and this exporter cannot count their leases \
                 on memory it does not own. Export a SharedDeviceBuffer with bind/bind_with, \
                 or use the unsafe bind_raw_legacy"
                    .into(),
            ));
        }
        Exporter::publish(path.as_ref(), *descriptor, fd, options, None)
    }

    /// Publishes a legacy descriptor (its `cuIpcGetMemHandle` handle inside) for memory this
    /// crate did not allocate, or a crafted one in tests.
    ///
    /// # Safety
    /// Nothing ties the memory to the consumers' leases: the caller keeps the allocation alive
    /// (not freed, not reused) for as long as any consumer maps it — at least until
    /// [`wait_released`](Self::wait_released) has returned and no new consumer can connect.
    pub unsafe fn bind_raw_legacy(
        path: impl AsRef<Path>,
        descriptor: &Descriptor,
        options: ExportOptions,
    ) -> Result<Exporter> {
        Exporter::publish(path.as_ref(), *descriptor, None, options, None)
    }

    fn publish(
        path: &Path,
        mut descriptor: Descriptor,
        fd: Option<OwnedFd>,
        options: ExportOptions,
        leases: Option<Arc<ExportLeases>>,
    ) -> Result<Self> {
        let names = Names::for_path(path)?;
        let (dir, lock, previous) = claim_name(&names, options.group)?;
        let file_generation = dir
            .read_file(&names.descriptor_name(), super::descriptor::ENCODED_LEN)
            .ok()
            .and_then(|b| Descriptor::decode(&b).ok())
            .map_or(0, |d| d.generation);
        descriptor.generation = previous.max(file_generation).saturating_add(1);
        descriptor.exporter_uid = os::effective_uid();
        write_generation(&lock, descriptor.generation).map_err(|e| {
            Error::io(
                format!("recording the generation in {}", names.lock.display()),
                e,
            )
        })?;
        let encoded = descriptor.encode();

        let file_mode = match options.group {
            Some(_) => 0o640,
            None => 0o600,
        };
        let (listener, socket_inode) = bind_listener(&dir, &names, options.group)?;
        let (wake, wake_rx) =
            UnixStream::pair().map_err(|e| Error::io("creating the exporter's wake pipe", e))?;
        let shared = Arc::new(Shared::default());
        let server = Server {
            listener,
            wake_rx,
            offer: encoded.to_vec(),
            fd,
            options: options.clone(),
            leases,
            own_uid: os::effective_uid(),
            shared: Arc::clone(&shared),
            conns: Vec::new(),
            next_id: 0,
            name: names.name.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("cuda-ipc export {}", names.name))
            .spawn(move || server.run())
            .map_err(|e| Error::io("spawning the exporter thread", e))?;
        let exporter = Exporter {
            names,
            descriptor,
            shared,
            wake,
            thread: Some(thread),
            expected_consumers: options.expected_consumers,
            socket_inode,
            dir,
            _lock: lock,
        };
        // Publish last: whoever sees the descriptor finds the socket listening.
        exporter.dir.write_atomic(
            &exporter.names.descriptor_name(),
            &encoded,
            file_mode,
            options.group,
        )?;
        Ok(exporter)
    }

    /// The published descriptor (with its generation).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The descriptor file's path.
    pub fn descriptor_path(&self) -> &Path {
        &self.names.descriptor
    }

    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.names.socket
    }

    /// What the exporter has seen so far.
    pub fn stats(&self) -> ExportStats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells every consumer holding a lease (and every later one) that the buffer now holds
    /// `frame`; consumers wait for it with
    /// [`SharedDeviceBuffer::wait_ready`]. Frames should increase.
    pub fn notify_ready(&self, frame: u64) -> Result<()> {
        let mut notify = self.shared.notify.lock().unwrap_or_else(|p| p.into_inner());
        notify.last_ready = Some(notify.last_ready.map_or(frame, |l| l.max(frame)));
        let msg = frame.to_le_bytes();
        for (_, stream) in &notify.targets {
            // Non-blocking: a consumer that does not read its notifications loses them once
            // its socket buffer is full; its lease is not affected.
            let _ = framing::send(stream, Kind::Ready, &msg, None);
        }
        Ok(())
    }

    fn wait_until(
        &self,
        timeout: Duration,
        what: impl Fn(&ExportStats) -> String,
        done: impl Fn(&ExportStats) -> bool,
    ) -> Result<ExportStats> {
        let stats = crate::deadline::wait_for(
            &self.shared.stats,
            &self.shared.changed,
            timeout,
            done,
            what,
        )?;
        Ok(*stats)
    }

    /// Waits until at least `n` consumers have taken a lease.
    pub fn wait_consumers(&self, n: usize, timeout: Duration) -> Result<ExportStats> {
        let name = self.names.name.clone();
        self.wait_until(
            timeout,
            |s| format!("{n} consumer(s) of {name:?} (so far {})", s.total_leases),
            |s| s.total_leases >= n,
        )
    }

    /// Waits until the expected number of consumers ([`ExportOptions::expected_consumers`])
    /// have taken a lease and every lease has been released (consumers dropped the buffer or
    /// exited), so the memory can be freed safely.
    pub fn wait_released(&self, timeout: Duration) -> Result<ExportStats> {
        let (n, name) = (self.expected_consumers, self.names.name.clone());
        self.wait_until(
            timeout,
            |s| {
                format!(
                    "{n} consumer(s) to use and release {name:?} ({} took a lease, {} still hold it)",
                    s.total_leases, s.active_leases
                )
            },
            |s| s.total_leases >= n && s.active_leases == 0,
        )
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // Any byte (or EOF) stops the server thread; MSG_NOSIGNAL: no SIGPIPE if it is gone.
        let _ = os::send_with_fds(self.wake.as_fd(), b"Q", &[]);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                crate::drop_log::record("Exporter", "its server thread panicked");
            }
        }
        // Remove what we published (we still hold the lock), unless something else replaced
        // it. The lock file stays: it keeps the generation, and removing it would let two
        // exporters lock different files of one name.
        let desc_name = self.names.descriptor_name();
        let ours = self
            .dir
            .read_file(&desc_name, super::descriptor::ENCODED_LEN)
            .ok()
            .and_then(|b| Descriptor::decode(&b).ok())
            .is_some_and(|d| {
                d.buffer_id == self.descriptor.buffer_id
                    && d.generation == self.descriptor.generation
            });
        if ours {
            if let Err(e) = self.dir.unlink(&desc_name) {
                crate::drop_log::record("Exporter (removing the descriptor)", e);
            }
        }
        let sock_name = self.names.socket_name();
        let socket_ours = self
            .dir
            .stat_entry(&sock_name)
            .is_ok_and(|st| st.ino == self.socket_inode);
        if socket_ours {
            if let Err(e) = self.dir.unlink(&sock_name) {
                crate::drop_log::record("Exporter (removing the socket)", e);
            }
        }
    }
}

/// Waits until every leased connection hangs up, releasing its lease on the owned buffer as it
/// does. Consumers send nothing after their hello, so any readable event is the hang-up (or
/// junk, which is discarded).
fn drain_leases(mut streams: Vec<UnixStream>, leases: &ExportLeases) {
    let mut buf = [0u8; 64];
    while !streams.is_empty() {
        let mut polls: Vec<PollRequest> = streams
            .iter()
            .map(|s| PollRequest::readable(s.as_raw_fd()))
            .collect();
        if os::poll(&mut polls, Duration::from_secs(1)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for i in (0..streams.len()).rev() {
            if !polls[i].is_ready() {
                continue;
            }
            let gone = match (&streams[i]).read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if gone {
                streams.swap_remove(i);
                leases.release();
            }
        }
    }
}

/// Opens (creating) the rendezvous directory of `names` and takes the name's lock; whatever
/// socket is left there then belongs to a dead exporter, and is checked not to answer.
/// Returns the directory, the lock (held while it lives) and the generation it recorded.
pub(crate) fn claim_name(
    names: &Names,
    group: Option<u32>,
) -> Result<(RendezvousDir, std::fs::File, u64)> {
    let trust = Trust {
        uids: Vec::new(),
        group,
    };
    let dir = RendezvousDir::create(&names.dir, &trust)?;
    let (lock, previous) = take_lock(&dir, names)?;

    // Under the lock: whatever socket is there belongs to a dead exporter (or to one of a
    // version without the lock, which must not be unlinked: check that it does not
    // answer).
    let sock_name = names.socket_name();
    if dir.stat_entry(&sock_name).is_ok() {
        match os::connect_unix(&dir.proc_path(&sock_name), Duration::from_millis(100)) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) => {}
            _ => return Err(live_exporter(names)),
        }
    }
    Ok((dir, lock, previous))
}

/// Binds the name's socket: under a temporary name, with its group and mode set through the
/// directory, then renamed into place, so the published name never has looser permissions and
/// replacing a stale socket is atomic. Returns the listener (non-blocking) and the socket's
/// inode.
pub(crate) fn bind_listener(
    dir: &RendezvousDir,
    names: &Names,
    group: Option<u32>,
) -> Result<(UnixListener, u64)> {
    let sock_name = names.socket_name();
    let sock_mode = match group {
        Some(_) => 0o660,
        None => 0o600,
    };
    let tmp = temp_name(&sock_name)?;
    let listener = UnixListener::bind(dir.proc_path(&tmp))
        .map_err(|e| Error::io(format!("binding {}", dir.shown(&tmp).display()), e))?;
    let placed = (|| {
        if let Some(g) = group {
            os::chgrp_at(dir.fd(), &tmp, g)
                .map_err(|e| Error::io(format!("chgrp {g} {}", dir.shown(&tmp).display()), e))?;
        }
        os::chmod_at(dir.fd(), &tmp, sock_mode).map_err(|e| {
            Error::io(
                format!("chmod {sock_mode:04o} {}", dir.shown(&tmp).display()),
                e,
            )
        })?;
        dir.rename(&tmp, &sock_name)?;
        dir.stat_entry(&sock_name)
            .map_err(|e| Error::io(format!("stat {}", names.socket.display()), e))
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

fn live_exporter(names: &Names) -> Error {
    Error::InvalidArgument(format!(
        "{} is served by a live exporter (it holds {}); choose another name or stop it first",
        names.socket.display(),
        names.lock.display()
    ))
}

/// Opens `<name>.lock` and takes its exclusive lock; returns it with the generation it records.
fn take_lock(dir: &RendezvousDir, names: &Names) -> Result<(std::fs::File, u64)> {
    let lock_name = names.lock_name();
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
        return Err(live_exporter(names));
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

fn write_generation(lock: &std::fs::File, generation: u64) -> std::io::Result<()> {
    let text = format!("generation {generation}\n");
    lock.set_len(0)?;
    lock.write_all_at(text.as_bytes(), 0)?;
    let _ = (&*lock).rewind();
    Ok(())
}

enum ConnState {
    Handshake { deadline: Instant },
    Leased,
}

struct Conn {
    id: u64,
    uid: u32,
    stream: UnixStream,
    reader: FrameReader,
    state: ConnState,
    /// The peer has sent bytes: never evicted to make room.
    spoke: bool,
}

struct Server {
    listener: UnixListener,
    wake_rx: UnixStream,
    offer: Vec<u8>,
    fd: Option<OwnedFd>,
    options: ExportOptions,
    own_uid: u32,
    shared: Arc<Shared>,
    conns: Vec<Conn>,
    next_id: u64,
    name: String,
    /// The buffer's lease count (owned buffers): a lease granted here counts there too, so
    /// the owner never frees a legacy buffer a consumer still maps.
    leases: Option<Arc<ExportLeases>>,
}

impl Server {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            let next_deadline = self
                .conns
                .iter()
                .filter_map(|c| match c.state {
                    ConnState::Handshake { deadline } => Some(deadline),
                    ConnState::Leased => None,
                })
                .min();
            let timeout = next_deadline
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let mut polls = vec![
                PollRequest::readable(self.wake_rx.as_raw_fd()),
                PollRequest::readable(self.listener.as_raw_fd()),
            ];
            polls.extend(
                self.conns
                    .iter()
                    .map(|c| PollRequest::readable(c.stream.as_raw_fd())),
            );
            if os::poll(&mut polls, timeout).is_err() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if polls[0].is_ready() {
                break; // the Exporter asked us to stop, or is gone
            }
            if polls[1].is_ready() {
                self.accept_all();
            }
            // Connections accepted just now come after the polled ones and are not ready yet.
            // Walking backwards keeps indices valid across swap_remove.
            let ready: Vec<bool> = polls[2..].iter().map(PollRequest::is_ready).collect();
            let now = Instant::now();
            for i in (0..self.conns.len()).rev() {
                let keep = if ready.get(i).copied().unwrap_or(false) {
                    self.service(i)
                } else {
                    match self.conns[i].state {
                        ConnState::Handshake { deadline } if now >= deadline => {
                            self.refuse(i, "no hello within the handshake timeout");
                            false
                        }
                        _ => true,
                    }
                };
                if !keep {
                    self.remove(i);
                }
            }
        }
        // Shutting down: handshakes close here; leases close here too, unless they protect an
        // owned buffer's memory, in which case they drain (below).
        let leased: Vec<UnixStream> = self
            .conns
            .drain(..)
            .filter(|c| matches!(c.state, ConnState::Leased))
            .map(|c| c.stream)
            .collect();
        self.shared
            .notify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .targets
            .clear();
        self.shared.update(|s| s.active_leases -= leased.len());
        if let (Some(leases), false) = (self.leases.take(), leased.is_empty()) {
            // The consumers still map the memory: keep counting their leases until each one
            // hangs up, so that the owner frees a legacy buffer only after the last (see
            // allocation.rs). A detached thread: dropping the Exporter does not wait for it.
            let spawned = std::thread::Builder::new()
                .name(format!("cuda-ipc drain {}", self.name))
                .spawn(move || drain_leases(leased, &leases));
            if let Err(e) = spawned {
                // The streams closed with the failed closure; their leases stay counted, so
                // the memory is leaked rather than freed under a consumer.
                crate::drop_log::record("Exporter (spawning the lease drain; memory kept)", e);
            }
        }
    }

    fn accept_all(&mut self) {
        // A bounded batch, so that a flood of connections cannot keep the thread from
        // serving the ones already accepted.
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    // Out of descriptors: the connection waits in the backlog; do not spin.
                    std::thread::sleep(Duration::from_millis(20));
                    return;
                }
                Err(_) => return, // WouldBlock, or a transient error: poll again
            };
            let cred = match os::peer_credentials(stream.as_fd()) {
                Ok(c) => c,
                Err(_) => {
                    self.shared.update(|s| s.dropped_bad += 1);
                    continue;
                }
            };
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let groups = || os::peer_groups(stream.as_fd()).unwrap_or_default();
            if !self.options.allowed.allows(&cred, groups, self.own_uid) {
                // Only that it is not allowed: not who is, nor who the exporter is.
                let reason = format!(
                    "uid {} is not allowed to import {:?}; ask its producer to allow it",
                    cred.uid, self.name
                );
                let _ = framing::send(&stream, Kind::Refuse, clip(&reason), None);
                self.shared.update(|s| s.refused_uid += 1);
                continue;
            }
            if self.conns.len() >= self.options.max_connections.max(1) && !self.make_room(cred.uid)
            {
                let busy = format!(
                    "the exporter of {:?} already has {} connections (max_connections); try                      again later, or ask its producer to raise ExportOptions::max_connections",
                    self.name, self.options.max_connections
                );
                let _ = framing::send(&stream, Kind::Busy, clip(&busy), None);
                self.shared.update(|s| s.dropped_full += 1);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_id += 1;
            self.conns.push(Conn {
                id: self.next_id,
                uid: cred.uid,
                stream,
                reader: FrameReader::new(),
                state: ConnState::Handshake {
                    deadline: deadline_after(self.options.handshake_timeout),
                },
                spoke: false,
            });
        }
    }

    /// Frees a slot for a newcomer of `uid`, if that is fair: first reads what every
    /// handshaking connection has sent (closing the ones that hung up, granting the hellos),
    /// then evicts the oldest silent connection of the uid holding the most connections,
    /// unless that uid holds fewer than the newcomer's. False: no room.
    fn make_room(&mut self, uid: u32) -> bool {
        for i in (0..self.conns.len()).rev() {
            if matches!(self.conns[i].state, ConnState::Handshake { .. }) && !self.service(i) {
                self.remove(i);
            }
        }
        let max = self.options.max_connections.max(1);
        if self.conns.len() < max {
            return true;
        }
        let mut per_uid: HashMap<u32, usize> = HashMap::new();
        for c in &self.conns {
            *per_uid.entry(c.uid).or_default() += 1;
        }
        let own = per_uid.get(&uid).copied().unwrap_or(0);
        let victim = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.spoke && matches!(c.state, ConnState::Handshake { .. }))
            .map(|(i, c)| (per_uid[&c.uid], std::cmp::Reverse(c.id), i))
            .max();
        match victim {
            Some((count, _, i)) if count >= own => {
                self.shared.update(|s| s.dropped_full += 1);
                self.conns.swap_remove(i);
                true
            }
            _ => false,
        }
    }

    /// Reads from connection `i`; false to drop it.
    fn service(&mut self, i: usize) -> bool {
        let conn = &mut self.conns[i];
        match conn.reader.fill(&conn.stream) {
            Ok(got) => conn.spoke |= got,
            Err(ReadError::Closed) => return false,
            Err(ReadError::Protocol(why)) => {
                self.refuse(i, &why);
                return false;
            }
            Err(ReadError::Io(_)) => return false,
        }
        loop {
            let conn = &mut self.conns[i];
            match conn.reader.take() {
                Ok(None) => return true,
                Ok(Some(m)) => match (&conn.state, m.kind) {
                    (ConnState::Handshake { .. }, Kind::Hello)
                        if m.payload.len() == 4
                            && u32::from_le_bytes(m.payload[..4].try_into().expect("4"))
                                == framing::PROTOCOL_VERSION =>
                    {
                        // Count the lease before the memory leaves: once the owner has dropped
                        // the buffer, no new consumer gets it (its free may be under way).
                        if let Some(leases) = &self.leases {
                            if !leases.try_acquire() {
                                self.refuse(
                                    i,
                                    "the producer has dropped this buffer; wait for it to \
                                     publish a new one",
                                );
                                return false;
                            }
                        }
                        let undo = |leases: &Option<Arc<ExportLeases>>| {
                            if let Some(leases) = leases {
                                leases.release();
                            }
                        };
                        let Ok(target) = conn.stream.try_clone() else {
                            undo(&self.leases);
                            return false;
                        };
                        let fd = self.fd.as_ref().map(|f| f.as_fd());
                        // The connection is non-blocking and empty: the small offer fits.
                        if framing::send(&conn.stream, Kind::Offer, &self.offer, fd).is_err() {
                            undo(&self.leases);
                            return false;
                        }
                        // Register for notifications and send the latest one, under one lock,
                        // so none falls between the two.
                        {
                            let mut notify =
                                self.shared.notify.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(frame) = notify.last_ready {
                                let _ = framing::send(
                                    &conn.stream,
                                    Kind::Ready,
                                    &frame.to_le_bytes(),
                                    None,
                                );
                            }
                            notify.targets.push((conn.id, target));
                        }
                        conn.state = ConnState::Leased;
                        self.shared.update(|s| {
                            s.active_leases += 1;
                            s.total_leases += 1;
                        });
                    }
                    (ConnState::Handshake { .. }, kind) => {
                        self.refuse(
                            i,
                            &format!(
                                "expected a version-{} hello, got {kind:?}",
                                framing::PROTOCOL_VERSION
                            ),
                        );
                        return false;
                    }
                    (ConnState::Leased, _) => {} // consumers send nothing after hello; ignore
                },
                Err(ReadError::Protocol(why)) => {
                    self.refuse(i, &why);
                    return false;
                }
                Err(_) => return false,
            }
        }
    }

    fn refuse(&mut self, i: usize, why: &str) {
        let conn = &self.conns[i];
        if matches!(conn.state, ConnState::Handshake { .. }) {
            let _ = framing::send(&conn.stream, Kind::Refuse, clip(why), None);
        }
        self.shared.update(|s| s.dropped_bad += 1);
    }

    fn remove(&mut self, i: usize) {
        let conn = self.conns.swap_remove(i);
        if matches!(conn.state, ConnState::Leased) {
            // Drop our duplicate too, or the consumer would not see the connection close.
            self.shared
                .notify
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .targets
                .retain(|(id, _)| *id != conn.id);
            self.shared.update(|s| s.active_leases -= 1);
            if let Some(leases) = &self.leases {
                leases.release();
            }
        }
    }
}

/// `text` cut to at most [`framing::MAX_PAYLOAD`] bytes, at a character boundary.
fn clip(text: &str) -> &[u8] {
    let mut end = text.len().min(framing::MAX_PAYLOAD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}
