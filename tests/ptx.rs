//! The embedded PTX: entry points, and no drift between the committed PTX and what nvcc makes.

use cuda_ipc::kernels::{missing_entry_points, ENTRY_POINTS, NVCC_VERSION, PTX, PTX_ORIGIN};

const COMMITTED: &str = include_str!("../kernels/cuda_ipc.ptx");

#[test]
fn embedded_ptx_declares_every_entry_point() {
    assert_eq!(missing_entry_points(PTX), Vec::<&str>::new());
    assert_eq!(ENTRY_POINTS.len(), 6);
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

#[test]
fn committed_ptx_matches_what_nvcc_builds() {
    match PTX_ORIGIN {
        "nvcc" => {
            assert_eq!(
                signatures(PTX),
                signatures(COMMITTED),
                "kernel signatures differ: regenerate kernels/cuda_ipc.ptx (scripts/regen-ptx.sh)"
            );
            if compiler_line(COMMITTED) == Some(NVCC_VERSION) {
                assert!(
                    PTX == COMMITTED,
                    "nvcc {NVCC_VERSION} builds PTX that differs from kernels/cuda_ipc.ptx: run \
                     scripts/regen-ptx.sh and commit the result"
                );
            } else {
                eprintln!(
                    "note: nvcc is {NVCC_VERSION:?} but the committed PTX was made by {:?}; only \
                     the kernel signatures were compared",
                    compiler_line(COMMITTED)
                );
            }
        }
        "committed" => {
            eprintln!("note: built without nvcc; the embedded PTX is the committed one");
            assert!(
                PTX == COMMITTED,
                "build.rs copied the committed PTX wrongly"
            );
        }
        other => panic!("unknown PTX origin {other:?}"),
    }
}

#[test]
fn signatures_parse_the_launch_abi() {
    let sigs = signatures(COMMITTED);
    assert_eq!(sigs.len(), ENTRY_POINTS.len(), "{sigs:#?}");
    let checksum = sigs.iter().find(|s| s.contains("entry checksum(")).unwrap();
    assert_eq!(checksum.matches(".param .u64").count(), 3, "{checksum}");
}
