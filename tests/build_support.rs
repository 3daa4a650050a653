//! The build-script helper without nvcc: detection order, the committed-PTX fallback, and a
//! stand-in nvcc (a shell script) that records how it is called.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cuda_ipc::build::{find_nvcc_with, BuildError, Origin, PtxBuild, DEFAULT_ARCH};

mod common;

struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        let root = common::temp_dir(tag);
        std::fs::create_dir_all(&root).unwrap();
        Sandbox { root }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
    /// An executable `nvcc` in `rel` that logs its arguments and writes `// from <rel>` to -o.
    fn fake_nvcc(&self, rel: &str) -> PathBuf {
        let log = self.path("nvcc.log");
        let p = self.write(
            &format!("{rel}/nvcc"),
            &format!(
                "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Cuda compilation tools, release 12.4, V12.4.131'; exit 0; fi\n\
                 echo \"$@\" >> {log}\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -o ]; then echo '// from {rel}' > \"$2\"; fi; \
                 case \"$1\" in *fail*) echo 'error: syntax' >&2; exit 2;; esac; shift; done\n",
                log = log.display()
            ),
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn env(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn nvcc_is_found_in_nvcc_then_cuda_home_then_cuda_path_then_path() {
    let s = Sandbox::new("nvcc-order");
    let explicit = s.fake_nvcc("explicit");
    let home = s.fake_nvcc("home/bin");
    let cuda_path = s.fake_nvcc("cudapath/bin");
    let on_path = s.fake_nvcc("onpath");
    let path_var = std::env::join_paths([s.path("empty"), s.path("onpath")]).unwrap();
    let (home_dir, cp_dir) = (s.path("home"), s.path("cudapath"));
    let all = [
        ("NVCC", explicit.as_path()),
        ("CUDA_HOME", home_dir.as_path()),
        ("CUDA_PATH", cp_dir.as_path()),
        ("PATH", Path::new(&path_var)),
    ];
    for skip in 0..4 {
        let (found, warnings) = find_nvcc_with(&env(&all[skip..]));
        let want = [&explicit, &home, &cuda_path, &on_path][skip];
        assert_eq!(
            found.as_ref(),
            Some(want),
            "without the first {skip} variables"
        );
        assert!(warnings.is_empty());
    }
    assert_eq!(find_nvcc_with(&env(&[])).0, None);
    // An NVCC that is not a file is reported and skipped.
    let missing = s.path("nope/nvcc");
    let (found, warnings) = find_nvcc_with(&env(&[("NVCC", &missing), ("CUDA_HOME", &home_dir)]));
    assert_eq!(found, Some(home));
    assert!(warnings[0].contains("is not a file"), "{warnings:?}");
}

#[test]
fn with_nvcc_every_source_is_compiled_to_out_dir_with_the_arch_and_args() {
    let s = Sandbox::new("nvcc-compile");
    s.write("kernels/b.cu", "b");
    s.write("kernels/a.cu", "a");
    s.write("kernels/common.cuh", "h");
    s.write("kernels/notes.txt", "not a source");
    let nvcc = s.fake_nvcc("bin");
    let out_dir = s.path("out");
    let mut lines = Vec::new();
    let compiled = PtxBuild::new()
        .dir(s.path("kernels"))
        .arch("compute_80")
        .arg("-O3")
        .compile_with(&env(&[("NVCC", &nvcc), ("OUT_DIR", &out_dir)]), &mut lines)
        .unwrap();
    let names: Vec<_> = compiled
        .iter()
        .map(|c| c.ptx.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a.ptx", "b.ptx"]);
    for c in &compiled {
        assert_eq!(
            c.origin,
            Origin::Nvcc("Cuda compilation tools, release 12.4, V12.4.131".into())
        );
        assert_eq!(std::fs::read_to_string(&c.ptx).unwrap(), "// from bin\n");
    }
    let log = std::fs::read_to_string(s.path("nvcc.log")).unwrap();
    assert!(
        log.lines()
            .all(|l| l.starts_with("-ptx -arch=compute_80 -O3 ")),
        "{log}"
    );
    let text = String::from_utf8(lines).unwrap();
    for needle in [
        "cargo:rerun-if-env-changed=NVCC",
        "cargo:rerun-if-env-changed=CUDA_HOME",
        "cargo:rerun-if-env-changed=CUDA_PATH",
        "cargo:rerun-if-env-changed=PATH",
        "common.cuh",
        "a.cu",
        "b.cu",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(
        !text.contains("notes.txt") && !text.contains("warning"),
        "{text}"
    );
}

#[test]
fn without_nvcc_the_committed_ptx_is_used_with_a_warning() {
    let s = Sandbox::new("nvcc-fallback");
    let src = s.write("k/saxpy.cu", "src");
    s.write("k/saxpy.ptx", ".version 7.0 // committed");
    let out_dir = s.path("out");
    let mut lines = Vec::new();
    let compiled = PtxBuild::new()
        .file(&src)
        .out_dir(&out_dir)
        .compile_with(&env(&[("PATH", &s.path("empty"))]), &mut lines)
        .unwrap();
    assert_eq!(compiled.len(), 1);
    assert_eq!(compiled[0].origin, Origin::Committed);
    assert_eq!(compiled[0].ptx, out_dir.join("saxpy.ptx"));
    assert_eq!(
        std::fs::read_to_string(&compiled[0].ptx).unwrap(),
        ".version 7.0 // committed"
    );
    let text = String::from_utf8(lines).unwrap();
    assert!(text.contains("cargo:warning=nvcc not found"), "{text}");
    assert!(text.contains("saxpy.ptx"), "{text}");

    // No committed PTX either: an error that says both ways out.
    let lone = s.write("k/lone.cu", "src");
    let e = PtxBuild::new()
        .file(&lone)
        .out_dir(&out_dir)
        .compile_with(&env(&[]), &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, BuildError::NoPtx { .. }));
    let text = format!("{e:?}"); // what `unwrap()` in a build script shows
    assert!(
        text.contains("set NVCC") && text.contains("lone.ptx"),
        "{text}"
    );
}

#[test]
fn nvcc_failures_and_missing_out_dir_are_reported() {
    let s = Sandbox::new("nvcc-fail");
    let src = s.write("k/fail.cu", "bad");
    let nvcc = s.fake_nvcc("bin");
    let e = PtxBuild::new()
        .file(&src)
        .out_dir(s.path("out"))
        .compile_with(&env(&[("NVCC", &nvcc)]), &mut Vec::new())
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, BuildError::NvccFailed { .. }), "{text}");
    assert!(
        text.contains("error: syntax") && text.contains("fail.cu"),
        "{text}"
    );

    let e = PtxBuild::new()
        .file(&src)
        .compile_with(&env(&[("NVCC", &nvcc)]), &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, BuildError::NoOutDir), "{e}");
    assert_eq!(DEFAULT_ARCH, "compute_75");
    // Nothing to compile is a warning, not an error.
    let mut lines = Vec::new();
    assert!(PtxBuild::new()
        .dir(s.path("no-such-dir"))
        .compile_with(&env(&[]), &mut lines)
        .unwrap()
        .is_empty());
    assert!(String::from_utf8(lines).unwrap().contains("no .cu source"));
}
