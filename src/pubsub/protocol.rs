//! The slot protocol, without the GPU: which slot the publisher may fill next, which frame a
//! subscriber receives, and how both agree that a held slot is never overwritten.
//!
//! Frames are numbered 1, 2, 3 … (`seq`). The publisher claims a slot for frame `k` by
//! writing `CLAIM[slot] = k | TENTATIVE`, checking that no subscriber holds the slot, and then
//! writing `CLAIM[slot] = k` (final), all before it writes the frame; it announces `k` after
//! queueing the frame's work. A subscriber may take frame `k` as soon as its claim is final —
//! before it is announced — so that its GPU already waits for the frame when the publisher's
//! GPU writes it. A subscriber receiving frame `t` finds the slot whose claim is `t`, writes
//! `HOLD[slot] = t` in its own page and then checks that the claim is still `t`; the
//! publisher writes the claim and then checks every live subscriber's `HOLD > ACK` (and, with
//! `Block`, its `NEXT`: a frame given back with [`SubscriberState::unpick`] moves `NEXT` back
//! before it drops the hold). All of
//! these are sequentially consistent atomics, so at least one side sees the other (Dekker's
//! handshake): either the subscriber sees the new claim and backs off, or the publisher sees
//! the hold and leaves the slot alone. A slot is free again once the subscriber writes
//! `ACK[slot] = t` (after its GPU work on the frame, when released on a stream).
//!
//! With [`Policy::Block`] frame `k` goes to slot `(k - 1) % slots`, and the slot is reused
//! only when every live subscriber has moved past the frame in it (`NEXT > claim`) and holds
//! nothing there: no frame is lost. With [`Policy::DropOldest`] the publisher takes the slot
//! with the oldest frame that no subscriber holds (never the newest frame, which late joiners
//! start from); a subscriber whose next frame was overwritten skips to the oldest one left and
//! is told how many it missed.
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::layout::*;
use super::Policy;

/// The top bit of a claim word: the publisher is still checking that the slot is free and may
/// withdraw the claim. A subscriber never takes a tentative claim for its frame.
pub const TENTATIVE: u64 = 1 << 63;

/// Why the publisher cannot claim a slot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Subscriber `sub` (its connection id) holds the frame in the slot.
    Held {
        /// The subscriber's id.
        sub: u64,
        /// Its frame.
        seq: u64,
    },
    /// Subscriber `sub` has not received the frame in the slot yet (`Policy::Block`).
    Behind {
        /// The subscriber's id.
        sub: u64,
        /// The frame it waits for next.
        next: u64,
    },
}

/// A live subscriber as the publisher sees it: its id and its page's words.
pub type SubWords<'a> = (u64, &'a [AtomicU64]);

/// The publisher's side of the protocol.
#[derive(Debug, Clone)]
pub struct PublisherState {
    slots: usize,
    policy: Policy,
    next_seq: u64,
    /// A slot claimed for `next_seq` by a loan that was dropped unpublished.
    claimed: Option<usize>,
}

fn blocker(slot: usize, frame: u64, subs: &[SubWords<'_>], policy: Policy) -> Option<Blocked> {
    for &(sub, w) in subs {
        let hold = w[SUB_HOLD + slot].load(SeqCst);
        if hold > w[SUB_ACK + slot].load(SeqCst) {
            return Some(Blocked::Held { sub, seq: hold });
        }
        if policy == Policy::Block && frame != 0 {
            let next = w[SUB_NEXT].load(SeqCst);
            if next <= frame {
                return Some(Blocked::Behind { sub, next });
            }
        }
    }
    None
}

impl PublisherState {
    /// A channel of `slots` slots (clamped to 1..=64) that has published nothing yet.
    pub fn new(slots: usize, policy: Policy) -> PublisherState {
        PublisherState {
            slots: slots.clamp(1, MAX_SLOTS),
            policy,
            next_seq: 1,
            claimed: None,
        }
    }

    /// The sequence number the next frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The slots to try for the next frame, best first.
    fn candidates(&self, chan: &[AtomicU64]) -> Vec<usize> {
        match self.policy {
            Policy::Block => vec![((self.next_seq - 1) % self.slots as u64) as usize],
            Policy::DropOldest => {
                let newest = self.next_seq - 1;
                let mut c: Vec<(u64, usize)> = (0..self.slots)
                    .map(|i| (chan[CLAIM + i].load(SeqCst), i))
                    .collect();
                // Keep the newest frame: leave out one slot with it (only one, so that a
                // corrupt table with the newest in every slot still leaves a candidate).
                if self.slots > 1 && newest != 0 {
                    if let Some(at) = c.iter().position(|&(claim, _)| claim == newest) {
                        c.remove(at);
                    }
                }
                c.sort_unstable();
                c.into_iter().map(|(_, i)| i).collect()
            }
        }
    }

    /// Claims a slot for the next frame: `CLAIM[slot] = seq`. Returns `(slot, seq)`, or why
    /// no slot is free now (the first blocker found).
    pub fn try_claim(
        &mut self,
        chan: &[AtomicU64],
        subs: &[SubWords<'_>],
    ) -> Result<(usize, u64), Blocked> {
        let seq = self.next_seq;
        if let Some(slot) = self.claimed {
            return Ok((slot, seq));
        }
        let mut first = None;
        for slot in self.candidates(chan) {
            let old = chan[CLAIM + slot].load(SeqCst);
            if let Some(b) = blocker(slot, old, subs, self.policy) {
                first.get_or_insert(b);
                continue;
            }
            // Tentative first: no subscriber takes a tentative claim for its frame, so the
            // claim can still be withdrawn.
            chan[CLAIM + slot].store(seq | TENTATIVE, SeqCst);
            // A subscriber may have registered a hold on `old` before it could see the new
            // claim, or given back (`unpick`) a frame it had taken: look again, at `NEXT` too,
            // now that the claim is visible.
            if let Some(b) = blocker(slot, old, subs, self.policy) {
                chan[CLAIM + slot].store(old, SeqCst);
                first.get_or_insert(b);
                continue;
            }
            // Final: from now on the slot is frame `seq`'s until it is published (a loan
            // dropped unpublished keeps it for the next loan, which gets the same `seq`).
            chan[CLAIM + slot].store(seq, SeqCst);
            self.claimed = Some(slot);
            return Ok((slot, seq));
        }
        Err(first.expect("at least one candidate slot"))
    }

    /// Marks the claimed frame published: `ANNOUNCED = seq`. Call after queueing the frame's
    /// work and the GPU writes of its `READY` words.
    pub fn announce(&mut self, chan: &[AtomicU64]) -> u64 {
        let seq = self.next_seq;
        chan[ANNOUNCED].store(seq, SeqCst);
        self.next_seq += 1;
        self.claimed = None;
        seq
    }

    /// [`join_point`] of this publisher's slots.
    pub fn join_point(&self, chan: &[AtomicU64], latest: bool) -> (u64, u64) {
        join_point(chan, self.slots, latest)
    }
}

/// Where a subscriber joining now starts: `(next, announced)`, with `next` the newest
/// announced frame still in one of the `slots` slots when `latest` (else, or when there is
/// none, the frame after the last announced one).
pub fn join_point(chan: &[AtomicU64], slots: usize, latest: bool) -> (u64, u64) {
    let announced = chan[ANNOUNCED].load(SeqCst);
    let newest_left = (0..slots.min(MAX_SLOTS))
        .map(|i| chan[CLAIM + i].load(SeqCst))
        .filter(|&c| c != 0 && c <= announced)
        .max();
    match newest_left {
        Some(n) if latest => (n, announced),
        // Saturating: a corrupt ANNOUNCED of u64::MAX must not panic.
        _ => (announced.saturating_add(1), announced),
    }
}

/// A frame a subscriber has registered as held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Its slot.
    pub slot: usize,
    /// Its sequence number.
    pub seq: u64,
    /// Frames skipped since the previous one (overwritten before this subscriber got them).
    pub missed: u64,
}

/// What [`SubscriberState::try_pick`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The frame is held now; release it with `ACK[slot] = seq`.
    Held(Picked),
    /// The next frame is neither claimed (final) nor announced yet, or a tentative claim
    /// may still give an announced frame back: try again.
    NotYet,
}

/// The publisher broke the protocol (or the channel page is corrupt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// A subscriber's side of the protocol.
#[derive(Debug, Clone)]
pub struct SubscriberState {
    slots: usize,
    policy: Policy,
    next: u64,
    missed: u64,
}

impl SubscriberState {
    /// A subscriber that receives `next` first.
    pub fn new(slots: usize, policy: Policy, next: u64) -> SubscriberState {
        SubscriberState {
            slots: slots.clamp(1, MAX_SLOTS),
            policy,
            next: next.max(1),
            missed: 0,
        }
    }

    /// The frame this subscriber receives next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Finds and holds the next frame once its claim is final (announced or not; check
    /// [`is_ready`] or wait for its `READY` word before reading it).
    pub fn try_pick(&mut self, chan: &[AtomicU64], me: &[AtomicU64]) -> Result<Pick, Violation> {
        // Each retry follows a claim that moved on: a bounded number in practice; the bound
        // only keeps a corrupt page from spinning forever.
        for _ in 0..4 * self.slots + 8 {
            let announced = chan[ANNOUNCED].load(SeqCst);
            let t = self.next;
            // One read of each claim, used for every decision below: a slot read with a final
            // claim other than `t` has lost `t` for good, but one read while tentative may
            // get its old frame back when the publisher withdraws.
            let mut words = [0u64; MAX_SLOTS];
            let claims = &mut words[..self.slots.min(MAX_SLOTS)];
            for (i, c) in claims.iter_mut().enumerate() {
                *c = chan[CLAIM + i].load(SeqCst);
            }
            // A final claim of frame `t` is enough, announced or not: the frame is being
            // prepared in that slot and will be published there (the GPU waits for it).
            let found = claims.iter().position(|&c| c == t);
            let Some(slot) = found else {
                if announced < t {
                    return Ok(Pick::NotYet);
                }
                // `t` (or a frame after it) may be behind a tentative claim that is about to
                // be withdrawn: wait for the publisher's decision rather than call it
                // overwritten (the claim is final or withdrawn within the publisher's call).
                if claims.iter().any(|&c| c & TENTATIVE != 0) {
                    return Ok(Pick::NotYet);
                }
                if self.policy == Policy::Block {
                    return Err(Violation(format!(
                        "frame {t} was announced (up to {announced}) but is in no slot, \
                         though the channel's policy is Block"
                    )));
                }
                // Overwritten: skip to the oldest frame left (or past all announced ones).
                let oldest = claims
                    .iter()
                    .copied()
                    .filter(|&c| c > t && c <= announced)
                    .min()
                    .unwrap_or(announced.saturating_add(1));
                self.missed = self.missed.saturating_add(oldest - t);
                self.next = oldest;
                me[SUB_NEXT].store(self.next, SeqCst);
                continue;
            };
            let Some(after) = t.checked_add(1) else {
                return Err(Violation(format!(
                    "frame {t} is claimed: no frame number follows it (a corrupt page)"
                )));
            };
            let before = me[SUB_HOLD + slot].load(SeqCst);
            me[SUB_HOLD + slot].store(t, SeqCst);
            if chan[CLAIM + slot].load(SeqCst) != t {
                me[SUB_HOLD + slot].store(before, SeqCst);
                continue;
            }
            self.next = after;
            me[SUB_NEXT].store(self.next, SeqCst);
            let missed = std::mem::take(&mut self.missed);
            return Ok(Pick::Held(Picked {
                slot,
                seq: t,
                missed,
            }));
        }
        Err(Violation(
            "the channel's slot claims keep changing under this subscriber".into(),
        ))
    }
}

impl SubscriberState {
    /// Gives back a frame picked but not delivered (its wait timed out, say): the hold is
    /// dropped without an acknowledgement and the frame is the next one again, so that
    /// nothing is lost (with `Block` its slot stays protected by `NEXT`).
    pub fn unpick(&mut self, me: &[AtomicU64], picked: &Picked) {
        let slot = picked.slot.min(MAX_SLOTS - 1);
        // `NEXT` back first, then the hold: the publisher reads `HOLD` before `NEXT`, so it
        // always sees one of them protect the slot (`Block`).
        self.next = picked.seq;
        self.missed = self.missed.saturating_add(picked.missed);
        me[SUB_NEXT].store(self.next, SeqCst);
        me[SUB_HOLD + slot].store(me[SUB_ACK + slot].load(SeqCst), SeqCst);
    }
}

/// Releases a held frame from the CPU: `ACK[slot] = seq`.
pub fn release(me: &[AtomicU64], picked: &Picked) {
    me[SUB_ACK + picked.slot].store(picked.seq, SeqCst);
}

/// Whether the frame is complete on the publisher's GPU (its `SLOT_READY` word).
pub fn is_ready(chan: &[AtomicU64], picked: &Picked) -> bool {
    chan[SLOT_READY + picked.slot].load(SeqCst) >= picked.seq
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
