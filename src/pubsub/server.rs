//! What a channel's socket serves (its [`Serve`] hook on the crate's one socket service): the
//! admission of a subscriber — the channel page and a fresh page of its own — and its leaving
//! (its connection closes, also when its process dies), so that it stops holding slots at once.
//! Checking uids, handshakes, fair shares and floods are the service's.
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::ipc::framing::{self, Kind};
use crate::os::PeerCredentials;
use crate::service::{Hello, Peer, Refusal, Serve};

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
    /// How it shares the GPU with the publisher, once it has reported (`sharing.rs`).
    pub sharing: Option<super::sharing::SharingMode>,
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

/// What a channel's service serves: each admitted subscriber gets the channel's welcome with
/// the channel page, and a fresh control page of its own; its connection is its membership.
pub(crate) struct Admission {
    pub shared: Arc<Shared>,
    pub chan: Arc<Page>,
    pub welcome: Welcome,
    pub name: String,
}

impl Serve for Admission {
    fn admit(&mut self, peer: &Peer, hello: &Hello, stream: &UnixStream) -> Result<(), Refusal> {
        if hello.expect.is_some() {
            return Err(Refusal::Refuse(format!(
                "{:?} is a channel, not a shared buffer: subscribe to it \
                 (Subscriber::subscribe) instead of importing it",
                self.name
            )));
        }
        let mut roster = self.shared.lock();
        if roster.live.len() >= self.welcome.max_subscribers {
            // Possible only while a subscriber the publisher disconnected is still connected.
            return Err(Refusal::Refuse(format!(
                "channel {:?} already has its maximum of {} subscribers",
                self.name, self.welcome.max_subscribers
            )));
        }
        // A duplicate to hang up on it later (eviction): without one, refuse.
        let Ok(conn) = stream.try_clone() else {
            return Err(Refusal::Refuse(
                "the publisher is out of file descriptors".into(),
            ));
        };
        let id = peer.id;
        let page = Page::create(&format!("cuda-ipc {} sub {id}", self.name))
            .map_err(|e| Refusal::Refuse(format!("the publisher could not admit you: {e}")))?;
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
        // Non-blocking: the connection is fresh, and both messages are small.
        framing::send(
            stream,
            Kind::Welcome,
            &welcome.encode(),
            Some(self.chan.fd()),
        )
        .and_then(|()| framing::send(stream, Kind::Page, &[], Some(page.fd())))
        .map_err(|_| Refusal::Close)?;
        roster.live.push(Member {
            id,
            page,
            cred: peer.cred,
            conn: Some(conn),
            sharing: None,
        });
        roster.joined += 1;
        drop(roster);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Its connection closed (or it sent bytes a subscriber never sends): it stops holding
    /// slots at once.
    fn left(&mut self, peer: &Peer) {
        let mut roster = self.shared.lock();
        if let Some(i) = roster.live.iter().position(|m| m.id == peer.id) {
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

    /// The channel closes: dropping the connections tells every subscriber.
    fn stop(&mut self, admitted: Vec<(Peer, UnixStream)>) {
        drop(admitted);
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
