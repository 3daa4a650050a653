//! The helper processes (this executable again): the subscribers and consumers of each method,
//! plus what the parent and they agree on (environment, files, shared words).
//!
//! Every helper has its own directory (`ready` marker, `result` file, exported buffers), reads
//! commands on stdin (`cpu-start`, `cpu-stop`: a CPU-cost window measured with getrusage;
//! `finish`: write the result and exit) and stops when stdin closes.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{Exporter, SharedDeviceBuffer, Transport};
use cuda_ipc::prelude::*;
use cuda_ipc::pubsub::{
    ChannelOptions, Policy, Publisher, Start, SubscribeOptions, Subscriber, Waiting,
};

use crate::common::{self, shm::SharedWords};

/// Helper roles.
pub const CHANNEL: &str = "chan";
pub const ECHO: &str = "echo";
pub const FILE: &str = "file";
pub const NOTIFY: &str = "notify";

/// Environment: the helper's GPU, index, what it reads from, the shared words, the frame
/// length in words, whether it checks frames, how many stamps it keeps, the wait timeout.
pub const ENV_GPU: &str = "CB_GPU";
pub const ENV_INDEX: &str = "CB_INDEX";
pub const ENV_SOURCE: &str = "CB_SOURCE";
pub const ENV_SHM: &str = "CB_SHM";
pub const ENV_FRAME_LEN: &str = "CB_FRAME_LEN";
pub const ENV_VERIFY: &str = "CB_VERIFY";
pub const ENV_STAMPS: &str = "CB_STAMPS";
pub const ENV_TIMEOUT_MS: &str = "CB_TIMEOUT_MS";

/// Shared words: the last frame of the current batch (channel throughput), then one progress
/// word per subscriber: the last frame it has finished on its GPU, stored when that frame is
/// the batch's last.
pub const SHM_BATCH_END: usize = 0;
pub const SHM_PROGRESS: usize = 8;
pub const SHM_WORDS: usize = SHM_PROGRESS + 64;

/// Files in a helper's directory: its stamps buffer (exported), its acknowledgement (file
/// baseline: a file; notify baseline: an exported buffer), its result, the echo's back channel.
pub const STAMPS: &str = "stamps";
pub const ACK: &str = "ack";
pub const RESULT: &str = "result";
pub const BACK: &str = "back";

/// How long a receive waits before the helper looks at its stop flag again.
const POLL: Duration = Duration::from_millis(100);

/// The stamp index of frame `seq` in a ring of `cap` stamps.
pub fn stamp_index(seq: u64, cap: usize) -> usize {
    (seq % cap.max(1) as u64) as usize
}

struct Env {
    dir: PathBuf,
    gpu: usize,
    index: usize,
    source: PathBuf,
    shm: PathBuf,
    frame_len: usize,
    verify: bool,
    stamps: usize,
    timeout: Duration,
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("bench helper: {name} is not set"))
}

fn env_num(name: &str) -> usize {
    env_var(name)
        .parse()
        .unwrap_or_else(|_| panic!("bench helper: {name} is not a number"))
}

impl Env {
    fn get() -> Env {
        Env {
            dir: common::helper_dir(),
            gpu: env_num(ENV_GPU),
            index: env_num(ENV_INDEX),
            source: PathBuf::from(env_var(ENV_SOURCE)),
            shm: PathBuf::from(env_var(ENV_SHM)),
            frame_len: env_num(ENV_FRAME_LEN),
            verify: env_num(ENV_VERIFY) != 0,
            stamps: env_num(ENV_STAMPS),
            timeout: Duration::from_millis(env_num(ENV_TIMEOUT_MS) as u64),
        }
    }
}

/// A CPU-cost window: CPU time used, wall time, frames finished meanwhile.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    cpu: Duration,
    wall: Duration,
    frames: u64,
}

/// What the main loop shares with the stdin thread.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    frames: AtomicU64,
    window: Mutex<Option<Window>>,
}

impl Control {
    /// Starts the thread that reads commands from stdin.
    fn start() -> Arc<Control> {
        let ctl = Arc::new(Control::default());
        let c = ctl.clone();
        std::thread::spawn(move || {
            let mut start = None;
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match line.trim() {
                    "cpu-start" => {
                        start = Some((common::cpu_time(), Instant::now(), c.frames.load(SeqCst)))
                    }
                    "cpu-stop" => {
                        if let Some((cpu, wall, frames)) = start.take() {
                            *c.window.lock().unwrap() = Some(Window {
                                cpu: common::cpu_time().saturating_sub(cpu),
                                wall: wall.elapsed(),
                                frames: c.frames.load(SeqCst).saturating_sub(frames),
                            });
                        }
                    }
                    "finish" => break,
                    _ => {}
                }
            }
            c.stop.store(true, SeqCst);
        });
        ctl
    }

    fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn frame_done(&self) {
        self.frames.fetch_add(1, SeqCst);
    }
}

/// What a helper found, written to its `result` file as `key=value` lines.
#[derive(Default)]
struct Outcome {
    frames: u64,
    errors: u64,
    addresses: BTreeSet<u64>,
    failure: Option<String>,
}

fn write_result(dir: &Path, ctl: &Control, out: &Outcome) {
    let w = ctl.window.lock().unwrap().unwrap_or_default();
    let mut s = format!(
        "frames={}\nerrors={}\naddresses={}\nwindow_cpu_ns={}\nwindow_wall_ns={}\nwindow_frames={}\n",
        out.frames,
        out.errors,
        out.addresses.len(),
        w.cpu.as_nanos(),
        w.wall.as_nanos(),
        w.frames
    );
    if let Some(f) = &out.failure {
        s.push_str(&format!("failure={}\n", f.replace('\n', " ")));
    }
    let tmp = dir.join(".result.tmp");
    std::fs::write(&tmp, s).expect("writing the helper's result");
    std::fs::rename(&tmp, dir.join(RESULT)).expect("publishing the helper's result");
}

/// Runs the helper `role`.
pub fn run(role: &str) {
    let env = Env::get();
    let ctl = Control::start();
    let mut out = Outcome::default();
    let r = match role {
        CHANNEL => channel(&env, &ctl, &mut out),
        ECHO => echo(&env, &ctl, &mut out),
        FILE => file(&env, &ctl, &mut out),
        NOTIFY => notify(&env, &ctl, &mut out),
        other => panic!("unknown bench helper role {other:?}"),
    };
    if let Err(e) = r {
        out.failure.get_or_insert_with(|| e.to_string());
    }
    if let Some(f) = &out.failure {
        eprintln!("channel bench helper {role} {}: {f}", env.index);
    }
    write_result(&env.dir, &ctl, &out);
}

fn ready(env: &Env) {
    std::fs::write(env.dir.join("ready"), b"").expect("writing the ready marker");
}

/// The frames' check: `errors[0]` counts wrong words; read at the end.
struct Checker<'ctx> {
    errors: DeviceBuffer<'ctx, u32>,
}

impl<'ctx> Checker<'ctx> {
    fn new(ctx: &'ctx Context) -> Result<Self> {
        Ok(Checker {
            errors: DeviceBuffer::zeroed(ctx, 1)?,
        })
    }

    fn finish(&self, stream: &Stream<'_>, out: &mut Outcome) -> Result<()> {
        stream.synchronize()?;
        out.errors = u64::from(self.errors.copy_to_vec()?[0]);
        Ok(())
    }
}

/// The stamps buffer, exported for the parent to read (none when `cap` is 0).
fn stamps<'ctx>(
    ctx: &'ctx Context,
    env: &Env,
) -> Result<Option<(SharedDeviceBuffer<'ctx, u64>, Exporter)>> {
    if env.stamps == 0 {
        return Ok(None);
    }
    let buf = SharedDeviceBuffer::<u64>::zeroed(ctx, env.stamps, Transport::Auto)?;
    let exporter = Exporter::bind(env.dir.join(STAMPS), &buf)?;
    Ok(Some((buf, exporter)))
}

fn subscribe<'ctx>(ctx: &'ctx Context, env: &Env, path: &Path) -> Result<Subscriber<'ctx, u32>> {
    Subscriber::<u32>::subscribe(
        ctx,
        path,
        SubscribeOptions {
            timeout: env.timeout,
            start: Start::Next,
            waiting: waiting(),
            ..Default::default()
        },
    )
}

/// How the bench's subscribers wait for a claim: `CHANNEL_BENCH_WAIT=adaptive[:MAX_US]`
/// (default 10 µs) for `Waiting::Adaptive`, else the default `Waiting::Eager`.
pub fn waiting() -> Waiting {
    let v = std::env::var("CHANNEL_BENCH_WAIT").unwrap_or_default();
    match v
        .trim()
        .split_once(':')
        .map_or((v.trim(), None), |(a, b)| (a, Some(b)))
    {
        ("adaptive", us) => Waiting::Adaptive {
            max: Duration::from_micros(us.and_then(|u| u.parse().ok()).unwrap_or(10)),
        },
        _ => Waiting::Eager,
    }
}

/// A channel subscriber: receives every frame on its stream, checks it (`verify_frame`) and
/// releases it; when a frame is the batch's last, waits for its stream and says so.
fn channel(env: &Env, ctl: &Control, out: &mut Outcome) -> Result<()> {
    let ctx = Context::new(Device::by_ordinal(env.gpu)?)?;
    let stream = Stream::new(&ctx)?;
    let k = ctx.kernels()?;
    let shm = SharedWords::open(&env.shm, SHM_WORDS).expect("mapping the shared words");
    let sub = subscribe(&ctx, env, &env.source)?;
    eprintln!(
        "channel bench helper {}: sharing with the publisher: {:?}",
        env.index,
        sub.stats().sharing
    );
    let mut check = Checker::new(&ctx)?;
    ready(env);
    while !ctl.stopped() {
        let sample = match sub.receive(&stream, POLL) {
            Ok(s) => s,
            Err(Error::Timeout { .. }) => continue,
            Err(Error::PublisherGone { .. }) => break, // the run is over
            Err(e) => {
                out.failure = Some(e.to_string());
                break;
            }
        };
        let seq = sample.seq();
        if env.verify {
            k.verify_frame(&stream, &sample, seq, &mut check.errors)?;
        }
        out.addresses.insert(sample.device_ptr());
        drop(sample);
        out.frames += 1;
        ctl.frame_done();
        if seq == shm.word(SHM_BATCH_END).load(SeqCst) {
            stream.synchronize()?;
            shm.word(SHM_PROGRESS + env.index).store(seq, SeqCst);
        }
    }
    check.finish(&stream, out)
}

/// The latency peer: receives each frame of the parent's channel, stamps the time as its first
/// work on it, and answers through its own channel (`back`), which the parent subscribes to.
fn echo(env: &Env, ctl: &Control, out: &mut Outcome) -> Result<()> {
    let ctx = Context::new(Device::by_ordinal(env.gpu)?)?;
    let stream = Stream::new(&ctx)?;
    let k = ctx.kernels()?;
    let sub = subscribe(&ctx, env, &env.source)?;
    eprintln!(
        "channel bench helper echo: sharing with the publisher: {:?}",
        sub.stats().sharing
    );
    let mut back = Publisher::<u32>::create(
        &ctx,
        env.dir.join(BACK),
        env.frame_len,
        ChannelOptions {
            slots: 4,
            policy: Policy::Block,
            ..Default::default()
        },
    )?;
    let (mut stamps, _exporter) = stamps(&ctx, env)?.expect("the echo helper keeps stamps");
    ready(env);
    back.wait_subscribers(1, env.timeout)?;
    while !ctl.stopped() {
        let sample = match sub.receive(&stream, POLL) {
            Ok(s) => s,
            Err(Error::Timeout { .. }) => continue,
            Err(Error::PublisherGone { .. }) => break, // the run is over
            Err(e) => {
                out.failure = Some(e.to_string());
                break;
            }
        };
        let seq = sample.seq();
        k.stamp_time(&stream, &mut stamps, stamp_index(seq, env.stamps))?;
        let answer = back.loan(env.timeout)?;
        answer.publish(&stream)?;
        drop(sample);
        out.frames += 1;
        ctl.frame_done();
    }
    stream.synchronize()
}

/// Baseline (a): polls the frame file on the shared directory (the seed's way, tight polling:
/// its best case), opens the legacy handle in it for every frame, stamps, checks, closes,
/// acknowledges with a file.
fn file(env: &Env, ctl: &Control, out: &mut Outcome) -> Result<()> {
    let ctx = Context::new(Device::by_ordinal(env.gpu)?)?;
    let stream = Stream::new(&ctx)?;
    let k = ctx.kernels()?;
    let mut stamps = stamps(&ctx, env)?;
    let mut check = Checker::new(&ctx)?;
    ready(env);
    let mut last = 0;
    while !ctl.stopped() {
        let Some(f) = crate::feeds::read_frame_file(&env.source).filter(|f| f.seq > last) else {
            std::thread::yield_now();
            continue;
        };
        // SAFETY: the parent keeps the buffer behind this handle alive for the whole run and
        // rewrites it only after every consumer has acknowledged this frame.
        let buf = unsafe {
            SharedDeviceBuffer::<u32>::import_legacy_handle(&ctx, &f.handle, f.offset, f.len)
        }?;
        if let Some((s, _)) = stamps.as_mut() {
            k.stamp_time(&stream, s, stamp_index(f.seq, env.stamps))?;
        }
        if env.verify {
            k.verify_frame(&stream, &buf, f.seq, &mut check.errors)?;
        }
        out.addresses.insert(buf.device_ptr());
        stream.synchronize()?;
        drop(buf);
        crate::feeds::write_number(&env.dir, ACK, f.seq);
        last = f.seq;
        out.frames += 1;
        ctl.frame_done();
    }
    check.finish(&stream, out)
}

/// Baseline (b): one buffer imported once; waits for each frame with
/// `SharedDeviceBuffer::wait_ready`, stamps, checks, waits for its stream and acknowledges
/// with its own exporter's `notify_ready`.
fn notify(env: &Env, ctl: &Control, out: &mut Outcome) -> Result<()> {
    let ctx = Context::new(Device::by_ordinal(env.gpu)?)?;
    let stream = Stream::new(&ctx)?;
    let k = ctx.kernels()?;
    let mut stamps = stamps(&ctx, env)?;
    let mut check = Checker::new(&ctx)?;
    let frames = SharedDeviceBuffer::<u32>::import(&ctx, &env.source, env.timeout)?;
    let ack_buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1, Transport::Auto)?;
    let ack = Exporter::bind(env.dir.join(ACK), &ack_buf)?;
    ready(env);
    let mut n = 0;
    while !ctl.stopped() {
        n = match frames.wait_ready(n + 1, POLL) {
            Ok(v) => v,
            Err(Error::Timeout { .. }) => continue,
            Err(e) => {
                out.failure = Some(e.to_string());
                break;
            }
        };
        if let Some((s, _)) = stamps.as_mut() {
            k.stamp_time(&stream, s, stamp_index(n, env.stamps))?;
        }
        if env.verify {
            k.verify_frame(&stream, &frames, n, &mut check.errors)?;
        }
        out.addresses.insert(frames.device_ptr());
        stream.synchronize()?;
        ack.notify_ready(n)?;
        out.frames += 1;
        ctl.frame_done();
    }
    check.finish(&stream, out)
}
