//! The named-socket service: one hardened Unix-socket server that both an
//! [`Exporter`](crate::ipc::Exporter) and a channel [`Publisher`](crate::pubsub::Publisher)
//! run, so that what protects one protects the other.
//!
//! A service publishes `<dir>/<name>.sock` in a checked rendezvous directory and admits peers
//! over it. What it serves is a hook ([`Serve`]): an exporter answers an admitted consumer with
//! its offer (the descriptor, and the memory's fd) and keeps the connection as the lease; a
//! channel publisher answers with its welcome and the subscriber's control pages, and keeps the
//! connection as the membership. Everything else is here, once:
//!
//! - **Claiming the name** ([`Claim`]): the directory is opened and checked, `<name>.lock` is
//!   held with `flock` for the service's life (a second publisher of the name gets
//!   [`Error::NameInUse`]), and whatever is left at `<name>.sock` is identified before it is
//!   replaced (a dead exporter's socket, or something planted there: a file, a socket of
//!   another user, a process listening without the lock — each named as what it is).
//! - **Binding**: under a temporary name, `chmod`/`chgrp` through the directory, then renamed
//!   into place, so the published socket never has looser permissions.
//! - **Admission**, on one thread that owns every connection: each peer's uid (and groups) is
//!   checked with `SO_PEERCRED` against [`AllowedUsers`]; it must say hello within the
//!   handshake timeout, naming the protocol version and the name it asked for (a socket renamed
//!   into another name refuses its peers); accepts come in bounded batches and back off when the
//!   process is out of file descriptors, so a flood neither starves the peers already
//!   connected nor spins.
//! - **Fair shares**: no process holds more than `max_per_process` connections, no uid other
//!   than the service's own more than `max_per_uid`; when the service is full, a newcomer may
//!   take the place of a handshake that has not completed (silent, or trickling its hello a
//!   byte at a time) of whoever holds the most connections. An admitted peer (a lease, a
//!   membership) is never evicted.
//! - **Teardown** ([`Service`]'s `Drop`): the thread stops, the socket is unlinked if it is
//!   still ours (same inode), and the lock is released last.
//!
//! The client side ([`client`]) checks the socket before it connects (a socket, not a link,
//! owned by a trusted uid), checks who answers (`SO_PEERCRED`), says hello, and retries while
//! the service says it is busy.

pub(crate) mod claim;
pub(crate) mod client;
mod hello;
mod server;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ipc::AllowedUsers;
use crate::os::{self, PeerCredentials};

pub(crate) use claim::Claim;
pub(crate) use hello::{decode_hello, encode_hello, Expected, Hello, PROTOCOL_VERSION};

/// How a service admits peers.
#[derive(Debug, Clone)]
pub(crate) struct ServiceOptions {
    /// Who may connect (`SO_PEERCRED`, `SO_PEERGROUPS`).
    pub allowed: AllowedUsers,
    /// Most connections at once, handshaking and admitted (at least 1).
    pub max_connections: usize,
    /// Most connections of one uid other than the service's own (at least 1).
    pub max_per_uid: usize,
    /// Most connections of one process (peers in a PID namespace this process cannot see count
    /// per uid only).
    pub max_per_process: usize,
    /// How long a peer may take to complete its hello.
    pub handshake_timeout: Duration,
    /// Bytes from an admitted peer: ignored (leases send nothing that matters), or a reason to
    /// hang up (a subscriber never sends anything; one that does is gone).
    pub after_admission: Traffic,
}

/// What an admitted peer's bytes mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traffic {
    /// Read and discarded.
    Ignore,
    /// The peer is dropped.
    HangUp,
}

/// One peer, as the service knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Unique in the service's life.
    pub id: u64,
    /// Who connected.
    pub cred: PeerCredentials,
}

/// Why a hook does not admit a peer.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Tell the peer this (it gets [`Error::Refused`]).
    Refuse(String),
    /// The peer expects another buffer than the one served: tell it which one is (a
    /// `Mismatch` message with this encoded descriptor), so that it can read the name's
    /// descriptor again or report the substitution.
    Mismatch(Vec<u8>),
    /// Close without a word (the connection failed).
    Close,
}

/// What a service serves: the part that differs between an exporter and a channel.
pub(crate) trait Serve: Send + 'static {
    /// A peer completed its `hello`: send it what is served on `stream` (non-blocking; the
    /// connection is fresh, so a few small messages fit its buffer), or refuse it.
    fn admit(
        &mut self,
        peer: &Peer,
        hello: &Hello,
        stream: &UnixStream,
    ) -> std::result::Result<(), Refusal>;
    /// An admitted peer is gone: its connection closed, it broke the protocol, or it was
    /// hung up on.
    fn left(&mut self, peer: &Peer);
    /// The service stops: the connections of the peers still admitted, for the hook to close
    /// or keep (an exporter keeps counting legacy leases until they hang up).
    fn stop(&mut self, admitted: Vec<(Peer, UnixStream)>);
}

/// What the service has seen. Each refusal and "busy" is counted before it is sent, so a peer
/// that got its answer finds it counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ServiceStats {
    /// Peers admitted now.
    pub admitted: usize,
    /// Peers admitted so far.
    pub admitted_total: u64,
    /// Peers refused for their uid.
    pub refused_uid: u64,
    /// Peers the hook refused (a mismatched expectation included).
    pub refused_by_hook: u64,
    /// Connections dropped for breaking the protocol or not completing the hello in time.
    pub dropped_bad: u64,
    /// Newcomers told the service is busy (full, or their share taken).
    pub busy: u64,
    /// Handshakes evicted to make room for a newcomer.
    pub evicted: u64,
}

/// The statistics and a condition variable signalled on every change.
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    stats: Mutex<ServiceStats>,
    changed: Condvar,
}

impl StatsCell {
    pub fn get(&self) -> ServiceStats {
        *self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, ServiceStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ServiceStats)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `done` holds (see [`crate::deadline::wait_for`]).
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&ServiceStats) -> bool,
        what: impl Fn(&ServiceStats) -> String,
    ) -> Result<ServiceStats> {
        crate::deadline::wait_for(&self.stats, &self.changed, timeout, done, what).map(|g| *g)
    }
}

/// A running service: its thread, the wake socket that stops it, and the claimed name (lock,
/// directory, socket inode). Dropping it stops the thread, removes the socket if it is still
/// ours, and releases the lock, in that order.
pub(crate) struct Service {
    claim: Claim,
    socket_inode: u64,
    stats: Arc<StatsCell>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service({})", self.claim.names().socket.display())
    }
}

impl Service {
    /// Binds the claimed name's socket and starts serving it with `hook`.
    pub fn start(
        claim: Claim,
        options: ServiceOptions,
        hook: impl Serve,
        thread_name: &str,
    ) -> Result<Service> {
        let (listener, socket_inode) = claim.bind()?;
        let (wake, wake_rx) =
            UnixStream::pair().map_err(|e| Error::io("creating a service's wake socket", e))?;
        let stats = Arc::new(StatsCell::default());
        let server = server::Server::new(
            listener,
            wake_rx,
            options,
            Box::new(hook),
            Arc::clone(&stats),
            claim.names().name.clone(),
        );
        let mut service = Service {
            claim,
            socket_inode,
            stats,
            wake,
            thread: None,
        };
        // On failure, `service` drops here and unlinks the socket it bound.
        let thread = std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || server.run())
            .map_err(|e| Error::io("spawning a service thread", e))?;
        service.thread = Some(thread);
        Ok(service)
    }

    /// The claimed name: the directory, the names, the lock.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// What the service has seen.
    pub fn stats(&self) -> &StatsCell {
        &self.stats
    }

    /// Stops the thread (the hook's `stop` runs on it) and waits for it. Idempotent.
    pub fn stop(&mut self) {
        // Any byte (or EOF) stops the thread; MSG_NOSIGNAL: no SIGPIPE if it is gone.
        let _ = os::send_with_fds(self.wake.as_fd(), b"Q", &[]);
        let _ = self.wake.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                crate::drop_log::record("a service thread", "it panicked");
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
        let sock_name = self.claim.names().socket_name();
        let ours = self
            .claim
            .dir()
            .stat_entry(&sock_name)
            .is_ok_and(|st| st.ino == self.socket_inode);
        if ours {
            if let Err(e) = self.claim.dir().unlink(&sock_name) {
                crate::drop_log::record("a service (removing its socket)", e);
            }
        }
        // The claim (and its lock) drops after this: no one else can bind the name while the
        // socket is still ours.
    }
}

/// The default share of one uid: half of the connections (so the owner's uid and others keep
/// the other half), at least one.
pub(crate) fn default_per_uid(max_connections: usize) -> usize {
    (max_connections / 2).max(1)
}

/// `text` cut to at most [`framing::MAX_PAYLOAD`](crate::ipc::framing::MAX_PAYLOAD) bytes, at
/// a character boundary.
pub(crate) fn clip(text: &str) -> &[u8] {
    let mut end = text.len().min(crate::ipc::framing::MAX_PAYLOAD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::framing::{FrameReader, Kind};
    use crate::ipc::rendezvous::Names;
    use crate::ipc::ExportOptions;

    /// A hook that admits everyone with an empty "offer" and counts who left.
    struct Echo(Arc<Mutex<Vec<u64>>>);

    impl Serve for Echo {
        fn admit(
            &mut self,
            _: &Peer,
            _: &Hello,
            s: &UnixStream,
        ) -> std::result::Result<(), Refusal> {
            crate::ipc::framing::send(s, Kind::Offer, b"hi", None).map_err(|_| Refusal::Close)
        }
        fn left(&mut self, peer: &Peer) {
            self.0.lock().unwrap().push(peer.id);
        }
        fn stop(&mut self, _: Vec<(Peer, UnixStream)>) {}
    }

    fn names(tag: &str) -> Names {
        let r: [u8; 6] = os::random_bytes().unwrap();
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("cuda-ipc-service-{tag}-{hex}"));
        Names::for_path(dir.join("svc")).unwrap()
    }

    fn start(names: &Names, options: ServiceOptions) -> Result<(Service, Arc<Mutex<Vec<u64>>>)> {
        let left = Arc::new(Mutex::new(Vec::new()));
        let claim = Claim::take(names, None)?;
        let s = Service::start(claim, options, Echo(Arc::clone(&left)), "test service")?;
        Ok((s, left))
    }

    fn hello(names: &Names) -> (UnixStream, Kind) {
        let s = UnixStream::connect(&names.socket).unwrap();
        let _ = crate::ipc::framing::send(&s, Kind::Hello, &encode_hello(&names.name, None), None);
        let m = FrameReader::new()
            .read_within(&s, Duration::from_secs(5), "service")
            .unwrap();
        (s, m.kind)
    }

    #[test]
    fn a_service_owns_its_name_and_leaves_nothing_behind() {
        let n = names("owns");
        let options = ExportOptions::default().service(8, Traffic::Ignore);
        let (service, left) = start(&n, options.clone()).unwrap();
        assert!(n.socket.exists());
        // A second one is refused while the first lives, and says who holds the name.
        let err = start(&n, options.clone()).unwrap_err();
        assert!(
            matches!(&err, Error::NameInUse { detail, .. } if detail.contains("a live publisher holds")),
            "{err:?}"
        );
        let (peer, kind) = hello(&n);
        assert_eq!(kind, Kind::Offer);
        drop(peer);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while left.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the peer's leaving was never seen"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(service);
        assert!(!n.socket.exists(), "the socket outlived its service");
        // The name is free again; a claim dropped before its service starts binds nothing.
        let claim = Claim::take(&n, None).unwrap();
        drop(claim);
        assert!(!n.socket.exists());
        let (again, _) = start(&n, options).unwrap();
        drop(again);
        std::fs::remove_dir_all(&n.dir).unwrap();
    }

    #[test]
    fn a_silent_peer_is_dropped_at_the_handshake_deadline() {
        let n = names("silent");
        let options = ServiceOptions {
            handshake_timeout: Duration::from_millis(100),
            ..ExportOptions::default().service(8, Traffic::Ignore)
        };
        let (service, _) = start(&n, options).unwrap();
        let silent = UnixStream::connect(&n.socket).unwrap();
        let m = FrameReader::new()
            .read_within(&silent, Duration::from_secs(5), "service")
            .unwrap();
        assert_eq!(m.kind, Kind::Refuse);
        assert!(String::from_utf8_lossy(&m.payload).contains("no hello"));
        // Counted right after the refusal is sent.
        service
            .stats()
            .wait_for(
                Duration::from_secs(5),
                |s| s.dropped_bad == 1,
                |s| format!("the silent peer counted ({s:?})"),
            )
            .unwrap();
        drop(service);
        std::fs::remove_dir_all(&n.dir).unwrap();
    }
}
