//! For your own `build.rs`: compile `.cu` files to PTX the way this crate compiles its kernels.
//!
//! nvcc is looked for in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, then `$PATH`; each
//! source becomes `OUT_DIR/<stem>.ptx` (`nvcc -ptx -arch=compute_75` by default). Without nvcc
//! the `.ptx` committed beside each source is copied instead, with a `cargo:warning`, so your
//! crate still builds on machines without the CUDA toolkit. Cargo is told to rerun the build
//! when a source or one of those variables changes.
//!
//! Add cuda-ipc to `[build-dependencies]` too, then in `build.rs`:
//!
//! ```no_run
//! // the body of build.rs's `fn main()`
//! cuda_ipc::build::PtxBuild::new()
//!     .dir("kernels") // every kernels/*.cu; .file("kernels/saxpy.cu") for one
//!     .arch("compute_80")
//!     .compile()
//!     .unwrap();
//! ```
//!
//! and in your crate:
//!
//! ```ignore
//! const SAXPY_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/saxpy.ptx"));
//! let module = cuda_ipc::Module::from_ptx(&ctx, SAXPY_PTX)?;
//! ```
//!
//! Commit the PTX beside each source (`nvcc -ptx -arch=compute_80 kernels/saxpy.cu -o
//! kernels/saxpy.ptx`) for the machines without nvcc. This file uses only `std`, so a build
//! script can also include it directly with `#[path = ".../build_support.rs"] mod build;`.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The virtual architecture [`PtxBuild`] compiles for unless told otherwise.
pub const DEFAULT_ARCH: &str = "compute_75";

/// The environment variables nvcc is looked for in, in order (`PATH` last).
pub const NVCC_VARS: [&str; 4] = ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"];

/// What went wrong in a build script.
pub enum BuildError {
    /// `OUT_DIR` is not set (not running under cargo) and no output folder was given.
    NoOutDir,
    /// nvcc ran and failed.
    NvccFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// nvcc was not found and there is no committed PTX to fall back on.
    NoPtx {
        /// The source.
        source: PathBuf,
        /// Where the committed PTX was expected.
        committed: PathBuf,
    },
    /// A file operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoOutDir => write!(
                f,
                "OUT_DIR is not set: run from a build script, or give PtxBuild::out_dir"
            ),
            BuildError::NvccFailed {
                command,
                status,
                stderr,
            } => write!(f, "nvcc failed ({status})\ncommand: {command}\n{stderr}"),
            BuildError::NoPtx { source, committed } => write!(
                f,
                "nvcc was not found (looked at $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, $PATH) and \
                 there is no committed PTX {} for {}: install the CUDA toolkit or set NVCC, or \
                 commit the PTX (nvcc -ptx -arch=... {} -o {})",
                committed.display(),
                source.display(),
                source.display(),
                committed.display()
            ),
            BuildError::Io { context, error } => write!(f, "{context}: {error}"),
        }
    }
}

// `build.rs` users `unwrap()`: show the readable text, not a struct dump.
impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BuildError {}

/// Where a compiled PTX came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled by nvcc, whose `release …` line (or `unknown`) is given.
    Nvcc(String),
    /// Copied from the `.ptx` committed beside the source.
    Committed,
}

/// One compiled source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The `.cu` file.
    pub source: PathBuf,
    /// The PTX written, `OUT_DIR/<stem>.ptx`.
    pub ptx: PathBuf,
    /// nvcc or the committed copy.
    pub origin: Origin,
}

/// nvcc as found through `var` (an environment lookup), in the order of [`NVCC_VARS`], with
/// the warnings to print (an `NVCC` that is not a file).
pub fn find_nvcc_with(var: &dyn Fn(&str) -> Option<OsString>) -> (Option<PathBuf>, Vec<String>) {
    let mut warnings = Vec::new();
    if let Some(nvcc) = var("NVCC") {
        let nvcc = PathBuf::from(nvcc);
        if nvcc.is_file() {
            return (Some(nvcc), warnings);
        }
        warnings.push(format!(
            "NVCC={} is not a file; looking elsewhere",
            nvcc.display()
        ));
    }
    for home in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = var(home) {
            let candidate = PathBuf::from(home).join("bin").join("nvcc");
            if candidate.is_file() {
                return (Some(candidate), warnings);
            }
        }
    }
    let on_path = var("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nvcc"))
            .find(|candidate| candidate.is_file())
    });
    (on_path, warnings)
}

/// nvcc as found in this process's environment.
pub fn find_nvcc() -> Option<PathBuf> {
    find_nvcc_with(&|k| std::env::var_os(k)).0
}

/// The `release X.Y, VX.Y.Z` line of `nvcc --version`, or `unknown`.
pub fn nvcc_version(nvcc: &Path) -> String {
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

/// Compiles `.cu` files to PTX in a build script (see the [module docs](self)).
#[derive(Debug, Clone, Default)]
pub struct PtxBuild {
    sources: Vec<PathBuf>,
    watch: Vec<PathBuf>,
    arch: Option<String>,
    args: Vec<String>,
    out_dir: Option<PathBuf>,
}

impl PtxBuild {
    /// No sources yet; architecture [`DEFAULT_ARCH`]; output in `OUT_DIR`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles this `.cu` file.
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        self.sources.push(path.as_ref().to_path_buf());
        self
    }

    /// Compiles every `*.cu` file of `dir` (sorted), and reruns when any `.cu` or `.cuh`
    /// there changes. A folder that cannot be read compiles nothing; `compile` then says so.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        self.watch.push(dir.to_path_buf());
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        for path in found {
            if path.extension().is_some_and(|e| e == "cu") {
                self.sources.push(path);
            } else {
                self.watch.push(path);
            }
        }
        self
    }

    /// The virtual architecture, e.g. `compute_80` (`-arch=`).
    pub fn arch(mut self, arch: impl Into<String>) -> Self {
        self.arch = Some(arch.into());
        self
    }

    /// An extra nvcc argument, e.g. `-O3` or `-Iinclude`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Where the PTX goes (default: `OUT_DIR`).
    pub fn out_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Compiles every source, printing cargo's `rerun-if-…` and `warning` lines on stdout.
    pub fn compile(&self) -> Result<Vec<Compiled>, BuildError> {
        let stdout = std::io::stdout();
        self.compile_with(&|k| std::env::var_os(k), &mut stdout.lock())
    }

    /// [`compile`](Self::compile) with the environment read through `var` and cargo's lines
    /// written to `out`.
    pub fn compile_with(
        &self,
        var: &dyn Fn(&str) -> Option<OsString>,
        out: &mut dyn Write,
    ) -> Result<Vec<Compiled>, BuildError> {
        let io = |context: String| move |error| BuildError::Io { context, error };
        let mut say = |line: String| {
            writeln!(out, "{line}").map_err(io("writing cargo's instructions".to_string()))
        };
        for name in NVCC_VARS {
            say(format!("cargo:rerun-if-env-changed={name}"))?;
        }
        for path in self.watch.iter().chain(&self.sources) {
            say(format!("cargo:rerun-if-changed={}", path.display()))?;
        }
        if self.sources.is_empty() {
            say("cargo:warning=cuda_ipc::build::PtxBuild: no .cu source to compile".into())?;
            return Ok(Vec::new());
        }
        let out_dir = self
            .out_dir
            .clone()
            .or_else(|| var("OUT_DIR").map(PathBuf::from))
            .ok_or(BuildError::NoOutDir)?;
        fs::create_dir_all(&out_dir).map_err(io(format!("creating {}", out_dir.display())))?;
        let arch = self.arch.as_deref().unwrap_or(DEFAULT_ARCH);
        let (nvcc, warnings) = find_nvcc_with(var);
        for w in warnings {
            say(format!("cargo:warning={w}"))?;
        }
        let version = nvcc.as_deref().map(nvcc_version);
        let mut compiled = Vec::new();
        for source in &self.sources {
            let stem = source.file_stem().unwrap_or_default().to_string_lossy();
            let ptx = out_dir.join(format!("{stem}.ptx"));
            let origin = match (&nvcc, &version) {
                (Some(nvcc), Some(version)) => {
                    let mut cmd = Command::new(nvcc);
                    cmd.arg("-ptx")
                        .arg(format!("-arch={arch}"))
                        .args(&self.args)
                        .arg(source)
                        .arg("-o")
                        .arg(&ptx);
                    let output = cmd
                        .output()
                        .map_err(io(format!("running {}", nvcc.display())))?;
                    if !output.status.success() {
                        return Err(BuildError::NvccFailed {
                            command: format!("{cmd:?}"),
                            status: output.status.to_string(),
                            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                        });
                    }
                    Origin::Nvcc(version.clone())
                }
                _ => {
                    let committed = source.with_extension("ptx");
                    if !committed.is_file() {
                        return Err(BuildError::NoPtx {
                            source: source.clone(),
                            committed,
                        });
                    }
                    fs::copy(&committed, &ptx).map_err(io(format!(
                        "copying {} to {}",
                        committed.display(),
                        ptx.display()
                    )))?;
                    say(format!(
                        "cargo:warning=nvcc not found (looked at $NVCC, $CUDA_HOME/bin, \
                         $CUDA_PATH/bin, $PATH): using the committed {}. Install the CUDA \
                         toolkit or set NVCC to rebuild it",
                        committed.display()
                    ))?;
                    Origin::Committed
                }
            };
            compiled.push(Compiled {
                source: source.clone(),
                ptx,
                origin,
            });
        }
        Ok(compiled)
    }
}
