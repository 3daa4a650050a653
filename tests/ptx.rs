//! The embedded PTX: entry points, a PTX ISA every CUDA 12.x driver loads, and no drift between
//! the committed PTX and what nvcc makes of the sources.

use cuda_ipc::kernels::{missing_entry_points, ENTRY_POINTS, NVCC_VERSION, PTX, PTX_ORIGIN};

const COMMITTED: &str = include_str!("../kernels/cuda_ipc.ptx");

#[test]
fn embedded_ptx_declares_every_entry_point() {
    assert_eq!(missing_entry_points(PTX), Vec::<&str>::new());
    assert_eq!(ENTRY_POINTS.len(), 9);
}

#[test]
fn committed_ptx_declares_every_entry_point() {
    assert_eq!(missing_entry_points(COMMITTED), Vec::<&str>::new());
}

/// The `// Cuda compilation tools, release …` line of a PTX file.
fn compiler_line(ptx: &str) -> Option<&str> {
    ptx.lines()
        .find(|l| l.starts_with("// Cuda compilation tools"))
        .map(|l| l.trim_start_matches("// ").trim())
}

/// Every `.entry` signature (name and parameter types), in order.
fn signatures(ptx: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        if let Some(pos) = line.find(".entry ") {
            let mut sig = line[pos..].trim().to_string();
            for next in lines.by_ref() {
                let t = next.trim();
                if t.starts_with(')') {
                    break;
                }
                sig.push(' ');
                sig.push_str(
                    t.split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                        .as_str(),
                );
            }
            out.push(sig);
        }
    }
    out
}

/// The `(major, minor)` of a PTX file's `.version` line.
fn ptx_isa(ptx: &str) -> Option<(u32, u32)> {
    let version = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))?;
    let (major, minor) = version.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[test]
fn committed_ptx_loads_on_every_cuda_12_driver() {
    // A driver of CUDA 12.0 reads PTX ISA up to 8.0; the README promises CUDA 12.x.
    let isa = ptx_isa(COMMITTED).expect("a .version line");
    assert!(
        isa <= (8, 0),
        "kernels/cuda_ipc.ptx is PTX ISA {}.{}, which CUDA 12.0 drivers cannot load: \
         regenerate it with scripts/regen-ptx.sh",
        isa.0,
        isa.1
    );
    assert_eq!(ptx_isa(".version 9.0\n.target sm_75"), Some((9, 0)));
    assert!(COMMITTED.contains("\n.target sm_75\n"));
}

#[test]
fn embedded_ptx_is_the_committed_one_unless_nvcc_was_asked_for() {
    match PTX_ORIGIN {
        "committed" => {
            assert!(
                PTX == COMMITTED,
                "build.rs copied the committed PTX wrongly"
            );
            assert_eq!(NVCC_VERSION, "none");
        }
        // CUDA_IPC_BUILD_PTX=1: the sources compiled by the nvcc found at build time.
        "nvcc" => assert_eq!(
            signatures(PTX),
            signatures(COMMITTED),
            "kernel signatures differ: regenerate kernels/cuda_ipc.ptx (scripts/regen-ptx.sh)"
        ),
        other => panic!("unknown PTX origin {other:?}"),
    }
}

/// The committed PTX must be what the sources say: compiled by `$NVCC` (CI provisions one),
/// the kernel signatures must be the same. (The code itself differs between compiler versions.)
#[test]
fn committed_ptx_matches_what_nvcc_builds_from_the_sources() {
    let Some(nvcc) = std::env::var_os("NVCC") else {
        eprintln!("note: NVCC is not set; the committed PTX was not compared with the sources");
        return;
    };
    let dir = std::env::temp_dir().join(format!("cuda-ipc-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("cuda_ipc.ptx");
    let status = std::process::Command::new(&nvcc)
        .args(["-ptx", "-arch=compute_75"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/cuda_ipc.cu"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run $NVCC");
    assert!(status.success(), "{nvcc:?} failed: {status}");
    let built = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        signatures(&built),
        signatures(COMMITTED),
        "kernel signatures differ between kernels/cuda_ipc.cu and kernels/cuda_ipc.ptx: run \
         scripts/regen-ptx.sh and commit the result"
    );
    eprintln!(
        "note: compared with {:?} (committed: {:?})",
        compiler_line(&built),
        compiler_line(COMMITTED)
    );
}

#[test]
fn signatures_parse_the_launch_abi() {
    let sigs = signatures(COMMITTED);
    assert_eq!(sigs.len(), ENTRY_POINTS.len(), "{sigs:#?}");
    let checksum = sigs.iter().find(|s| s.contains("entry checksum(")).unwrap();
    assert_eq!(checksum.matches(".param .u64").count(), 3, "{checksum}");
    // The launchers of src/kernels.rs pass every parameter of these as a u64.
    for (name, params) in [("fill_frame", 3), ("verify_frame", 4), ("stamp_time", 2)] {
        let sig = sigs
            .iter()
            .find(|s| s.contains(&format!("entry {name}(")))
            .unwrap_or_else(|| panic!("no {name} in {sigs:#?}"));
        assert_eq!(sig.matches(".param .u64").count(), params, "{sig}");
        assert_eq!(sig.matches(".param ").count(), params, "{sig}");
    }
}

#[test]
fn stamp_time_reads_the_global_timer() {
    let body = COMMITTED
        .split(".visible .entry stamp_time(")
        .nth(1)
        .expect("stamp_time in the committed PTX");
    let body = body.split(".visible .entry").next().unwrap();
    assert!(body.contains("%globaltimer"), "{body}");
}
