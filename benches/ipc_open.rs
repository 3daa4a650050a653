//! Open (import) and export costs, through this crate and through the raw driver calls on the
//! same handles, per transport, same GPU and cross-GPU, for 2 MiB, 64 MiB and 1 GiB.
//!
//! A helper process (this executable again) owns and publishes the buffers on GPU 0.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::driver;
use criterion::{BenchmarkId, Criterion};
use cuda_ipc::ipc::{fetch, Descriptor, ImportOptions, SharedDeviceBuffer, Transport};
use cuda_ipc::prelude::*;

const SIZES: [usize; 3] = [2 << 20, 64 << 20, 1 << 30];

fn main() {
    if common::role().as_deref() == Some("exporter") {
        return exporter();
    }
    let gpus = common::gpus_or_explain("ipc_open");
    if gpus == 0 {
        return;
    }
    let dir = common::temp_dir("open");
    let mut helper = common::Helper::spawn("exporter", &dir, &[]);
    helper.wait_ready(&dir);
    // Opens are noisy (tens of µs to ms): more samples than the other benches.
    let mut c = common::criterion_with(Duration::from_millis(2000), 40);
    descriptor_codec(&mut c);
    export_costs(&mut c);
    for importer in 0..gpus.min(2) {
        open_costs(&mut c, &dir, importer);
    }
    c.final_summary();
    drop(helper);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The helper: publishes one buffer per transport and size on GPU 0.
fn exporter() {
    let dir = common::helper_dir();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let mut keep = Vec::new();
    for t in [Transport::Legacy, Transport::Fd] {
        for size in SIZES {
            let buf = SharedDeviceBuffer::<u8>::zeroed(&ctx, size, t).unwrap();
            keep.push(buf);
        }
    }
    let exporters: Vec<_> = keep
        .iter()
        .map(|b| {
            let name = format!(
                "{}-{}",
                b.descriptor().transport.name(),
                common::size_name(b.len())
            );
            let options = cuda_ipc::ipc::ExportOptions {
                max_connections: 1024,
                ..Default::default()
            };
            cuda_ipc::ipc::Exporter::bind_with(dir.join(name), b, options).unwrap()
        })
        .collect();
    common::ready_and_wait(&dir);
    drop(exporters);
}

fn descriptor_codec(c: &mut Criterion) {
    let d = Descriptor::example();
    let bytes = d.encode();
    let mut g = c.benchmark_group("descriptor");
    g.bench_function("encode", |b| b.iter(|| std::hint::black_box(&d).encode()));
    g.bench_function("decode", |b| {
        b.iter(|| Descriptor::decode(std::hint::black_box(&bytes)).unwrap())
    });
    g.finish();
}

fn export_costs(c: &mut Criterion) {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let _bound = ctx.bind().unwrap();
    let mut g = c.benchmark_group("export");
    let legacy = driver::mem_alloc(2 << 20).unwrap();
    g.bench_function("legacy/cuIpcGetMemHandle", |b| {
        b.iter(|| driver::ipc_get_mem_handle(legacy).unwrap())
    });
    let handle = driver::mem_create_posix_fd(ctx.device().raw(), 2 << 20).unwrap();
    g.bench_function("fd/cuMemExportToShareableHandle+close", |b| {
        b.iter(|| {
            // SAFETY: a live handle of the POSIX fd type; the new fd is closed at once.
            let fd = unsafe { driver::mem_export_posix_fd(handle) }.unwrap();
            // SAFETY: the driver gave us this fd; we own it.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        })
    });
    g.finish();
    // SAFETY: both allocations are ours and unused.
    unsafe {
        driver::mem_free(legacy).unwrap();
        driver::mem_release(handle).unwrap();
    }
}

fn open_costs(c: &mut Criterion, dir: &std::path::Path, importer: usize) {
    let ctx = Context::new(Device::by_ordinal(importer).unwrap()).unwrap();
    let place = if importer == 0 {
        "same-gpu"
    } else {
        "cross-gpu"
    };
    let opts = ImportOptions::with_timeout(Duration::from_secs(30));
    for t in ["legacy", "fd"] {
        let mut g = c.benchmark_group(format!("open/{t}/{place}"));
        for size in SIZES {
            let path = dir.join(format!("{t}-{}", common::size_name(size)));
            let offer = fetch::<u8>(&path, &opts).unwrap();
            let d = offer.descriptor().descriptor();
            let fd = offer.fd();
            // Without a lease (the offer's lease keeps the helper's buffer alive meanwhile).
            let import = || match fd {
                Some(_) => SharedDeviceBuffer::<u8>::import_parts(&ctx, &d, fd, &opts).unwrap(),
                // SAFETY: the producer helper keeps its buffer alive while `offer` holds a lease.
                None => unsafe { SharedDeviceBuffer::<u8>::import_legacy_parts(&ctx, &d, &opts) }
                    .unwrap(),
            };
            // Cold import through this crate: checks, cache miss, map; then unmap on drop.
            g.bench_with_input(
                BenchmarkId::new("cuda-ipc cold", common::size_name(size)),
                &(),
                |b, _| b.iter(|| drop(import())),
            );
            // The raw driver calls on the same handle.
            g.bench_with_input(
                BenchmarkId::new("raw driver", common::size_name(size)),
                &(),
                |b, _| b.iter(|| raw_open_close(&ctx, &d, offer.fd().map(|f| f.as_raw_fd()))),
            );
            // A cache hit: the buffer is already mapped in this context.
            // Held with a lease (through the rendezvous): a cached hit of a lease-less legacy
            // mapping is refused by design.
            let held =
                SharedDeviceBuffer::<u8>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
            g.bench_with_input(
                BenchmarkId::new("cuda-ipc cached", common::size_name(size)),
                &(),
                |b, _| {
                    b.iter(|| {
                        drop(
                            SharedDeviceBuffer::<u8>::import_cached(&ctx, &d, &opts)
                                .unwrap()
                                .unwrap(),
                        )
                    })
                },
            );
            drop(held);
            // The whole rendezvous: wait, read, connect, hello, offer, map, lease; then drop.
            g.bench_with_input(
                BenchmarkId::new("cuda-ipc via rendezvous", common::size_name(size)),
                &(),
                |b, _| {
                    b.iter(|| {
                        drop(
                            SharedDeviceBuffer::<u8>::import(&ctx, &path, Duration::from_secs(30))
                                .unwrap(),
                        )
                    })
                },
            );
        }
        g.finish();
    }
}

/// cuIpcOpenMemHandle + close, or import + reserve + map + set access + release + unmap + free.
fn raw_open_close(ctx: &Context, d: &Descriptor, fd: Option<i32>) {
    let _bound = ctx.bind().unwrap();
    match fd {
        None => {
            // SAFETY: a valid handle of a live buffer; closed right away.
            unsafe {
                let p = driver::ipc_open_mem_handle(&d.handle).unwrap();
                driver::ipc_close_mem_handle(p).unwrap();
            }
        }
        Some(fd) => {
            let size = d.alloc_size as usize;
            let h = driver::mem_import_posix_fd(fd).unwrap();
            let p = driver::mem_address_reserve(size, 0).unwrap();
            // SAFETY: reserved range of `size`, a handle of `size`; undone in reverse order.
            unsafe {
                driver::mem_map(p, size, h).unwrap();
                driver::mem_set_access_rw(p, size, ctx.device().raw()).unwrap();
                driver::mem_release(h).unwrap();
                driver::mem_unmap(p, size).unwrap();
                driver::mem_address_free(p, size).unwrap();
            }
        }
    }
}
