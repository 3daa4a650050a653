//! "Ready" handoff latency between two processes, as a ping-pong: the parent signals frame n,
//! the helper (this executable again) answers n, the parent sees the answer. Three ways:
//! - file: a file on the shared directory written (temp + rename) and polled (the original
//!   scenario's approach; tight polling, its best case);
//! - socket: [`Exporter::notify_ready`] → [`SharedDeviceBuffer::wait_ready`] over the
//!   rendezvous sockets, one each way;
//! - gpu: signal words in shared GPU memory, `cuStreamWriteValue32` → `cuStreamWaitValue32`,
//!   timed with CUDA events (no CPU in the loop).
//!
//! Criterion reports the mean round trip; the median and p99 of 2,000 single round trips are
//! printed after each mode. One-way latency is half a round trip.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use cuda_ipc::ipc::{Exporter, SharedDeviceBuffer, Signal, Transport};
use cuda_ipc::prelude::*;

const SAMPLES: usize = 2000;

fn main() {
    if common::role().is_some() {
        return helper();
    }
    if common::gpus_or_explain("handoff") == 0 {
        return;
    }
    let mut c = common::criterion();
    for mode in ["file", "socket", "gpu"] {
        run_mode(&mut c, mode);
    }
    c.final_summary();
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99) / 100])
}

fn report(mode: &str, samples: Vec<Duration>) {
    let (median, p99) = percentiles(samples);
    println!(
        "handoff/{mode}: round trip median {:.2} µs, p99 {:.2} µs (one way ≈ {:.2} µs median) over {SAMPLES} round trips",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        median.as_secs_f64() * 1e6 / 2.0
    );
}

fn write_number(dir: &Path, name: &str, n: u64) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, n.to_le_bytes()).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

fn poll_number(dir: &Path, name: &str, n: u64) {
    let path = dir.join(name);
    let start = Instant::now();
    loop {
        if let Ok(b) = fs::read(&path) {
            if b.len() == 8 && u64::from_le_bytes(b.try_into().unwrap()) >= n {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no answer through {name}"
        );
        std::thread::yield_now();
    }
}

/// Benches `round(n)` (one round trip for frame n) with criterion, then reports the median
/// and p99 of SAMPLES single round trips timed on the host.
fn host_timed(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mode: &str,
    n: &mut u64,
    round: impl Fn(u64),
) {
    g.bench_function(name, |b| {
        b.iter(|| {
            *n += 1;
            round(*n)
        })
    });
    let samples = (0..SAMPLES)
        .map(|_| {
            *n += 1;
            let t = Instant::now();
            round(*n);
            t.elapsed()
        })
        .collect();
    report(mode, samples);
}

fn run_mode(c: &mut Criterion, mode: &str) {
    let dir = common::temp_dir(&format!("handoff-{mode}"));
    fs::create_dir_all(&dir).unwrap();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    // The parent's own buffer (socket mode: the parent's side of the ping).
    let mine = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1, Transport::Auto).unwrap();
    let exporter = Exporter::bind(dir.join("parent"), &mine).unwrap();
    let mut helper = common::Helper::spawn(mode, &dir, &[]);
    helper.wait_ready(&dir);
    let theirs =
        SharedDeviceBuffer::<u32>::import(&ctx, dir.join("helper"), Duration::from_secs(30))
            .unwrap();
    let mut n: u64 = 0;
    let mut g = c.benchmark_group("handoff");
    match mode {
        "file" => host_timed(&mut g, "file polling (round trip)", mode, &mut n, |n| {
            write_number(&dir, "ping", n);
            poll_number(&dir, "pong", n);
        }),
        "socket" => host_timed(&mut g, "socket message (round trip)", mode, &mut n, |n| {
            exporter.notify_ready(n).unwrap();
            theirs.wait_ready(n, Duration::from_secs(30)).unwrap();
        }),
        _ => {
            let round = |n: u64| {
                theirs
                    .write_signal(&stream, Signal::Ready, n as u32)
                    .unwrap();
                theirs.wait_signal(&stream, Signal::Done, n as u32).unwrap();
            };
            g.bench_function("gpu signal words (round trip, GPU time)", |b| {
                b.iter_custom(|iters| {
                    let (s, e) = (Event::new(&ctx).unwrap(), Event::new(&ctx).unwrap());
                    s.record(&stream).unwrap();
                    for _ in 0..iters {
                        n += 1;
                        round(n);
                    }
                    e.record(&stream).unwrap();
                    Duration::from_secs_f64(e.elapsed_ms_since(&s).unwrap() as f64 / 1e3)
                })
            });
            let (s, e) = (Event::new(&ctx).unwrap(), Event::new(&ctx).unwrap());
            let samples = (0..SAMPLES)
                .map(|_| {
                    n += 1;
                    s.record(&stream).unwrap();
                    round(n);
                    e.record(&stream).unwrap();
                    Duration::from_secs_f64(e.elapsed_ms_since(&s).unwrap() as f64 / 1e3)
                })
                .collect();
            report(mode, samples);
        }
    }
    g.finish();
    drop(theirs);
    drop(helper);
    drop(exporter);
    let _ = fs::remove_dir_all(&dir);
}

/// The helper answers every ping of its mode until its stdin closes.
fn helper() {
    let mode = common::role().unwrap();
    let dir = common::helper_dir();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let mine = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1, Transport::Auto).unwrap();
    let exporter = Exporter::bind(dir.join("helper"), &mine).unwrap();
    let parent =
        SharedDeviceBuffer::<u32>::import(&ctx, dir.join("parent"), Duration::from_secs(30))
            .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        let dir = dir.clone();
        let mode = mode.clone();
        std::thread::scope(|scope| {
            let h = scope.spawn(|| answer(&mode, &dir, &ctx, &mine, &exporter, &parent, &stop));
            common::ready_and_wait(&dir);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if mode == "gpu" {
                // Release the GPU wait the answering stream is blocked on.
                let s = Stream::new(&ctx).unwrap();
                mine.write_signal(&s, Signal::Ready, u32::MAX / 2).unwrap();
                s.synchronize().unwrap();
            }
            h.join().is_ok()
        })
    };
    assert!(worker);
}

fn answer(
    mode: &str,
    dir: &Path,
    ctx: &Context,
    mine: &SharedDeviceBuffer<'_, u32>,
    exporter: &Exporter,
    parent: &SharedDeviceBuffer<'_, u32>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut n: u64 = 0;
    match mode {
        "file" => {
            let ping = dir.join("ping");
            while !stopped() {
                if let Ok(b) = fs::read(&ping) {
                    if b.len() == 8 {
                        let v = u64::from_le_bytes(b.try_into().unwrap());
                        if v > n {
                            n = v;
                            write_number(dir, "pong", n);
                        }
                    }
                }
                std::thread::yield_now();
            }
        }
        "socket" => {
            while !stopped() {
                match parent.wait_ready(n + 1, Duration::from_millis(100)) {
                    Ok(v) => {
                        n = v;
                        exporter.notify_ready(n).unwrap();
                    }
                    Err(cuda_ipc::Error::Timeout { .. }) => {}
                    Err(_) => return,
                }
            }
        }
        _ => {
            // Queue answers ahead: wait for ping n on the GPU, then answer n. The queue
            // blocks this thread when full and drains as pings arrive.
            let stream = Stream::new(ctx).unwrap();
            while !stopped() {
                n += 1;
                mine.wait_signal(&stream, Signal::Ready, n as u32).unwrap();
                mine.write_signal(&stream, Signal::Done, n as u32).unwrap();
            }
        }
    }
}
