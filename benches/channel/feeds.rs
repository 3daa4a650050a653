//! The parent's side of each method: a group of helper processes and the producer that feeds
//! them frames. A [`Feed`] hands over a batch of frames and returns the wall time until every
//! consumer has finished every one of them on its GPU.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{ExportOptions, Exporter, SharedDeviceBuffer, Transport};
use cuda_ipc::prelude::*;
use cuda_ipc::pubsub::{ChannelOptions, Policy, Publisher};
use cuda_ipc::Kernels;

use crate::common::{self, shm::SharedWords, Helper};
use crate::consumer::{self as c, stamp_index};

/// Hands frames to consumers.
pub trait Feed {
    /// Hands over `frames` frames; returns the wall time until every consumer has finished
    /// all of them.
    fn batch(&mut self, frames: u64) -> Duration;
}

/// What one helper reported at the end.
#[derive(Debug, Clone, Default)]
pub struct HelperResult {
    pub frames: u64,
    pub errors: u64,
    pub addresses: u64,
    pub window_cpu: Duration,
    pub window_wall: Duration,
    pub window_frames: u64,
    pub failure: Option<String>,
}

impl HelperResult {
    fn parse(text: &str) -> HelperResult {
        let kv: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        HelperResult {
            frames: num("frames"),
            errors: num("errors"),
            addresses: num("addresses"),
            window_cpu: Duration::from_nanos(num("window_cpu_ns")),
            window_wall: Duration::from_nanos(num("window_wall_ns")),
            window_frames: num("window_frames"),
            failure: kv.get("failure").map(|s| s.to_string()),
        }
    }

    /// CPU use over the window, in % of one core.
    pub fn cpu_percent(&self) -> Option<f64> {
        (self.window_wall > Duration::ZERO)
            .then(|| 100.0 * self.window_cpu.as_secs_f64() / self.window_wall.as_secs_f64())
    }

    /// CPU time per frame over the window, in µs.
    pub fn cpu_us_per_frame(&self) -> Option<f64> {
        (self.window_frames > 0)
            .then(|| self.window_cpu.as_secs_f64() * 1e6 / self.window_frames as f64)
    }
}

/// Helper processes of one role, each with its own directory `base/<k>`.
pub struct Group {
    helpers: Vec<Helper>,
    dirs: Vec<PathBuf>,
}

/// How the helpers of a group are set up.
pub struct GroupSpec<'a> {
    pub role: &'a str,
    pub gpus: Vec<usize>,
    pub source: PathBuf,
    pub shm: PathBuf,
    pub frame_len: usize,
    pub verify: bool,
    pub stamps: usize,
    pub timeout: Duration,
}

impl Group {
    /// Starts the helpers and waits until each is ready.
    pub fn start(base: &Path, spec: GroupSpec<'_>) -> Group {
        let mut helpers = Vec::new();
        let mut dirs = Vec::new();
        for (k, &gpu) in spec.gpus.iter().enumerate() {
            let dir = base.join(k.to_string());
            fs::create_dir_all(&dir).unwrap();
            let env = [
                (c::ENV_GPU, gpu.to_string()),
                (c::ENV_INDEX, k.to_string()),
                (c::ENV_SOURCE, spec.source.display().to_string()),
                (c::ENV_SHM, spec.shm.display().to_string()),
                (c::ENV_FRAME_LEN, spec.frame_len.to_string()),
                (c::ENV_VERIFY, u8::from(spec.verify).to_string()),
                (c::ENV_STAMPS, spec.stamps.to_string()),
                (c::ENV_TIMEOUT_MS, spec.timeout.as_millis().to_string()),
            ];
            helpers.push(Helper::spawn(spec.role, &dir, &env));
            dirs.push(dir);
        }
        for (h, d) in helpers.iter_mut().zip(&dirs) {
            h.wait_ready(d);
        }
        Group { helpers, dirs }
    }

    /// Helper `k`'s directory.
    pub fn dir(&self, k: usize) -> &Path {
        &self.dirs[k]
    }

    pub fn len(&self) -> usize {
        self.helpers.len()
    }

    /// Sends a command to every helper.
    pub fn send_all(&mut self, line: &str) {
        for h in &mut self.helpers {
            h.send(line);
        }
    }

    /// Tells every helper to finish and collects their results.
    pub fn finish(mut self, timeout: Duration) -> Vec<HelperResult> {
        self.send_all("finish");
        let start = Instant::now();
        let results = self
            .dirs
            .iter()
            .map(|d| loop {
                if let Ok(text) = fs::read_to_string(d.join(c::RESULT)) {
                    break HelperResult::parse(&text);
                }
                if start.elapsed() > timeout {
                    break HelperResult {
                        failure: Some("no result (helper stuck or dead)".into()),
                        ..Default::default()
                    };
                }
                std::thread::sleep(Duration::from_millis(5));
            })
            .collect();
        drop(self.helpers);
        results
    }
}

/// The channel: one publisher on the parent's GPU, `n` subscriber helpers.
pub struct ChannelFeed<'ctx> {
    publisher: Publisher<'ctx, u32>,
    stream: Stream<'ctx>,
    kernels: Kernels<'ctx>,
    shm: SharedWords,
    subscribers: usize,
    fill: bool,
    timeout: Duration,
    /// Frames published so far.
    pub published: u64,
}

impl<'ctx> ChannelFeed<'ctx> {
    /// Creates the channel `dir/video` of `frame_len` words and `slots` slots (Policy::Block).
    pub fn create(
        ctx: &'ctx Context,
        dir: &Path,
        frame_len: usize,
        slots: usize,
        fill: bool,
        timeout: Duration,
    ) -> Result<(ChannelFeed<'ctx>, PathBuf, PathBuf)> {
        let path = dir.join("video");
        let shm_path = dir.join("words");
        let shm = SharedWords::create(&shm_path, c::SHM_WORDS).expect("creating the shared words");
        let publisher = Publisher::<u32>::create(
            ctx,
            &path,
            frame_len,
            ChannelOptions {
                slots,
                max_subscribers: cuda_ipc::pubsub::MAX_SUBSCRIBERS,
                policy: Policy::Block,
                ..Default::default()
            },
        )?;
        let feed = ChannelFeed {
            publisher,
            stream: Stream::new(ctx)?,
            kernels: ctx.kernels()?,
            shm,
            subscribers: 0,
            fill,
            timeout,
            published: 0,
        };
        Ok((feed, path, shm_path))
    }

    /// Waits until the group's `n` subscribers are connected.
    pub fn connect(&mut self, n: usize) -> Result<()> {
        self.publisher.wait_subscribers(n, self.timeout)?;
        self.subscribers = n;
        Ok(())
    }

    fn publish_one(&mut self, last: bool) -> Result<u64> {
        let mut loan = self.publisher.loan(self.timeout)?;
        let seq = loan.seq();
        if last {
            // Before the frame is announced: its subscribers see it when they receive it.
            self.shm.word(c::SHM_BATCH_END).store(seq, SeqCst);
        }
        if self.fill {
            self.kernels.fill_frame(&self.stream, &mut loan, seq)?;
        }
        let seq = loan.publish(&self.stream)?;
        self.published += 1;
        Ok(seq)
    }

    fn wait_progress(&self, seq: u64) {
        let start = Instant::now();
        for k in 0..self.subscribers {
            while self.shm.word(c::SHM_PROGRESS + k).load(SeqCst) < seq {
                assert!(
                    start.elapsed() < self.timeout,
                    "subscriber {k} did not finish frame {seq} within {:?}",
                    self.timeout
                );
                std::thread::yield_now();
            }
        }
    }
}

impl Feed for ChannelFeed<'_> {
    fn batch(&mut self, frames: u64) -> Duration {
        let start = Instant::now();
        let mut last = 0;
        for i in 0..frames {
            last = self
                .publish_one(i + 1 == frames)
                .expect("publishing a frame");
        }
        self.wait_progress(last);
        start.elapsed()
    }
}

/// The frame file of baseline (a): the frame number, where the data lies in the allocation,
/// its length in words, and the allocation's 64-byte legacy handle.
pub struct FrameFile {
    pub seq: u64,
    pub offset: usize,
    pub len: usize,
    pub handle: [u8; 64],
}

const FRAME_FILE: &str = "frame";

/// Writes `name` in `dir` atomically (temporary file + rename).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Writes the number `n` as the file `name` in `dir` (an acknowledgement).
pub fn write_number(dir: &Path, name: &str, n: u64) {
    write_atomic(dir, name, &n.to_le_bytes());
}

fn read_number(path: &Path) -> Option<u64> {
    let b = fs::read(path).ok()?;
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// Reads the frame file, if it is there and whole.
pub fn read_frame_file(path: &Path) -> Option<FrameFile> {
    let b = fs::read(path).ok()?;
    if b.len() != 24 + 64 {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    Some(FrameFile {
        seq: word(0),
        offset: usize::try_from(word(1)).ok()?,
        len: usize::try_from(word(2)).ok()?,
        handle: b[24..].try_into().ok()?,
    })
}

/// How a sequential baseline hands a frame over and learns it was consumed.
enum Handoff<'ctx> {
    /// (a) a new handle file per frame; file acknowledgements, polled.
    File { dir: PathBuf, acks: Vec<PathBuf> },
    /// (b) `notify_ready` on the one buffer's exporter; acknowledgements through each
    /// consumer's exporter, waited for with `wait_ready`.
    Notify {
        exporter: Box<Exporter>,
        acks: Vec<SharedDeviceBuffer<'ctx, u32>>,
    },
}

/// Baselines (a) and (b): one buffer, one frame in flight: fill, (stamp,) wait for the GPU,
/// hand over, wait for every consumer's acknowledgement.
pub struct SequentialFeed<'ctx> {
    buf: SharedDeviceBuffer<'ctx, u32>,
    handoff: Handoff<'ctx>,
    stream: Stream<'ctx>,
    kernels: Kernels<'ctx>,
    /// The producer's stamps (`a`), one per frame, right before the hand-over.
    pub stamps: Option<DeviceBuffer<'ctx, u64>>,
    pub seq: u64,
    timeout: Duration,
}

/// The source a baseline's consumers read: where the file baseline writes its frame file, or
/// the notify baseline's exporter.
pub fn sequential_source(dir: &Path, file: bool) -> PathBuf {
    if file {
        dir.join(FRAME_FILE)
    } else {
        dir.join("frames")
    }
}

impl<'ctx> SequentialFeed<'ctx> {
    /// The producer's buffer (legacy transport for the file baseline, the default one for
    /// notify), exported in `dir` for notify, with `stamps` stamps (0: none).
    pub fn create(
        ctx: &'ctx Context,
        dir: &Path,
        file: bool,
        frame_len: usize,
        consumers: usize,
        stamps: usize,
        timeout: Duration,
    ) -> Result<SequentialFeed<'ctx>> {
        let transport = if file {
            Transport::Legacy
        } else {
            Transport::Auto
        };
        let buf = SharedDeviceBuffer::<u32>::zeroed(ctx, frame_len, transport)?;
        let handoff = if file {
            Handoff::File {
                dir: dir.to_path_buf(),
                acks: Vec::new(),
            }
        } else {
            let options = ExportOptions {
                expected_consumers: consumers,
                max_connections: 4 * consumers + 16,
                ..Default::default()
            };
            Handoff::Notify {
                exporter: Box::new(Exporter::bind_with(
                    sequential_source(dir, false),
                    &buf,
                    options,
                )?),
                acks: Vec::new(),
            }
        };
        Ok(SequentialFeed {
            buf,
            handoff,
            stream: Stream::new(ctx)?,
            kernels: ctx.kernels()?,
            stamps: if stamps > 0 {
                Some(DeviceBuffer::zeroed(ctx, stamps)?)
            } else {
                None
            },
            seq: 0,
            timeout,
        })
    }

    /// Connects to the acknowledgements of the group's consumers (started after `create`).
    pub fn connect(&mut self, ctx: &'ctx Context, group: &Group) -> Result<()> {
        for k in 0..group.len() {
            let path = group.dir(k).join(c::ACK);
            match &mut self.handoff {
                Handoff::File { acks, .. } => acks.push(path),
                Handoff::Notify { acks, .. } => {
                    acks.push(SharedDeviceBuffer::import(ctx, &path, self.timeout)?)
                }
            }
        }
        Ok(())
    }

    fn frame(&mut self) -> Result<()> {
        self.seq += 1;
        let n = self.seq;
        self.kernels.fill_frame(&self.stream, &mut self.buf, n)?;
        if let Some(s) = self.stamps.as_mut() {
            let i = stamp_index(n, s.len());
            self.kernels.stamp_time(&self.stream, s, i)?;
        }
        self.stream.synchronize()?;
        match &self.handoff {
            Handoff::File { dir, acks } => {
                let mut b = Vec::with_capacity(88);
                for w in [n, self.buf.descriptor().offset, self.buf.len() as u64] {
                    b.extend_from_slice(&w.to_le_bytes());
                }
                b.extend_from_slice(&self.buf.legacy_handle().expect("a legacy buffer"));
                write_atomic(dir, FRAME_FILE, &b);
                let start = Instant::now();
                for ack in acks {
                    while read_number(ack).is_none_or(|v| v < n) {
                        assert!(
                            start.elapsed() < self.timeout,
                            "no acknowledgement of frame {n} in {}",
                            ack.display()
                        );
                        std::thread::yield_now();
                    }
                }
            }
            Handoff::Notify { exporter, acks } => {
                exporter.notify_ready(n)?;
                for ack in acks {
                    ack.wait_ready(n, self.timeout)?;
                }
            }
        }
        Ok(())
    }
}

impl Feed for SequentialFeed<'_> {
    fn batch(&mut self, frames: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..frames {
            self.frame().expect("handing a frame over");
        }
        start.elapsed()
    }
}

/// Runs `feed` for about `window` (frames estimated from `rate`) while the group's helpers and
/// this process measure their CPU use. Returns this process's CPU % over the window.
pub fn cpu_window(feed: &mut dyn Feed, group: &mut Group, rate: f64, window: Duration) -> f64 {
    let frames = (rate * window.as_secs_f64()).clamp(20.0, 50_000_000.0) as u64;
    group.send_all("cpu-start");
    let cpu = common::cpu_time();
    let wall = feed.batch(frames);
    let cpu = common::cpu_time().saturating_sub(cpu);
    group.send_all("cpu-stop");
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}
