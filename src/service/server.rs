//! The service's thread: accepts, checks and admits peers, and watches the admitted ones'
//! connections until they close. See the [module docs](super) for the rules it enforces.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ipc::framing::{self, FrameReader, Kind, ReadError};
use crate::os::{self, PeerCredentials, PollRequest};

use super::{clip, decode_hello, Peer, Refusal, Serve, ServiceOptions, StatsCell, Traffic};

/// Most connections accepted in one round, so that a flood cannot keep the thread from serving
/// the connections it already has.
const ACCEPT_BATCH: usize = 64;
/// How long a refusal or a "busy" may take to send before the connection is dropped anyway.
const REPLY_TIMEOUT: Duration = Duration::from_millis(200);

enum State {
    Handshake { deadline: Instant },
    Admitted,
}

struct Conn {
    peer: Peer,
    stream: UnixStream,
    reader: FrameReader,
    state: State,
}

impl Conn {
    fn is_handshake(&self) -> bool {
        matches!(self.state, State::Handshake { .. })
    }
}

/// Which limit a newcomer reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// Its process's share (`max_per_process`).
    Process,
    /// Its uid's share (`max_per_uid`; the service's own uid only for peers in other PID
    /// namespaces).
    Uid,
    /// The service's `max_connections`.
    Full,
    /// The last [`reserve`] places, kept for peers that hold no connection yet.
    Reserve,
}

/// Places kept for newcomers that hold no connection yet: an eighth of the service (none in a
/// service of fewer than 8 places, where one process may want them all).
fn reserve(max_connections: usize) -> usize {
    max_connections / 8
}

/// Whose connections count together for a share: one process (when its PID is visible here),
/// and one uid.
fn process_of(cred: &PeerCredentials) -> Option<(u32, i32)> {
    (cred.pid > 0).then_some((cred.uid, cred.pid))
}

pub(super) struct Server {
    listener: UnixListener,
    wake_rx: UnixStream,
    options: ServiceOptions,
    hook: Box<dyn Serve>,
    stats: Arc<StatsCell>,
    name: String,
    own_uid: u32,
    conns: Vec<Conn>,
    next_id: u64,
}

impl Server {
    pub(super) fn new(
        listener: UnixListener,
        wake_rx: UnixStream,
        options: ServiceOptions,
        hook: Box<dyn Serve>,
        stats: Arc<StatsCell>,
        name: String,
    ) -> Server {
        Server {
            listener,
            wake_rx,
            options,
            hook,
            stats,
            name,
            own_uid: os::effective_uid(),
            conns: Vec::new(),
            next_id: 0,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let now = Instant::now();
            let next_deadline = self
                .conns
                .iter()
                .filter_map(|c| match c.state {
                    State::Handshake { deadline } => Some(deadline),
                    State::Admitted => None,
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
            if let Err(e) = os::poll(&mut polls, timeout) {
                crate::drop_log::record("a service thread (poll)", e);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if polls[0].is_ready() {
                break; // asked to stop, or the owner is gone
            }
            // Connections accepted below come after the polled ones and are not looked at in
            // this round; walking backwards keeps indices valid across swap_remove.
            let ready: Vec<bool> = polls[2..].iter().map(PollRequest::is_ready).collect();
            let now = Instant::now();
            for i in (0..self.conns.len().min(ready.len())).rev() {
                let keep = if ready[i] {
                    self.service(i)
                } else {
                    match self.conns[i].state {
                        State::Handshake { deadline } if now >= deadline => {
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
            if polls[1].is_ready() {
                self.accept_batch();
            }
        }
        let admitted: Vec<(Peer, UnixStream)> = self
            .conns
            .drain(..)
            .filter(|c| !c.is_handshake())
            .map(|c| (c.peer, c.stream))
            .collect();
        let n = admitted.len();
        self.hook.stop(admitted);
        self.stats
            .update(|s| s.admitted = s.admitted.saturating_sub(n));
    }

    fn accept_batch(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE), or a transient failure: the
                    // connection waits in the backlog; back off instead of spinning on a
                    // listener that stays readable.
                    let pause = match e.raw_os_error() {
                        Some(libc::EMFILE) | Some(libc::ENFILE) => Duration::from_millis(20),
                        _ => Duration::from_millis(10),
                    };
                    std::thread::sleep(pause);
                    return;
                }
            };
            self.consider(stream);
        }
    }

    /// A new connection: who it is, whether it may connect, and whether there is room for it.
    fn consider(&mut self, stream: UnixStream) {
        let Ok(cred) = os::peer_credentials(stream.as_fd()) else {
            self.stats.update(|s| s.dropped_bad += 1);
            return;
        };
        let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
        let groups = || os::peer_groups(stream.as_fd()).unwrap_or_default();
        if !self.options.allowed.allows(&cred, groups, self.own_uid) {
            // Only that it is not allowed: not who is, nor who the service is.
            let reason = format!(
                "uid {} is not allowed to use {:?}; ask its publisher to allow it",
                cred.uid, self.name
            );
            // Counted before it is said, so that a peer that got the answer sees the count.
            self.stats.update(|s| s.refused_uid += 1);
            let _ = framing::send(&stream, Kind::Refuse, clip(&reason), None);
            return;
        }
        if !self.make_room(&cred) {
            return self.busy(&stream, &cred);
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        self.next_id += 1;
        self.conns.push(Conn {
            peer: Peer {
                id: self.next_id,
                cred,
            },
            stream,
            reader: FrameReader::new(),
            state: State::Handshake {
                deadline: crate::deadline::after(self.options.handshake_timeout),
            },
        });
    }

    /// Connections counted against a newcomer `cred`: its process's, and its uid's. The
    /// service's own uid has no uid share for peers whose process is visible (they are limited
    /// per process; a process of one's own uid is not a boundary anyway); its peers in PID
    /// namespaces this process cannot see (pid 0: other pods) share one uid share, as another
    /// uid's peers do.
    fn shares(&self, cred: &PeerCredentials) -> (usize, usize) {
        let process = process_of(cred);
        let mut same_process = 0;
        let mut same_uid = 0;
        for c in &self.conns {
            if process.is_some() && process_of(&c.peer.cred) == process {
                same_process += 1;
            }
            if self.same_uid_share(&c.peer.cred, cred) {
                same_uid += 1;
            }
        }
        (same_process, same_uid)
    }

    /// Whether `a` counts against the uid share of `b` (see [`shares`](Self::shares)).
    fn same_uid_share(&self, a: &PeerCredentials, b: &PeerCredentials) -> bool {
        a.uid == b.uid && (b.uid != self.own_uid || (a.pid <= 0) == (b.pid <= 0))
    }

    /// Which limit a newcomer `cred` would exceed now, if any.
    fn over(&self, cred: &PeerCredentials) -> Option<Limit> {
        let (same_process, same_uid) = self.shares(cred);
        let visible = process_of(cred).is_some();
        if visible && same_process >= self.options.max_per_process.max(1) {
            return Some(Limit::Process);
        }
        let uid_limited = cred.uid != self.own_uid || !visible;
        if uid_limited && same_uid >= self.options.max_per_uid.max(1) {
            return Some(Limit::Uid);
        }
        let max = self.options.max_connections.max(1);
        let free = max.saturating_sub(self.conns.len());
        if free == 0 {
            return Some(Limit::Full);
        }
        // The last places are kept for peers that hold none yet (by process where it is
        // visible, else by uid share): however many others fill the rest, a newcomer gets in.
        let holds = if visible { same_process } else { same_uid };
        if holds > 0 && free <= reserve(max) {
            return Some(Limit::Reserve);
        }
        None
    }

    /// Makes room for a newcomer `cred` if it is within its shares and that is fair; false:
    /// no room. First every readable connection is read (dropping those that hung up,
    /// admitting completed hellos); then, if a limit is still reached, one handshake (silent,
    /// or trickling its hello) may be evicted: of the newcomer's own process or uid when that
    /// share is full (it replaces its own oldest), else, when the service is full, the oldest
    /// of the uid holding the most connections, unless that uid holds fewer than the
    /// newcomer's. An admitted peer is never evicted.
    fn make_room(&mut self, cred: &PeerCredentials) -> bool {
        if self.over(cred).is_none() {
            return true;
        }
        self.reap();
        let Some(limit) = self.over(cred) else {
            return true;
        };
        let mut per_uid: HashMap<u32, usize> = HashMap::new();
        for c in &self.conns {
            *per_uid.entry(c.peer.cred.uid).or_default() += 1;
        }
        let newcomer_uid = per_uid.get(&cred.uid).copied().unwrap_or(0);
        let process = process_of(cred);
        let victim = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_handshake())
            .filter(|(_, c)| match limit {
                Limit::Process => process_of(&c.peer.cred) == process,
                Limit::Uid => self.same_uid_share(&c.peer.cred, cred),
                // A peer that already holds places replaces its own oldest handshake; it
                // does not take the reserve from others.
                Limit::Reserve if process.is_some() => process_of(&c.peer.cred) == process,
                Limit::Reserve => self.same_uid_share(&c.peer.cred, cred),
                Limit::Full => per_uid[&c.peer.cred.uid] >= newcomer_uid,
            })
            .map(|(i, c)| (per_uid[&c.peer.cred.uid], std::cmp::Reverse(c.peer.id), i))
            .max();
        let Some((_, _, i)) = victim else {
            return false;
        };
        let evicted = self.conns.swap_remove(i);
        let why = format!(
            "{:?} is full and your hello was not complete: try again",
            self.name
        );
        self.stats.update(|s| s.evicted += 1);
        let _ = framing::send(&evicted.stream, Kind::Busy, clip(&why), None);
        // Evicting for a full share may leave the service full: check again.
        self.over(cred).is_none()
    }

    /// Reads every readable connection now, dropping those that hung up.
    fn reap(&mut self) {
        let mut polls: Vec<PollRequest> = self
            .conns
            .iter()
            .map(|c| PollRequest::readable(c.stream.as_raw_fd()))
            .collect();
        if os::poll(&mut polls, Duration::ZERO).is_ok() {
            for i in (0..self.conns.len()).rev() {
                if polls[i].is_ready() && !self.service(i) {
                    self.remove(i);
                }
            }
        }
    }

    /// Tells a newcomer there is no room for it, and why.
    fn busy(&self, stream: &UnixStream, cred: &PeerCredentials) {
        let (same_process, same_uid) = self.shares(cred);
        let why = match self.over(cred) {
            Some(Limit::Process) => format!(
                "process {} (uid {}) already has {same_process} connections to {:?}, its \
                 share (max_per_process)",
                cred.pid, cred.uid, self.name
            ),
            Some(Limit::Uid) => format!(
                "uid {} already has {same_uid} connections to {:?}, its share (max_per_uid)",
                cred.uid, self.name
            ),
            Some(Limit::Reserve) => format!(
                "the last {} places of {:?} are kept for peers that hold none, and yours \
                 holds {}",
                reserve(self.options.max_connections.max(1)),
                self.name,
                if process_of(cred).is_some() {
                    same_process
                } else {
                    same_uid
                }
            ),
            _ => format!(
                "{:?} already has {} connections (max_connections)",
                self.name,
                self.conns.len()
            ),
        };
        let text = format!("{why}; try again later");
        self.stats.update(|s| s.busy += 1);
        let _ = framing::send(stream, Kind::Busy, clip(&text), None);
    }

    /// Reads from connection `i`; false to drop it.
    fn service(&mut self, i: usize) -> bool {
        let conn = &mut self.conns[i];
        match conn.reader.fill(&conn.stream) {
            Ok(got) => {
                if got && !conn.is_handshake() && self.options.after_admission == Traffic::HangUp {
                    return false;
                }
            }
            Err(ReadError::Closed) => return false,
            Err(ReadError::Protocol(why)) => {
                self.refuse(i, &why);
                return false;
            }
            Err(ReadError::Io(_)) => return false,
        }
        loop {
            let conn = &mut self.conns[i];
            let message = match conn.reader.take() {
                Ok(Some(m)) => m,
                Ok(None) => return true,
                Err(ReadError::Protocol(why)) => {
                    self.refuse(i, &why);
                    return false;
                }
                Err(_) => return false,
            };
            if !conn.is_handshake() {
                continue; // Traffic::Ignore: well-formed messages after the hello mean nothing
            }
            if message.kind != Kind::Hello {
                let why = format!(
                    "expected a version-{} hello, got {:?}",
                    super::PROTOCOL_VERSION,
                    message.kind
                );
                self.refuse(i, &why);
                return false;
            }
            let hello = match decode_hello(&message.payload, &self.name) {
                Ok(h) => h,
                Err(why) => {
                    self.refuse(i, &why);
                    return false;
                }
            };
            match self.hook.admit(&conn.peer, &hello, &conn.stream) {
                Ok(()) => {
                    conn.state = State::Admitted;
                    self.stats.update(|s| {
                        s.admitted += 1;
                        s.admitted_total += 1;
                    });
                }
                Err(Refusal::Refuse(why)) => {
                    self.stats.update(|s| s.refused_by_hook += 1);
                    let _ = framing::send(&conn.stream, Kind::Refuse, clip(&why), None);
                    return false;
                }
                Err(Refusal::Mismatch(served)) => {
                    self.stats.update(|s| s.refused_by_hook += 1);
                    let _ = framing::send(&conn.stream, Kind::Mismatch, &served, None);
                    return false;
                }
                Err(Refusal::Close) => return false,
            }
        }
    }

    /// Tells a handshaking peer why it is dropped (an admitted one is just hung up on).
    fn refuse(&mut self, i: usize, why: &str) {
        self.stats.update(|s| s.dropped_bad += 1);
        let conn = &self.conns[i];
        if conn.is_handshake() {
            let _ = framing::send(&conn.stream, Kind::Refuse, clip(why), None);
        }
    }

    fn remove(&mut self, i: usize) {
        let conn = self.conns.swap_remove(i);
        if !conn.is_handshake() {
            self.hook.left(&conn.peer);
            self.stats
                .update(|s| s.admitted = s.admitted.saturating_sub(1));
        }
    }
}
