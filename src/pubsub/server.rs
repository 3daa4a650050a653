//! The channel's socket: a thread that admits subscribers (checking their uid), gives each
//! the channel page and a fresh page of its own, and notices when one goes away (its
//! connection closes, also when its process dies), so that it stops holding slots at once.
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::ipc::framing::{self, Kind};
use crate::ipc::AllowedUsers;
use crate::os::{self, PeerCredentials, PollRequest};

use super::layout::*;
use super::page::Page;
use super::protocol::join_point;
use super::wire::Welcome;

/// A subscriber the publisher serves.
#[derive(Debug)]
pub(crate) struct Member {
    /// Its id (unique in the publisher's life).
    pub id: u64,
    /// Its control page.
    pub page: Page,
    /// Who it is.
    pub cred: PeerCredentials,
    /// A duplicate of its connection, to hang up on it (eviction).
    pub conn: Option<UnixStream>,
}

/// Who is subscribed; shared by the publisher and the server thread.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    /// Live subscribers.
    pub live: Vec<Member>,
    /// Subscribers gone whose pages may still be written by queued GPU work: freed by the
    /// publisher once its control writes are done.
    pub retired: Vec<Member>,
    /// Subscribers admitted so far.
    pub joined: u64,
    /// Subscribers gone so far.
    pub left: u64,
    /// Connections refused (uid not allowed, or the channel full).
    pub refused: u64,
}

/// The roster and a condition variable signalled on every change.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    roster: Mutex<Roster>,
    /// Signalled when a subscriber joins or leaves.
    pub changed: Condvar,
}

impl Shared {
    /// Locks the roster (a poisoned lock is still usable: the roster has no broken state).
    pub fn lock(&self) -> MutexGuard<'_, Roster> {
        self.roster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` holds for the roster, or times out saying `what`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&Roster) -> bool,
        what: impl Fn(&Roster) -> String,
    ) -> crate::error::Result<MutexGuard<'_, Roster>> {
        crate::deadline::wait_for(&self.roster, &self.changed, timeout, done, what)
    }
}

/// The server thread's state.
pub(crate) struct Server {
    pub listener: UnixListener,
    pub wake_rx: UnixStream,
    pub shared: Arc<Shared>,
    pub chan: Arc<Page>,
    pub welcome: Welcome,
    pub allowed: AllowedUsers,
    pub own_uid: u32,
    pub name: String,
    pub conns: Vec<(u64, UnixStream)>,
    pub next_id: u64,
}

impl Server {
    /// Serves until the wake socket is readable (or closed).
    pub fn run(mut self) {
        loop {
            let mut req = vec![
                PollRequest::readable(self.wake_rx.as_raw_fd()),
                PollRequest::readable(self.listener.as_raw_fd()),
            ];
            req.extend(
                self.conns
                    .iter()
                    .map(|(_, s)| PollRequest::readable(s.as_raw_fd())),
            );
            if let Err(e) = os::poll(&mut req, Duration::from_secs(1)) {
                crate::drop_log::record("channel server (poll)", e);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if req[0].is_ready() {
                return; // dropping `self` closes every subscriber's connection
            }
            let gone: Vec<u64> = req[2..]
                .iter()
                .zip(&self.conns)
                .filter(|(r, _)| r.is_ready())
                .map(|(_, (id, _))| *id)
                .collect();
            for id in gone {
                self.check_conn(id);
            }
            if req[1].is_ready() {
                loop {
                    match self.listener.accept() {
                        Ok((stream, _)) => self.admit(stream),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // Out of fds, say: do not spin on a listener that stays readable.
                            crate::drop_log::record("channel server (accept)", e);
                            std::thread::sleep(Duration::from_millis(10));
                            break;
                        }
                    }
                }
            }
        }
    }

    /// A subscriber's connection is readable: it closed (or sent something it must not).
    fn check_conn(&mut self, id: u64) {
        let Some(pos) = self.conns.iter().position(|(i, _)| *i == id) else {
            return;
        };
        let mut byte = [0u8; 64];
        let still_open = {
            let s = &mut self.conns[pos].1;
            let _ = s.set_nonblocking(true);
            matches!(s.read(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        };
        if still_open {
            return;
        }
        // EOF, an error, or bytes a subscriber never sends: it is gone.
        self.conns.swap_remove(pos);
        let mut roster = self.shared.lock();
        if let Some(i) = roster.live.iter().position(|m| m.id == id) {
            let mut m = roster.live.swap_remove(i);
            // Its duplicate of the closed connection: nothing left to hang up on.
            m.conn = None;
            // A page the driver never saw has nothing queued against it: freed now. A
            // registered one waits for the publisher's control writes (`reap_retired`).
            if m.page.is_registered() {
                roster.retired.push(m);
            }
            roster.left += 1;
        }
        drop(roster);
        self.shared.changed.notify_all();
    }

    fn refuse(&self, stream: &UnixStream, reason: &str) {
        let _ = framing::send(stream, Kind::Refuse, reason.as_bytes(), None);
        self.shared.lock().refused += 1;
        self.shared.changed.notify_all();
    }

    fn admit(&mut self, stream: UnixStream) {
        if stream.set_nonblocking(false).is_err()
            || stream
                .set_write_timeout(Some(Duration::from_secs(1)))
                .is_err()
        {
            return;
        }
        let Ok(cred) = os::peer_credentials(stream.as_fd()) else {
            return;
        };
        let groups = || os::peer_groups(stream.as_fd()).unwrap_or_default();
        if !self.allowed.allows(&cred, groups, self.own_uid) {
            self.refuse(
                &stream,
                &format!(
                    "uid {} is not allowed to subscribe to channel {:?}",
                    cred.uid, self.name
                ),
            );
            return;
        }
        if self.shared.lock().live.len() >= self.welcome.max_subscribers {
            // Subscribers that left without our noticing yet (a quick reconnect) free places.
            let ids: Vec<u64> = self.conns.iter().map(|(id, _)| *id).collect();
            for id in ids {
                self.check_conn(id);
            }
        }
        let mut roster = self.shared.lock();
        if roster.live.len() >= self.welcome.max_subscribers {
            drop(roster);
            self.refuse(
                &stream,
                &format!(
                    "channel {:?} already has its maximum of {} subscribers",
                    self.name, self.welcome.max_subscribers
                ),
            );
            return;
        }
        // A duplicate to hang up on it later (eviction): without one, refuse.
        let Ok(conn) = stream.try_clone() else {
            drop(roster);
            self.refuse(&stream, "the publisher is out of file descriptors");
            return;
        };
        let conn = Some(conn);
        let id = self.next_id;
        self.next_id += 1;
        let page = match Page::create(&format!("cuda-ipc {} sub {id}", self.name)) {
            Ok(p) => p,
            Err(e) => {
                drop(roster);
                self.refuse(&stream, &format!("the publisher could not admit you: {e}"));
                return;
            }
        };
        // Under the roster lock, so that no slot is claimed between the join point and the
        // subscriber's first NEXT.
        let (next, announced) = join_point(self.chan.words(), self.welcome.slots, true);
        let newest = if next <= announced { next } else { 0 };
        page.words()[SUB_NEXT].store(next, SeqCst);
        let welcome = Welcome {
            id,
            newest,
            announced,
            ..self.welcome.clone()
        };
        let sent = framing::send(
            &stream,
            Kind::Welcome,
            &welcome.encode(),
            Some(self.chan.fd()),
        )
        .and_then(|()| framing::send(&stream, Kind::Page, &[], Some(page.fd())));
        if sent.is_err() {
            return;
        }
        roster.live.push(Member {
            id,
            page,
            cred,
            conn,
        });
        roster.joined += 1;
        drop(roster);
        self.conns.push((id, stream));
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
