//! Latency from publish to the subscriber's first instruction on the frame, GPU-timed with
//! `%globaltimer` stamps: the producer stamps `a` right before it hands the frame over, the
//! consumer stamps `b` as its first work on the frame; latency = b − a.
//!
//! The channel case is a ping-pong: the helper answers every frame through a second channel
//! back, after which the parent stamps `c`. The parent waits for the answer before it
//! publishes the next frame (frames are paced: no queueing). The round trips give the check
//! that the two GPUs' timers agree: with a symmetric round trip, b − (a + c) / 2 is the
//! offset between the helper's timer and the parent's. When the peer GPU's timer disagrees by
//! more than the tolerance, its one-way figure is the round trip / 2 instead (and says so).

use std::time::Duration;

use criterion::Criterion;
use cuda_ipc::ipc::SharedDeviceBuffer;
use cuda_ipc::prelude::*;
use cuda_ipc::pubsub::{ChannelOptions, Policy, Publisher, Start, SubscribeOptions, Subscriber};
use cuda_ipc::Kernels;

use crate::common;
use crate::consumer::{self as c, stamp_index};
use crate::feeds::{sequential_source, Group, GroupSpec, SequentialFeed};
use crate::report::{LatencyRow, Report, TimerReport};
use crate::settings::{Settings, SMALL_WORDS};

/// Stamps kept per side (a ring; read back every this many rounds).
const STAMPS: usize = 16 * 1024;
/// Untimed rounds before criterion (and the timer check).
const PRE_ROUNDS: u64 = 500;

/// One frame's stamps (ns of `%globaltimer`): producer before hand-over, consumer's first
/// instruction, producer after the answer (ping-pong only).
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub a: u64,
    pub b: u64,
    pub c: Option<u64>,
}

impl Round {
    fn one_way(&self) -> i64 {
        self.b as i64 - self.a as i64
    }
    fn half_round_trip(&self) -> Option<i64> {
        self.c.map(|c| (c as i64 - self.a as i64) / 2)
    }
    /// The consumer's timer minus the producer's, if the round trip is symmetric.
    fn offset(&self) -> Option<i64> {
        self.c
            .map(|c| self.b as i64 - (self.a as i64 + (c as i64 - self.a as i64) / 2))
    }
}

/// Makes paced rounds.
trait Rounds {
    fn rounds(&mut self, n: u64) -> Result<Vec<Round>>;
}

/// The channel ping-pong (parent side).
struct Echo<'ctx> {
    fwd: Publisher<'ctx, u32>,
    back: Subscriber<'ctx, u32>,
    stream: Stream<'ctx>,
    kernels: Kernels<'ctx>,
    a: DeviceBuffer<'ctx, u64>,
    c: DeviceBuffer<'ctx, u64>,
    b: SharedDeviceBuffer<'ctx, u64>,
    pace: Duration,
    timeout: Duration,
    /// Take the answer on the CPU (`receive_host`) rather than with a GPU wait, so that the
    /// parent's GPU is idle while the frame crosses (CHANNEL_BENCH_ECHO_HOST=1): on one GPU,
    /// a stream of another process blocked in a GPU wait holds the GPU until its time slice
    /// ends.
    host_back: bool,
    /// Loan the next slot before the pause rather than after it (a paced producer that loans
    /// its slot, then waits for its camera): the subscriber wakes during the pause and its GPU
    /// already waits when the frame is published.
    loan_ahead: bool,
}

impl Rounds for Echo<'_> {
    fn rounds(&mut self, n: u64) -> Result<Vec<Round>> {
        let mut out = Vec::with_capacity(n as usize);
        let mut left = n;
        while left > 0 {
            let chunk = left.min(STAMPS as u64);
            let mut seqs = Vec::with_capacity(chunk as usize);
            for _ in 0..chunk {
                let loan = self.fwd.loan(self.timeout)?;
                if self.loan_ahead && !self.pace.is_zero() {
                    std::thread::sleep(self.pace);
                }
                let seq = loan.seq();
                let i = stamp_index(seq, STAMPS);
                self.kernels.stamp_time(&self.stream, &mut self.a, i)?;
                loan.publish(&self.stream)?;
                let answer = if self.host_back {
                    self.back.receive_host(self.timeout)?
                } else {
                    self.back.receive(&self.stream, self.timeout)?
                };
                assert_eq!(answer.seq(), seq, "the echo answered another frame");
                self.kernels.stamp_time(&self.stream, &mut self.c, i)?;
                drop(answer);
                self.stream.synchronize()?;
                if !self.loan_ahead && !self.pace.is_zero() {
                    std::thread::sleep(self.pace);
                }
                seqs.push(seq);
            }
            let (a, b, c) = (
                self.a.copy_to_vec()?,
                self.b.copy_to_vec()?,
                self.c.copy_to_vec()?,
            );
            out.extend(seqs.iter().map(|&s| {
                let i = stamp_index(s, STAMPS);
                Round {
                    a: a[i],
                    b: b[i],
                    c: Some(c[i]),
                }
            }));
            left -= chunk;
        }
        Ok(out)
    }
}

/// A sequential baseline with stamps on both sides.
struct Baseline<'ctx> {
    feed: SequentialFeed<'ctx>,
    b: SharedDeviceBuffer<'ctx, u64>,
}

impl Rounds for Baseline<'_> {
    fn rounds(&mut self, n: u64) -> Result<Vec<Round>> {
        let mut out = Vec::with_capacity(n as usize);
        let mut left = n;
        while left > 0 {
            let chunk = left.min(STAMPS as u64);
            let first = self.feed.seq + 1;
            // Paced by construction: one frame in flight, each acknowledged before the next.
            crate::feeds::Feed::batch(&mut self.feed, chunk);
            let a = self.feed.stamps.as_ref().expect("stamps").copy_to_vec()?;
            let b = self.b.copy_to_vec()?;
            out.extend((first..first + chunk).map(|s| {
                let i = stamp_index(s, STAMPS);
                Round {
                    a: a[i],
                    b: b[i],
                    c: None,
                }
            }));
            left -= chunk;
        }
        Ok(out)
    }
}

/// How a case turns a round into the latency it reports.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// b − a − offset (offset 0 when the timers agree).
    OneWay { offset: i64 },
    /// Round trip / 2.
    HalfRoundTrip,
}

impl Pick {
    fn of(self, r: &Round) -> i64 {
        match self {
            Pick::OneWay { offset } => r.one_way() - offset,
            Pick::HalfRoundTrip => r.half_round_trip().unwrap_or(0),
        }
    }
}

/// Criterion's mean (through `iter_custom`, GPU time) plus every latency seen, in ns.
fn measure(
    c: &mut Criterion,
    s: &Settings,
    group: &str,
    id: &str,
    src: &mut dyn Rounds,
    pick: Pick,
) -> Result<Vec<i64>> {
    let mut samples = Vec::new();
    let mut failure = None;
    {
        let mut g = c.benchmark_group(group);
        g.warm_up_time(s.warm_up)
            .measurement_time(s.latency_measure)
            .sample_size(s.samples)
            .nresamples(10_000);
        g.bench_function(id, |bch| {
            bch.iter_custom(|iters| {
                if failure.is_some() {
                    // Failed already: let criterion finish at once instead of waiting again.
                    return Duration::from_nanos(iters);
                }
                match src.rounds(iters) {
                    Ok(rounds) => {
                        let mut total: u64 = 0;
                        for r in &rounds {
                            let l = pick.of(r);
                            samples.push(l);
                            total = total.saturating_add(l.max(0) as u64);
                        }
                        Duration::from_nanos(total)
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                        Duration::from_nanos(iters)
                    }
                }
            })
        });
        g.finish();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(samples),
    }
}

fn median(mut v: Vec<i64>) -> Option<i64> {
    v.sort_unstable();
    common::percentile(&v, 50.0)
}

/// What the ping-pong says about the two timers.
#[derive(Debug, Clone, Copy)]
pub struct TimerCheck {
    /// Median of b − (a + c) / 2 over the quickest fifth of the round trips, ns.
    pub offset: i64,
    /// Median round trip of those, ns.
    pub round_trip: i64,
    /// The timer's update step: the greatest common divisor of the stamps' differences, ns.
    pub tick: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn timer_check(rounds: &[Round]) -> Option<TimerCheck> {
    let first = rounds.first()?;
    let tick = rounds
        .iter()
        .flat_map(|r| [r.a, r.b, r.c.unwrap_or(r.a)])
        .zip(
            [first.a, first.b, first.c.unwrap_or(first.a)]
                .into_iter()
                .cycle(),
        )
        .fold(0, |g, (x, base)| gcd(g, x.abs_diff(base)));
    let mut by_rtt: Vec<(i64, i64)> = rounds
        .iter()
        .filter_map(|r| Some((r.half_round_trip()? * 2, r.offset()?)))
        .collect();
    by_rtt.sort_unstable();
    by_rtt.truncate((by_rtt.len() / 5).max(1));
    Some(TimerCheck {
        offset: median(by_rtt.iter().map(|x| x.1).collect())?,
        round_trip: median(by_rtt.iter().map(|x| x.0).collect())?,
        tick,
    })
}

/// Where the consumer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    SameGpu,
    PeerGpu,
}

impl Place {
    pub fn label(self) -> &'static str {
        match self {
            Place::SameGpu => "same GPU",
            Place::PeerGpu => "peer GPU",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Place::SameGpu => "same-gpu",
            Place::PeerGpu => "peer-gpu",
        }
    }
    fn gpu(self) -> usize {
        match self {
            Place::SameGpu => 0,
            Place::PeerGpu => 1,
        }
    }
}

fn ns_to_us(v: i64) -> f64 {
    v as f64 / 1e3
}

fn row(place: Place, method: &str, mut samples: Vec<i64>, note: String) -> LatencyRow {
    samples.sort_unstable();
    let n = samples.len();
    let mean = samples.iter().map(|&v| v as f64).sum::<f64>() / n.max(1) as f64;
    LatencyRow {
        place: place.label(),
        method: method.to_string(),
        p50_us: common::percentile(&samples, 50.0).map(ns_to_us),
        p99_us: common::percentile(&samples, 99.0).map(ns_to_us),
        mean_us: (n > 0).then_some(mean / 1e3),
        n,
        note,
    }
}

/// The channel ping-pong on `place`. Returns the timer check too.
fn channel_case(
    c: &mut Criterion,
    s: &Settings,
    ctx: &Context,
    place: Place,
    tolerance: i64,
    same_gpu_check: Option<TimerCheck>,
) -> Result<(Vec<LatencyRow>, Option<TimerCheck>)> {
    let dir = common::temp_dir(&format!("chan-lat-{}", place.key()));
    std::fs::create_dir_all(&dir).unwrap();
    let fwd_path = dir.join("ping");
    let fwd = Publisher::<u32>::create(
        ctx,
        &fwd_path,
        SMALL_WORDS,
        ChannelOptions {
            slots: 4,
            policy: Policy::Block,
            ..Default::default()
        },
    )?;
    let group = Group::start(
        &dir,
        GroupSpec {
            role: c::ECHO,
            gpus: vec![place.gpu()],
            source: fwd_path,
            shm: dir.join("unused"),
            frame_len: SMALL_WORDS,
            verify: false,
            stamps: STAMPS,
            timeout: s.timeout,
        },
    );
    let back = Subscriber::<u32>::subscribe(
        ctx,
        group.dir(0).join(c::BACK),
        SubscribeOptions {
            timeout: s.timeout,
            start: Start::Next,
            waiting: c::waiting(),
            ..Default::default()
        },
    )?;
    fwd.wait_subscribers(1, s.timeout)?;
    let mut echo = Echo {
        fwd,
        back,
        stream: Stream::new(ctx)?,
        kernels: ctx.kernels()?,
        a: DeviceBuffer::zeroed(ctx, STAMPS)?,
        c: DeviceBuffer::zeroed(ctx, STAMPS)?,
        b: SharedDeviceBuffer::import(ctx, group.dir(0).join(c::STAMPS), s.timeout)?,
        pace: s.pace,
        timeout: s.timeout,
        host_back: std::env::var("CHANNEL_BENCH_ECHO_HOST").is_ok_and(|v| v == "1"),
        loan_ahead: false,
    };
    let pre = echo.rounds(PRE_ROUNDS)?;
    let check = timer_check(&pre);
    let reference = same_gpu_check.map_or(0, |c| c.offset.abs());
    let agree = match (place, check) {
        (Place::SameGpu, _) => true,
        (Place::PeerGpu, Some(c)) => c.offset.abs() <= tolerance + reference,
        (Place::PeerGpu, None) => false,
    };
    let pick = if agree {
        Pick::OneWay { offset: 0 }
    } else {
        Pick::HalfRoundTrip
    };
    let id = if agree {
        "channel (one way, GPU timer stamps)"
    } else {
        "channel (round trip / 2, GPU time)"
    };
    let samples = measure(
        c,
        s,
        &format!("channel-latency/{}", place.key()),
        id,
        &mut echo,
        pick,
    );
    // Then frames spaced out, as a camera would send them: the subscriber is idle between
    // frames (its CPU waits for the announcement with a backoff that ends in sleeps).
    let spaced = if s.spaced_interval.is_zero() || s.spaced_rounds == 0 || samples.is_err() {
        None
    } else {
        echo.pace = s.spaced_interval;
        Some(echo.rounds(s.spaced_rounds))
    };
    // And once more with the slot loaned before each pause (the subscriber's GPU already waits
    // when the frame is published: its wake-up is out of the path).
    let ahead = match &spaced {
        Some(Ok(_)) => {
            echo.loan_ahead = true;
            Some(echo.rounds(s.spaced_rounds))
        }
        _ => None,
    };
    // The helper first (it would see the channel close as its publisher going), then ours.
    let results = group.finish(s.timeout);
    drop(echo);
    let _ = std::fs::remove_dir_all(&dir);
    let samples = samples?;
    let mut rtt: Vec<i64> = pre.iter().filter_map(|r| r.half_round_trip()).collect();
    rtt.sort_unstable();
    let mut note = format!(
        "round trip p50 {}",
        crate::report::us(common::percentile(&rtt, 50.0).map(|v| ns_to_us(2 * v)))
    );
    if !agree {
        note.push_str("; timers disagree: one way = round trip / 2");
    }
    if let Some(f) = results.iter().find_map(|r| r.failure.clone()) {
        note.push_str(&format!("; helper: {f}"));
    }
    let mut spaced_samples = |run: Option<Result<Vec<Round>>>, what: &str| match run {
        Some(Ok(rounds)) => Some(rounds.iter().map(|r| pick.of(r)).collect::<Vec<i64>>()),
        Some(Err(e)) => {
            note.push_str(&format!("; the {what} run failed: {e}"));
            None
        }
        None => None,
    };
    let spaced = spaced_samples(spaced, "spaced-out");
    let ahead = spaced_samples(ahead, "loaned-ahead");
    let mut rows = vec![row(place, "channel (GPU path)", samples, note)];
    if let Some(samples) = spaced {
        rows.push(row(
            place,
            &format!(
                "channel (GPU path), one frame per {}",
                crate::report::us(Some(s.spaced_interval.as_secs_f64() * 1e6))
            ),
            samples,
            "the subscriber idles between frames".into(),
        ));
    }
    if let Some(samples) = ahead {
        rows.push(row(
            place,
            &format!(
                "channel (GPU path), one frame per {}, slot loaned before the pause",
                crate::report::us(Some(s.spaced_interval.as_secs_f64() * 1e6))
            ),
            samples,
            "the subscriber idles between frames; the publisher loans, then waits".into(),
        ));
    }
    Ok((rows, check))
}

/// A sequential baseline (`file` or `notify`) on `place`, 4 KiB frames.
fn baseline_case(
    c: &mut Criterion,
    s: &Settings,
    ctx: &Context,
    place: Place,
    file: bool,
    offset: i64,
) -> Result<LatencyRow> {
    let name = if file { "file" } else { "notify" };
    let dir = common::temp_dir(&format!("{name}-lat-{}", place.key()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut feed = SequentialFeed::create(ctx, &dir, file, SMALL_WORDS, 1, STAMPS, s.timeout)?;
    let group = Group::start(
        &dir,
        GroupSpec {
            role: if file { c::FILE } else { c::NOTIFY },
            gpus: vec![place.gpu()],
            source: sequential_source(&dir, file),
            shm: dir.join("unused"),
            frame_len: SMALL_WORDS,
            verify: true,
            stamps: STAMPS,
            timeout: s.timeout,
        },
    );
    feed.connect(ctx, &group)?;
    let b = SharedDeviceBuffer::import(ctx, group.dir(0).join(c::STAMPS), s.timeout)?;
    let mut base = Baseline { feed, b };
    base.rounds(PRE_ROUNDS / 5)?;
    let method = if file {
        "(a) handle file per frame"
    } else {
        "(b) notify_ready / wait_ready"
    };
    let samples = measure(
        c,
        s,
        &format!("channel-latency/{}", place.key()),
        method,
        &mut base,
        Pick::OneWay { offset },
    );
    let results = group.finish(s.timeout);
    drop(base);
    let _ = std::fs::remove_dir_all(&dir);
    let mut note = String::from("CPU hand-over after the producer's stream synchronize");
    if offset != 0 {
        note.push_str(&format!(
            "; corrected by the timer offset {:+.2} µs",
            ns_to_us(offset)
        ));
    }
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    if errors > 0 {
        note.push_str(&format!("; {errors} wrong words"));
    }
    if let Some(f) = results.iter().find_map(|r| r.failure.clone()) {
        note.push_str(&format!("; helper: {f}"));
    }
    Ok(row(place, method, samples?, note))
}

fn print_row(r: &LatencyRow) {
    println!(
        "channel-latency/{}: {}: p50 {}, p99 {}, mean {} over {} frames{}",
        r.place,
        r.method,
        crate::report::us(r.p50_us),
        crate::report::us(r.p99_us),
        crate::report::us(r.mean_us),
        r.n,
        if r.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.note)
        }
    );
}

/// Every latency case: same GPU, then the peer GPU when there are two.
pub fn run(c: &mut Criterion, s: &Settings, ctx: &Context, gpus: usize, report: &mut Report) {
    let tolerance: i64 = std::env::var("CHANNEL_BENCH_TIMER_TOLERANCE_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut same_check = None;
    for place in [Place::SameGpu, Place::PeerGpu] {
        let key = format!("latency/{}", place.key());
        if !s.wants(&key) {
            continue;
        }
        if place == Place::PeerGpu && gpus < 2 {
            report.note(format!("{key}: skipped, one GPU visible"));
            continue;
        }
        let mut offset = 0;
        match crate::guarded(&key, || {
            channel_case(c, s, ctx, place, tolerance, same_check)
        }) {
            Ok((rows, check)) => {
                if let Some(k) = check {
                    let agree = !rows[0].note.contains("disagree");
                    if place == Place::PeerGpu && !agree {
                        offset = k.offset;
                    }
                    report.timers.push(TimerReport {
                        place: place.label(),
                        offset_ns: k.offset,
                        round_trip_ns: k.round_trip,
                        tick_ns: k.tick,
                        tolerance_ns: tolerance,
                        agree,
                    });
                }
                if place == Place::SameGpu {
                    same_check = check;
                }
                for row in rows {
                    print_row(&row);
                    report.latency.push(row);
                }
            }
            Err(e) => report.note(format!("{key} channel: failed: {e}")),
        }
        for (file, name) in [(false, "notify"), (true, "file")] {
            if !s.baseline(name) {
                continue;
            }
            match crate::guarded(&format!("{key} {name}"), || {
                baseline_case(c, s, ctx, place, file, offset)
            }) {
                Ok(row) => {
                    print_row(&row);
                    report.latency.push(row)
                }
                Err(e) => report.note(format!("{key} {name}: failed: {e}")),
            }
        }
    }
}
