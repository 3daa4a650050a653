//! A subscriber of the channel pipeline (see `frame_publisher`): maps the channel's frame pool
//! on `--gpu N` (another GPU than the publisher's reads over NVLink/PCIe, zero copy), verifies
//! EVERY frame on its GPU with `Kernels::verify_frame`, and measures the latency from the
//! publisher's GPU timer stamp to its own stream starting on the frame.
//!
//! ```sh
//! cargo run --release --example frame_subscriber -- --gpu 1 --frames 1000
//! ```
//! GPU path (default): `receive(&stream, timeout)` returns at once and the stream waits for
//! the frame; the checks are queued behind it, and dropping the sample acknowledges it on the
//! stream after them. The CPU only waits every 1024 frames, to read the error counters.
//! `--cpu`: `receive_host`, which returns once the frame is complete; the checks then run and
//! the CPU waits for them before releasing the sample.
//!
//! Ends after `--frames N` (frames received plus frames missed under drop-oldest) or when the
//! publisher is gone (after the frames it completed). Prints one summary line:
//!
//! `frame_subscriber: gpu=1 path=gpu frames=1000 missed=0 verify_failures=0 bad_words=0
//! seconds=1.234 fps=810.4 latency_us_p50=... latency_us_p99=... latency_us_max=...
//! end=frames`
//!
//! `end=` is `frames` (`--frames N` reached), `publisher-closed` (it dropped its publisher) or
//! `publisher-gone` (its process ended without closing). Exits 0 only if no frame failed
//! verification, at least one frame was received, and all `--frames N` were accounted for
//! (without `--frames`: the publisher closed the channel); 1 otherwise, 2 on bad options.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::frames::{self, Cli};
use cuda_ipc::ipc::ImportOptions;
use cuda_ipc::prelude::*;
use cuda_ipc::pubsub::{Start, SubscribeOptions, Subscriber};

const PROGRAM: &str = "frame_subscriber";
/// Frames verified between two reads of the error counters (one counter per frame).
const WINDOW: usize = 1024;
/// Frames whose latency is recorded (the first ones; 16 bytes of GPU memory each).
const LATENCY_FRAMES: usize = 1 << 16;

#[derive(Debug)]
struct Options {
    dir: PathBuf,
    channel: String,
    gpu: usize,
    frames: Option<u64>,
    cpu: bool,
    start: Start,
    timeout: Duration,
    group: Option<u32>,
    trust_uids: Vec<u32>,
}

fn usage() -> String {
    format!(
        "Usage: {PROGRAM} [OPTIONS]

Options:
  --dir DIR            rendezvous directory (default: $CUDA_IPC_DIR, else {})
  --channel NAME       channel name in DIR (default: {})
  --gpu N              GPU to map the frames on and verify them with (default: 0)
  --frames N           stop after N frames (received + missed); default: until the
                       publisher closes the channel
  --cpu                receive on the CPU path (receive_host) instead of the GPU path
  --start S            latest | next (default: latest)
  --timeout SECS       wait for the channel / each frame at most this long (default: 60)
  --group GID          accept a rendezvous directory shared through this group
  --trust-uid UID      the publisher's uid, when it runs as another user
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
        frames: None,
        cpu: false,
        start: Start::Latest,
        timeout: Duration::from_secs(60),
        group: None,
        trust_uids: Vec::new(),
    };
    while let Some(flag) = cli.next_flag() {
        match flag.as_str() {
            "--dir" => o.dir = PathBuf::from(cli.value(&flag)),
            "--channel" => o.channel = cli.value(&flag),
            "--gpu" => o.gpu = cli.parse(&flag, "a GPU ordinal", |_: &usize| true),
            "--frames" => o.frames = Some(cli.parse(&flag, "a positive number", |n: &u64| *n > 0)),
            "--cpu" => o.cpu = true,
            "--start" => {
                o.start = match cli.value(&flag).as_str() {
                    "latest" => Start::Latest,
                    "next" => Start::Next,
                    other => cli.fail(format!("unknown start {other:?} (latest, next)")),
                }
            }
            "--timeout" => o.timeout = cli.seconds(&flag),
            "--group" => o.group = Some(cli.parse(&flag, "a numeric group id", |_: &u32| true)),
            "--trust-uid" => {
                let uid = cli.parse(&flag, "a numeric user id", |_: &u32| true);
                o.trust_uids.push(uid)
            }
            other => cli.fail(format!("unknown option {other:?}")),
        }
    }
    o
}

fn main() -> ExitCode {
    common::init_logger();
    let opts = parse();
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{PROGRAM}: ERROR: {e}");
            ExitCode::from(1)
        }
    }
}

/// Counts of the frames verified so far.
#[derive(Debug, Default)]
struct Verified {
    /// Frames with at least one wrong word.
    failures: u64,
    /// Wrong words in all frames.
    bad_words: u64,
}

impl Verified {
    /// Waits for the stream, adds the first `used` counters of `errors`, and zeroes them.
    fn flush(
        &mut self,
        stream: &Stream<'_>,
        errors: &mut DeviceBuffer<'_, u32>,
        used: usize,
    ) -> Result<()> {
        stream.synchronize()?;
        let counts = errors.copy_to_vec()?;
        for &c in &counts[..used.min(counts.len())] {
            self.failures += u64::from(c != 0);
            self.bad_words += u64::from(c);
        }
        errors.zero()
    }
}

fn run(o: &Options) -> Result<bool> {
    let device = Device::by_ordinal(o.gpu)?;
    let ctx = Context::new(device)?;
    let stream = Stream::new(&ctx)?;
    let k = ctx.kernels()?;
    let path = o.dir.join(&o.channel);
    println!(
        "{PROGRAM}: GPU {} ({}, {}): subscribing to {} (waiting up to {:?})",
        o.gpu,
        device.name()?,
        device.uuid()?,
        path.display(),
        o.timeout
    );
    let sub = Subscriber::<u64>::subscribe(
        &ctx,
        &path,
        SubscribeOptions {
            timeout: o.timeout,
            start: o.start,
            import: ImportOptions {
                group: o.group,
                trusted_exporters: o.trust_uids.clone(),
                ..ImportOptions::with_timeout(o.timeout)
            },
            ..Default::default()
        },
    )?;
    let Some(words) = sub.frame_len().checked_sub(1) else {
        return Err(Error::InvalidArgument(format!(
            "{}: frames of {} elements hold no timestamp: is the publisher frame_publisher?",
            path.display(),
            sub.frame_len()
        )));
    };
    let mut errors = DeviceBuffer::<u32>::zeroed(&ctx, WINDOW)?;
    // Pairs (publisher stamp, this stream's stamp) of the first LATENCY_FRAMES frames.
    let mut stamps = DeviceBuffer::<u64>::zeroed(&ctx, 2 * LATENCY_FRAMES)?;

    let mut verified = Verified::default();
    let (mut received, mut missed, mut pending) = (0u64, 0u64, 0usize);
    let mut first: Option<Instant> = None;
    let end = loop {
        if o.frames
            .is_some_and(|n| received.saturating_add(missed) >= n)
        {
            break "frames";
        }
        let got = if o.cpu {
            sub.receive_host(o.timeout)
        } else {
            sub.receive(&stream, o.timeout)
        };
        let sample = match got {
            Ok(sample) => sample,
            Err(e @ Error::PublisherGone { closed, .. }) => {
                println!("{PROGRAM}: end of stream: {e}");
                // A clean close (the publisher dropped its Publisher) or a process that ended.
                break if closed {
                    "publisher-closed"
                } else {
                    "publisher-gone"
                };
            }
            Err(e) => return Err(e),
        };
        first.get_or_insert_with(Instant::now);
        let seq = sample.seq();
        let i = received as usize;
        if i < LATENCY_FRAMES {
            // Our stamp first: as close as we get to the moment the frame reached us.
            k.stamp_time(&stream, &mut stamps, 2 * i + 1)?;
            let publisher_stamp = sample.view().slice(words..)?;
            stamps
                .view_mut()
                .slice_mut(2 * i..2 * i + 1)?
                .copy_from_device_async(&publisher_stamp, &stream)?;
        }
        let data = sample.view().slice(..words)?;
        let mut counter = errors.view_mut().slice_mut(pending..pending + 1)?;
        k.verify_frame(&stream, &data, seq, &mut counter)?;
        missed = missed.saturating_add(sample.missed());
        received += 1;
        pending += 1;
        if o.cpu {
            stream.synchronize()?; // the CPU path: the checks are done before the release
        }
        drop(sample); // GPU path: acknowledged on `stream` once the checks above are done
        if pending == WINDOW {
            verified.flush(&stream, &mut errors, pending)?;
            pending = 0;
        }
    };
    verified.flush(&stream, &mut errors, pending)?;
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());

    let recorded = (received as usize).min(LATENCY_FRAMES);
    let pairs = stamps.copy_to_vec()?;
    // Signed: the timers of two GPUs agree only approximately (see Kernels::stamp_time).
    let mut latencies: Vec<i64> = pairs[..2 * recorded]
        .chunks_exact(2)
        .map(|p| p[1].wrapping_sub(p[0]) as i64)
        .collect();
    latencies.sort_unstable();
    let us = |q: f64| {
        frames::quantile(&latencies, q)
            .map_or("none".to_string(), |ns| format!("{:.1}", ns as f64 / 1e3))
    };
    let fps = if secs > 0.0 {
        received as f64 / secs
    } else {
        0.0
    };
    println!(
        "{PROGRAM}: gpu={} path={} frames={received} missed={missed} verify_failures={} \
         bad_words={} seconds={secs:.3} fps={fps:.1} latency_us_p50={} latency_us_p99={} \
         latency_us_max={} end={end} sharing={:?}",
        o.gpu,
        if o.cpu { "cpu" } else { "gpu" },
        verified.failures,
        verified.bad_words,
        us(0.5),
        us(0.99),
        us(1.0),
        sub.stats().sharing
    );
    let complete = o
        .frames
        .is_none_or(|n| received.saturating_add(missed) >= n);
    // Without --frames, the end must be a clean close: a publisher that died may not have
    // sent everything.
    let clean_end = o.frames.is_some() || end != "publisher-gone";
    let pass = verified.failures == 0 && received > 0 && complete && clean_end;
    if !pass {
        println!(
            "{PROGRAM}: FAIL ({})",
            if verified.failures > 0 {
                "frames failed verification"
            } else if received == 0 {
                "no frame received"
            } else if !clean_end {
                "the publisher's process ended without closing the channel"
            } else {
                "the stream ended before --frames were accounted for"
            }
        );
    }
    Ok(pass)
}
