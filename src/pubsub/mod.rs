//! Channels: zero-copy publish/subscribe of GPU frames across processes and pods.
//!
//! A [`Publisher`] owns a pool of `slots` frames in one shared GPU allocation and serves it at
//! a path (`<dir>/<name>`) in a rendezvous directory both sides can see. Each [`Subscriber`]
//! maps the pool **once**, on its own GPU (the same one, or a peer over NVLink); after that,
//! no frame opens a handle or sends a socket message. The publisher *loans* a slot, fills it
//! with GPU work, and *publishes* it on a stream; a subscriber *receives* it on a stream of
//! its own, and the GPU — not the CPU — waits for the frame to be written before the
//! subscriber's kernels read it. Dropping the sample acknowledges it, on the GPU too, after
//! the subscriber's work.
//!
//! ```no_run
//! use std::time::Duration;
//! use cuda_ipc::prelude::*;
//! use cuda_ipc::pubsub::{ChannelOptions, Publisher, SubscribeOptions, Subscriber};
//!
//! const FRAME: usize = 3840 * 2160; // one 4K RGBA frame: 32-bit pixels
//!
//! // Process 1, GPU 0: produce frames as fast as the GPU can.
//! fn publisher() -> Result<()> {
//!     let ctx = Context::new(Device::by_ordinal(0)?)?;
//!     let stream = Stream::new(&ctx)?;
//!     let mut frames = Publisher::<u32>::create(&ctx, "/shared/cuda-ipc/video", FRAME,
//!         ChannelOptions::default())?;
//!     for _ in 0..1000 {
//!         let mut slot = frames.loan(Duration::from_secs(5))?; // waits for a free slot
//!         let seq = slot.seq();
//!         ctx.kernels()?.fill_pattern(&stream, &mut slot, seq as u32)?;
//!         slot.publish(&stream)?; // visible once the fill is done; the CPU does not wait
//!     }
//!     Ok(())
//! }
//!
//! // Process 2, GPU 1: read every frame in place.
//! fn subscriber() -> Result<()> {
//!     let ctx = Context::new(Device::by_ordinal(1)?)?;
//!     let stream = Stream::new(&ctx)?;
//!     let frames = Subscriber::<u32>::subscribe(&ctx, "/shared/cuda-ipc/video",
//!         SubscribeOptions::default())?;
//!     let mut digest = DeviceBuffer::<u64>::zeroed(&ctx, 1)?;
//!     loop {
//!         let frame = frames.receive(&stream, Duration::from_secs(5))?;
//!         ctx.kernels()?.checksum_into(&stream, &frame, &mut digest)?; // zero copy
//!     } // each frame is released on `stream` when dropped, after the checksum
//! }
//! # let _ = (publisher, subscriber);
//! ```
//!
//! # How it works
//! - **Data**: one allocation of `slots × frame` (each slot 256-byte aligned), exported like
//!   any [`SharedDeviceBuffer`](crate::ipc::SharedDeviceBuffer) under `<name>.pool` — fd
//!   transport by default, legacy where asked — with the same uid checks and leases. One
//!   allocation rather than one per slot: a subscriber maps the whole pool with one import (a
//!   cold import costs 80 µs to 1 ms, docs/benchmarks.md, so one per slot would multiply the
//!   join time by `slots`), and VMM rounds every allocation up to 2 MiB, which per-slot
//!   allocations of small frames would waste once per slot.
//! - **Control**: 64-bit words in host memory shared through sealed `memfd`s passed over the
//!   channel's socket (`<name>.sock`) and registered with the driver in each process, so the
//!   GPU waits on and writes them (`cuStreamWaitValue64` / `cuStreamWriteValue64`) and the CPU
//!   reads them with a load. One page per channel, written by the publisher only (subscribers
//!   map it read-only), and one page per subscriber, written by that subscriber and by the
//!   publisher's GPU (its copy of the "frame ready" words). A subscriber can only lie about
//!   itself. `src/pubsub/protocol.rs` explains how a held slot is never overwritten (a Dekker
//!   handshake between the publisher's claim and the subscriber's hold).
//! - **Waiting**: a subscriber takes frame `k` as soon as the publisher has *claimed* a slot for
//!   it (at `loan`), so its GPU already waits when the publisher's GPU writes the frame. On the
//!   CPU it sleeps on a futex in the channel page, which the publisher wakes after each claim
//!   and at the close (only when someone sleeps) — no polling, no socket message per frame.
//! - **Faults**: a subscriber's connection is its membership: when it closes (or its process
//!   dies) the publisher stops waiting for it at once. When the publisher goes, subscribers
//!   receive the frames it completed, then [`Error::PublisherGone`](crate::Error::PublisherGone)
//!   — and a thread watching the connection releases any stream of theirs waiting for a frame
//!   that will never come (work queued behind such a wait then reads whatever the slot holds).
//!   A restarted publisher is a new channel instance (new pages, new pool generation), which a
//!   new `Subscriber` joins; an old one never mistakes it for the old.
//!
//! # Trust
//! The channel's socket is the crate's one socket service, as an exporter's: each subscriber's
//! uid is checked (`SO_PEERCRED`), it must say hello (naming the channel) within the handshake
//! timeout, and no process or other uid takes more than its share of the places (see
//! [`rendezvous`](crate::ipc::rendezvous) for the threat model). Subscribers are processes of
//! the uids the publisher allows. One of them can lie only about
//! itself in the control words: it cannot write the channel page (sealed read-only) or another
//! subscriber's page, and no peer can resize a page to make another fault. It can stall a
//! `Block` channel as a slow subscriber would (the publisher's `loan` times out naming it);
//! with `DropOldest` a subscriber that holds more than `max_held` slots for a whole loan
//! timeout is disconnected. The frames themselves are mapped writable in every subscriber
//! (as any imported buffer is): an allowed subscriber could overwrite a frame others read.
//!
//! # One GPU: run MPS
//! A publisher and subscribers on one GPU in separate processes are separate GPU contexts,
//! which the GPU time-slices: each hand-over then costs ~150 µs (1 × H200), whatever carries
//! the signal. Under MPS (`nvidia-cuda-mps-control -d` on the host, or the Kubernetes MPS
//! claim of `deploy/k8s/overlays/mps`, docs/deploy.md) they share one context and the channel
//! hands a frame over in ~6 µs, as across GPUs. Each end detects which case it is in when they
//! meet ([`SharingMode`], in [`SubscriberStats::sharing`] and
//! [`PublisherStats::same_gpu_without_mps`]) and logs one warning (target `cuda_ipc`) when it
//! shares a GPU without MPS. `scripts/demo.sh --channel --mps` runs the demo under a daemon of
//! its own.
//!
//! # Policies
//! [`Policy::Block`] loses no frame: `loan` waits (with a timeout naming the slow
//! subscriber) until every subscriber has received and released the oldest frame.
//! [`Policy::DropOldest`] does not wait for a subscriber that falls behind: it overwrites the
//! oldest frame no one holds, and that subscriber skips ahead ([`Sample::missed`]). It waits
//! only when every slot but the newest is *held* — give it `slots >= subscribers × max_held + 2`
//! and that cannot happen with subscribers that keep to `max_held` (with `DropOldest` each receive
//! waits for its own acknowledgements to land first, so a subscriber queues work at most
//! `max_held` frames ahead of its GPU); one that holds more for a whole loan timeout is
//! disconnected. Either way a late subscriber can start from the newest frame
//! ([`Start::Latest`]).
use std::path::PathBuf;
use std::time::Duration;

use crate::ipc::rendezvous::Names;
use crate::ipc::{ExportOptions, ImportOptions, Transport, TypeTag};

pub(crate) mod layout;
mod page;
pub(crate) mod protocol;
mod publisher;
mod server;
mod sharing;
mod subscriber;
mod wire;

pub use layout::{MAX_SEQ, MAX_SLOTS, MAX_SUBSCRIBERS};
pub use publisher::{Loan, Publisher, PublisherStats};
pub use sharing::SharingMode;
pub use subscriber::{Sample, Subscriber, SubscriberStats};

/// What the publisher does when a subscriber is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// No frame is lost: `loan` waits (up to its timeout) until every live subscriber has
    /// received and released the oldest frame.
    #[default]
    Block,
    /// The publisher does not wait for a subscriber that falls behind: it overwrites the oldest
    /// frame that no subscriber holds, and that subscriber skips frames (it is told how many).
    /// It waits only while every slot but the newest is held: size `slots` to at least
    /// `subscribers × max_held + 2`.
    DropOldest,
}

/// How to create a channel.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// Frames in the pool (1..=64; at least 2 with `DropOldest`). Default 8.
    pub slots: usize,
    /// Most subscribers at once (1..=64). Default 16.
    pub max_subscribers: usize,
    /// Most samples one subscriber may hold at once (1..=slots). Default 2.
    pub max_held: usize,
    /// What to do with slow subscribers. Default `Block`.
    pub policy: Policy,
    /// How the pool travels. Default `Auto` (fd where the GPU supports it).
    pub transport: Transport,
    /// Who may subscribe, the sharing group, the handshake timeout and the fair shares
    /// (`max_per_process`, `max_per_uid`), as for an [`Exporter`](crate::ipc::Exporter): the
    /// channel's socket is the same service, with `max_subscribers` places. (The pool's
    /// exporter gets these options too, with room for at least `2 × max_subscribers`.)
    pub export: ExportOptions,
    /// The element type's tag; default `TypeTag::of::<T>()`.
    pub type_tag: Option<TypeTag>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            slots: 8,
            max_subscribers: 16,
            max_held: 2,
            policy: Policy::Block,
            transport: Transport::Auto,
            export: ExportOptions::default(),
            type_tag: None,
        }
    }
}

/// Where a new subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// With the newest frame still in the pool (history of one), if any.
    #[default]
    Latest,
    /// With the next frame published after it joined.
    Next,
}

/// How to subscribe.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// How long to wait for the channel to appear and answer. Default 30 s.
    pub timeout: Duration,
    /// Where to start. Default [`Start::Latest`].
    pub start: Start,
    /// Refuse the channel unless its frames have this many elements.
    pub expected_frame_len: Option<usize>,
    /// Trust settings and type tag, as for importing a buffer (its `timeout` and
    /// `expected_len` are set by the subscriber).
    pub import: ImportOptions,
    /// How `receive` waits on the CPU for the next frame's claim. Default
    /// [`Waiting::Eager`].
    pub waiting: Waiting,
}

/// How a subscriber's `receive` waits on the CPU for the publisher to claim a slot for its next
/// frame: it spins a while, then sleeps on the channel's futex until the publisher's `loan`
/// wakes it. Spinning keeps a fast feed's hand-over short; sleeping costs a futex round trip
/// per frame (a few µs of CPU on each side) and puts the wake-up (~20 µs, with a tail of
/// hundreds of µs on a busy host) in the latency of a frame whose claim came while asleep.
///
/// Measured on 1 × H200 under MPS (docs/benchmarks.md): `Adaptive { max: 10 µs }` cut the
/// subscriber's CPU per 4K frame with 8 subscribers from 37.6 µs to 16.8 µs (41 % → 18 % of a
/// core at 10,900 frames/s each), but the same-GPU ping-pong's latency rose from 5.7 µs to
/// 9.0–9.8 µs p50 (11 → 20–22 µs p99): its subscriber waits ~20 µs between frames, longer
/// than the budget, so it sleeps and its wake-up is in the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Waiting {
    /// Spin 64 rounds (tens of µs) before sleeping, for every frame: the lowest latency, and
    /// CPU burnt on every frame whose claim comes later than that.
    #[default]
    Eager,
    /// Spin only as long as claims lately came within `max` (the budget halves after each wait
    /// that had to sleep and grows back when a claim comes within it): a subscriber fed faster
    /// than it wakes up keeps spinning, one fed slower sleeps at once and spends no CPU
    /// spinning.
    Adaptive {
        /// The longest spin before sleeping.
        max: Duration,
    },
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            timeout: Duration::from_secs(30),
            start: Start::Latest,
            expected_frame_len: None,
            import: ImportOptions::default(),
            waiting: Waiting::default(),
        }
    }
}

/// `<dir>/<name>.pool`: where a channel's pool is published.
fn pool_path(names: &Names) -> PathBuf {
    names.dir.join(format!("{}.pool", names.name))
}
