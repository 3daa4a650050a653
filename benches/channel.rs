//! Channels (`cuda_ipc::pubsub`) on one or two GPUs, each figure against its baselines in the
//! same run:
//!
//! - **latency** from publish to the subscriber's first instruction on the frame, GPU-timed
//!   (`%globaltimer` stamps), p50/p99, same GPU and peer GPU, 4 KiB frames, paced;
//! - **throughput**: frames/s delivered to each subscriber, 4 KiB frames to one subscriber
//!   and 4K RGBA frames (3840×2160×4 bytes) to 1, 4 and 8, every frame filled by the
//!   publisher's `fill_frame` and checked by each subscriber's `verify_frame` (Policy::Block);
//! - **CPU cost** per subscriber: getrusage over a window at the measured rate;
//! - **baselines**: (a) a new legacy handle file per frame, opened by the consumer (what the
//!   seed did); (b) one buffer with `Exporter::notify_ready` / `SharedDeviceBuffer::wait_ready`;
//!   (c) torch.multiprocessing Queues of CUDA tensors (`benches/baselines/torch_queue.py`, run
//!   by this bench when Python can import torch).
//!
//! Every helper process (subscriber, consumer, echo) is this executable again. Criterion
//! gives the means (latency through `iter_custom` in GPU time, throughput in frames/s); the
//! percentiles, the CPU figures and the ratios are in the summary table printed at the end and
//! written to `$CHANNEL_BENCH_OUT` (default `target/criterion/channel`). After the ping-pong,
//! a spaced-out run (one frame per ms, the subscriber idle in between) gives the latency a
//! camera-paced stream sees. Without `--bench` (criterion's test mode) every case runs once,
//! as a smoke test (no CPU windows, no torch).
//!
//! Settings (environment, defaults in brackets; see `benches/channel/settings.rs`):
//! `CHANNEL_BENCH_WARMUP_MS` [200], `_MEASURE_MS` [800, throughput], `_LATENCY_MS` [300, of
//! summed latency], `_SAMPLES` [10], `_CPU_MS` [1000, 0: no CPU windows], `_SLOTS` [8],
//! `_SUBS` [1,4,8: 4K subscriber counts], `_PACE_US` [0], `_SPACED_US` [1000, 0: no spaced
//! run], `_SPACED_ROUNDS` [1000], `_ONLY` [all; comma-separated substrings of the case keys
//! `latency/same-gpu`, `latency/peer-gpu`, `throughput/4KiB x1`, `throughput/4K x8`, `torch`],
//! `_BASELINES` [file,notify,torch], `_WAIT` [eager; `adaptive[:MAX_US]`: the subscribers'
//! `pubsub::Waiting`], `_TORCH_SCRIPT`, `_PYTHON` [python3], `_TORCH_SECS` [1],
//! `_TIMER_TOLERANCE_NS` [1000], `_TIMEOUT_S` [20], `_OUT`.

mod common;
#[path = "channel/consumer.rs"]
mod consumer;
#[path = "channel/feeds.rs"]
mod feeds;
#[path = "channel/latency.rs"]
mod latency;
#[path = "channel/report.rs"]
mod report;
#[path = "channel/settings.rs"]
mod settings;
#[path = "channel/throughput.rs"]
mod throughput;
#[path = "channel/torch.rs"]
mod torch;

use std::panic::AssertUnwindSafe;

use cuda_ipc::prelude::*;

/// Runs one case; a failure or a panic in it becomes an error line, not the end of the run.
fn guarded<T, E: std::fmt::Display>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            Err(format!("{what} panicked: {msg}"))
        }
    }
}

fn main() {
    if let Some(role) = common::role() {
        return consumer::run(&role);
    }
    let gpus = common::gpus_or_explain("channel");
    if gpus == 0 {
        return;
    }
    let s = settings::Settings::from_env();
    let mut report = report::Report {
        slots: s.slots,
        ..Default::default()
    };
    for g in 0..gpus.min(2) {
        let name = Device::by_ordinal(g)
            .and_then(|d| d.name())
            .unwrap_or_else(|e| format!("({e})"));
        report.gpus.push(format!("GPU{g}: {name}"));
    }
    if gpus < 2 {
        report.note(
            "one GPU visible: the peer-GPU cases are skipped and every subscriber runs on GPU0 \
             (this bench is meant for 2 GPUs)"
                .into(),
        );
    }
    let benching = std::env::args().any(|a| a == "--bench");
    if !benching {
        report.note(
            "criterion test mode (no --bench): every case ran once, a smoke test; the figures \
             are not measurements"
                .into(),
        );
    }
    let ctx = match Device::by_ordinal(0).and_then(Context::new) {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("channel: cannot make a context on GPU0: {e}");
            return;
        }
    };
    let mut c = common::criterion_with(s.measure, s.samples).warm_up_time(s.warm_up);
    latency::run(&mut c, &s, &ctx, gpus, &mut report);
    // The CPU windows run at the rate criterion measured: none in test mode.
    let cpu_windows = benching && !s.cpu_window.is_zero();
    throughput::run(&mut c, &s, &ctx, gpus, cpu_windows, &mut report);
    if benching {
        torch::run(&s, gpus, &mut report);
    }
    c.final_summary();
    report.finish(&s.out_dir);
}
