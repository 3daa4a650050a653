//! Tests of the slot protocol (see the parent module).
//!
//! - Unit tests pin each rule down on small hand-made channels.
//! - `random_interleavings_*` run thousands of seeded, single-threaded interleavings of every
//!   operation (claim, announce, the GPU's data and ready writes, receive — before or after
//!   the announce —, release, a subscriber dying or joining) against a model of which frame
//!   each slot holds, and check the protocol's promises after every step. A failure prints
//!   the seed and the operations that led to it; `PUBSUB_SEED=<n>` replays one seed,
//!   `PUBSUB_SEEDS=<n>` runs more of them.
//! - `threads_*` run one publisher and several subscribers on real threads, each subscriber
//!   checking that the frame it holds is not overwritten while it holds it, receiving frames
//!   between their claim and their announce, and watching the publisher withdraw tentative
//!   claims written over the frames it holds.
//! - `garbage_words_*` fill the pages with junk: every call must return, never panic.
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use super::*;

/// Words in a control page.
const WORDS: usize = PAGE_BYTES / 8;
/// Most frames a simulated subscriber holds at once.
const MAX_HELD: usize = 3;

fn page() -> Vec<AtomicU64> {
    (0..WORDS).map(|_| AtomicU64::new(0)).collect()
}

fn load(p: &[AtomicU64], i: usize) -> u64 {
    p[i].load(SeqCst)
}

fn store(p: &[AtomicU64], i: usize, v: u64) {
    p[i].store(v, SeqCst)
}

fn claims(chan: &[AtomicU64], slots: usize) -> Vec<u64> {
    (0..slots).map(|i| load(chan, CLAIM + i)).collect()
}

/// SplitMix64: a tiny seeded generator, so that every failure can be replayed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }

    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.u64() % n
        }
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------------------------

/// A channel page and `n` subscriber pages (ids 0, 1, …), each subscriber starting at frame 1.
struct Pages {
    chan: Vec<AtomicU64>,
    subs: Vec<Vec<AtomicU64>>,
}

impl Pages {
    fn new(n: usize) -> Pages {
        let subs = (0..n)
            .map(|_| {
                let p = page();
                store(&p, SUB_NEXT, 1);
                p
            })
            .collect();
        Pages { chan: page(), subs }
    }

    /// The live subscribers as the publisher passes them: all of them.
    fn words(&self) -> Vec<SubWords<'_>> {
        self.subs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, &p[..]))
            .collect()
    }
}

/// Claims and announces the next frame, which must not block.
fn publish(p: &mut PublisherState, pages: &Pages) -> (usize, u64) {
    let loan = p
        .try_claim(&pages.chan, &pages.words())
        .expect("a free slot");
    assert_eq!(p.announce(&pages.chan), loan.1);
    loan
}

fn held(pick: Result<Pick, Violation>) -> Picked {
    match pick {
        Ok(Pick::Held(p)) => p,
        other => panic!("expected a held frame, got {other:?}"),
    }
}

#[test]
fn block_fills_slots_in_order_then_waits_for_a_behind_or_holding_subscriber() {
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(3, Policy::Block);
    for k in 1..=3u64 {
        assert_eq!(publish(&mut p, &pages), ((k - 1) as usize, k));
        assert_eq!(load(&pages.chan, ANNOUNCED), k);
    }
    assert_eq!(claims(&pages.chan, 3), [1, 2, 3]);
    // Frame 4 goes to slot 0, whose frame 1 subscriber 0 has not received yet.
    let behind = Blocked::Behind { sub: 0, next: 1 };
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Err(behind));
    assert_eq!(
        claims(&pages.chan, 3),
        [1, 2, 3],
        "a blocked claim changes nothing"
    );

    let mut s = SubscriberState::new(3, Policy::Block, 1);
    let one = held(s.try_pick(&pages.chan, me));
    assert_eq!(
        one,
        Picked {
            slot: 0,
            seq: 1,
            missed: 0
        }
    );
    assert_eq!((load(me, SUB_HOLD), load(me, SUB_NEXT)), (1, 2));
    // Received but held: still blocked, now by the hold.
    let held_by = Blocked::Held { sub: 0, seq: 1 };
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Err(held_by));

    release(me, &one);
    assert_eq!(load(me, SUB_ACK), 1);
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((0, 4)));
    assert_eq!(claims(&pages.chan, 3), [4, 2, 3]);
    assert_eq!(p.announce(&pages.chan), 4);
    // Frame 5 goes to slot 1, whose frame 2 the subscriber has not received.
    let behind = Blocked::Behind { sub: 0, next: 2 };
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Err(behind));
    // It receives 2, 3 and 4 in order, with nothing missed.
    for (slot, seq) in [(1, 2), (2, 3), (0, 4)] {
        let f = held(s.try_pick(&pages.chan, me));
        assert_eq!((f.slot, f.seq, f.missed), (slot, seq, 0));
        release(me, &f);
    }
    assert_eq!(s.try_pick(&pages.chan, me), Ok(Pick::NotYet));
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((1, 5)));
}

#[test]
fn block_waits_for_the_slowest_live_subscriber_only() {
    let pages = Pages::new(2);
    let mut p = PublisherState::new(2, Policy::Block);
    publish(&mut p, &pages);
    publish(&mut p, &pages);
    // Subscriber 0 receives and releases both, subscriber 1 nothing.
    let mut fast = SubscriberState::new(2, Policy::Block, 1);
    for _ in 0..2 {
        let f = held(fast.try_pick(&pages.chan, &pages.subs[0]));
        release(&pages.subs[0], &f);
    }
    let behind = Blocked::Behind { sub: 1, next: 1 };
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Err(behind));
    // Once subscriber 1 is gone (no longer live), its page no longer counts.
    assert_eq!(p.try_claim(&pages.chan, &pages.words()[..1]), Ok((0, 3)));
}

#[test]
fn block_without_subscribers_never_waits() {
    let pages = Pages::new(0);
    let mut p = PublisherState::new(2, Policy::Block);
    for k in 1..=10u64 {
        assert_eq!(publish(&mut p, &pages), (((k - 1) % 2) as usize, k));
    }
    assert_eq!(claims(&pages.chan, 2), [9, 10]);
}

#[test]
fn drop_oldest_overwrites_past_a_slow_subscriber_which_is_told_what_it_missed() {
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(3, Policy::DropOldest);
    for k in 1..=10u64 {
        // Unused slots first, then always the oldest frame.
        assert_eq!(publish(&mut p, &pages), (((k - 1) % 3) as usize, k));
    }
    assert_eq!(claims(&pages.chan, 3), [10, 8, 9]);
    let mut s = SubscriberState::new(3, Policy::DropOldest, 1);
    let f = held(s.try_pick(&pages.chan, me));
    assert_eq!(
        f,
        Picked {
            slot: 1,
            seq: 8,
            missed: 7
        }
    );
    assert_eq!(load(me, SUB_NEXT), 9);
    release(me, &f);
    for (slot, seq) in [(2, 9), (0, 10)] {
        let f = held(s.try_pick(&pages.chan, me));
        assert_eq!((f.slot, f.seq, f.missed), (slot, seq, 0));
        release(me, &f);
    }
    assert_eq!(s.try_pick(&pages.chan, me), Ok(Pick::NotYet));
}

#[test]
fn drop_oldest_never_overwrites_a_held_slot() {
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(3, Policy::DropOldest);
    publish(&mut p, &pages);
    let mut s = SubscriberState::new(3, Policy::DropOldest, 1);
    let one = held(s.try_pick(&pages.chan, me));
    assert_eq!((one.slot, one.seq), (0, 1));
    for _ in 2..=10 {
        let (slot, _) = publish(&mut p, &pages);
        assert_ne!(slot, 0, "slot 0 is held");
    }
    // 2 → slot 1, 3 → slot 2, then slots 1 and 2 in turn (slot 0 held, the newest kept).
    assert_eq!(claims(&pages.chan, 3), [1, 10, 9]);
    release(me, &one);
    let f = held(s.try_pick(&pages.chan, me));
    assert_eq!((f.slot, f.seq, f.missed), (2, 9, 7));
    // Released, slot 0 is the oldest again.
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((0, 11)));
}

#[test]
fn drop_oldest_never_overwrites_the_newest_frame() {
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(2, Policy::DropOldest);
    publish(&mut p, &pages);
    let mut s = SubscriberState::new(2, Policy::DropOldest, 1);
    let one = held(s.try_pick(&pages.chan, me));
    publish(&mut p, &pages);
    // Slot 0 is held and slot 1 has the newest frame: nothing to take.
    let held_by = Blocked::Held { sub: 0, seq: 1 };
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Err(held_by));
    assert_eq!(claims(&pages.chan, 2), [1, 2]);
    release(me, &one);
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((0, 3)));
}

#[test]
fn drop_oldest_with_one_slot_overwrites_the_newest_unless_held() {
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(1, Policy::DropOldest);
    for k in 1..=3 {
        assert_eq!(publish(&mut p, &pages), (0, k));
    }
    let mut s = SubscriberState::new(1, Policy::DropOldest, 1);
    let f = held(s.try_pick(&pages.chan, me));
    assert_eq!((f.seq, f.missed), (3, 2));
    let held_by = Blocked::Held { sub: 0, seq: 3 };
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Err(held_by));
    release(me, &f);
    assert_eq!(publish(&mut p, &pages), (0, 4));
}

#[test]
fn a_subscriber_behind_skips_to_a_claimed_frame_before_it_is_announced() {
    // One slot: the loan of frame 3 overwrites frame 2 before 3 is announced, so a
    // subscriber waiting for 1 finds every announced frame gone and takes 3 at once (its
    // claim is final), told that it missed 2; frame 3 is not written yet.
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(1, Policy::DropOldest);
    publish(&mut p, &pages);
    publish(&mut p, &pages);
    assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((0, 3)));
    let mut s = SubscriberState::new(1, Policy::DropOldest, 1);
    let f = held(s.try_pick(&pages.chan, me));
    assert_eq!((f.slot, f.seq, f.missed), (0, 3, 2));
    assert_eq!(
        (s.next(), load(me, SUB_NEXT), load(me, SUB_HOLD)),
        (4, 4, 3)
    );
    assert!(!is_ready(&pages.chan, &f), "frame 3 is not written yet");
    assert_eq!(s.try_pick(&pages.chan, me), Ok(Pick::NotYet));
    p.announce(&pages.chan);
    store(&pages.chan, SLOT_READY, 3);
    assert!(is_ready(&pages.chan, &f));
}

#[test]
fn join_point_latest_or_next() {
    for policy in [Policy::Block, Policy::DropOldest] {
        let pages = Pages::new(0);
        let mut p = PublisherState::new(2, policy);
        assert_eq!(p.join_point(&pages.chan, true), (1, 0), "{policy:?}");
        assert_eq!(p.join_point(&pages.chan, false), (1, 0), "{policy:?}");
        for _ in 0..3 {
            publish(&mut p, &pages);
        }
        assert_eq!(p.join_point(&pages.chan, true), (3, 3), "{policy:?}");
        assert_eq!(p.join_point(&pages.chan, false), (4, 3), "{policy:?}");
        // A claimed, unannounced frame is not a join point.
        let (slot, seq) = p.try_claim(&pages.chan, &pages.words()).unwrap();
        assert_eq!((slot, seq), (1, 4), "{policy:?}");
        assert_eq!(p.join_point(&pages.chan, true), (3, 3), "{policy:?}");
        assert_eq!(p.join_point(&pages.chan, false), (4, 3), "{policy:?}");

        // A subscriber joining at the latest frame receives it first.
        let me = page();
        let (next, _) = p.join_point(&pages.chan, true);
        store(&me, SUB_NEXT, next);
        let mut s = SubscriberState::new(2, policy, next);
        let f = held(s.try_pick(&pages.chan, &me));
        assert_eq!((f.slot, f.seq, f.missed), (0, 3, 0), "{policy:?}");
        // Then the claimed frame 4, unannounced; nothing after it.
        let f = held(s.try_pick(&pages.chan, &me));
        assert_eq!((f.slot, f.seq, f.missed), (1, 4, 0), "{policy:?}");
        assert_eq!(s.try_pick(&pages.chan, &me), Ok(Pick::NotYet), "{policy:?}");
    }
    // One slot: the loan of frame 4 replaced frame 3, so the latest left is the next one.
    for policy in [Policy::Block, Policy::DropOldest] {
        let pages = Pages::new(0);
        let mut p = PublisherState::new(1, policy);
        for _ in 0..3 {
            publish(&mut p, &pages);
        }
        assert_eq!(p.join_point(&pages.chan, true), (3, 3), "{policy:?}");
        assert_eq!(p.try_claim(&pages.chan, &[]), Ok((0, 4)), "{policy:?}");
        assert_eq!(p.join_point(&pages.chan, true), (4, 3), "{policy:?}");
    }
}

#[test]
fn a_loan_dropped_unpublished_is_claimed_again_with_the_same_slot_and_seq() {
    for policy in [Policy::Block, Policy::DropOldest] {
        let pages = Pages::new(1);
        let me = &pages.subs[0];
        let mut p = PublisherState::new(3, policy);
        publish(&mut p, &pages);
        let mut s = SubscriberState::new(3, policy, 1);
        release(me, &held(s.try_pick(&pages.chan, me)));
        let first = p.try_claim(&pages.chan, &pages.words());
        assert_eq!(first, Ok((1, 2)), "{policy:?}");
        // Dropped: the next loan is the same slot and frame, and the claim table is unchanged.
        assert_eq!(
            p.try_claim(&pages.chan, &pages.words()),
            first,
            "{policy:?}"
        );
        assert_eq!(
            p.try_claim(&pages.chan, &pages.words()),
            first,
            "{policy:?}"
        );
        assert_eq!(claims(&pages.chan, 3), [1, 2, 0], "{policy:?}");
        assert_eq!(p.next_seq(), 2, "{policy:?}");
        // Never announced, but its claim is final: the subscriber takes it, and the next
        // loan (the same frame) still gets that slot.
        let f = held(s.try_pick(&pages.chan, me));
        assert_eq!((f.slot, f.seq, f.missed), (1, 2, 0), "{policy:?}");
        assert_eq!(
            p.try_claim(&pages.chan, &pages.words()),
            first,
            "{policy:?}"
        );
        assert_eq!(p.announce(&pages.chan), 2, "{policy:?}");
        assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((2, 3)));
        assert_eq!(held(s.try_pick(&pages.chan, me)).seq, 3, "{policy:?}");
    }
}

#[test]
fn try_pick_is_not_yet_before_a_final_claim_and_takes_one_before_its_announce() {
    for policy in [Policy::Block, Policy::DropOldest] {
        let pages = Pages::new(1);
        let me = &pages.subs[0];
        let mut s = SubscriberState::new(4, policy, 1);
        assert_eq!(s.try_pick(&pages.chan, me), Ok(Pick::NotYet), "{policy:?}");
        assert_eq!(load(me, SUB_HOLD), 0, "{policy:?}");
        // Claimed (CLAIM[0] = 1, final) but not announced: held at once, not ready.
        let mut p = PublisherState::new(4, policy);
        assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((0, 1)));
        assert_eq!(load(&pages.chan, ANNOUNCED), 0);
        let f = held(s.try_pick(&pages.chan, me));
        assert_eq!((f.slot, f.seq, f.missed), (0, 1, 0), "{policy:?}");
        assert_eq!(
            (load(me, SUB_HOLD), load(me, SUB_NEXT)),
            (1, 2),
            "{policy:?}"
        );
        assert!(!is_ready(&pages.chan, &f), "{policy:?}");
        // Frame 2 is neither claimed nor announced.
        assert_eq!(s.try_pick(&pages.chan, me), Ok(Pick::NotYet), "{policy:?}");
        assert_eq!(s.next(), 2, "{policy:?}");
        p.announce(&pages.chan);
        assert_eq!(s.try_pick(&pages.chan, me), Ok(Pick::NotYet), "{policy:?}");
    }
}

#[test]
fn a_frame_held_before_its_announce_keeps_its_slot_until_acknowledged() {
    for (slots, policy) in [
        (1, Policy::Block),
        (1, Policy::DropOldest),
        (2, Policy::Block),
        (2, Policy::DropOldest),
    ] {
        let what = format!("{slots} slots, {policy:?}");
        let pages = Pages::new(1);
        let me = &pages.subs[0];
        let mut p = PublisherState::new(slots, policy);
        let mut s = SubscriberState::new(slots, policy, 1);
        assert_eq!(p.try_claim(&pages.chan, &pages.words()), Ok((0, 1)));
        let one = held(s.try_pick(&pages.chan, me));
        assert_eq!((one.slot, one.seq), (0, 1), "{what}");
        p.announce(&pages.chan);
        if slots == 2 {
            // Frame 2 takes the other slot; the subscriber receives and releases it.
            assert_eq!(publish(&mut p, &pages), (1, 2), "{what}");
            release(me, &held(s.try_pick(&pages.chan, me)));
        }
        // Slot 0, with frame 1 held since before its announce, is not claimed again, not
        // even tentatively: its claim word never changes.
        let held_by = Blocked::Held { sub: 0, seq: 1 };
        for _ in 0..3 {
            assert_eq!(
                p.try_claim(&pages.chan, &pages.words()),
                Err(held_by),
                "{what}"
            );
            assert_eq!(load(&pages.chan, CLAIM), 1, "{what}");
        }
        // Written by the publisher's GPU, still held: still blocked.
        store(&pages.chan, SLOT_READY, 1);
        assert!(is_ready(&pages.chan, &one), "{what}");
        assert_eq!(
            p.try_claim(&pages.chan, &pages.words()),
            Err(held_by),
            "{what}"
        );
        release(me, &one);
        let next = slots as u64 + 1;
        assert_eq!(
            p.try_claim(&pages.chan, &pages.words()),
            Ok((0, next)),
            "{what}"
        );
        assert_eq!(load(&pages.chan, CLAIM), next, "{what}");
    }
}

#[test]
fn a_tentative_claim_is_never_picked() {
    for policy in [Policy::Block, Policy::DropOldest] {
        // The publisher is between its tentative and final writes of frame 1's claim.
        let chan = page();
        let me = page();
        store(&chan, CLAIM + 1, 1 | TENTATIVE);
        let mut s = SubscriberState::new(2, policy, 1);
        assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet), "{policy:?}");
        assert!(me.iter().all(|w| w.load(SeqCst) == 0), "{policy:?}");
        // Not even once announced (a state the publisher never makes: it announces a frame
        // only after its final claim).
        store(&chan, ANNOUNCED, 1);
        assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet), "{policy:?}");
        assert!(me.iter().all(|w| w.load(SeqCst) == 0), "{policy:?}");
        assert_eq!(s.next(), 1, "{policy:?}");
        // Final: taken.
        store(&chan, CLAIM + 1, 1);
        let f = held(s.try_pick(&chan, &me));
        assert_eq!((f.slot, f.seq, f.missed), (1, 1, 0), "{policy:?}");
    }
}

#[test]
fn a_frame_behind_a_tentative_claim_is_waited_for_not_skipped() {
    for policy in [Policy::Block, Policy::DropOldest] {
        // Frames 1 and 2 announced; the publisher has written frame 3's tentative claim over
        // frame 1, which a subscriber waiting for 1 must not call overwritten: the claim may
        // be withdrawn (another subscriber holds 1).
        let chan = page();
        let me = page();
        store(&chan, ANNOUNCED, 2);
        store(&chan, CLAIM, 3 | TENTATIVE);
        store(&chan, CLAIM + 1, 2);
        let mut s = SubscriberState::new(2, policy, 1);
        assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet), "{policy:?}");
        assert_eq!((s.next(), load(&me, SUB_NEXT)), (1, 0), "{policy:?}");
        // Withdrawn: frame 1 is received, nothing missed.
        store(&chan, CLAIM, 1);
        let f = held(s.try_pick(&chan, &me));
        assert_eq!((f.slot, f.seq, f.missed), (0, 1, 0), "{policy:?}");
    }
    // Made final instead (DropOldest): frame 1 is gone, the subscriber skips to 2, then
    // takes the claimed 3.
    let chan = page();
    let me = page();
    store(&chan, ANNOUNCED, 2);
    store(&chan, CLAIM, 3 | TENTATIVE);
    store(&chan, CLAIM + 1, 2);
    let mut s = SubscriberState::new(2, Policy::DropOldest, 1);
    assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet));
    store(&chan, CLAIM, 3);
    let f = held(s.try_pick(&chan, &me));
    assert_eq!((f.slot, f.seq, f.missed), (1, 2, 1));
    let f = held(s.try_pick(&chan, &me));
    assert_eq!((f.slot, f.seq, f.missed), (0, 3, 0));
}

#[test]
fn a_hold_seen_only_after_the_tentative_claim_makes_the_publisher_withdraw() {
    // A subscriber that registers its hold on the old frame after the publisher's first look
    // but before its second: a "probe" page laid over the channel page so that its HOLD
    // words are the CLAIM words, acknowledged up to the current claims. The first look sees
    // nothing held; the tentative claim itself then shows up as a hold, as a real hold
    // registered in that window would (see `threads_*` for the real race).
    for policy in [Policy::Block, Policy::DropOldest] {
        let words: Vec<AtomicU64> = (0..WORDS + CLAIM).map(|_| AtomicU64::new(0)).collect();
        let offset = SUB_HOLD - CLAIM;
        let (probe, chan) = (&words[..WORDS], &words[offset..offset + WORDS]);
        let real = page();
        store(&real, SUB_NEXT, 1);
        let mut p = PublisherState::new(3, policy);
        for k in 1..=3 {
            assert_eq!(p.try_claim(chan, &[]), Ok(((k - 1) as usize, k)));
            p.announce(chan);
        }
        for i in 0..3 {
            store(probe, SUB_ACK + i, load(chan, CLAIM + i));
        }
        store(probe, SUB_NEXT, u64::MAX);
        let subs: [SubWords<'_>; 2] = [(0, &real[..]), (7, probe)];
        let mut s = SubscriberState::new(3, policy, 1);
        let mut receive_all = || {
            for k in 1..=3 {
                let f = held(s.try_pick(chan, &real));
                assert_eq!((f.slot, f.seq, f.missed), ((k - 1) as usize, k, 0));
                release(&real, &f);
            }
        };
        if policy == Policy::Block {
            // Else the real subscriber, behind, blocks the claim before any tentative write.
            receive_all();
        }
        let withdrawn = Blocked::Held {
            sub: 7,
            seq: 4 | TENTATIVE,
        };
        assert_eq!(p.try_claim(chan, &subs), Err(withdrawn), "{policy:?}");
        // Every candidate was tried and withdrawn: the claims are back, nothing is lost.
        assert_eq!(claims(chan, 3), [1, 2, 3], "{policy:?}");
        assert_eq!(p.next_seq(), 4, "{policy:?}");
        if policy == Policy::DropOldest {
            receive_all();
        }
        // Without the probe the same claim goes through.
        assert_eq!(p.try_claim(chan, &subs[..1]), Ok((0, 4)), "{policy:?}");
    }
}

#[test]
fn a_new_subscriber_starts_at_frame_one_at_least() {
    let pages = Pages::new(0);
    let mut p = PublisherState::new(2, Policy::Block);
    publish(&mut p, &pages);
    let me = page();
    let mut s = SubscriberState::new(2, Policy::Block, 0);
    assert_eq!(s.next(), 1);
    assert_eq!(held(s.try_pick(&pages.chan, &me)).seq, 1);
}

#[test]
fn block_reports_a_violation_when_an_announced_frame_is_in_no_slot() {
    let chan = page();
    let me = page();
    store(&chan, ANNOUNCED, 1);
    let mut s = SubscriberState::new(4, Policy::Block, 1);
    let err = s.try_pick(&chan, &me).unwrap_err();
    assert!(err.0.contains("frame 1"), "{err:?}");
    assert_eq!(s.next(), 1);
    assert!(me.iter().all(|w| w.load(SeqCst) == 0), "no word written");
    // The frame in a slot of the wrong frame number is no better.
    store(&chan, CLAIM + 1, 7);
    assert!(s.try_pick(&chan, &me).is_err());
    // With DropOldest the same table means the frame was overwritten: skipped and counted.
    let mut s = SubscriberState::new(4, Policy::DropOldest, 1);
    assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet));
    assert_eq!(s.next(), 2);
    store(&chan, ANNOUNCED, 2);
    store(&chan, CLAIM + 3, 2);
    let f = held(s.try_pick(&chan, &me));
    assert_eq!((f.slot, f.seq, f.missed), (3, 2, 1));
}

#[test]
fn is_ready_follows_the_slot_ready_word() {
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(2, Policy::Block);
    publish(&mut p, &pages);
    let mut s = SubscriberState::new(2, Policy::Block, 1);
    let f = held(s.try_pick(&pages.chan, me));
    assert!(!is_ready(&pages.chan, &f));
    store(&pages.chan, SLOT_READY + 1, 1);
    assert!(!is_ready(&pages.chan, &f), "another slot's word");
    store(&pages.chan, SLOT_READY, 1);
    assert!(is_ready(&pages.chan, &f));
}

/// Whether `cuStreamWaitValue64(addr, value, CU_STREAM_WAIT_VALUE_GEQ)` lets a stream through
/// when `*addr == word`. The driver's comparison is *cyclic*: "wait until
/// `(int64_t)(*addr - value) >= 0`" (CUDA driver API, `CUstreamWaitValue_flags`), not an
/// unsigned `>=`. Written out here, independently of `gpu_wait_passes`.
fn gpu_wait_geq_passes(word: u64, value: u64) -> bool {
    (word.wrapping_sub(value) as i64) >= 0
}

#[test]
fn gpu_wait_passes_is_the_drivers_cyclic_comparison() {
    for (word, seq) in [
        (5, 5),
        (6, 5),
        (0, 1),
        (4, 5),
        (i64::MAX as u64, 1 << 63),
        (u64::MAX, 5),
        (1 << 63, 5),
        (MAX_SEQ, MAX_SEQ),
        (0, MAX_SEQ),
    ] {
        assert_eq!(gpu_wait_passes(word, seq), gpu_wait_geq_passes(word, seq));
    }
    // A frame's READY word releases its wait and the ones before it, not the ones after.
    assert!(gpu_wait_passes(5, 5) && gpu_wait_passes(6, 5));
    assert!(!gpu_wait_passes(0, 1) && !gpu_wait_passes(4, 5));
    // The reason for MAX_SEQ: no stored value releases every wait once frame numbers reach
    // 2^63 (the old fixed "released" value, i64::MAX, held back a wait for frame 2^63).
    assert!(!gpu_wait_passes(i64::MAX as u64, 1 << 63));
}

#[test]
fn release_ready_lets_the_recorded_wait_through_and_never_lowers_a_word_that_does() {
    // A subscriber whose publisher is gone (or whose Drop gives up waiting) raises each slot's
    // READY word to the highest frame its streams wait for there: every such wait drains,
    // whatever the word held, and a later frame the publisher wrote is kept.
    let seqs = [1u64, 2, 1000, 1 << 32, MAX_SEQ - 1, MAX_SEQ];
    let words = [
        0u64,
        1,
        999,
        1001,
        MAX_SEQ,
        MAX_SEQ + 1,
        i64::MAX as u64,
        1 << 63,
        (1 << 63) | 7,
        u64::MAX - 1,
        u64::MAX,
    ];
    for seq in seqs {
        for before in words {
            let w = AtomicU64::new(before);
            let stored = release_ready(&w, seq);
            let after = w.load(SeqCst);
            assert_eq!(stored, !ready_releases(before, seq), "{before:#x}, {seq}");
            // Every wait for a frame of the slot up to `seq` drains.
            for frame in [1, (seq / 2).max(1), seq - 1, seq]
                .into_iter()
                .filter(|&f| f > 0)
            {
                assert!(
                    gpu_wait_geq_passes(after, frame),
                    "a stream waiting for frame {frame} (recorded {seq}) stays blocked: READY \
                     {before:#x} -> {after:#x}"
                );
            }
            if (seq..=MAX_SEQ).contains(&before) {
                assert_eq!(after, before, "a later frame {before} was lowered to {seq}");
            } else {
                assert_eq!(
                    after, seq,
                    "{before:#x}: raised to the frame waited for, exactly"
                );
            }
        }
    }
    // Nothing waited for: nothing stored.
    let w = AtomicU64::new(u64::MAX);
    assert!(!release_ready(&w, 0));
    assert_eq!(w.load(SeqCst), u64::MAX);
}

#[test]
fn release_ready_races_with_the_publishers_writes_and_keeps_the_later_frame() {
    // The publisher's GPU writes frame numbers into the same word while the subscriber
    // releases: whoever comes last, the word ends at least at both, never below.
    for round in 0..200u64 {
        let w = AtomicU64::new(round);
        let publisher_frame = round + 2;
        std::thread::scope(|s| {
            s.spawn(|| w.store(publisher_frame, SeqCst));
            s.spawn(|| release_ready(&w, round + 1));
        });
        let after = w.load(SeqCst);
        assert!(
            after == publisher_frame || after == round + 1,
            "round {round}: {after}"
        );
        // The publisher's store may land after the release (it is the GPU's write of a later
        // frame): either way the released wait passes.
        assert!(ready_releases(after, round + 1));
    }
}

// ---------------------------------------------------------------------------------------------
// Frame numbers past MAX_SEQ (a fake publisher's channel page)
// ---------------------------------------------------------------------------------------------

/// Junk a fake publisher could put in a frame-number word.
const HUGE: [u64; 7] = [
    MAX_SEQ + 1,
    i64::MAX as u64,
    1 << 63,
    TENTATIVE | (MAX_SEQ + 1),
    TENTATIVE,
    u64::MAX - 1,
    u64::MAX,
];

#[test]
fn an_announce_past_max_seq_is_a_violation_and_nothing_is_picked() {
    for policy in [Policy::Block, Policy::DropOldest] {
        for huge in HUGE {
            let (chan, me) = (page(), page());
            store(&chan, ANNOUNCED, huge);
            store(&chan, CLAIM, 1);
            let mut s = SubscriberState::new(4, policy, 1);
            let err = s.try_pick(&chan, &me).unwrap_err();
            assert!(
                err.0.contains("announces frame") && err.0.contains("largest frame number"),
                "{policy:?}, {huge:#x}: {err:?}"
            );
            assert_eq!(s.next(), 1, "{huge:#x}: nothing skipped");
            assert!(me.iter().all(|w| w.load(SeqCst) == 0), "no word written");
        }
    }
}

#[test]
fn a_claim_of_a_frame_past_max_seq_is_a_violation_naming_the_slot() {
    for policy in [Policy::Block, Policy::DropOldest] {
        for huge in HUGE {
            for announced in [0u64, 1, 5] {
                let (chan, me) = (page(), page());
                store(&chan, ANNOUNCED, announced);
                store(&chan, CLAIM, 1);
                store(&chan, CLAIM + 2, huge);
                let mut s = SubscriberState::new(4, policy, 1);
                let err = s.try_pick(&chan, &me).unwrap_err();
                assert!(
                    err.0.contains("slot 2") && err.0.contains(&format!("{huge:#x}")),
                    "{policy:?}, {huge:#x}, announced {announced}: {err:?}"
                );
                assert_eq!(load(&me, SUB_HOLD), 0, "frame 1 not held");
            }
        }
    }
}

#[test]
fn a_subscriber_whose_next_frame_is_junk_never_picks_a_tentative_or_huge_claim() {
    // `SubscriberState::new` is public: a next frame of 2^63 | k must not match the tentative
    // claim TENTATIVE | k, and a next frame past MAX_SEQ matches no (checked) claim at all.
    for k in [1u64, 3, MAX_SEQ] {
        let (chan, me) = (page(), page());
        store(&chan, ANNOUNCED, 0);
        store(&chan, CLAIM + 1, TENTATIVE | k);
        let mut s = SubscriberState::new(4, Policy::Block, TENTATIVE | k);
        assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet), "frame {k}");
        store(&chan, CLAIM + 1, k);
        let mut s = SubscriberState::new(4, Policy::Block, k);
        let f = held(s.try_pick(&chan, &me));
        assert_eq!((f.slot, f.seq), (1, k));
    }
    let (chan, me) = (page(), page());
    store(&chan, ANNOUNCED, MAX_SEQ);
    store(&chan, CLAIM, MAX_SEQ);
    let mut s = SubscriberState::new(4, Policy::Block, MAX_SEQ + 1);
    assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet));
    // The last frame itself is a frame like any other.
    let mut s = SubscriberState::new(4, Policy::Block, MAX_SEQ);
    let f = held(s.try_pick(&chan, &me));
    assert_eq!((f.slot, f.seq, s.next()), (0, MAX_SEQ, MAX_SEQ + 1));
}

#[test]
fn a_drop_oldest_subscriber_never_skips_to_a_tentative_or_huge_frame() {
    // Frame 1 overwritten; the other slots hold tentative claims: it waits for the decision.
    let (chan, me) = (page(), page());
    store(&chan, ANNOUNCED, 3);
    store(&chan, CLAIM, 3);
    store(&chan, CLAIM + 1, TENTATIVE | 4);
    let mut s = SubscriberState::new(2, Policy::DropOldest, 1);
    assert_eq!(s.try_pick(&chan, &me), Ok(Pick::NotYet));
    assert_eq!(s.next(), 1, "no skip while a claim is tentative");
    store(&chan, CLAIM + 1, 2);
    let f = held(s.try_pick(&chan, &me));
    assert_eq!((f.seq, f.missed), (2, 1));
}

#[test]
fn the_publisher_stops_at_max_seq() {
    let pages = Pages::new(0);
    let mut p = PublisherState::new(2, Policy::Block);
    p.next_seq = MAX_SEQ;
    let (_, seq) = publish(&mut p, &pages);
    assert_eq!(seq, MAX_SEQ, "the last frame number is used");
    assert_eq!(load(&pages.chan, ANNOUNCED), MAX_SEQ);
    for _ in 0..3 {
        assert_eq!(
            p.try_claim(&pages.chan, &pages.words()),
            Err(Blocked::Exhausted { next: MAX_SEQ + 1 })
        );
    }
    assert!(
        claims(&pages.chan, 2).iter().all(|&c| c <= MAX_SEQ),
        "no claim past MAX_SEQ: {:?}",
        claims(&pages.chan, 2)
    );
    // A join point is never past MAX_SEQ + 1, even on a corrupt page.
    store(&pages.chan, ANNOUNCED, u64::MAX);
    store(&pages.chan, CLAIM, TENTATIVE | 9);
    for latest in [false, true] {
        let (next, announced) = join_point(&pages.chan, 2, latest);
        assert!(
            next <= MAX_SEQ + 1 && announced <= MAX_SEQ,
            "{next} {announced}"
        );
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Longest a racing test waits to see its racer's junk.
const SECS_RACING: Duration = Duration::from_secs(5);

/// Claims racing: a thread rewrites the claim words (and ANNOUNCED) with frames, tentative
/// claims and junk while the subscriber picks. It must never panic, never hold a tentative or
/// out-of-range frame, and never go backwards.
#[test]
fn claims_racing_with_junk_never_hand_out_a_bad_frame() {
    let slots = 4;
    for seed in 0..20u64 {
        let chan = page();
        store(&chan, ANNOUNCED, 2);
        let me = page();
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            // Stops the racer also when an assertion below fails (the scope joins it first).
            let _stop = StopOnDrop(&stop);
            sc.spawn(|| {
                let mut rng = Rng::new(seed);
                let mut frame = 1u64;
                while !stop.load(SeqCst) {
                    let slot = rng.index(slots);
                    let v = match rng.below(6) {
                        0 => TENTATIVE | frame,
                        1 => HUGE[rng.index(HUGE.len())],
                        2 => {
                            frame += 1;
                            frame
                        }
                        3 => {
                            store(
                                &chan,
                                ANNOUNCED,
                                if rng.chance(90) { frame } else { HUGE[0] },
                            );
                            continue;
                        }
                        _ => frame,
                    };
                    store(&chan, CLAIM + slot, v);
                }
            });
            let policy = if seed % 2 == 0 {
                Policy::Block
            } else {
                Policy::DropOldest
            };
            let mut s = SubscriberState::new(slots, policy, 1);
            let mut last = 0u64;
            let mut violations = 0u64;
            let started = Instant::now();
            let mut calls = 0u64;
            // Until the racer was seen at work (it may start late), 20,000 calls at least.
            while calls < 20_000 || (violations == 0 && started.elapsed() < SECS_RACING) {
                calls += 1;
                match catch_unwind(AssertUnwindSafe(|| s.try_pick(&chan, &me))) {
                    Err(_) => panic!("seed {seed}: try_pick panicked"),
                    Ok(Ok(Pick::Held(f))) => {
                        assert!(f.seq <= MAX_SEQ && f.seq & TENTATIVE == 0, "{f:?}");
                        assert!(f.seq > last, "seed {seed}: {f:?} after {last}");
                        assert!(f.slot < slots);
                        last = f.seq;
                        release(&me, &f);
                    }
                    Ok(Ok(Pick::NotYet)) => {}
                    Ok(Err(_)) => violations += 1,
                }
            }
            stop.store(true, SeqCst);
            assert!(violations > 0, "seed {seed}: the junk was never seen");
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Junk in the pages
// ---------------------------------------------------------------------------------------------

/// A junk word, often one near an edge or equal to a plausible frame number.
fn junk(rng: &mut Rng, slots: usize) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => u64::MAX - rng.below(3),
        2 => 1 + rng.below(3),
        3 | 4 => rng.below(2 * slots as u64 + 4),
        _ => rng.u64(),
    }
}

fn junk_page(rng: &mut Rng, slots: usize) -> Vec<AtomicU64> {
    (0..WORDS)
        .map(|_| AtomicU64::new(junk(rng, slots)))
        .collect()
}

/// One seed of junk: every call returns, and what it returns is consistent with the words.
fn junk_run(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let most = if rng.chance(50) { 3 } else { MAX_SLOTS };
    let slots = 1 + rng.index(most);
    let policy = if rng.chance(50) {
        Policy::Block
    } else {
        Policy::DropOldest
    };
    let chan = junk_page(&mut rng, slots);
    if rng.chance(30) {
        // Claims of only a few small frame numbers: duplicates, and the publisher's newest.
        for i in 0..slots {
            store(&chan, CLAIM + i, rng.below(4));
        }
    }
    let pages: Vec<Vec<AtomicU64>> = (0..rng.index(5))
        .map(|_| junk_page(&mut rng, slots))
        .collect();
    let words: Vec<SubWords<'_>> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, &p[..]))
        .collect();
    let mut publisher = PublisherState::new(slots, policy);
    for _ in 0..rng.below(4) {
        publisher.announce(&chan);
    }
    let me = junk_page(&mut rng, slots);
    let mut sub = SubscriberState::new(slots, policy, junk(&mut rng, slots));
    let mut last: Option<u64> = None;
    for _ in 0..40 {
        // Change a word (of a slot's words, often) between calls.
        let target = match rng.below(3) {
            0 => &chan,
            1 => &me,
            _ => pages.first().unwrap_or(&chan),
        };
        let at = match rng.below(5) {
            0 | 1 => CLAIM + rng.index(slots),
            2 => ANNOUNCED,
            3 => SUB_HOLD + rng.index(slots),
            _ => rng.index(WORDS),
        };
        store(target, at, junk(&mut rng, slots));
        match rng.below(6) {
            0 | 1 => match publisher.try_claim(&chan, &words) {
                Ok((slot, seq)) => {
                    if slot >= slots || seq != publisher.next_seq() {
                        return Err(format!("claimed ({slot}, {seq})"));
                    }
                }
                Err(Blocked::Held { sub, .. } | Blocked::Behind { sub, .. }) => {
                    if sub as usize >= pages.len() {
                        return Err(format!("blocked by subscriber {sub}, which is not live"));
                    }
                }
                Err(Blocked::Exhausted { next }) => {
                    return Err(format!("exhausted at frame {next}"));
                }
            },
            2 => {
                publisher.announce(&chan);
            }
            3 => {
                let (next, announced) = publisher.join_point(&chan, rng.chance(50));
                if next == 0 {
                    return Err(format!("join point 0 (announced {announced})"));
                }
            }
            _ => match sub.try_pick(&chan, &me) {
                Ok(Pick::Held(f)) => {
                    if f.slot >= slots || load(&me, SUB_HOLD + f.slot) != f.seq {
                        return Err(format!("picked {f:?} but the hold word disagrees"));
                    }
                    if last.is_some_and(|l| f.seq <= l) {
                        return Err(format!("picked {f:?} after frame {last:?}"));
                    }
                    last = Some(f.seq);
                    let _ = is_ready(&chan, &f);
                    if rng.chance(70) {
                        release(&me, &f);
                    }
                }
                Ok(Pick::NotYet) | Err(Violation(_)) => {}
            },
        }
    }
    Ok(())
}

#[test]
fn garbage_words_never_panic_or_hang() {
    for seed in 0..3000 {
        match catch_unwind(AssertUnwindSafe(|| junk_run(seed))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("junk seed {seed}: {e}"),
            Err(_) => panic!("junk seed {seed} panicked (see the message above)"),
        }
    }
}

#[test]
fn the_public_protocol_types_refuse_out_of_range_slots_without_panicking() {
    // `pubsub::protocol` is public API; the crate's rule is no panic on bad input. Its
    // constructors take any `usize` of slots, and a page's words are only 512.
    let (chan, me) = (page(), page());
    store(&chan, ANNOUNCED, 1);
    let sub = catch_unwind(AssertUnwindSafe(|| {
        SubscriberState::new(8 * MAX_SLOTS, Policy::Block, 1).try_pick(&chan, &me)
    }));
    assert!(
        sub.is_ok(),
        "SubscriberState of {} slots: try_pick indexes past the page",
        8 * MAX_SLOTS
    );
    let publisher = catch_unwind(|| PublisherState::new(0, Policy::Block).next_seq());
    assert!(publisher.is_ok(), "PublisherState::new(0, _) panics");
}

// ---------------------------------------------------------------------------------------------
// Random single-threaded interleavings against a model
// ---------------------------------------------------------------------------------------------

/// Returns early with an error message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

type Check = Result<(), String>;

/// A live subscriber: its page, its protocol state and what the model knows about it.
struct SimSub {
    id: u64,
    page: Vec<AtomicU64>,
    state: SubscriberState,
    /// The first frame it may receive (its join point).
    start: u64,
    /// The frames announced when it joined (the GPU writes its `READY` words after that).
    joined_after: u64,
    last: Option<u64>,
    received: u64,
    missed: u64,
    held: Vec<Picked>,
}

impl SimSub {
    /// The frame it wants next, as the model sees it.
    fn want(&self) -> u64 {
        self.last.map_or(self.start, |l| l + 1)
    }
}

/// A frame's GPU work, queued in stream order: its `READY` words are written when it runs.
#[derive(Debug)]
struct GpuWork {
    slot: usize,
    seq: u64,
    subs: Vec<u64>,
}

/// How often each operation runs, drawn per seed so that some seeds have a fast publisher and
/// slow subscribers, and others the reverse.
#[derive(Debug)]
struct Weights {
    claim: u64,
    announce: u64,
    gpu: u64,
    pick: u64,
    release: u64,
    die: u64,
    join: u64,
    drain: u64,
}

/// Tallies over all seeds, to show the runs reach the interesting states.
#[derive(Debug, Default)]
struct Coverage {
    delivered: u64,
    missed: u64,
    held_blocks: u64,
    behind_blocks: u64,
    deaths: u64,
    joins: u64,
    reclaims: u64,
    /// Frames received between their claim and their announce.
    ahead: u64,
    /// Frames received before the publisher's GPU wrote them.
    unwritten: u64,
}

struct Sim {
    rng: Rng,
    policy: Policy,
    slots: usize,
    chan: Vec<AtomicU64>,
    /// The frame number whose data each slot holds (the publisher's GPU writes it, in stream
    /// order after the frame's announce).
    data: Vec<u64>,
    publisher: PublisherState,
    loan: Option<(usize, u64)>,
    announced: u64,
    subs: Vec<SimSub>,
    next_id: u64,
    gpu: VecDeque<GpuWork>,
    gpu_done: u64,
    /// `evicted[seq]`: frame `seq` was overwritten (its slot claimed for a later frame).
    evicted: Vec<bool>,
    trace: Vec<String>,
    cov: Coverage,
}

impl Sim {
    fn new(seed: u64, policy: Policy) -> (Sim, Weights) {
        let mut rng = Rng::new(seed);
        let slots = 1 + rng.index(8);
        let mut w = |lo, hi| lo + rng.below(hi - lo + 1);
        let weights = Weights {
            claim: w(1, 10),
            announce: w(1, 10),
            gpu: w(1, 10),
            pick: w(1, 10),
            release: w(1, 10),
            die: w(0, 2),
            join: w(0, 2),
            drain: w(0, 1),
        };
        let sim = Sim {
            rng,
            policy,
            slots,
            chan: page(),
            data: vec![0; slots],
            publisher: PublisherState::new(slots, policy),
            loan: None,
            announced: 0,
            subs: Vec::new(),
            next_id: 0,
            gpu: VecDeque::new(),
            gpu_done: 0,
            evicted: vec![false; 2],
            trace: Vec::new(),
            cov: Coverage::default(),
        };
        (sim, weights)
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("#{} {line}", self.trace.len()));
    }

    /// Whether a live subscriber holds the frame in `slot`.
    fn is_held(&self, slot: usize) -> bool {
        self.subs
            .iter()
            .any(|s| s.held.iter().any(|p| p.slot == slot))
    }

    /// The slot the model says the next claim must take, or `None` if it must block.
    fn expected_slot(&self, claims: &[u64]) -> Option<usize> {
        match self.policy {
            Policy::Block => {
                let slot = (self.announced % self.slots as u64) as usize;
                let old = claims[slot];
                let behind = old != 0 && self.subs.iter().any(|s| s.want() <= old);
                (!self.is_held(slot) && !behind).then_some(slot)
            }
            Policy::DropOldest => (0..self.slots)
                .filter(|&i| self.slots == 1 || claims[i] == 0 || claims[i] != self.announced)
                .filter(|&i| !self.is_held(i))
                .min_by_key(|&i| (claims[i], i)),
        }
    }

    fn claim(&mut self) -> Check {
        let before = claims(&self.chan, self.slots);
        let words: Vec<SubWords<'_>> = self.subs.iter().map(|s| (s.id, &s.page[..])).collect();
        let got = self.publisher.try_claim(&self.chan, &words);
        drop(words);
        self.log(format!("claim -> {got:?}   (claims were {before:?})"));
        let after = claims(&self.chan, self.slots);
        if let Some(loan) = self.loan {
            ensure!(
                got == Ok(loan),
                "the dropped loan {loan:?} must come back, got {got:?}"
            );
            ensure!(
                after == before,
                "claiming a dropped loan again changed the claims"
            );
            self.cov.reclaims += 1;
            return Ok(());
        }
        let expected = self.expected_slot(&before);
        match got {
            Ok((slot, seq)) => {
                ensure!(
                    seq == self.announced + 1,
                    "claimed frame {seq} after announcing {}",
                    self.announced
                );
                ensure!(
                    expected == Some(slot),
                    "claimed slot {slot}; the model expects {expected:?}"
                );
                let mut want = before.clone();
                want[slot] = seq;
                ensure!(after == want, "claims are {after:?}, expected {want:?}");
                let old = before[slot];
                if old != 0 {
                    self.evicted[old as usize] = true;
                }
                self.evicted.push(false);
                self.loan = Some((slot, seq));
            }
            Err(b) => {
                ensure!(
                    expected.is_none(),
                    "blocked by {b:?} though slot {expected:?} is free"
                );
                ensure!(
                    after == before,
                    "a blocked claim changed the claims to {after:?}"
                );
                match b {
                    Blocked::Held { sub, seq } => {
                        let s = self.subs.iter().find(|s| s.id == sub);
                        let holds = s.is_some_and(|s| s.held.iter().any(|p| p.seq == seq));
                        ensure!(holds, "{b:?}: that subscriber does not hold that frame");
                        self.cov.held_blocks += 1;
                    }
                    Blocked::Behind { sub, next } => {
                        ensure!(self.policy == Policy::Block, "{b:?} under DropOldest");
                        let s = self.subs.iter().find(|s| s.id == sub);
                        let slot = (self.announced % self.slots as u64) as usize;
                        let ok = s.is_some_and(|s| s.want() == next && next <= before[slot]);
                        ensure!(ok, "{b:?}: that subscriber is not behind slot {slot}");
                        self.cov.behind_blocks += 1;
                    }
                    Blocked::Exhausted { .. } => {
                        ensure!(false, "{b:?} long before MAX_SEQ");
                    }
                }
            }
        }
        Ok(())
    }

    fn announce(&mut self) -> Check {
        let Some((slot, seq)) = self.loan.take() else {
            return Ok(());
        };
        let got = self.publisher.announce(&self.chan);
        self.log(format!("announce {seq} (slot {slot}) -> {got}"));
        ensure!(got == seq, "announced {got}, loaned {seq}");
        ensure!(load(&self.chan, ANNOUNCED) == seq, "ANNOUNCED word");
        ensure!(
            self.publisher.next_seq() == seq + 1,
            "next_seq after announce"
        );
        self.announced = seq;
        let subs = self.subs.iter().map(|s| s.id).collect();
        self.gpu.push_back(GpuWork { slot, seq, subs });
        Ok(())
    }

    /// The publisher's GPU finishes the oldest queued frame and writes its `READY` words.
    fn gpu_step(&mut self) {
        let Some(work) = self.gpu.pop_front() else {
            return;
        };
        self.log(format!("gpu {work:?}"));
        self.data[work.slot] = work.seq;
        store(&self.chan, SLOT_READY + work.slot, work.seq);
        store(&self.chan, PUBLISHED, work.seq);
        for s in self.subs.iter().filter(|s| work.subs.contains(&s.id)) {
            store(&s.page, SUB_READY + work.slot, work.seq);
        }
        self.gpu_done = work.seq;
    }

    /// A held frame's slot has an older frame's data until the publisher's GPU has written
    /// the frame, and the frame's own after that: never a later frame's.
    fn check_data(&self, f: &Picked, when: &str) -> Check {
        let data = self.data[f.slot];
        if self.gpu_done >= f.seq {
            ensure!(
                data == f.seq,
                "{when}: frame {} (slot {}) has frame {data}'s data",
                f.seq,
                f.slot
            );
        } else {
            ensure!(
                data < f.seq,
                "{when}: frame {} (slot {}), not written yet, has frame {data}'s data",
                f.seq,
                f.slot
            );
        }
        Ok(())
    }

    fn pick(&mut self, i: usize) -> Check {
        if self.subs[i].held.len() >= MAX_HELD {
            return Ok(());
        }
        let s = &mut self.subs[i];
        let want = s.want();
        let got = s.state.try_pick(&self.chan, &s.page);
        let id = s.id;
        self.log(format!("sub {id} pick (wants {want}) -> {got:?}"));
        let (announced, loan) = (self.announced, self.loan);
        let f = match got {
            Err(v) => return Err(format!("a violation in a valid run: {}", v.0)),
            Ok(Pick::NotYet) => {
                let left = (want..=announced).find(|&u| !self.evicted[u as usize]);
                ensure!(
                    left.is_none(),
                    "NotYet though frame {left:?} is in its slot"
                );
                // Every announced frame it wants is gone: the claimed one comes next.
                ensure!(
                    loan.is_none_or(|(_, seq)| seq < want),
                    "NotYet though the claim of {loan:?} is final"
                );
                return Ok(());
            }
            Ok(Pick::Held(f)) => f,
        };
        ensure!(f.slot < self.slots, "slot {} out of range", f.slot);
        let ahead = loan == Some((f.slot, f.seq));
        ensure!(
            want <= f.seq && (f.seq <= announced || ahead),
            "received {f:?} (wanted {want}, announced {announced}, loan {loan:?})",
        );
        self.check_data(&f, "pick")?;
        self.cov.ahead += u64::from(f.seq > announced);
        self.cov.unwritten += u64::from(self.gpu_done < f.seq);
        let (s, evicted) = (&mut self.subs[i], &self.evicted);
        ensure!(
            !evicted[f.seq as usize],
            "received frame {}, overwritten",
            f.seq
        );
        ensure!(
            load(&s.page, SUB_NEXT) == f.seq + 1,
            "SUB_NEXT after a pick"
        );
        ensure!(
            s.held.iter().all(|h| h.slot != f.slot),
            "two held frames in slot {}",
            f.slot
        );
        match self.policy {
            Policy::Block => ensure!(
                f.seq == want && f.missed == 0,
                "Block delivered {f:?} to a subscriber waiting for {want}"
            ),
            Policy::DropOldest => {
                ensure!(
                    f.missed == f.seq - want,
                    "{f:?}: expected {} missed",
                    f.seq - want
                );
                let kept = (want..f.seq).find(|&u| !evicted[u as usize]);
                ensure!(
                    kept.is_none(),
                    "{f:?} skipped frame {kept:?}, still in its slot"
                );
            }
        }
        s.last = Some(f.seq);
        s.received += 1;
        s.missed += f.missed;
        ensure!(
            s.missed + s.received == f.seq - s.start + 1,
            "received {} and missed {} of frames {}..={}",
            s.received,
            s.missed,
            s.start,
            f.seq
        );
        s.held.push(f);
        self.cov.delivered += 1;
        self.cov.missed += f.missed;
        Ok(())
    }

    fn release(&mut self, i: usize, j: usize) -> Check {
        let f = self.subs[i].held.remove(j);
        let id = self.subs[i].id;
        self.log(format!("sub {id} release {f:?}"));
        self.check_data(&f, "release")?;
        release(&self.subs[i].page, &f);
        ensure!(
            load(&self.subs[i].page, SUB_ACK + f.slot) == f.seq,
            "ACK word"
        );
        Ok(())
    }

    fn die(&mut self, i: usize) {
        let s = self.subs.remove(i);
        self.log(format!("sub {} dies holding {:?}", s.id, s.held));
        self.cov.deaths += 1;
    }

    fn join(&mut self, latest: bool) -> Check {
        let (next, announced) = self.publisher.join_point(&self.chan, latest);
        let id = self.next_id;
        self.next_id += 1;
        self.log(format!("sub {id} joins (latest {latest}) at {next}"));
        ensure!(
            announced == self.announced,
            "join_point announced {announced}"
        );
        // The newest announced frame is always in a slot, except with one slot once the
        // next frame is loaned.
        let newest_gone = self.slots == 1 && self.loan.is_some();
        let want = if latest && announced > 0 && !newest_gone {
            announced
        } else {
            announced + 1
        };
        ensure!(next == want, "join point {next}, expected {want}");
        let page = page();
        store(&page, SUB_NEXT, next);
        let state = SubscriberState::new(self.slots, self.policy, next);
        ensure!(state.next() == next, "a new subscriber's next");
        self.subs.push(SimSub {
            id,
            page,
            state,
            start: next,
            joined_after: announced,
            last: None,
            received: 0,
            missed: 0,
            held: Vec::new(),
        });
        self.cov.joins += 1;
        Ok(())
    }

    /// Liveness: every subscriber releases what it holds and catches up, the GPU finishes;
    /// then the publisher must be able to claim.
    fn drain(&mut self) -> Check {
        self.log("drain".into());
        self.announce()?;
        while !self.gpu.is_empty() {
            self.gpu_step();
        }
        for i in 0..self.subs.len() {
            while !self.subs[i].held.is_empty() {
                self.release(i, 0)?;
            }
            for _ in 0..=self.announced {
                let before = self.subs[i].last;
                self.pick(i)?;
                if self.subs[i].last == before {
                    break;
                }
                self.release(i, 0)?;
            }
            let s = &self.subs[i];
            ensure!(
                s.want() > self.announced || self.policy == Policy::DropOldest,
                "sub {} did not catch up",
                s.id
            );
        }
        self.claim()?;
        ensure!(
            self.loan.is_some(),
            "the publisher is blocked with every frame released"
        );
        self.check()
    }

    /// What must hold after every step.
    fn check(&self) -> Check {
        for s in &self.subs {
            for f in &s.held {
                self.check_data(f, &format!("sub {} holds it", s.id))?;
                let claim = load(&self.chan, CLAIM + f.slot);
                ensure!(claim == f.seq, "held frame {} but CLAIM is {claim}", f.seq);
                let (hold, ack) = (
                    load(&s.page, SUB_HOLD + f.slot),
                    load(&s.page, SUB_ACK + f.slot),
                );
                ensure!(
                    hold == f.seq && ack < hold,
                    "sub {} holds {f:?}, HOLD {hold} ACK {ack}",
                    s.id
                );
                let done = self.gpu_done >= f.seq;
                ensure!(
                    is_ready(&self.chan, f) == done,
                    "is_ready({f:?}) with the GPU done up to {}",
                    self.gpu_done
                );
                if done && f.seq > s.joined_after {
                    let r = load(&s.page, SUB_READY + f.slot);
                    ensure!(r >= f.seq, "sub {} SUB_READY {r} for {f:?}", s.id);
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, w: &Weights) -> Check {
        let n = self.subs.len();
        let total = w.claim
            + w.announce
            + w.gpu
            + (w.pick + w.release + w.die) * n as u64
            + w.join
            + w.drain;
        let mut r = self.rng.below(total);
        let mut take = |weight: u64| {
            let hit = r < weight;
            r = r.saturating_sub(weight);
            hit
        };
        if take(w.claim) {
            self.claim()
        } else if take(w.announce) {
            self.announce()
        } else if take(w.gpu) {
            self.gpu_step();
            Ok(())
        } else if take(w.pick * n as u64) {
            let i = self.rng.index(n);
            self.pick(i)
        } else if take(w.release * n as u64) {
            let i = self.rng.index(n);
            match self.subs[i].held.len() {
                0 => Ok(()),
                h => {
                    let j = self.rng.index(h);
                    self.release(i, j)
                }
            }
        } else if take(w.die * n as u64) {
            let i = self.rng.index(n);
            self.die(i);
            Ok(())
        } else if take(w.join) {
            if n < 5 {
                let latest = self.rng.chance(50);
                self.join(latest)?;
            }
            Ok(())
        } else {
            self.drain()
        }
    }

    fn run(&mut self, w: &Weights, steps: usize) -> Check {
        self.log(format!(
            "{:?}, {} slots, weights {w:?}",
            self.policy, self.slots
        ));
        for _ in 0..self.rng.below(6) {
            let latest = self.rng.chance(50);
            self.join(latest)?;
        }
        for _ in 0..steps {
            self.step(w)?;
            self.check()?;
        }
        self.drain()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Runs the seeds (`PUBSUB_SEED` for one, else `PUBSUB_SEEDS` of them, 4000 by default).
fn random_interleavings(policy: Policy) -> Coverage {
    let seeds = match env_u64("PUBSUB_SEED") {
        Some(s) => s..s + 1,
        None => 0..env_u64("PUBSUB_SEEDS").unwrap_or(4000),
    };
    let mut cov = Coverage::default();
    for seed in seeds {
        let (mut sim, w) = Sim::new(seed, policy);
        if let Err(e) = sim.run(&w, 400) {
            let tail = sim.trace.len().saturating_sub(60);
            panic!(
                "seed {seed} ({policy:?}) failed: {e}\n(rerun with PUBSUB_SEED={seed})\n\
                 last operations:\n  {}",
                sim.trace[tail..].join("\n  ")
            );
        }
        let c = &sim.cov;
        cov.delivered += c.delivered;
        cov.missed += c.missed;
        cov.held_blocks += c.held_blocks;
        cov.behind_blocks += c.behind_blocks;
        cov.deaths += c.deaths;
        cov.joins += c.joins;
        cov.reclaims += c.reclaims;
        cov.ahead += c.ahead;
        cov.unwritten += c.unwritten;
    }
    eprintln!("{policy:?}: {cov:?}");
    cov
}

#[test]
fn random_interleavings_block() {
    let cov = random_interleavings(Policy::Block);
    if env_u64("PUBSUB_SEED").is_none() {
        assert!(cov.delivered > 0 && cov.held_blocks > 0 && cov.behind_blocks > 0);
        assert!(cov.deaths > 0 && cov.joins > 0 && cov.reclaims > 0);
        assert!(cov.ahead > 0 && cov.unwritten > cov.ahead);
        assert_eq!(cov.missed, 0);
    }
}

#[test]
fn random_interleavings_drop_oldest() {
    let cov = random_interleavings(Policy::DropOldest);
    if env_u64("PUBSUB_SEED").is_none() {
        assert!(cov.delivered > 0 && cov.held_blocks > 0 && cov.missed > 0);
        assert!(cov.deaths > 0 && cov.joins > 0 && cov.reclaims > 0);
        assert!(cov.ahead > 0 && cov.unwritten > cov.ahead);
        assert_eq!(cov.behind_blocks, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Real threads
// ---------------------------------------------------------------------------------------------

/// The words a publisher and its subscribers share.
struct Shared {
    chan: Vec<AtomicU64>,
    /// Every live subscriber's page, as the publisher checks them: the subscriber threads'
    /// (from `first`) between pages of subscribers that hold nothing and wait for nothing,
    /// which make the publisher's checks longer and so widen the window between its first
    /// look at a page and its tentative claim.
    pages: Vec<Vec<AtomicU64>>,
    first: usize,
    /// The frame number whose data each slot holds.
    data: Vec<AtomicU64>,
    /// Set by a thread that fails, so that the others stop.
    stop: AtomicBool,
    cov: ThreadCoverage,
}

/// Tallies of one run, to show that the races happen.
#[derive(Debug, Default)]
struct ThreadCoverage {
    /// Frames received before their announce (read back after the receive).
    ahead: AtomicU64,
    /// Frames received before they were written.
    unwritten: AtomicU64,
    /// Tentative claims a subscriber saw over a frame it held, each then withdrawn.
    tentative: AtomicU64,
}

impl ThreadCoverage {
    fn add(&self, other: &ThreadCoverage) {
        for (a, b) in [
            (&self.ahead, &other.ahead),
            (&self.unwritten, &other.unwritten),
            (&self.tentative, &other.tentative),
        ] {
            a.fetch_add(b.load(SeqCst), SeqCst);
        }
    }
}

/// Fails a thread that makes no progress for a long time (a hang), or that another stopped.
struct Watchdog {
    since: Instant,
}

impl Watchdog {
    const PATIENCE: Duration = Duration::from_secs(60);

    fn new() -> Watchdog {
        Watchdog {
            since: Instant::now(),
        }
    }

    fn progress(&mut self) {
        self.since = Instant::now();
    }

    fn check(&self, sh: &Shared, who: &str) -> Check {
        ensure!(
            !sh.stop.load(SeqCst),
            "{who}: stopped (another thread failed)"
        );
        ensure!(
            self.since.elapsed() < Self::PATIENCE,
            "{who}: no progress for {:?}",
            Self::PATIENCE
        );
        Ok(())
    }
}

/// A short random pause: nothing, a few spins, or giving up the core.
fn pause(rng: &mut Rng) {
    match rng.below(8) {
        0 => std::thread::yield_now(),
        1 | 2 => {
            for _ in 0..rng.below(200) {
                std::hint::spin_loop();
            }
        }
        _ => {}
    }
}

/// The publisher's GPU writes a frame: its data, then its `READY` word.
fn write_frame(sh: &Shared, slot: usize, seq: u64, rng: &mut Rng) {
    sh.data[slot].store(seq, SeqCst);
    pause(rng);
    store(&sh.chan, SLOT_READY + slot, seq);
}

fn publisher_thread(sh: &Shared, slots: usize, policy: Policy, frames: u64, seed: u64) -> Check {
    let mut rng = Rng::new(seed);
    let mut p = PublisherState::new(slots, policy);
    let words: Vec<SubWords<'_>> = sh
        .pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, &p[..]))
        .collect();
    let mut dog = Watchdog::new();
    while p.next_seq() <= frames {
        let (slot, seq) = match p.try_claim(&sh.chan, &words) {
            Ok(loan) => loan,
            Err(_) => {
                dog.check(sh, "publisher")?;
                pause(&mut rng);
                continue;
            }
        };
        ensure!(seq == p.next_seq(), "claimed {seq}");
        let claim = load(&sh.chan, CLAIM + slot);
        ensure!(
            claim == seq,
            "CLAIM[{slot}] is {claim:#x} after claiming {seq}"
        );
        if rng.chance(3) {
            // A loan dropped unpublished comes back unchanged.
            let again = p.try_claim(&sh.chan, &words);
            ensure!(again == Ok((slot, seq)), "reclaimed {again:?}");
        }
        // The claim is final: subscribers may take the frame from now on, before it is
        // written or announced.
        pause(&mut rng);
        // Written before the announce, or after it (a GPU still busy with the frame's work
        // when the CPU announces it).
        let written_first = rng.chance(50);
        if written_first {
            write_frame(sh, slot, seq, &mut rng);
        }
        p.announce(&sh.chan);
        if !written_first {
            pause(&mut rng);
            write_frame(sh, slot, seq, &mut rng);
        }
        dog.progress();
    }
    Ok(())
}

/// Checks a frame a subscriber holds: its slot's claim is the frame's (or, for a moment, a
/// tentative claim, which the publisher must withdraw), and the slot has no later frame's
/// data — the frame's own once it is ready.
fn check_held(sh: &Shared, id: usize, f: &Picked, dog: &Watchdog) -> Check {
    let claim = load(&sh.chan, CLAIM + f.slot);
    if claim != f.seq {
        ensure!(
            claim & TENTATIVE != 0 && claim & !TENTATIVE > f.seq,
            "sub {id}: holds {f:?} but CLAIM[{}] is {claim:#x}",
            f.slot
        );
        sh.cov.tentative.fetch_add(1, SeqCst);
        // The publisher's second look finds the hold: the claim goes back to the frame.
        loop {
            let now = load(&sh.chan, CLAIM + f.slot);
            if now == f.seq {
                break;
            }
            ensure!(
                now & TENTATIVE != 0,
                "sub {id}: holds {f:?}, claimed {now:#x} after a tentative claim"
            );
            dog.check(sh, "subscriber waiting for a withdrawal")?;
            std::thread::yield_now();
        }
    }
    // The READY word first: once it is seen, the data must be the frame's.
    let ready = is_ready(&sh.chan, f);
    let data = sh.data[f.slot].load(SeqCst);
    if ready {
        ensure!(data == f.seq, "sub {id}: {f:?} is ready, slot has {data}");
    } else {
        ensure!(
            data <= f.seq,
            "sub {id}: {f:?} is not ready, slot has {data}"
        );
    }
    Ok(())
}

/// Receives frames until the last one; returns `(received, missed)`.
fn subscriber_thread(
    sh: &Shared,
    id: usize,
    slots: usize,
    policy: Policy,
    frames: u64,
    seed: u64,
) -> Result<(u64, u64), String> {
    let mut rng = Rng::new(seed);
    let me = &sh.pages[sh.first + id];
    let max_held = 1 + rng.index(MAX_HELD);
    let mut s = SubscriberState::new(slots, policy, 1);
    let mut held: VecDeque<Picked> = VecDeque::new();
    let (mut last, mut received, mut missed) = (0u64, 0u64, 0u64);
    let mut dog = Watchdog::new();
    let release_oldest = |held: &mut VecDeque<Picked>, rng: &mut Rng, dog: &Watchdog| {
        let f = held.pop_front().expect("a held frame");
        pause(rng);
        check_held(sh, id, &f, dog)?;
        release(me, &f);
        Ok::<(), String>(())
    };
    while last < frames {
        if held.len() >= max_held || (!held.is_empty() && rng.chance(30)) {
            release_oldest(&mut held, &mut rng, &dog)?;
            continue;
        }
        let f = match s.try_pick(&sh.chan, me) {
            Err(v) => return Err(format!("sub {id}: {}", v.0)),
            Ok(Pick::NotYet) => {
                if held.is_empty() {
                    dog.check(sh, "subscriber")?;
                    pause(&mut rng);
                } else {
                    release_oldest(&mut held, &mut rng, &dog)?;
                }
                continue;
            }
            Ok(Pick::Held(f)) => f,
        };
        dog.progress();
        // At once, while the publisher may be writing a tentative claim over the frame
        // because its first look missed the new hold.
        for _ in 0..1 + rng.below(4) {
            check_held(sh, id, &f, &dog)?;
        }
        if load(&sh.chan, ANNOUNCED) < f.seq {
            sh.cov.ahead.fetch_add(1, SeqCst);
        }
        if !is_ready(&sh.chan, &f) {
            sh.cov.unwritten.fetch_add(1, SeqCst);
            if rng.chance(50) {
                // Wait for it, as the GPU does (the publisher needs nothing to finish it).
                while !is_ready(&sh.chan, &f) {
                    dog.check(sh, "subscriber waiting for READY")?;
                    std::thread::yield_now();
                }
                check_held(sh, id, &f, &dog)?;
            }
        }
        ensure!(f.seq > last, "sub {id}: {f:?} after {last}");
        ensure!(f.missed == f.seq - last - 1, "sub {id}: {f:?} after {last}");
        if policy == Policy::Block {
            ensure!(f.missed == 0, "sub {id}: {f:?} under Block");
        }
        last = f.seq;
        received += 1;
        missed += f.missed;
        held.push_back(f);
    }
    while !held.is_empty() {
        release_oldest(&mut held, &mut rng, &dog)?;
    }
    Ok((received, missed))
}

/// A subscriber page that holds nothing and waits for no frame.
fn idle_page() -> Vec<AtomicU64> {
    let p = page();
    store(&p, SUB_NEXT, u64::MAX);
    p
}

/// One publisher and `subs` subscribers on threads, among `idle` idle subscriber pages;
/// returns each subscriber's `(received, missed)`, after adding the run's tallies to `cov`.
fn threads(
    policy: Policy,
    (slots, subs, idle): (usize, usize, usize),
    frames: u64,
    seed: u64,
    cov: &ThreadCoverage,
) -> Vec<(u64, u64)> {
    let first = idle / 2;
    let sh = Shared {
        chan: page(),
        pages: (0..subs + idle)
            .map(|i| {
                if (first..first + subs).contains(&i) {
                    let p = page();
                    store(&p, SUB_NEXT, 1);
                    p
                } else {
                    idle_page()
                }
            })
            .collect(),
        first,
        data: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        cov: ThreadCoverage::default(),
    };
    let (published, results) = std::thread::scope(|scope| {
        let subs: Vec<_> = (0..subs)
            .map(|i| {
                let sh = &sh;
                scope.spawn(move || {
                    let r = subscriber_thread(sh, i, slots, policy, frames, seed + 1 + i as u64);
                    if r.is_err() {
                        sh.stop.store(true, SeqCst);
                    }
                    r
                })
            })
            .collect();
        let published = publisher_thread(&sh, slots, policy, frames, seed);
        if published.is_err() {
            sh.stop.store(true, SeqCst);
        }
        let results: Vec<_> = subs.into_iter().map(|h| h.join().unwrap()).collect();
        (published, results)
    });
    let what = format!("{policy:?}, {slots} slots, {idle} idle pages, seed {seed}");
    // The failure that stopped the others, not theirs.
    let errors: Vec<&String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .chain(published.as_ref().err())
        .collect();
    if let Some(e) = errors
        .iter()
        .find(|e| !e.contains("stopped"))
        .or(errors.first())
    {
        panic!("{what}: {e}");
    }
    let out: Vec<(u64, u64)> = results.into_iter().filter_map(Result::ok).collect();
    for &(received, missed) in &out {
        assert_eq!(
            received + missed,
            frames,
            "{what}: every frame received or missed"
        );
    }
    eprintln!("{what}: {:?}", sh.cov);
    cov.add(&sh.cov);
    out
}

#[test]
fn threads_block_deliver_every_frame_in_order() {
    let cov = ThreadCoverage::default();
    for (shape, seed) in [((3, 4, 0), 1), ((1, 3, 0), 2), ((2, 3, 40), 3)] {
        for (received, missed) in threads(Policy::Block, shape, 20_000, seed, &cov) {
            assert_eq!((received, missed), (20_000, 0));
        }
    }
    assert!(cov.ahead.load(SeqCst) > 0 && cov.unwritten.load(SeqCst) > 0);
}

#[test]
fn threads_drop_oldest_never_overwrite_a_held_frame() {
    let cov = ThreadCoverage::default();
    for (shape, seed) in [((4, 4, 0), 10), ((2, 3, 0), 20), ((3, 4, 40), 30)] {
        // Panics unless every subscriber's received + missed is exactly every frame.
        threads(Policy::DropOldest, shape, 40_000, seed, &cov);
    }
    assert!(cov.ahead.load(SeqCst) > 0 && cov.unwritten.load(SeqCst) > 0);
    // Hundreds per run where threads run in parallel; on a single core the publisher is
    // almost never preempted inside its claim.
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        assert!(cov.tentative.load(SeqCst) > 0, "{cov:?}");
    }
}

#[test]
fn threads_block_a_given_back_frame_keeps_its_slot() {
    // `unpick` (a receive that timed out waiting for the frame to be written) gives frame 1
    // back: it must be the next frame again, and with `Block` nothing may overwrite it. The
    // publisher reads `HOLD` and then `NEXT`; if `unpick` drops the hold before it moves
    // `NEXT` back, a publisher looking in between sees the slot neither held nor behind, and
    // claims it for frame 2: frame 1 is lost and the subscriber's next pick calls it a
    // protocol violation. A publisher and a subscriber race for a second (or until then).
    let pages = Pages::new(1);
    let me = &pages.subs[0];
    let mut p = PublisherState::new(1, Policy::Block);
    publish(&mut p, &pages);
    let stop = AtomicBool::new(false);
    let (mut gave_back, mut looked) = (0u64, 0u64);
    let failure: Option<String> = std::thread::scope(|scope| {
        let sub = scope.spawn(|| {
            let mut s = SubscriberState::new(1, Policy::Block, 1);
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until && !stop.load(SeqCst) {
                match s.try_pick(&pages.chan, me) {
                    Ok(Pick::Held(f)) => {
                        assert_eq!((f.slot, f.seq), (0, 1));
                        s.unpick(me, &f);
                        gave_back += 1;
                    }
                    Ok(Pick::NotYet) => {} // a tentative claim, to be withdrawn
                    Err(v) => {
                        stop.store(true, SeqCst);
                        return Some(format!("the subscriber's next pick failed: {}", v.0));
                    }
                }
            }
            stop.store(true, SeqCst);
            None
        });
        let words = pages.words();
        while !stop.load(SeqCst) {
            looked += 1;
            if let Ok((slot, seq)) = p.try_claim(&pages.chan, &words) {
                stop.store(true, SeqCst);
                let _ = sub.join();
                return Some(format!(
                    "claimed slot {slot} for frame {seq} while frame 1, never released, was \
                     the subscriber's next"
                ));
            }
        }
        sub.join().unwrap()
    });
    assert!(
        failure.is_none(),
        "{} (after {gave_back} give-backs, {looked} looks)",
        failure.unwrap_or_default()
    );
    assert!(gave_back > 1000, "the race ran ({gave_back} give-backs)");
}

// ---------------------------------------------------------------------------------------------
// From the second hostile review (tests/review_channels.rs, moved here when `protocol` became
// crate-private): random hostile words and pages against the releases and the picks.

/// xorshift64*: deterministic, so a failure reproduces.
struct ReviewRng(u64);
impl ReviewRng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value a hostile peer would pick: edges around 0, MAX_SEQ, 2^63, u64::MAX, or random.
    fn word(&mut self) -> u64 {
        let base = match self.next() % 8 {
            0 => 0,
            1 => MAX_SEQ,
            2 => 1 << 63,
            3 => u64::MAX,
            4 => TENTATIVE | (self.next() % 16),
            5 => self.next() % 32,
            6 => MAX_SEQ - 16,
            _ => return self.next(),
        };
        base.wrapping_add(self.next() % 8).wrapping_sub(4)
    }
}

#[test]
fn review_release_ready_is_relative_and_never_lowers_an_honest_word() {
    let mut rng = ReviewRng(0x5eed_1234);
    let n = 200_000;
    let (mut stored, mut kept) = (0, 0);
    for i in 0..n {
        let before = rng.word();
        let seq = match i % 3 {
            0 => rng.next() % 64,
            1 => MAX_SEQ - rng.next() % 4,
            _ => rng.next() % (MAX_SEQ + 1),
        };
        let w = AtomicU64::new(before);
        let did = release_ready(&w, seq);
        let after = w.load(SeqCst);
        if seq == 0 {
            assert!(!did && after == before, "seq 0 stored");
            continue;
        }
        // Every GPU wait for a frame 1..=seq of the slot passes (cyclic comparison).
        for s in [1, seq / 2 + 1, seq] {
            assert!(
                gpu_wait_passes(after, s),
                "word {before:#x} released for {seq}: {after:#x} holds a wait for {s}"
            );
        }
        assert!(ready_releases(after, seq));
        if ready_releases(before, seq) {
            assert_eq!(after, before, "an honest word was changed");
            kept += 1;
        } else {
            assert!(did && after == seq);
            stored += 1;
        }
        // Never lowers a word that was an honest frame number.
        if before <= MAX_SEQ {
            assert!(after >= before, "lowered {before} to {after}");
        }
    }
    println!("{n} releases: {stored} stored, {kept} kept");
}

/// A channel page a hostile publisher wrote, read through `ReadWords`.
struct Hostile(Vec<u64>);
impl ReadWords for Hostile {
    fn load(&self, index: usize) -> u64 {
        self.0[index]
    }
}

#[test]
fn review_try_pick_on_hostile_pages_never_holds_past_max_seq_or_panics() {
    let mut rng = ReviewRng(0xdead_beef);
    let pages = 20_000;
    let (mut held, mut violations, mut not_yet) = (0u64, 0u64, 0u64);
    for _ in 0..pages {
        let slots = 1 + (rng.next() % MAX_SLOTS as u64) as usize;
        let policy = if rng.next() % 2 == 0 {
            Policy::Block
        } else {
            Policy::DropOldest
        };
        let mut page = vec![0u64; 512];
        page[ANNOUNCED] = if rng.next() % 4 == 0 {
            rng.word()
        } else {
            rng.next() % 40
        };
        for i in 0..slots {
            page[CLAIM + i] = if rng.next() % 4 == 0 {
                rng.word()
            } else {
                rng.next() % 40
            };
        }
        let chan = Hostile(page);
        let latest = rng.next() % 2 == 0;
        let (next, announced) = std::panic::catch_unwind(|| join_point(&chan, slots, latest))
            .expect("join_point panicked");
        assert!(
            next <= MAX_SEQ + 1 && announced <= MAX_SEQ,
            "{next} {announced}"
        );
        let me: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let mut st = SubscriberState::new(slots, policy, next);
        for _ in 0..4 {
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| st.try_pick(&chan, &me)))
                    .expect("try_pick panicked");
            match r {
                Ok(Pick::Held(p)) => {
                    held += 1;
                    assert!(
                        p.seq >= 1 && p.seq <= MAX_SEQ && p.slot < slots,
                        "held {p:?} of {:?}",
                        &chan.0[CLAIM..CLAIM + slots]
                    );
                    assert_eq!(chan.0[CLAIM + p.slot], p.seq);
                    assert!(me[SUB_NEXT].load(SeqCst) <= MAX_SEQ + 1);
                }
                Ok(Pick::NotYet) => not_yet += 1,
                Err(_) => {
                    violations += 1;
                    break;
                }
            }
        }
    }
    println!("{pages} hostile pages: {held} holds, {not_yet} not yet, {violations} violations");
}
