//! Build script for cuda-ipc.
//!
//! 1. Embeds the kernels' PTX: by default the PTX committed beside each `kernels/*.cu`
//!    (`kernels/*.ptx`, made by `scripts/regen-ptx.sh` at PTX ISA 8.0, which every CUDA 12.0 or
//!    newer driver loads). With `CUDA_IPC_BUILD_PTX=1` it compiles the sources with `nvcc -ptx`
//!    instead (for kernel development, or another `CUDA_IPC_PTX_ARCH`); the PTX ISA is then the
//!    one of that nvcc (nvcc 13 writes ISA 9.0, which needs a CUDA 13 driver).
//! 2. Provides a stand-in `libcuda.so` for the linker where there is none (see
//!    [`provide_link_stub`]): cuda-ipc loads libcuda at run time, so nothing of CUDA is needed
//!    to build or link.
//!
//! Variables read: `CUDA_IPC_BUILD_PTX`, and with it `NVCC`, `CUDA_HOME`, `CUDA_PATH`, `PATH`,
//! `CUDA_IPC_PTX_ARCH` (default `compute_75`); `CUDA_LIBRARY_PATH` and `LIBRARY_PATH` (where a
//! real `libcuda.so` makes the stand-in unnecessary).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_PTX_ARCH: &str = "compute_75";

fn main() {
    for var in [
        "CUDA_IPC_BUILD_PTX",
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "CUDA_IPC_PTX_ARCH",
        "CUDA_LIBRARY_PATH",
        "LIBRARY_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    build_kernels(&out_dir);
    provide_link_stub(&out_dir);
}

fn build_kernels(out_dir: &Path) {
    let mut sources: Vec<PathBuf> = fs::read_dir("kernels")
        .expect("kernels/ is part of the crate")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("cu") | Some("cuh")
            )
        })
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    let from_nvcc = env::var("CUDA_IPC_BUILD_PTX").is_ok_and(|v| v == "1");
    let arch = if from_nvcc {
        env::var("CUDA_IPC_PTX_ARCH").unwrap_or_else(|_| DEFAULT_PTX_ARCH.to_string())
    } else {
        DEFAULT_PTX_ARCH.to_string()
    };
    let nvcc = if from_nvcc {
        Some(find_nvcc().unwrap_or_else(|| {
            panic!(
                "CUDA_IPC_BUILD_PTX=1 but nvcc was not found (looked at $NVCC, $CUDA_HOME/bin, \
                 $CUDA_PATH/bin, $PATH): install the CUDA toolkit or set NVCC, or unset \
                 CUDA_IPC_BUILD_PTX to embed the committed PTX"
            )
        }))
    } else {
        None
    };
    let origin = if nvcc.is_some() { "nvcc" } else { "committed" };
    let mut nvcc_version = String::from("none");

    for source in sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
    {
        let stem = source.file_stem().unwrap().to_string_lossy().into_owned();
        let target = out_dir.join(format!("{stem}.ptx"));
        let committed = source.with_extension("ptx");
        match &nvcc {
            Some(nvcc) => {
                nvcc_version = version_of(nvcc);
                let mut cmd = Command::new(nvcc);
                cmd.arg("-ptx")
                    .arg(format!("-arch={arch}"))
                    .arg(source)
                    .arg("-o")
                    .arg(&target);
                let output = cmd
                    .output()
                    .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
                if !output.status.success() {
                    panic!(
                        "nvcc failed to compile {}\ncommand: {cmd:?}\nstatus: {}\nstderr:\n{}",
                        source.display(),
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            }
            None => {
                fs::copy(&committed, &target).unwrap_or_else(|e| {
                    panic!(
                        "the committed PTX {} could not be copied: {e}",
                        committed.display()
                    )
                });
            }
        }
    }
    println!("cargo:rustc-env=CUDA_IPC_PTX_ORIGIN={origin}");
    println!("cargo:rustc-env=CUDA_IPC_PTX_ARCH={arch}");
    println!("cargo:rustc-env=CUDA_IPC_NVCC_VERSION={nvcc_version}");
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(nvcc) = env::var_os("NVCC") {
        let nvcc = PathBuf::from(nvcc);
        if nvcc.is_file() {
            return Some(nvcc);
        }
        println!(
            "cargo:warning=NVCC={} is not a file; looking elsewhere",
            nvcc.display()
        );
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let candidate = PathBuf::from(home).join("bin").join("nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("nvcc"))
            .find(|candidate| candidate.is_file())
    })
}

/// The `release X, VY` line of `nvcc --version`, or "unknown".
fn version_of(nvcc: &Path) -> String {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("release"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Lets `cuda-driver-sys`'s unconditional `-lcuda` resolve on a machine without CUDA.
///
/// cuda-ipc loads libcuda at run time and references none of its symbols, but its dependency
/// `cuda-driver-sys` (kept for its types) prints `cargo:rustc-link-lib=dylib=cuda`. Where no
/// `libcuda.so` is on the linker's search path, this writes `OUT_DIR/stub/libcuda.so`: a linker
/// script holding only a comment. GNU ld, gold and lld (each checked) read a text input as a
/// linker script, so `-lcuda` resolves to it and adds nothing: no `NEEDED libcuda` in any
/// binary, no C compiler needed, the same text for every target architecture. Where a real `libcuda.so`
/// (driver or toolkit stub) is found, the stub is not offered, so it never shadows the real
/// library for a crate that does call libcuda itself; `--as-needed` (rustc's default on Linux)
/// then drops the unused real one.
fn provide_link_stub(out_dir: &Path) {
    let cross = env::var("TARGET").ok() != env::var("HOST").ok();
    // Where a real library resolves -lcuda, --as-needed drops it: no stand-in needed.
    if !cross
        && link_search_dirs()
            .iter()
            .any(|dir| dir.join("libcuda.so").exists())
    {
        return;
    }
    let stub_dir = out_dir.join("stub");
    let stub = stub_dir.join("libcuda.so");
    let text = "/* cuda-ipc: a stand-in for libcuda.so at link time. cuda-ipc opens libcuda.so.1 \
                with dlopen at run time and references no libcuda symbol; this empty linker \
                script only lets cuda-driver-sys's -lcuda resolve. */\n";
    if let Err(e) = fs::create_dir_all(&stub_dir).and_then(|()| fs::write(&stub, text)) {
        panic!("could not write the link stub {}: {e}", stub.display());
    }
    println!("cargo:rustc-link-search=native={}", stub_dir.display());
}

/// Where the linker would look for `libcuda.so` on this (host) machine: the directories
/// `cuda-driver-sys` adds, `LIBRARY_PATH`, and the usual system directories.
fn link_search_dirs() -> Vec<PathBuf> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Some(paths) = env::var_os("CUDA_LIBRARY_PATH") {
        bases.extend(env::split_paths(&paths));
    }
    bases.push(PathBuf::from("/opt/cuda"));
    bases.push(PathBuf::from("/usr/local/cuda"));
    if let Ok(entries) = fs::read_dir("/usr/local") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("cuda-"))
            })
            .collect();
        versions.sort();
        bases.extend(versions);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for base in &bases {
        for sub in [
            "lib64",
            "lib64/stubs",
            "targets/x86_64-linux/lib",
            "targets/x86_64-linux/lib/stubs",
        ] {
            dirs.push(base.join(sub));
        }
    }
    if let Some(paths) = env::var_os("LIBRARY_PATH") {
        dirs.extend(env::split_paths(&paths));
    }
    let multiarch = format!(
        "{}-linux-gnu",
        env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string())
    );
    for dir in ["/usr/lib", "/lib"] {
        dirs.push(Path::new(dir).join(&multiarch));
    }
    dirs.extend(
        ["/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib"]
            .iter()
            .map(PathBuf::from),
    );
    dirs
}
