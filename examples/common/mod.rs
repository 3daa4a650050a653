//! Shared by the producer and consumer examples: options, and the values both sides agree on.
//! [`frames`] serves the channel examples (frame_publisher, frame_subscriber).
#![allow(dead_code)]

pub mod frames;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{Descriptor, Transport, DESCRIPTOR_LEN};
use cuda_ipc::{Error, GpuUuid, Result};

/// The rendezvous directory when neither `--dir` nor `CUDA_IPC_DIR` is given.
pub const DEFAULT_DIR: &str = "/tmp/cuda-ipc-demo";
/// The marker file the producer writes once every buffer is published (a readiness probe
/// in Kubernetes checks for it).
pub const READY_MARKER: &str = "producer.ready";

/// The pattern seed of the buffer owned by the GPU with this UUID: both sides derive it from
/// the descriptor, so nothing else needs to be shared.
pub fn seed_for(uuid: &GpuUuid) -> u32 {
    uuid.0.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// What each consumer adds to every word (atomically): the producer expects
/// `pattern + consumers * ADD`.
pub const ADD: u32 = 0x0001_0001;

/// Command-line options of both examples.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub transport: Transport,
    pub size_mib: usize,
    pub gpus: Option<Vec<usize>>,
    pub timeout: Duration,
    pub consumers: usize,
    pub import_on: Option<usize>,
    /// `--group GID`: share through this group (producer: ExportOptions::group and
    /// AllowedUsers::Group; consumer: ImportOptions::group).
    pub group: Option<u32>,
    /// `--trust-uid UID` (consumer): the producer's uid, when it is another user.
    pub trust_uids: Vec<u32>,
}

pub fn usage(program: &str) -> String {
    let producer = program == "producer";
    let mut s = format!("Usage: {program} [OPTIONS]\n\nOptions:\n");
    s += &format!(
        "  --dir DIR            rendezvous directory (default: $CUDA_IPC_DIR, else {DEFAULT_DIR})\n"
    );
    if producer {
        s += "  --transport T        auto | fd | legacy (default: auto)\n";
        s += "  --size MIB           buffer size per GPU in MiB (default: 64)\n";
        s += "  --gpus LIST          all | 0,1,... (default: all)\n";
        s += "  --consumers N        consumers to wait for (default: 1)\n";
    } else {
        s += "  --import-on N        map every buffer on GPU N (default: its owner GPU)\n";
        s += "  --trust-uid UID      the producer's uid, when it runs as another user\n";
    }
    s += "  --group GID          share through this group (pods of other uids: fsGroup)\n";
    s += "  --timeout SECS       how long to wait for the other side (default: 60)\n";
    s += "  -h, --help           this help\n";
    s
}

/// Parses `std::env::args()`; on `--help` prints usage and exits 0, on a bad option prints
/// the problem and usage and exits 2.
pub fn parse(program: &str) -> Options {
    let mut o = Options {
        dir: std::env::var_os("CUDA_IPC_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
        transport: Transport::Auto,
        size_mib: 64,
        gpus: None,
        timeout: Duration::from_secs(60),
        consumers: 1,
        import_on: None,
        group: None,
        trust_uids: Vec::new(),
    };
    let fail = |msg: String| -> ! {
        eprintln!("{program}: {msg}\n\n{}", usage(program));
        std::process::exit(2)
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{}", usage(program));
                std::process::exit(0)
            }
            "--dir" => o.dir = PathBuf::from(value("--dir")),
            "--transport" => {
                let v = value("--transport");
                o.transport = Transport::parse(&v)
                    .unwrap_or_else(|| fail(format!("unknown transport {v:?} (auto, fd, legacy)")))
            }
            "--size" => {
                let v = value("--size");
                o.size_mib = v.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                    fail(format!("--size takes a positive number of MiB, not {v:?}"))
                })
            }
            "--gpus" => {
                let v = value("--gpus");
                o.gpus = if v == "all" {
                    None
                } else {
                    Some(
                        v.split(',')
                            .map(|x| {
                                x.trim().parse().unwrap_or_else(|_| {
                                    fail(format!("--gpus takes all or a list like 0,1, not {v:?}"))
                                })
                            })
                            .collect(),
                    )
                }
            }
            "--timeout" => {
                let v = value("--timeout");
                o.timeout = Duration::from_secs_f64(
                    v.parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0 && s.is_finite())
                        .unwrap_or_else(|| fail(format!("--timeout takes seconds, not {v:?}"))),
                )
            }
            "--consumers" => {
                let v = value("--consumers");
                o.consumers = v.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                    fail(format!("--consumers takes a positive number, not {v:?}"))
                })
            }
            "--import-on" => {
                let v = value("--import-on");
                o.import_on = Some(v.parse().unwrap_or_else(|_| {
                    fail(format!("--import-on takes a GPU ordinal, not {v:?}"))
                }))
            }
            "--group" | "--trust-uid" => {
                let v = value(&arg);
                let id: u32 = v
                    .parse()
                    .unwrap_or_else(|_| fail(format!("{arg} takes a numeric id, not {v:?}")));
                if arg == "--group" {
                    o.group = Some(id)
                } else {
                    o.trust_uids.push(id)
                }
            }
            other => fail(format!("unknown option {other:?}")),
        }
    }
    o
}

/// Prints warnings and errors logged through the `log` facade (cuda-ipc's diagnostics, e.g. a
/// failed release in a drop) to standard error: `ERROR cuda_ipc: dropping ...`. A real
/// program would install its own logger (env_logger, tracing, ...) instead.
pub fn init_logger() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                eprintln!("{} {}: {}", record.level(), record.target(), record.args());
            }
        }
        fn flush(&self) {}
    }
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Waits until `path` exists, polling with a growing interval (1 ms to 50 ms), for at most
/// `timeout`.
pub fn wait_for_file(path: &Path, timeout: Duration, what: &str) -> Result<()> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(1);
    loop {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("checking {}", path.display()), e)),
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Error::Timeout {
                what: format!(
                    "{what} to appear at {} (is the producer running?)",
                    path.display()
                ),
                waited: timeout,
            });
        }
        std::thread::sleep(interval.min(left));
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// Reads and decodes the descriptor file `path` (at most one descriptor's bytes are read, so
/// a longer file fails to decode instead of being read whole).
pub fn read_descriptor(path: &Path) -> Result<Descriptor> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(DESCRIPTOR_LEN as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::io(format!("reading the descriptor {}", path.display()), e))?;
    Ok(Descriptor::decode(&bytes)?)
}
