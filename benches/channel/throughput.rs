//! Frames per second delivered to each subscriber (Policy::Block: every subscriber gets every
//! frame), 4 KiB frames to one subscriber and 4K RGBA frames to 1, 4 and 8, against the
//! baselines; then, for each, a CPU-cost window at the measured rate.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use cuda_ipc::prelude::*;

use crate::common;
use crate::consumer as c;
use crate::feeds::{
    cpu_window, sequential_source, ChannelFeed, Feed, Group, GroupSpec, HelperResult,
    SequentialFeed,
};
use crate::report::{Report, ThroughputRow};
use crate::settings::{Settings, SMALL_WORDS, UHD_WORDS};

/// One frame size and subscriber count.
#[derive(Debug, Clone)]
pub struct Config {
    pub words: usize,
    pub subscribers: usize,
    /// The frame size's name: `4KiB` or `4K`.
    pub frame: &'static str,
}

impl Config {
    pub fn key(&self) -> String {
        format!("throughput/{} x{}", self.frame, self.subscribers)
    }
}

/// The methods compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The channel: fill_frame by the publisher, verify_frame by every subscriber.
    Channel,
    /// The channel with no kernels: publish, receive, release only.
    ChannelBare,
    /// (a) a legacy handle file per frame.
    File,
    /// (b) notify_ready / wait_ready on one buffer.
    Notify,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Channel => "channel (GPU path, fill + verify)",
            Method::ChannelBare => "channel (GPU path, no kernels)",
            Method::File => "(a) handle file per frame",
            Method::Notify => "(b) notify_ready / wait_ready",
        }
    }
}

/// Subscriber `k`'s GPU: spread over the GPUs, 0 first.
fn placement(n: usize, gpus: usize) -> Vec<usize> {
    (0..n).map(|k| k % gpus.max(1)).collect()
}

/// Criterion's throughput (frames per iteration), then a CPU window at the rate criterion's
/// batches ran at. Returns (frames/s over all of criterion's batches, publisher CPU %).
fn measure(
    c: &mut Criterion,
    s: &Settings,
    group: &str,
    id: &str,
    feed: &mut dyn Feed,
    helpers: &mut Group,
    cpu_windows: bool,
) -> Option<(f64, Option<f64>)> {
    let mut frames = 0u64;
    let mut wall = Duration::ZERO;
    {
        let mut g = c.benchmark_group(group);
        g.warm_up_time(s.warm_up)
            .measurement_time(s.measure)
            .sample_size(s.samples)
            .nresamples(10_000)
            .throughput(Throughput::Elements(1));
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let d = feed.batch(iters);
                frames += iters;
                wall += d;
                d
            })
        });
        g.finish();
    }
    if frames == 0 {
        return None; // filtered out by criterion's arguments
    }
    let rate = frames as f64 / wall.as_secs_f64().max(1e-9);
    let publisher_cpu = cpu_windows.then(|| cpu_window(feed, helpers, rate, s.cpu_window));
    Some((rate, publisher_cpu))
}

fn summarize(
    cfg: &Config,
    method: Method,
    gpus: &[usize],
    measured: Option<(f64, Option<f64>)>,
    results: Vec<HelperResult>,
    published: u64,
) -> ThroughputRow {
    let mut notes = Vec::new();
    let (rate, publisher_cpu) = match measured {
        Some((r, p)) => (Some(r), p),
        None => (None, None),
    };
    let short: Vec<usize> = (0..results.len())
        .filter(|&k| results[k].frames != published)
        .collect();
    if !short.is_empty() {
        notes.push(format!(
            "subscribers {short:?} got {:?} of {published} frames",
            short.iter().map(|&k| results[k].frames).collect::<Vec<_>>(),
        ));
    }
    for (k, r) in results.iter().enumerate() {
        if let Some(f) = &r.failure {
            notes.push(format!("subscriber {k}: {f}"));
        }
    }
    let cpu: Vec<f64> = results.iter().filter_map(|r| r.cpu_percent()).collect();
    let per_frame: Vec<f64> = results
        .iter()
        .filter_map(|r| r.cpu_us_per_frame())
        .collect();
    let max = |v: &[f64]| {
        v.iter()
            .cloned()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    ThroughputRow {
        frame: cfg.frame,
        subscribers: cfg.subscribers,
        gpus: placement_label(gpus),
        method: method.label(),
        is_channel: matches!(method, Method::Channel | Method::ChannelBare),
        verified: method != Method::ChannelBare,
        frames_per_s: rate,
        errors: results.iter().map(|r| r.errors).sum(),
        addresses: results.iter().map(|r| r.addresses).max().unwrap_or(0),
        cpu_max: max(&cpu),
        cpu_mean: (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64),
        cpu_us_per_frame: max(&per_frame),
        publisher_cpu,
        note: notes.join("; "),
    }
}

/// "GPU0 ×4 + GPU1 ×4"-style placement.
fn placement_label(gpus: &[usize]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for &g in gpus {
        *counts.entry(g).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(g, n)| format!("GPU{g}×{n}"))
        .collect::<Vec<_>>()
        .join("+")
}

/// What one case measures.
struct Case<'a> {
    cfg: &'a Config,
    method: Method,
    cpu_windows: bool,
}

fn case(
    c: &mut Criterion,
    s: &Settings,
    ctx: &Context,
    gpus: usize,
    k: Case<'_>,
) -> Result<ThroughputRow> {
    let dir = common::temp_dir(&format!("thr-{}-{}", k.cfg.frame, k.cfg.subscribers));
    std::fs::create_dir_all(&dir).unwrap();
    let r = run_case(c, s, ctx, gpus, &k, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn run_case(
    c: &mut Criterion,
    s: &Settings,
    ctx: &Context,
    gpus: usize,
    k: &Case<'_>,
    dir: &Path,
) -> Result<ThroughputRow> {
    let (cfg, method, cpu_windows) = (k.cfg, k.method, k.cpu_windows);
    let place = placement(cfg.subscribers, gpus);
    let group_name = format!("channel-throughput/{} x{}", cfg.frame, cfg.subscribers);
    let spec = |role, source, shm, verify| GroupSpec {
        role,
        gpus: place.clone(),
        source,
        shm,
        frame_len: cfg.words,
        verify,
        stamps: 0,
        timeout: s.timeout,
    };
    match method {
        Method::Channel | Method::ChannelBare => {
            let kernels = method == Method::Channel;
            let (mut feed, path, shm) =
                ChannelFeed::create(ctx, dir, cfg.words, s.slots, kernels, s.timeout)?;
            let mut group = Group::start(dir, spec(c::CHANNEL, path, shm, kernels));
            feed.connect(cfg.subscribers)?;
            let m = measure(
                c,
                s,
                &group_name,
                method.label(),
                &mut feed,
                &mut group,
                cpu_windows,
            );
            let results = group.finish(s.timeout);
            let published = feed.published;
            drop(feed);
            Ok(summarize(cfg, method, &place, m, results, published))
        }
        Method::File | Method::Notify => {
            let file = method == Method::File;
            let mut feed =
                SequentialFeed::create(ctx, dir, file, cfg.words, cfg.subscribers, 0, s.timeout)?;
            let role = if file { c::FILE } else { c::NOTIFY };
            let source = sequential_source(dir, file);
            let mut group = Group::start(dir, spec(role, source, dir.join("unused"), true));
            feed.connect(ctx, &group)?;
            let m = measure(
                c,
                s,
                &group_name,
                method.label(),
                &mut feed,
                &mut group,
                cpu_windows,
            );
            let results = group.finish(s.timeout);
            let published = feed.seq;
            drop(feed);
            Ok(summarize(cfg, method, &place, m, results, published))
        }
    }
}

/// The throughput configurations of this run.
pub fn configs(s: &Settings) -> Vec<Config> {
    let mut v = vec![Config {
        words: SMALL_WORDS,
        subscribers: 1,
        frame: "4KiB",
    }];
    for &n in &s.uhd_subscribers {
        v.push(Config {
            words: UHD_WORDS,
            subscribers: n,
            frame: "4K",
        });
    }
    v
}

/// Every throughput case.
pub fn run(
    c: &mut Criterion,
    s: &Settings,
    ctx: &Context,
    gpus: usize,
    cpu_windows: bool,
    report: &mut Report,
) {
    for cfg in configs(s) {
        let key = cfg.key();
        if !s.wants(&key) {
            continue;
        }
        let mut methods = vec![Method::Channel];
        if cfg.words == SMALL_WORDS {
            methods.push(Method::ChannelBare);
        }
        if s.baseline("file") {
            methods.push(Method::File);
        }
        if s.baseline("notify") {
            methods.push(Method::Notify);
        }
        for method in methods {
            let name = format!("{key} {}", method.label());
            let k = Case {
                cfg: &cfg,
                method,
                cpu_windows,
            };
            match crate::guarded(&name, || case(c, s, ctx, gpus, k)) {
                Ok(row) => {
                    println!(
                        "channel-throughput/{} x{}: {}: {} to each subscriber, {} wrong words, \
                         subscriber CPU max {} ({} per frame){}",
                        row.frame,
                        row.subscribers,
                        row.method,
                        crate::report::rate(row.frames_per_s),
                        row.errors,
                        row.cpu_max.map_or("–".into(), |v| format!("{v:.1} %")),
                        crate::report::us(row.cpu_us_per_frame),
                        if row.note.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", row.note)
                        }
                    );
                    report.throughput.push(row)
                }
                Err(e) => report.note(format!("{name}: failed: {e}")),
            }
        }
    }
}
