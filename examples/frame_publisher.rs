//! The publisher of the channel pipeline: synthetic frames (4K RGBA by default) produced as
//! fast as the GPU fills them, published through a `cuda_ipc::pubsub` channel to subscribers
//! in other processes (or pods), which map the pool on their own GPU and verify every frame.
//!
//! ```sh
//! cargo run --release --example frame_publisher -- --gpu 0 --subscribers 2 --frames 1000
//! cargo run --release --example frame_subscriber -- --gpu 0 --frames 1000 &
//! cargo run --release --example frame_subscriber -- --gpu 1 --frames 1000
//! ```
//! Each frame: `Kernels::fill_frame` for its sequence number, then `Kernels::stamp_time` (the
//! GPU timer when the frame was complete, for the subscribers' latency), then `publish`; the
//! CPU never waits for the GPU in the loop. After the last frame it waits (up to `--linger`)
//! for the subscribers to leave, then closes the channel. Prints one summary line:
//!
//! `frame_publisher: gpu=0 frames=1000 frame_bytes=33177600 policy=block slots=8 subscribers=2
//! joined=2 left=2 refused=0 subscribers_left_at_close=0 seconds=1.234 fps=810.4
//! gbytes_per_s=26.89 linger_s=0.002`
//!
//! Exits 0 once every frame was published, 1 on an error (no subscriber in time, a loan that
//! timed out behind a stuck subscriber, ...), 2 on bad options.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::frames::{self, Cli};
use cuda_ipc::ipc::{AllowedUsers, ExportOptions, Transport};
use cuda_ipc::prelude::*;
use cuda_ipc::pubsub::{ChannelOptions, Policy, Publisher};

const PROGRAM: &str = "frame_publisher";

#[derive(Debug)]
struct Options {
    dir: PathBuf,
    channel: String,
    gpu: usize,
    frame_bytes: usize,
    frames: Option<u64>,
    seconds: Option<Duration>,
    policy: Policy,
    slots: usize,
    subscribers: usize,
    transport: Transport,
    timeout: Duration,
    linger: Duration,
    group: Option<u32>,
}

fn usage() -> String {
    format!(
        "Usage: {PROGRAM} [OPTIONS]

Options:
  --dir DIR            rendezvous directory (default: $CUDA_IPC_DIR, else {})
  --channel NAME       channel name in DIR (default: {})
  --gpu N              GPU that owns the frames and fills them (default: 0)
  --width W --height H frame size in RGBA pixels (default: 3840 x 2160)
  --frame-bytes B      frame size in bytes, a multiple of 8 (instead of --width/--height)
  --frames N           frames to publish (default: 1000 unless --seconds)
  --seconds S          publish for S seconds instead
  --policy P           block | drop-oldest (default: block)
  --slots N            frames in flight (default: 8)
  --subscribers K      subscribers to wait for before the first frame (default: 1; 0: none)
  --transport T        auto | fd | legacy (default: auto)
  --timeout SECS       wait for subscribers / a free slot at most this long (default: 60)
  --linger SECS        after the last frame, wait this long for subscribers to leave
                       before closing the channel (default: 10; 0: close at once)
  --group GID          share through this group (subscribers of other uids, as in pods
                       with one fsGroup)
  -h, --help           this help
",
        common::DEFAULT_DIR,
        frames::CHANNEL
    )
}

fn parse() -> Options {
    let mut cli = Cli::new(PROGRAM, usage());
    let mut o = Options {
        dir: frames::default_dir(),
        channel: frames::CHANNEL.to_string(),
        gpu: 0,
        frame_bytes: frames::FRAME_4K_RGBA,
        frames: None,
        seconds: None,
        policy: Policy::Block,
        slots: 8,
        subscribers: 1,
        transport: Transport::Auto,
        timeout: Duration::from_secs(60),
        linger: Duration::from_secs(10),
        group: None,
    };
    let (mut width, mut height, mut bytes) = (None, None, None);
    let positive = |n: &usize| *n > 0;
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--dir" => o.dir = PathBuf::from(cli.value(&flag)),
            "--channel" => o.channel = cli.value(&flag),
            "--gpu" => o.gpu = cli.parse(&flag, "a GPU ordinal", |_: &usize| true),
            "--width" => width = Some(cli.parse(&flag, "a positive number", positive)),
            "--height" => height = Some(cli.parse(&flag, "a positive number", positive)),
            "--frame-bytes" => {
                bytes = Some(cli.parse(&flag, "a positive multiple of 8", |b: &usize| {
                    *b > 0 && b % 8 == 0
                }))
            }
            "--frames" => o.frames = Some(cli.parse(&flag, "a positive number", |n: &u64| *n > 0)),
            "--seconds" => o.seconds = Some(cli.seconds(&flag)),
            "--policy" => {
                o.policy = match cli.value(&flag).as_str() {
                    "block" => Policy::Block,
                    "drop-oldest" => Policy::DropOldest,
                    other => cli.fail(format!("unknown policy {other:?} (block, drop-oldest)")),
                }
            }
            "--slots" => o.slots = cli.parse(&flag, "a positive number", positive),
            "--subscribers" => o.subscribers = cli.parse(&flag, "a number", |_: &usize| true),
            "--transport" => {
                let v = cli.value(&flag);
                o.transport = Transport::parse(&v).unwrap_or_else(|| {
                    cli.fail(format!("unknown transport {v:?} (auto, fd, legacy)"))
                })
            }
            "--timeout" => o.timeout = cli.seconds(&flag),
            "--linger" => {
                let s: f64 = cli.parse(&flag, "seconds (0 or more)", |s: &f64| {
                    *s >= 0.0 && *s < 1e9
                });
                o.linger = Duration::from_secs_f64(s)
            }
            "--group" => o.group = Some(cli.parse(&flag, "a numeric group id", |_: &u32| true)),
            other => cli.fail(format!("unknown option {other:?}")),
        }
    }
    match (width, height, bytes) {
        (None, None, Some(b)) => o.frame_bytes = b,
        (None, None, None) => {}
        (Some(w), Some(h), None) => {
            o.frame_bytes = w
                .checked_mul(h)
                .and_then(|p| p.checked_mul(4))
                .filter(|b| b % 8 == 0)
                .unwrap_or_else(|| {
                    cli.fail(format!(
                        "{w} x {h} RGBA pixels is not a whole number of 8-byte words"
                    ))
                })
        }
        _ => cli.fail("give --width and --height together, or --frame-bytes alone"),
    }
    if o.frames.is_some() && o.seconds.is_some() {
        cli.fail("give --frames or --seconds, not both");
    }
    if o.frames.is_none() && o.seconds.is_none() {
        o.frames = Some(1000);
    }
    o
}

fn main() -> ExitCode {
    common::init_logger();
    let opts = parse();
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROGRAM}: ERROR: {e}");
            ExitCode::from(1)
        }
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Block => "block",
        Policy::DropOldest => "drop-oldest",
    }
}

fn run(o: &Options) -> Result<()> {
    let device = Device::by_ordinal(o.gpu)?;
    let ctx = Context::new(device)?;
    let stream = Stream::new(&ctx)?;
    let k = ctx.kernels()?;
    let words = o.frame_bytes / 8;
    let path = o.dir.join(&o.channel);
    let mut publisher = Publisher::<u64>::create(
        &ctx,
        &path,
        frames::frame_len(o.frame_bytes),
        ChannelOptions {
            slots: o.slots,
            max_subscribers: o.subscribers.max(16),
            policy: o.policy,
            transport: o.transport,
            export: ExportOptions {
                group: o.group,
                allowed: o.group.map_or(AllowedUsers::SameUser, AllowedUsers::Group),
                ..ExportOptions::default()
            },
            ..Default::default()
        },
    )?;
    println!(
        "{PROGRAM}: channel {} on GPU {} ({}, {}): {} slots of {} bytes, policy {}; waiting up to {:?} for {} subscriber(s)",
        path.display(),
        o.gpu,
        device.name()?,
        device.uuid()?,
        o.slots,
        o.frame_bytes,
        policy_name(o.policy),
        o.timeout,
        o.subscribers
    );
    if o.subscribers > 0 {
        publisher.wait_subscribers(o.subscribers, o.timeout)?;
    }

    let start = Instant::now();
    // No deadline when S seconds from now is not representable: run until --frames.
    let deadline = o.seconds.and_then(|s| start.checked_add(s));
    let mut published = 0u64;
    loop {
        if o.frames.is_some_and(|n| published >= n) || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let mut loan = publisher.loan(o.timeout)?;
        let seq = loan.seq();
        let mut data = loan.view_mut().slice_mut(..words)?;
        k.fill_frame(&stream, &mut data, seq)?;
        k.stamp_time(&stream, &mut loan, words)?;
        loan.publish(&stream)?;
        published += 1;
    }
    stream.synchronize()?;
    let elapsed = start.elapsed();

    // How the subscribers share the GPU with this publisher (they are all still connected).
    let sharing = publisher.stats();
    println!(
        "{PROGRAM}: sharing: same_gpu_without_mps={} same_gpu_mps={} (of {} subscribers)",
        sharing.same_gpu_without_mps, sharing.same_gpu_mps, sharing.subscribers
    );
    // Let the subscribers take the last frames before the channel closes.
    let linger_start = Instant::now();
    while publisher.stats().subscribers > 0 && linger_start.elapsed() < o.linger {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = publisher.stats();
    let lingered = linger_start.elapsed();
    drop(publisher);
    let secs = elapsed.as_secs_f64();
    let per_s = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    println!(
        "{PROGRAM}: gpu={} frames={published} frame_bytes={} policy={} slots={} subscribers={} \
         joined={} left={} refused={} subscribers_left_at_close={} seconds={secs:.3} fps={:.1} \
         gbytes_per_s={:.2} linger_s={:.3}",
        o.gpu,
        o.frame_bytes,
        policy_name(o.policy),
        o.slots,
        o.subscribers,
        stats.joined,
        stats.left,
        stats.refused,
        stats.subscribers,
        per_s(published as f64),
        per_s(published as f64 * o.frame_bytes as f64) / 1e9,
        lingered.as_secs_f64()
    );
    Ok(())
}
