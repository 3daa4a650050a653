//! How a channel's two ends share the GPU, detected when they meet: on another GPU, on one GPU
//! through one MPS server, or on one GPU as two time-sliced contexts. (Both ends are always
//! two processes: a subscriber in its publisher's process is refused, as any self-import.)
//!
//! Measured on 1 × H200 (docs/benchmarks.md): two processes on one GPU without MPS are two GPU
//! contexts, which the GPU time-slices, so each hand-over from the publisher's context to a
//! subscriber's costs ~150 µs whatever carries the signal; under MPS (both processes clients of
//! one MPS server, hence one context) it costs a few µs, as across GPUs. Each end reports, in
//! its own control page, its GPU's UUID, whether the driver routes its contexts through MPS
//! (`CU_DEVICE_ATTRIBUTE_MPS_ENABLED`, which the driver answers per process: 1 in a client of
//! an MPS server, verified on 1 × H200 with driver 580), and which MPS server (the pipe
//! directory's identity); each reads the other's. A peer lying about these changes only
//! what the stats and the one warning say: nothing else depends on them.
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::context::Context;

use super::protocol::ReadWords;

/// Words of one end's report in a control page.
pub const INFO_WORDS: usize = 5;

/// The upper half of the report's first word: "MPSi" (the lower half says MPS on/off).
const INFO_MAGIC: u64 = (u32::from_le_bytes(*b"MPSi") as u64) << 32;
const MPS_UNKNOWN: u64 = 0;
const MPS_OFF: u64 = 1;
const MPS_ON: u64 = 2;

/// The message of the one warning each end of a same-GPU channel without MPS logs.
pub const WARNING: &str = "same GPU without MPS: expect ~150 µs per hand-over; see \
                           deploy/k8s/overlays/mps and docs/deploy.md (or run \
                           nvidia-cuda-mps-control -d on the host)";

/// How a subscriber and its publisher share the GPU, as the two ends reported it when they met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SharingMode {
    /// Not known (yet): the other end has not reported, or its driver predates
    /// `CU_DEVICE_ATTRIBUTE_MPS_ENABLED`.
    #[default]
    Unknown,
    /// Different GPUs (peer access, e.g. NVLink): no GPU time-slicing between the two.
    OtherGpu,
    /// One GPU, both ends clients of the same MPS server: one shared context, hand-overs of a
    /// few µs.
    SameGpuMps,
    /// One GPU, two processes not sharing an MPS server: the GPU time-slices between their
    /// contexts, ~150 µs per hand-over (1 × H200). Run MPS for this case.
    SameGpuWithoutMps,
}

impl SharingMode {
    /// Whether this is the slow case the warning is about.
    pub fn is_time_sliced(self) -> bool {
        self == SharingMode::SameGpuWithoutMps
    }
}

/// What one end reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndInfo {
    pub uuid: [u8; 16],
    /// `CU_DEVICE_ATTRIBUTE_MPS_ENABLED` in that process (`None`: the driver does not say).
    pub mps: Option<bool>,
    /// Which MPS server: the identity (device, inode) of its pipe directory, 0 if unknown.
    pub mps_server: u64,
}

/// The MPS pipe directory this process's clients use: `CUDA_MPS_PIPE_DIRECTORY`, else the
/// driver's default `/tmp/nvidia-mps`.
pub(crate) fn mps_pipe_directory() -> std::path::PathBuf {
    std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| "/tmp/nvidia-mps".into())
}

/// The identity of the MPS server this process uses: its pipe directory's (device, inode),
/// mixed into one nonzero word; the same directory mounted into two pods has the same one.
fn mps_server_id() -> u64 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(mps_pipe_directory()) {
        Ok(m) => (m.dev().rotate_left(32) ^ m.ino().wrapping_mul(0x9e37_79b9_7f4a_7c15)).max(1),
        Err(_) => 0,
    }
}

impl EndInfo {
    /// This process's report for `ctx`'s GPU (a few driver queries: once per channel end).
    pub fn of(ctx: &Context) -> EndInfo {
        let device = ctx.device();
        let mps = device.mps_enabled();
        EndInfo {
            uuid: device.uuid().map(|u| u.0).unwrap_or([0; 16]),
            mps,
            mps_server: if mps == Some(true) {
                mps_server_id()
            } else {
                0
            },
        }
    }

    /// Writes the report at `words[at..at + INFO_WORDS]`, its first word (which makes it
    /// valid) last.
    pub fn store(&self, words: &[AtomicU64], at: usize) {
        let Some(w) = words.get(at..at + INFO_WORDS) else {
            return;
        };
        let (lo, hi) = self.uuid.split_at(8);
        w[1].store(u64::from_le_bytes(lo.try_into().expect("8 bytes")), SeqCst);
        w[2].store(u64::from_le_bytes(hi.try_into().expect("8 bytes")), SeqCst);
        w[3].store(self.mps_server, SeqCst);
        w[4].store(0, SeqCst); // reserved
        let mps = match self.mps {
            None => MPS_UNKNOWN,
            Some(false) => MPS_OFF,
            Some(true) => MPS_ON,
        };
        w[0].store(INFO_MAGIC | mps, SeqCst);
    }

    /// The report at `at` (`None` until one is written, or if the words are not one).
    pub fn load<W: ReadWords + ?Sized>(words: &W, at: usize) -> Option<EndInfo> {
        let head = words.load(at);
        if head & !0xffff_ffff != INFO_MAGIC {
            return None;
        }
        let mps = match head & 0xffff_ffff {
            MPS_OFF => Some(false),
            MPS_ON => Some(true),
            _ => None,
        };
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&words.load(at + 1).to_le_bytes());
        uuid[8..].copy_from_slice(&words.load(at + 2).to_le_bytes());
        Some(EndInfo {
            uuid,
            mps,
            mps_server: words.load(at + 3),
        })
    }
}

/// How `mine` and `theirs` share the GPU (see [`SharingMode`]).
pub(crate) fn sharing(mine: &EndInfo, theirs: Option<&EndInfo>) -> SharingMode {
    let Some(theirs) = theirs else {
        return SharingMode::Unknown;
    };
    if mine.uuid == [0; 16] || theirs.uuid == [0; 16] {
        return SharingMode::Unknown;
    }
    if mine.uuid != theirs.uuid {
        return SharingMode::OtherGpu;
    }
    match (mine.mps, theirs.mps) {
        (Some(true), Some(true)) => {
            // Two MPS servers on one GPU time-slice like two plain contexts.
            let known = mine.mps_server != 0 && theirs.mps_server != 0;
            if known && mine.mps_server != theirs.mps_server {
                SharingMode::SameGpuWithoutMps
            } else {
                SharingMode::SameGpuMps
            }
        }
        (Some(false), _) | (_, Some(false)) => SharingMode::SameGpuWithoutMps,
        _ => SharingMode::Unknown,
    }
}

/// The one warning of a channel end that found itself time-sliced with the other (`who`:
/// which end, and the channel).
pub(crate) fn warn_time_sliced(who: &str) {
    log::warn!(target: "cuda_ipc", "{who}: {WARNING}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(gpu: u8, mps: Option<bool>, server: u64) -> EndInfo {
        EndInfo {
            uuid: [gpu; 16],
            mps,
            mps_server: server,
        }
    }

    #[test]
    fn each_way_of_sharing_is_told_apart() {
        let me = end(1, Some(false), 0);
        assert_eq!(sharing(&me, None), SharingMode::Unknown);
        assert_eq!(
            sharing(&me, Some(&end(2, Some(false), 0))),
            SharingMode::OtherGpu
        );
        assert_eq!(
            sharing(&me, Some(&end(1, Some(false), 0))),
            SharingMode::SameGpuWithoutMps
        );
        // Only one of the two is an MPS client: still two contexts.
        assert_eq!(
            sharing(&end(1, Some(true), 5), Some(&end(1, Some(false), 0))),
            SharingMode::SameGpuWithoutMps
        );
        assert_eq!(
            sharing(&end(1, Some(true), 5), Some(&end(1, Some(true), 5))),
            SharingMode::SameGpuMps
        );
        // Both MPS clients, server identity unknown on one side: taken as shared.
        assert_eq!(
            sharing(&end(1, Some(true), 0), Some(&end(1, Some(true), 5))),
            SharingMode::SameGpuMps
        );
        // Two different MPS servers on one GPU time-slice.
        assert_eq!(
            sharing(&end(1, Some(true), 5), Some(&end(1, Some(true), 6))),
            SharingMode::SameGpuWithoutMps
        );
        // A driver that cannot say: unknown, no warning.
        assert_eq!(
            sharing(&end(1, None, 0), Some(&end(1, Some(true), 5))),
            SharingMode::Unknown
        );
        assert!(SharingMode::SameGpuWithoutMps.is_time_sliced());
        assert!(!SharingMode::SameGpuMps.is_time_sliced());
    }

    #[test]
    fn a_report_round_trips_through_a_page_and_junk_is_no_report() {
        let words: Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(EndInfo::load(&words, 3), None, "nothing written yet");
        let info = EndInfo {
            uuid: *b"0123456789abcdef",
            mps: Some(true),
            mps_server: 0xfeed,
        };
        info.store(&words, 3);
        assert_eq!(EndInfo::load(&words, 3), Some(info));
        for mps in [None, Some(false)] {
            let other = EndInfo { mps, ..info };
            other.store(&words, 3);
            assert_eq!(EndInfo::load(&words, 3), Some(other));
        }
        // A peer writing junk gets no report (Unknown), and odd MPS values read as unknown.
        words[3].store(u64::MAX, SeqCst);
        assert_eq!(EndInfo::load(&words, 3), None);
        words[3].store(INFO_MAGIC | 77, SeqCst);
        assert_eq!(EndInfo::load(&words, 3).map(|i| i.mps), Some(None));
        // Out of the page: nothing is written, nothing panics.
        info.store(&words, 14);
        assert_eq!(words[14].load(SeqCst), 0);
    }
}
