//! The producer of the two-pod DRA scenario: allocates a shared buffer on every selected GPU,
//! fills it with a pattern, publishes it, waits for the consumers, and checks what they did.
//!
//! ```sh
//! cargo run --release --example producer -- --transport fd --gpus all --consumers 1
//! ```
//! Exits 0 only if every GPU's buffer came back as expected (PASS), 1 otherwise.

mod common;

use std::process::ExitCode;

use cuda_ipc::ipc::{AllowedUsers, ExportOptions, Exporter, SharedDeviceBuffer};
use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

fn main() -> ExitCode {
    common::init_logger();
    let opts = common::parse("producer");
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("Producer: ERROR: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(opts: &common::Options) -> Result<bool> {
    let devices = Device::all()?;
    println!("Producer: Found {} GPU(s)", devices.len());
    for d in &devices {
        println!("Producer: GPU {}: {}", d.ordinal(), d.name()?);
    }
    let selected: Vec<Device> = match &opts.gpus {
        None => devices.clone(),
        Some(list) => list
            .iter()
            .map(|&i| Device::by_ordinal(i))
            .collect::<Result<_>>()?,
    };
    let _ = std::fs::remove_file(opts.dir.join(common::READY_MARKER));
    let contexts: Vec<Context> = selected
        .iter()
        .map(|&d| Context::new(d))
        .collect::<Result<_>>()?;
    let words = opts.size_mib * (1 << 20) / 4;

    // Allocate, fill and publish on every GPU.
    let mut buffers = Vec::new();
    for ctx in &contexts {
        let d = ctx.device();
        let uuid = d.uuid()?;
        let seed = common::seed_for(&uuid);
        let stream = Stream::new(ctx)?;
        let mut buf = SharedDeviceBuffer::<u32>::zeroed(ctx, words, opts.transport)?;
        ctx.kernels()?.fill_pattern(&stream, &mut buf, seed)?;
        stream.synchronize()?;
        buffers.push((ctx, buf, seed));
    }
    let mut exporters = Vec::new();
    for (ctx, buf, _) in &buffers {
        let name = format!("gpu{}", ctx.device().ordinal());
        let options = ExportOptions {
            expected_consumers: opts.consumers,
            group: opts.group,
            allowed: opts
                .group
                .map_or(AllowedUsers::SameUser, AllowedUsers::Group),
            ..ExportOptions::default()
        };
        let exporter = Exporter::bind_with(opts.dir.join(&name), buf, options)?;
        exporter.notify_ready(1)?;
        println!(
            "Producer: GPU {}: published {name} ({} transport, {} MiB, allocation {:.1} MiB, {})",
            ctx.device().ordinal(),
            buf.descriptor().transport.name(),
            opts.size_mib,
            buf.allocation_size() as f64 / (1 << 20) as f64,
            ctx.device().uuid()?
        );
        exporters.push(exporter);
    }
    std::fs::write(opts.dir.join(common::READY_MARKER), b"ready\n")
        .map_err(|e| Error::io("writing the ready marker", e))?;
    println!(
        "Producer: ready; waiting up to {:?} for {} consumer(s) in {}",
        opts.timeout,
        opts.consumers,
        opts.dir.display()
    );

    // Wait for every consumer to use and release every buffer, then check their work.
    let mut all_pass = true;
    for (exporter, (ctx, buf, seed)) in exporters.iter().zip(&buffers) {
        let ordinal = ctx.device().ordinal();
        match exporter.wait_released(opts.timeout) {
            Ok(stats) => {
                let stream = Stream::new(ctx)?;
                let got = ctx.kernels()?.checksum(&stream, buf)?;
                let add = common::ADD.wrapping_mul(opts.consumers as u32);
                let want = reference::added_pattern_checksum(*seed, add, words as u64);
                let pass = got == want;
                all_pass &= pass;
                println!(
                    "Producer: GPU {ordinal}: {} ({} consumer(s) took and released the buffer; checksum {got:#018x}, expected {want:#018x})",
                    if pass { "PASS" } else { "FAIL" },
                    stats.total_leases
                );
            }
            Err(e) => {
                all_pass = false;
                println!("Producer: GPU {ordinal}: FAIL: {e}");
            }
        }
    }
    drop(exporters);
    let _ = std::fs::remove_file(opts.dir.join(common::READY_MARKER));
    println!("Producer: {}", if all_pass { "PASS" } else { "FAIL" });
    Ok(all_pass)
}
