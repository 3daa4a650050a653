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

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::os::{self, PollRequest};
use crate::service::{
    self, Claim, Expected, Hello, Peer, Refusal, Serve, Service, ServiceOptions, ServiceStats,
    Traffic,
};

use super::allocation::ExportLeases;
use super::descriptor::Descriptor;
use super::framing::{self, Kind};
use super::rendezvous::Names;
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
    /// Most connections at once (handshaking and leased). When full, a newcomer may take the
    /// place of a connection that has not completed its hello (silent, or trickling it) of the
    /// uid holding the most connections; a lease is never evicted. Otherwise the newcomer is
    /// told the exporter is busy ([`Error::Busy`] on its side, after retrying until its
    /// timeout).
    pub max_connections: usize,
    /// Most connections of one uid other than the exporter's own (its fair share). `None`
    /// (the default): half of `max_connections`, so that one other user can never take every
    /// connection.
    pub max_per_uid: Option<usize>,
    /// Most connections of one consumer process. An honest consumer needs one lease per
    /// exporter (its imports of one buffer share a mapping and its lease), so the default, 8,
    /// leaves room for retries and several contexts; it keeps one process from hoarding the
    /// exporter. Peers in a PID namespace this process cannot see (another pod) count per uid
    /// only.
    pub max_per_process: usize,
    /// How long a connection may take to complete its hello (at least
    /// [`MIN_HANDSHAKE_TIMEOUT`]; default 5 s).
    pub handshake_timeout: Duration,
    /// Share through this group, for consumers running as other uids: the directory, if
    /// created, is 3770 (setgid, sticky) and group-owned by it (an existing group-writable one
    /// must be setgid, sticky and group-owned by it), the descriptor 0640 and the socket 0660,
    /// both of this group. The process must be a member of the group. With the legacy
    /// transport the descriptor carries a bearer handle: every member of the group can map the
    /// memory. `None` (the default): the directory 0700, the files 0600.
    pub group: Option<u32>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            allowed: AllowedUsers::SameUser,
            expected_consumers: 1,
            max_connections: 128,
            max_per_uid: None,
            max_per_process: 8,
            handshake_timeout: Duration::from_secs(5),
            group: None,
        }
    }
}

/// The shortest handshake timeout accepted: an honest peer sends its hello at once, but a
/// busy machine may take some milliseconds to schedule it (with 0, most are refused).
pub const MIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(50);

impl ExportOptions {
    /// Checks the options a careless caller could set to something that refuses everyone.
    pub(crate) fn check(&self) -> Result<()> {
        if self.handshake_timeout < MIN_HANDSHAKE_TIMEOUT {
            return Err(Error::InvalidArgument(format!(
                "handshake_timeout {:?} is shorter than {MIN_HANDSHAKE_TIMEOUT:?}: honest \
                 consumers would be refused before their hello arrives",
                self.handshake_timeout
            )));
        }
        Ok(())
    }

    /// The socket service's settings for these options, with `max_connections` connections.
    pub(crate) fn service(&self, max_connections: usize, after: Traffic) -> ServiceOptions {
        let max_connections = max_connections.max(1);
        ServiceOptions {
            allowed: self.allowed.clone(),
            max_connections,
            max_per_uid: self
                .max_per_uid
                .unwrap_or_else(|| service::default_per_uid(max_connections)),
            max_per_process: self.max_per_process,
            handshake_timeout: self.handshake_timeout,
            after_admission: after,
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
    /// Connections closed for breaking the protocol, not saying hello in time, asking for a
    /// buffer its owner has dropped, or expecting another buffer or generation than the one
    /// published (told which one is, without a lease).
    pub dropped_bad: usize,
    /// Connections closed because the exporter was full or the peer's share was taken:
    /// handshakes evicted for a newcomer, and newcomers told the exporter is busy.
    pub dropped_full: usize,
}

impl From<ServiceStats> for ExportStats {
    fn from(s: ServiceStats) -> ExportStats {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        ExportStats {
            active_leases: s.admitted,
            total_leases: n(s.admitted_total),
            refused_uid: n(s.refused_uid),
            dropped_bad: n(s.dropped_bad + s.refused_by_hook),
            dropped_full: n(s.busy + s.evicted),
        }
    }
}

/// Where "ready" notifications go: the leased connections (duplicates of the service thread's
/// sockets), so that [`Exporter::notify_ready`] sends from the caller's thread without a hop
/// through the service thread.
#[derive(Default)]
struct Notify {
    last_ready: Option<u64>,
    targets: Vec<(u64, UnixStream)>,
}

fn lock(notify: &Mutex<Notify>) -> std::sync::MutexGuard<'_, Notify> {
    notify.lock().unwrap_or_else(|p| p.into_inner())
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
    notify: Arc<Mutex<Notify>>,
    expected_consumers: usize,
    service: Service,
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
    /// the name's lock) is [`Error::NameInUse`], a stale socket of a dead one is replaced
    /// atomically. Each publication of a name gets a higher generation than the last, also
    /// after a clean restart, so consumers never confuse it with the old one.
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
        if fd.is_none() {
            return Err(Error::InvalidArgument(
                "bind_raw of an fd-transport descriptor needs the memory's fd: without it every \
                 consumer would be refused"
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
        options.check()?;
        let names = Names::for_path(path)?;
        let claim = Claim::take(&names, options.group)?;
        claim.check_replaced_entry(&names.descriptor_name())?;
        let file_generation = claim
            .dir()
            .read_file(&names.descriptor_name(), super::descriptor::MAX_ENCODED_LEN)
            .ok()
            .and_then(|b| Descriptor::decode(&b).ok())
            .map_or(0, |d| d.generation);
        descriptor.generation = claim
            .previous_generation()
            .max(file_generation)
            .saturating_add(1);
        descriptor.exporter_uid = os::effective_uid();
        claim.record_generation(descriptor.generation)?;
        let encoded = descriptor.encode();

        let notify = Arc::new(Mutex::new(Notify::default()));
        let offerer = Offerer {
            serves: Expected {
                buffer_id: descriptor.buffer_id,
                generation: descriptor.generation,
            },
            offer: encoded.to_vec(),
            fd,
            leases,
            notify: Arc::clone(&notify),
            name: names.name.clone(),
        };
        let service = Service::start(
            claim,
            options.service(options.max_connections, Traffic::Ignore),
            offerer,
            &format!("cuda-ipc export {}", names.name),
        )?;
        let exporter = Exporter {
            names,
            descriptor,
            notify,
            expected_consumers: options.expected_consumers,
            service,
        };
        // Publish last: whoever sees the descriptor finds the socket listening. On failure the
        // exporter drops here, which removes the socket.
        let file_mode = match options.group {
            Some(_) => 0o640,
            None => 0o600,
        };
        exporter.service.claim().dir().write_atomic(
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
        self.service.stats().get().into()
    }

    /// Tells every consumer holding a lease (and every later one) that the buffer now holds
    /// `frame`; consumers wait for it with
    /// [`SharedDeviceBuffer::wait_ready`]. Frames should increase.
    pub fn notify_ready(&self, frame: u64) -> Result<()> {
        let mut notify = lock(&self.notify);
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
        self.service
            .stats()
            .wait_for(timeout, |s| done(&(*s).into()), |s| what(&(*s).into()))
            .map(ExportStats::from)
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
        self.service.stop();
        // Remove what we published (we still hold the lock), unless something else replaced
        // it. The service removes its socket when it drops, after this; the lock file stays:
        // it keeps the generation, and removing it would let two exporters lock different
        // files of one name.
        let dir = self.service.claim().dir();
        let desc_name = self.names.descriptor_name();
        let ours = dir
            .read_file(&desc_name, super::descriptor::MAX_ENCODED_LEN)
            .ok()
            .and_then(|b| Descriptor::decode(&b).ok())
            .is_some_and(|d| {
                d.buffer_id == self.descriptor.buffer_id
                    && d.generation == self.descriptor.generation
            });
        if ours {
            if let Err(e) = dir.unlink(&desc_name) {
                crate::drop_log::record("Exporter (removing the descriptor)", e);
            }
        }
    }
}

/// What an exporter serves: the offer (the descriptor, and the memory's fd), and a lease per
/// admitted consumer.
struct Offerer {
    /// The buffer and generation served (what a consumer's hello must expect, if anything).
    serves: Expected,
    offer: Vec<u8>,
    fd: Option<OwnedFd>,
    /// The buffer's lease count (owned buffers): a lease granted here counts there too, so
    /// the owner never frees a legacy buffer a consumer still maps.
    leases: Option<Arc<ExportLeases>>,
    notify: Arc<Mutex<Notify>>,
    name: String,
}

impl Serve for Offerer {
    fn admit(
        &mut self,
        peer: &Peer,
        hello: &Hello,
        stream: &UnixStream,
    ) -> std::result::Result<(), Refusal> {
        // A consumer that read another descriptor (another buffer, another generation) is told
        // what is served instead, before any lease is counted: it did not get what it asked
        // for, and must not count as a consumer that used this buffer.
        if hello.expect.is_some_and(|e| e != self.serves) {
            return Err(Refusal::Mismatch(self.offer.clone()));
        }
        // Count the lease before the memory leaves: once the owner has dropped the buffer, no
        // new consumer gets it (its free may be under way).
        if let Some(leases) = &self.leases {
            if !leases.try_acquire() {
                return Err(Refusal::Refuse(
                    "the producer has dropped this buffer; wait for it to publish a new one".into(),
                ));
            }
        }
        let undo = |leases: &Option<Arc<ExportLeases>>| {
            if let Some(leases) = leases {
                leases.release();
            }
        };
        let Ok(target) = stream.try_clone() else {
            undo(&self.leases);
            return Err(Refusal::Close);
        };
        let fd = self.fd.as_ref().map(|f| f.as_fd());
        // The connection is non-blocking and empty: the small offer fits.
        if framing::send(stream, Kind::Offer, &self.offer, fd).is_err() {
            undo(&self.leases);
            return Err(Refusal::Close);
        }
        // Register for notifications and send the latest one, under one lock, so none falls
        // between the two.
        let mut notify = lock(&self.notify);
        if let Some(frame) = notify.last_ready {
            let _ = framing::send(stream, Kind::Ready, &frame.to_le_bytes(), None);
        }
        notify.targets.push((peer.id, target));
        Ok(())
    }

    fn left(&mut self, peer: &Peer) {
        // Drop our duplicate too, or the consumer would not see the connection close.
        lock(&self.notify).targets.retain(|(id, _)| *id != peer.id);
        if let Some(leases) = &self.leases {
            leases.release();
        }
    }

    fn stop(&mut self, admitted: Vec<(Peer, UnixStream)>) {
        lock(&self.notify).targets.clear();
        let leased: Vec<UnixStream> = admitted.into_iter().map(|(_, s)| s).collect();
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
