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
//!
//! Frame numbers never exceed [`MAX_SEQ`] (2^62): the publisher stops there, and a subscriber
//! takes any larger number read from the channel page (an announce, a final claim, or the frame
//! of a tentative claim) as a [`Violation`]. So every frame a subscriber's GPU waits for is
//! within 2^62 of zero, where the GPU's cyclic comparison (`(int64_t)(word - seq) >= 0`)
//! agrees with `>=` and a stored frame number always releases the waits for it.
//!
//! The subscriber reads the channel page through [`ReadWords`]: it maps that page read-only,
//! where Rust allows atomic loads only.
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::layout::*;
use super::Policy;

pub use super::layout::MAX_SEQ;

/// Sequentially consistent loads of a page of 64-bit words another process may write: what
/// the protocol needs of the channel page, which subscribers map read-only (where the only
/// access Rust allows is a load). Implemented for `[AtomicU64]` (and `Vec`s and arrays of
/// them), and for the crate's read-only mappings.
pub trait ReadWords {
    /// Word `index`, with the ordering of a `SeqCst` load.
    ///
    /// # Panics
    /// If `index` is past the words, as a slice index would.
    fn load(&self, index: usize) -> u64;
}

impl ReadWords for [AtomicU64] {
    fn load(&self, index: usize) -> u64 {
        self[index].load(SeqCst)
    }
}

impl ReadWords for Vec<AtomicU64> {
    fn load(&self, index: usize) -> u64 {
        self[index].load(SeqCst)
    }
}

impl<const N: usize> ReadWords for [AtomicU64; N] {
    fn load(&self, index: usize) -> u64 {
        self[index].load(SeqCst)
    }
}

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
    /// The next frame would be numbered past [`MAX_SEQ`]: the channel has published every
    /// frame it can (a new publisher, a new channel instance, starts from 1 again).
    Exhausted {
        /// The frame number that would come next.
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
    /// no slot is free now (the first blocker found), or [`Blocked::Exhausted`] for good past
    /// [`MAX_SEQ`].
    pub fn try_claim(
        &mut self,
        chan: &[AtomicU64],
        subs: &[SubWords<'_>],
    ) -> Result<(usize, u64), Blocked> {
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            return Err(Blocked::Exhausted { next: seq });
        }
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
        self.next_seq = seq.saturating_add(1);
        self.claimed = None;
        seq
    }

    /// [`join_point`] of this publisher's slots.
    #[cfg(test)]
    pub fn join_point<C: ReadWords + ?Sized>(&self, chan: &C, latest: bool) -> (u64, u64) {
        join_point(chan, self.slots, latest)
    }
}

/// Where a subscriber joining now starts: `(next, announced)`, with `next` the newest
/// announced frame still in one of the `slots` slots when `latest` (else, or when there is
/// none, the frame after the last announced one). Never past `MAX_SEQ + 1`, whatever the
/// words hold; tentative claims are never join points.
pub fn join_point<C: ReadWords + ?Sized>(chan: &C, slots: usize, latest: bool) -> (u64, u64) {
    // The publisher never announces past MAX_SEQ: a larger word is corrupt.
    let announced = chan.load(ANNOUNCED).min(MAX_SEQ);
    let newest_left = (0..slots.min(MAX_SLOTS))
        .map(|i| chan.load(CLAIM + i))
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
    /// [`is_ready`] or wait for its `READY` word before reading it). A frame number past
    /// [`MAX_SEQ`] in the channel page (announced, or claimed, finally or tentatively) is a
    /// [`Violation`]; such a frame is never picked, nor is a tentative claim.
    pub fn try_pick<C: ReadWords + ?Sized>(
        &mut self,
        chan: &C,
        me: &[AtomicU64],
    ) -> Result<Pick, Violation> {
        // Each retry follows a claim that moved on: a bounded number in practice; the bound
        // only keeps a corrupt page from spinning forever.
        for _ in 0..4 * self.slots + 8 {
            let announced = chan.load(ANNOUNCED);
            if announced > MAX_SEQ {
                return Err(Violation(format!(
                    "the channel page announces frame {announced}, past the largest frame \
                     number a channel reaches ({MAX_SEQ})"
                )));
            }
            let t = self.next;
            // One read of each claim, used for every decision below: a slot read with a final
            // claim other than `t` has lost `t` for good, but one read while tentative may
            // get its old frame back when the publisher withdraws.
            let mut words = [0u64; MAX_SLOTS];
            let claims = &mut words[..self.slots.min(MAX_SLOTS)];
            for (i, c) in claims.iter_mut().enumerate() {
                *c = chan.load(CLAIM + i);
                check_claim(i, *c)?;
            }
            // A final claim of frame `t` is enough, announced or not: the frame is being
            // prepared in that slot and will be published there (the GPU waits for it). A
            // tentative claim never matches (`t` has no TENTATIVE bit: it is at most
            // MAX_SEQ + 1 unless `new` was given junk, which then matches no checked claim).
            let found = claims.iter().position(|&c| c == t && c & TENTATIVE == 0);
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
            if chan.load(CLAIM + slot) != t {
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
pub fn is_ready<C: ReadWords + ?Sized>(chan: &C, picked: &Picked) -> bool {
    chan.load(SLOT_READY + picked.slot) >= picked.seq
}

/// Whether a stream waiting with `cuStreamWaitValue64(addr, seq, CU_STREAM_WAIT_VALUE_GEQ)`
/// goes on while the word holds `word`. The driver's comparison is *cyclic*: "until
/// `(int64_t)(*addr - value) >= 0`" (`CUstreamWaitValue_flags`), not an unsigned `>=`; the two
/// agree for frame numbers up to [`MAX_SEQ`]. (A model of the driver, for the tests.)
#[cfg(test)]
pub fn gpu_wait_passes(word: u64, seq: u64) -> bool {
    (word.wrapping_sub(seq) as i64) >= 0
}

/// Whether a `READY` word holding `word` lets through every GPU wait for frames `1..=seq` of
/// its slot: `seq <= word <= MAX_SEQ`. (`gpu_wait_passes(word, seq)` alone is not enough for
/// a junk word: `2^63 + 7` passes a wait for frame 2^62 but holds one for frame 1 back.)
pub fn ready_releases(word: u64, seq: u64) -> bool {
    seq <= word && word <= MAX_SEQ
}

/// Releases the GPU waits for frames up to `seq` (at most [`MAX_SEQ`]) on a `READY` word:
/// stores `seq` unless the word already releases them ([`ready_releases`]), so an honest
/// word is only ever raised — a later frame the publisher wrote stays — and junk a hostile
/// publisher wrote (`u64::MAX`, `2^63`) is replaced. `seq` 0 (nothing waited for) stores
/// nothing.
/// Returns whether it stored (the word did not release the waits).
pub fn release_ready(word: &AtomicU64, seq: u64) -> bool {
    if seq == 0 {
        return false;
    }
    // A CAS loop: the publisher's GPU may write the word at any moment; it keeps its value
    // whenever that value releases the waits.
    word.fetch_update(SeqCst, SeqCst, |now| {
        (!ready_releases(now, seq)).then_some(seq)
    })
    .is_ok()
}

/// Checks a claim word read from the channel page: 0 (never used), a frame number up to
/// [`MAX_SEQ`], or such a frame number with [`TENTATIVE`] set.
fn check_claim(slot: usize, claim: u64) -> Result<(), Violation> {
    let frame = claim & !TENTATIVE;
    let tentative = claim & TENTATIVE != 0;
    if frame > MAX_SEQ || (tentative && frame == 0) {
        let what = if frame == 0 {
            "no frame (0)".to_string()
        } else {
            format!("frame {frame}")
        };
        return Err(Violation(format!(
            "slot {slot}'s claim word is {claim:#x}: a {} claim of {what}, but frames are \
             numbered 1 up to the largest frame number a channel reaches ({MAX_SEQ})",
            if tentative { "tentative" } else { "final" },
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
