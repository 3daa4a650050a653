//! The exporter: publishes a shared buffer under a name and serves its consumers.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::os::{self, PollRequest};

use super::allocation::ExportLeases;
use super::channel::{self, FrameReader, Kind, ReadError};
use super::descriptor::Descriptor;
use super::rendezvous::{prepare_dir, read_limited, write_atomic, Names};
use super::shared_buffer::SharedDeviceBuffer;

/// Which users may take the memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowedUsers {
    /// Only processes running as the exporter's own effective uid (the default).
    #[default]
    SameUser,
    /// Only these uids.
    Uids(Vec<u32>),
    /// Anyone who can reach the socket.
    Any,
}

impl AllowedUsers {
    fn allows(&self, uid: u32, own: u32) -> bool {
        match self {
            AllowedUsers::SameUser => uid == own,
            AllowedUsers::Uids(list) => list.contains(&uid),
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
    /// Most connections at once (handshaking and leased). When full, a new connection
    /// replaces the oldest one still handshaking; when every slot holds a lease, it is closed.
    pub max_connections: usize,
    /// How long a connection may take to say hello.
    pub handshake_timeout: Duration,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            allowed: AllowedUsers::SameUser,
            expected_consumers: 1,
            max_connections: 128,
            handshake_timeout: Duration::from_secs(5),
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
    /// Connections closed because `max_connections` were open.
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
/// dropping it stops serving, closes every lease connection and removes the published files.
///
/// The exporter does not borrow the buffer, so the producer can keep writing frames into it
/// while it is published. Keep the buffer alive until [`wait_released`](Self::wait_released)
/// returns: consumers that import a freed legacy buffer get a driver error, and with the fd
/// transport the memory lives on as long as the exporter (which holds its fd) or any mapping.
pub struct Exporter {
    names: Names,
    descriptor: Descriptor,
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
    expected_consumers: usize,
    socket_inode: u64,
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

    /// Publishes `buf` at `path` with `options`. The directory is created 0700 if missing and
    /// refused if others could write to it; a live exporter of the same name is an error, a
    /// stale socket of a dead one is replaced. A buffer published again under a name gets the
    /// next generation, so consumers never confuse it with the old one.
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

    /// Publishes a descriptor and (for the fd transport) a memory fd that this crate did not
    /// allocate, e.g. memory exported by another library, or a crafted descriptor in tests.
    /// The caller keeps the memory alive while the exporter lives; the generation is set as
    /// for [`bind_with`](Self::bind_with).
    pub fn bind_raw(
        path: impl AsRef<Path>,
        descriptor: &Descriptor,
        fd: Option<OwnedFd>,
        options: ExportOptions,
    ) -> Result<Exporter> {
        Exporter::publish(path.as_ref(), *descriptor, fd, options, None)
    }

    fn publish(
        path: &Path,
        mut descriptor: Descriptor,
        fd: Option<OwnedFd>,
        options: ExportOptions,
        leases: Option<Arc<ExportLeases>>,
    ) -> Result<Self> {
        let names = Names::for_path(path)?;
        prepare_dir(&names.dir)?;

        if names.socket.exists() {
            if UnixStream::connect(&names.socket).is_ok() {
                return Err(Error::InvalidArgument(format!(
                    "{} is served by a live exporter; choose another name or stop it first",
                    names.socket.display()
                )));
            }
            std::fs::remove_file(&names.socket)
                .map_err(|e| Error::io(format!("removing stale {}", names.socket.display()), e))?;
        }
        let previous = read_limited(&names.descriptor, super::descriptor::ENCODED_LEN)
            .ok()
            .and_then(|b| Descriptor::decode(&b).ok())
            .map_or(0, |d| d.generation);
        descriptor.generation = previous + 1;
        let encoded = descriptor.encode();

        let listener = UnixListener::bind(&names.socket)
            .map_err(|e| Error::io(format!("binding {}", names.socket.display()), e))?;
        std::fs::set_permissions(&names.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("chmod 0600 {}", names.socket.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        let socket_inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(&names.socket).map_err(|e| Error::io("stat socket", e))?,
        );
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
        };
        // Publish last: whoever sees the descriptor finds the socket listening.
        write_atomic(&exporter.names.descriptor, &encoded)?;
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
            let _ = channel::send(stream, Kind::Ready, &msg, None);
        }
        Ok(())
    }

    fn wait_until(
        &self,
        timeout: Duration,
        what: impl Fn(&ExportStats) -> String,
        done: impl Fn(&ExportStats) -> bool,
    ) -> Result<ExportStats> {
        let deadline = Instant::now() + timeout;
        let mut stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if done(&stats) {
                return Ok(*stats);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: what(&stats),
                    waited: timeout,
                });
            }
            stats = self
                .shared
                .changed
                .wait_timeout(stats, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
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
        let _ = (&self.wake).write_all(b"Q"); // any byte (or EOF) stops the server thread
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                crate::drop_log::record("Exporter", "its server thread panicked");
            }
        }
        // Remove what we published, unless a newer exporter replaced it.
        let ours = read_limited(&self.names.descriptor, super::descriptor::ENCODED_LEN)
            .ok()
            .and_then(|b| Descriptor::decode(&b).ok())
            .is_some_and(|d| {
                d.buffer_id == self.descriptor.buffer_id
                    && d.generation == self.descriptor.generation
            });
        if ours {
            if let Err(e) = std::fs::remove_file(&self.names.descriptor) {
                crate::drop_log::record("Exporter (removing the descriptor)", e);
            }
        }
        let socket_ours = std::fs::metadata(&self.names.socket)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == self.socket_inode)
            .unwrap_or(false);
        if socket_ours {
            if let Err(e) = std::fs::remove_file(&self.names.socket) {
                crate::drop_log::record("Exporter (removing the socket)", e);
            }
        }
    }
}

enum ConnState {
    Handshake { deadline: Instant },
    Leased,
}

struct Conn {
    id: u64,
    stream: UnixStream,
    reader: FrameReader,
    state: ConnState,
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
        // Shutting down: every lease connection closes here.
        let leased = self
            .conns
            .iter()
            .filter(|c| matches!(c.state, ConnState::Leased))
            .count();
        self.shared
            .notify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .targets
            .clear();
        self.conns.clear();
        self.shared.update(|s| s.active_leases -= leased);
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    // Out of descriptors: the connection waits in the backlog; do not spin.
                    std::thread::sleep(Duration::from_millis(20));
                    return;
                }
                Err(_) => return, // WouldBlock, or a transient error: poll again
            };
            if self.conns.len() >= self.options.max_connections.max(1) {
                // Full: make room by dropping the oldest connection still in its handshake
                // (a flood of idle connections cannot lock consumers out); if every slot
                // holds a lease, the newcomer is the one closed.
                let oldest = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| match c.state {
                        ConnState::Handshake { deadline } => Some((deadline, i)),
                        ConnState::Leased => None,
                    })
                    .min();
                self.shared.update(|s| s.dropped_full += 1);
                match oldest {
                    Some((_, i)) => {
                        self.conns.swap_remove(i);
                    }
                    None => continue, // the newcomer is closed by drop
                }
            }
            let cred = match os::peer_credentials(stream.as_fd()) {
                Ok(c) => c,
                Err(_) => {
                    self.shared.update(|s| s.dropped_bad += 1);
                    continue;
                }
            };
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            if !self.options.allowed.allows(cred.uid, self.own_uid) {
                let reason = format!(
                    "uid {} may not import {:?} (the exporter allows {:?}; exporter uid {})",
                    cred.uid, self.name, self.options.allowed, self.own_uid
                );
                let _ = channel::send(&stream, Kind::Refuse, reason.as_bytes(), None);
                self.shared.update(|s| s.refused_uid += 1);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_id += 1;
            self.conns.push(Conn {
                id: self.next_id,
                stream,
                reader: FrameReader::new(),
                state: ConnState::Handshake {
                    deadline: Instant::now() + self.options.handshake_timeout,
                },
            });
        }
    }

    /// Reads from connection `i`; false to drop it.
    fn service(&mut self, i: usize) -> bool {
        let conn = &mut self.conns[i];
        match conn.reader.fill(&conn.stream) {
            Ok(_) => {}
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
                                == channel::PROTOCOL_VERSION =>
                    {
                        let fd = self.fd.as_ref().map(|f| f.as_fd());
                        // The connection is non-blocking and empty: the small offer fits.
                        if channel::send(&conn.stream, Kind::Offer, &self.offer, fd).is_err() {
                            return false;
                        }
                        // Register for notifications and send the latest one, under one lock,
                        // so none falls between the two.
                        let Ok(target) = conn.stream.try_clone() else {
                            return false;
                        };
                        {
                            let mut notify =
                                self.shared.notify.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(frame) = notify.last_ready {
                                let _ = channel::send(
                                    &conn.stream,
                                    Kind::Ready,
                                    &frame.to_le_bytes(),
                                    None,
                                );
                            }
                            notify.targets.push((conn.id, target));
                        }
                        conn.state = ConnState::Leased;
                        if let Some(leases) = &self.leases {
                            leases.acquire();
                        }
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
                                channel::PROTOCOL_VERSION
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
            let _ = channel::send(&conn.stream, Kind::Refuse, why.as_bytes(), None);
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
