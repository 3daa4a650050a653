//! The consumer of the two-pod DRA scenario: imports every buffer the producer published,
//! verifies the pattern on the GPU, adds to it in place, and lets go.
//!
//! ```sh
//! cargo run --release --example consumer -- --import-on 1
//! ```
//! Exits 0 only if every buffer verified.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cuda_ipc::ipc::{ImportOptions, SharedDeviceBuffer};
use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

fn main() -> ExitCode {
    common::init_logger();
    let opts = common::parse("consumer");
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("Consumer: ERROR: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(opts: &common::Options) -> Result<bool> {
    let devices = Device::all()?;
    println!("Consumer: Found {} GPU(s)", devices.len());
    for d in &devices {
        println!("Consumer: GPU {}: {}", d.ordinal(), d.name()?);
    }
    let marker = opts.dir.join(common::READY_MARKER);
    println!(
        "Consumer: waiting up to {:?} for the producer ({})",
        opts.timeout,
        marker.display()
    );
    common::wait_for_file(&marker, opts.timeout, "the producer's ready marker")?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&opts.dir)
        .map_err(|e| Error::io(format!("listing {}", opts.dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "desc"))
        .map(|p| p.with_extension(""))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the producer is ready but {} holds no buffer",
            opts.dir.display()
        )));
    }

    let mut contexts: Vec<Option<Context>> = devices.iter().map(|_| None).collect();
    let mut all_ok = true;
    for path in &names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match consume(opts, path, &devices, &mut contexts) {
            Ok(line) => println!("Consumer: {name}: {line}"),
            Err(e) => {
                all_ok = false;
                println!("Consumer: {name}: ERROR: {e}");
            }
        }
    }
    println!("Consumer: {}", if all_ok { "PASS" } else { "FAIL" });
    Ok(all_ok)
}

fn consume(
    opts: &common::Options,
    path: &std::path::Path,
    devices: &[Device],
    contexts: &mut [Option<Context>],
) -> Result<String> {
    // Which GPU to map it on: --import-on, else the owner (found by UUID, not by ordinal).
    let d = common::read_descriptor(&path.with_extension("desc"))?;
    let owner_uuid = GpuUuid(d.owner_uuid);
    let owner = Device::by_uuid(&owner_uuid)?;
    let on = match opts.import_on {
        Some(i) => *devices.get(i).ok_or(Error::NoSuchOrdinal {
            ordinal: i,
            count: devices.len(),
        })?,
        None => owner,
    };
    let slot = &mut contexts[on.ordinal()];
    if slot.is_none() {
        *slot = Some(Context::new(on)?);
    }
    let ctx = slot.as_ref().expect("just set");
    let stream = Stream::new(ctx)?;
    let k = ctx.kernels()?;

    let start = Instant::now();
    let import = ImportOptions {
        group: opts.group,
        trusted_exporters: opts.trust_uids.clone(),
        ..ImportOptions::with_timeout(opts.timeout)
    };
    let mut buf = SharedDeviceBuffer::<u32>::import_with(ctx, path, &import)?;
    let opened = start.elapsed();
    let seed = common::seed_for(&owner_uuid);
    k.checksum(&stream, &buf)?; // warm-up, so the timing below is the read itself
    let t = Instant::now();
    let got = k.checksum(&stream, &buf)?;
    let verify = t.elapsed();
    let want = reference::pattern_checksum(seed, buf.len() as u64);
    if got != want {
        return Err(Error::InvalidArgument(format!(
            "checksum {got:#018x} differs from the producer's pattern {want:#018x}"
        )));
    }
    k.add_words_atomic(&stream, &mut buf, common::ADD)?;
    stream.synchronize()?;
    let gbps = buf.byte_len() as f64 / verify.as_secs_f64() / 1e9;
    Ok(format!(
        "OK: transport {}, owner GPU {} ({owner_uuid}), mapped on GPU {}, open {:.3} ms, verify {:.1} GB/s",
        buf.descriptor().transport.name(),
        owner.ordinal(),
        on.ordinal(),
        opened.as_secs_f64() * 1e3,
        gbps,
    ))
    // `buf` drops here: unmapped, lease released, the producer sees it.
}
