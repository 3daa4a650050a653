//! Where each control word lives. Two kinds of 4 KiB pages of 64-bit words, both shared
//! memory files (`memfd`) passed over the channel's socket:
//!
//! - the **channel page**, one per channel: written by the publisher only (subscribers map
//!   it read-only), read by every subscriber's CPU;
//! - a **subscriber page**, one per subscriber connection: its `READY` words are written by
//!   the publisher's GPU, the rest by that subscriber (CPU or GPU); the publisher reads them.
//!
//! A subscriber can thus only lie about itself: it cannot make another subscriber read a
//! frame early or make the publisher reuse a slot another subscriber holds.

/// Bytes of every control page.
pub const PAGE_BYTES: usize = 4096;
/// Most slots a channel may have.
pub const MAX_SLOTS: usize = 64;
/// Most subscribers a channel may have.
pub const MAX_SUBSCRIBERS: usize = 64;

/// Word index of the channel page's magic number.
pub const MAGIC: usize = 0;
/// The magic number: "cudaipcC".
pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"cudaipcC");
/// Word index: 1 once the publisher has closed the channel (a clean drop).
pub const CLOSED: usize = 1;
/// Word index: a counter the publisher bumps after every claim and at the close; its low 32
/// bits are the futex subscribers sleep on while they wait for a frame.
pub const EVENTS: usize = 4;
/// Word index: the highest sequence number the publisher has published (CPU, at
/// `publish`; the frame's data may still be being written on the publisher's GPU).
pub const ANNOUNCED: usize = 8;
/// Word index: the last sequence number whose data is complete (the publisher's GPU writes
/// it after the frame's work).
pub const PUBLISHED: usize = 16;
/// First of `slots` words: the sequence number claimed for each slot (publisher CPU, at
/// `loan`); 0 for a slot never used.
pub const CLAIM: usize = 64;
/// First of `slots` words: the sequence number whose data is complete in each slot
/// (publisher GPU).
pub const SLOT_READY: usize = 128;

/// Subscriber page, first of `slots` words: the sequence number complete in each slot,
/// written by the publisher's GPU for this subscriber (its own copy, so that it can release
/// its own waits when the publisher dies).
pub const SUB_READY: usize = 0;
/// Subscriber page, first of `slots` words: the sequence number this subscriber holds (or
/// last held) in each slot (its CPU, at `receive`).
pub const SUB_HOLD: usize = 128;
/// Subscriber page, first of `slots` words: the sequence number this subscriber has released
/// in each slot (its GPU after its work, or its CPU). A slot is held while `HOLD > ACK`.
pub const SUB_ACK: usize = 256;
/// Subscriber page: the next sequence number this subscriber will receive (its CPU). With
/// `Policy::Block` no frame at or after it is overwritten.
pub const SUB_NEXT: usize = 384;

/// Subscriber page: 1 while this subscriber sleeps on the channel's `EVENTS` futex (its CPU),
/// so that the publisher makes the wake-up system call only when someone sleeps.
pub const SUB_WAITING: usize = 392;

/// Channel page, first of [`INFO_WORDS`](super::sharing::INFO_WORDS) words: the publisher's
/// report of how it uses the GPU (its UUID, MPS, process; see `sharing.rs`), written once
/// before the page is sealed.
pub const CHAN_SHARING: usize = 192;

/// Subscriber page, first of [`INFO_WORDS`](super::sharing::INFO_WORDS) words: this
/// subscriber's report of how it uses the GPU (its CPU, once, at `subscribe`). Read by the
/// publisher for its stats and its warning only.
pub const SUB_SHARING: usize = 400;

/// The largest frame number a channel reaches (2^62). The publisher stops there (its `loan`
/// says the channel is closed), and a subscriber takes a larger number from a peer as a
/// protocol violation. Far from any real channel's life (2^62 frames at a million a second is
/// 146,000 years), it keeps every number a GPU waits for well inside the range where
/// `cuStreamWaitValue64`'s *cyclic* comparison (`(int64_t)(*addr - value) >= 0`) agrees with
/// `>=`: a subscriber releases the waits of its own streams by storing, per slot, the highest
/// frame they wait for there (never a fixed "released" value, which a frame number of 2^63 or
/// more would never pass).
pub const MAX_SEQ: u64 = 1 << 62;

const _: () = assert!(SLOT_READY + MAX_SLOTS <= PAGE_BYTES / 8);
const _: () = assert!(CLAIM + MAX_SLOTS <= SLOT_READY);
const _: () = assert!(SUB_READY + MAX_SLOTS <= SUB_HOLD);
const _: () = assert!(SUB_HOLD + MAX_SLOTS <= SUB_ACK);
const _: () = assert!(SUB_ACK + MAX_SLOTS <= SUB_NEXT);
const _: () = assert!(SUB_NEXT < SUB_WAITING && SUB_WAITING < PAGE_BYTES / 8);
const _: () = assert!(SLOT_READY + MAX_SLOTS <= CHAN_SHARING);
const _: () = assert!(CHAN_SHARING + super::sharing::INFO_WORDS <= PAGE_BYTES / 8);
const _: () = assert!(SUB_WAITING < SUB_SHARING);
const _: () = assert!(SUB_SHARING + super::sharing::INFO_WORDS <= PAGE_BYTES / 8);
