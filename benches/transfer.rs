//! Transfer speed out of imported memory vs local memory (same GPU), vs a raw peer copy
//! (cross-GPU), and a kernel reading imported memory in place vs local memory. GPU time is
//! measured with CUDA events (`iter_custom`), with `Throughput::Bytes` of the buffer size.
//!
//! A helper process (this executable again) owns and publishes the buffers on GPU 0.

mod common;

use std::time::Duration;

use common::driver;
use criterion::{BenchmarkId, Criterion, Throughput};
use cuda_ipc::ipc::{SharedDeviceBuffer, Transport};
use cuda_ipc::prelude::*;

const SIZES: [usize; 6] = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30];

fn main() {
    if common::role().as_deref() == Some("exporter") {
        return exporter();
    }
    let gpus = common::gpus_or_explain("transfer");
    if gpus == 0 {
        return;
    }
    let dir = common::temp_dir("transfer");
    let mut helper = common::Helper::spawn("exporter", &dir, &[]);
    helper.wait_ready(&dir);
    let mut c = common::criterion();
    same_gpu(&mut c, &dir);
    if gpus >= 2 {
        cross_gpu(&mut c, &dir);
    } else {
        println!("transfer: one GPU only; cross-GPU benches not run");
    }
    c.final_summary();
    drop(helper);
    let _ = std::fs::remove_dir_all(&dir);
}

fn exporter() {
    let dir = common::helper_dir();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let mut bufs = Vec::new();
    for size in SIZES {
        let mut b = SharedDeviceBuffer::<u32>::zeroed(&ctx, size / 4, Transport::Auto).unwrap();
        ctx.kernels()
            .unwrap()
            .fill_pattern(&stream, &mut b, size as u32)
            .unwrap();
        bufs.push(b);
    }
    stream.synchronize().unwrap();
    let exporters: Vec<_> = bufs
        .iter()
        .map(|b| {
            cuda_ipc::ipc::Exporter::bind(dir.join(common::size_name(b.byte_len())), b).unwrap()
        })
        .collect();
    common::ready_and_wait(&dir);
    drop(exporters);
}

/// Times `iters` repetitions of `op` on `stream` with events.
fn gpu_time(ctx: &Context, stream: &Stream<'_>, iters: u64, mut op: impl FnMut()) -> Duration {
    let (start, end) = (Event::new(ctx).unwrap(), Event::new(ctx).unwrap());
    start.record(stream).unwrap();
    for _ in 0..iters {
        op();
    }
    end.record(stream).unwrap();
    Duration::from_secs_f64(end.elapsed_ms_since(&start).unwrap() as f64 / 1e3)
}

fn same_gpu(c: &mut Criterion, dir: &std::path::Path) {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mut copy = c.benchmark_group("copy/same-gpu");
    for size in SIZES {
        let imported = SharedDeviceBuffer::<u32>::import(
            &ctx,
            dir.join(common::size_name(size)),
            Duration::from_secs(30),
        )
        .unwrap();
        let local_src = DeviceBuffer::<u32>::zeroed(&ctx, size / 4).unwrap();
        let mut dst = DeviceBuffer::<u32>::zeroed(&ctx, size / 4).unwrap();
        copy.throughput(Throughput::Bytes(size as u64));
        let name = common::size_name(size);
        copy.bench_with_input(BenchmarkId::new("imported->local", &name), &(), |b, _| {
            b.iter_custom(|n| {
                gpu_time(&ctx, &stream, n, || {
                    dst.copy_from_device_async(&imported, &stream).unwrap()
                })
            })
        });
        copy.bench_with_input(BenchmarkId::new("local->local", &name), &(), |b, _| {
            b.iter_custom(|n| {
                gpu_time(&ctx, &stream, n, || {
                    dst.copy_from_device_async(&local_src, &stream).unwrap()
                })
            })
        });
    }
    copy.finish();
    let mut kernel = c.benchmark_group("checksum-in-place/same-gpu");
    for size in SIZES {
        let imported = SharedDeviceBuffer::<u32>::import(
            &ctx,
            dir.join(common::size_name(size)),
            Duration::from_secs(30),
        )
        .unwrap();
        // The same words in every buffer (the exporter's pattern), so that only where the
        // memory comes from differs: cuMemAlloc, a VMM allocation of this process, or the
        // other process's VMM allocation imported.
        let mut local = DeviceBuffer::<u32>::zeroed(&ctx, size / 4).unwrap();
        k.fill_pattern(&stream, &mut local, size as u32).unwrap();
        let mut vmm_local =
            SharedDeviceBuffer::<u32>::zeroed(&ctx, size / 4, Transport::Fd).unwrap();
        k.fill_pattern(&stream, &mut vmm_local, size as u32)
            .unwrap();
        stream.synchronize().unwrap();
        let mut out = DeviceBuffer::<u64>::zeroed(&ctx, 1).unwrap();
        kernel.throughput(Throughput::Bytes(size as u64));
        let name = common::size_name(size);
        kernel.bench_with_input(BenchmarkId::new("local", &name), &(), |b, _| {
            b.iter_custom(|n| {
                gpu_time(&ctx, &stream, n, || {
                    k.checksum_into(&stream, &local, &mut out).unwrap()
                })
            })
        });
        kernel.bench_with_input(BenchmarkId::new("vmm-local", &name), &(), |b, _| {
            b.iter_custom(|n| {
                gpu_time(&ctx, &stream, n, || {
                    k.checksum_into(&stream, &vmm_local, &mut out).unwrap()
                })
            })
        });
        kernel.bench_with_input(BenchmarkId::new("imported", &name), &(), |b, _| {
            b.iter_custom(|n| {
                gpu_time(&ctx, &stream, n, || {
                    k.checksum_into(&stream, &imported, &mut out).unwrap()
                })
            })
        });
    }
    kernel.finish();
}

fn cross_gpu(c: &mut Criterion, dir: &std::path::Path) {
    let ctx0 = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let ctx1 = Context::new(Device::by_ordinal(1).unwrap()).unwrap();
    let stream1 = Stream::new(&ctx1).unwrap();
    // The best raw baseline: direct NVLink peer copies, not staged through the host.
    ctx1.enable_peer_access(&ctx0).unwrap();
    ctx0.enable_peer_access(&ctx1).unwrap();
    let mut g = c.benchmark_group("copy/cross-gpu");
    for size in SIZES {
        // Owned by GPU 0 (the helper), mapped on GPU 1.
        let imported = SharedDeviceBuffer::<u32>::import(
            &ctx1,
            dir.join(common::size_name(size)),
            Duration::from_secs(30),
        )
        .unwrap();
        let src0 = DeviceBuffer::<u32>::zeroed(&ctx0, size / 4).unwrap();
        let mut dst1 = DeviceBuffer::<u32>::zeroed(&ctx1, size / 4).unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        let name = common::size_name(size);
        g.bench_with_input(
            BenchmarkId::new("imported(GPU0)->local(GPU1)", &name),
            &(),
            |b, _| {
                b.iter_custom(|n| {
                    gpu_time(&ctx1, &stream1, n, || {
                        dst1.copy_from_device_async(&imported, &stream1).unwrap()
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("raw cuMemcpyPeer GPU0->GPU1", &name),
            &(),
            |b, _| {
                b.iter_custom(|n| {
                    gpu_time(&ctx1, &stream1, n, || {
                        let _bound = ctx1.bind().unwrap();
                        // SAFETY: both buffers hold `size` bytes and outlive the synchronized run.
                        unsafe {
                            driver::memcpy_peer_async(
                                dst1.device_ptr(),
                                ctx1.raw().cast(),
                                src0.device_ptr(),
                                ctx0.raw().cast(),
                                size,
                                stream1.raw().cast(),
                            )
                        }
                        .unwrap()
                    })
                })
            },
        );
    }
    g.finish();
}
