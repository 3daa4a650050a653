//! What the publisher tells a subscriber when it joins (the `Welcome` message; the channel
//! page's fd travels with it, the subscriber's own page with the `Page` message after it).
use crate::ipc::{DescriptorError, DESCRIPTOR_LEN};

use super::layout::{MAX_SEQ, MAX_SLOTS, MAX_SUBSCRIBERS};
use super::Policy;

/// Largest element accepted (a descriptor records element sizes in 32 bits).
pub const MAX_ELEM_SIZE: usize = u32::MAX as usize;
/// Most elements in a frame (and in a slot's stride).
pub const MAX_FRAME_LEN: usize = 1 << 40;

/// Version of the welcome's layout.
pub const WELCOME_VERSION: u64 = 1;
const WORDS: usize = 13;
/// Bytes of an encoded welcome.
pub const WELCOME_LEN: usize = WORDS * 8 + DESCRIPTOR_LEN;

/// The channel's configuration and where the subscriber starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Slots in the pool.
    pub slots: usize,
    /// Most subscribers at once.
    pub max_subscribers: usize,
    /// The channel's policy.
    pub policy: Policy,
    /// Elements of a frame.
    pub frame_len: usize,
    /// Elements from one slot's start to the next's.
    pub stride: usize,
    /// Bytes of an element.
    pub elem_size: usize,
    /// The element type's tag (as in the pool's descriptor).
    pub type_tag: u64,
    /// Most samples a subscriber may hold at once.
    pub max_held: usize,
    /// This subscriber's id (unique in the publisher's life).
    pub id: u64,
    /// The newest frame still in a slot when it joined (0: none).
    pub newest: u64,
    /// `ANNOUNCED` when it joined.
    pub announced: u64,
    /// A random id of this publisher instance.
    pub instance: u64,
    /// The pool's descriptor, encoded: the buffer to import under `<name>.pool`.
    pub pool: [u8; DESCRIPTOR_LEN],
}

impl Welcome {
    /// Encodes (little-endian words, then the descriptor).
    pub fn encode(&self) -> Vec<u8> {
        let words: [u64; WORDS] = [
            WELCOME_VERSION,
            self.slots as u64,
            self.max_subscribers as u64,
            match self.policy {
                Policy::Block => 0,
                Policy::DropOldest => 1,
            },
            self.frame_len as u64,
            self.stride as u64,
            self.elem_size as u64,
            self.type_tag,
            self.max_held as u64,
            self.id,
            self.newest,
            self.announced,
            self.instance,
        ];
        let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.extend_from_slice(&self.pool);
        out
    }

    /// Decodes and checks every field; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Welcome, String> {
        if bytes.len() != WELCOME_LEN {
            return Err(format!(
                "a welcome of {} bytes (expected {WELCOME_LEN})",
                bytes.len()
            ));
        }
        let w = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
        if w(0) != WELCOME_VERSION {
            return Err(format!(
                "welcome version {} (this build speaks {WELCOME_VERSION}): use the same \
                 cuda-ipc version on both sides",
                w(0)
            ));
        }
        let small = |i: usize, what: &str, max: u64| -> Result<usize, String> {
            let v = w(i);
            if v == 0 || v > max {
                return Err(format!("{what} {v} is out of range 1..={max}"));
            }
            Ok(v as usize)
        };
        let slots = small(1, "slots", MAX_SLOTS as u64)?;
        let max_subscribers = small(2, "max_subscribers", MAX_SUBSCRIBERS as u64)?;
        let policy = match w(3) {
            0 => Policy::Block,
            1 => Policy::DropOldest,
            p => return Err(format!("unknown policy {p}")),
        };
        let frame_len = small(4, "frame_len", MAX_FRAME_LEN as u64)?;
        let stride = small(5, "stride", MAX_FRAME_LEN as u64)?;
        if stride < frame_len {
            return Err(format!(
                "stride {stride} is shorter than a frame ({frame_len})"
            ));
        }
        let elem_size = small(6, "element size", MAX_ELEM_SIZE as u64)?;
        let max_held = small(8, "max_held", MAX_SLOTS as u64)?;
        let (newest, announced) = (w(10), w(11));
        // Frame numbers a subscriber's GPU will wait for: past MAX_SEQ no released word would
        // let the wait through (see MAX_SEQ).
        if announced > MAX_SEQ {
            return Err(format!(
                "announced frame {announced} is past the largest frame number a channel \
                 reaches ({MAX_SEQ})"
            ));
        }
        if newest > announced {
            return Err(format!(
                "newest frame {newest} is after the last announced one ({announced})"
            ));
        }
        let mut pool = [0u8; DESCRIPTOR_LEN];
        pool.copy_from_slice(&bytes[WORDS * 8..]);
        Ok(Welcome {
            slots,
            max_subscribers,
            policy,
            frame_len,
            stride,
            elem_size,
            type_tag: w(7),
            max_held,
            id: w(9),
            newest,
            announced,
            instance: w(12),
            pool,
        })
    }
}

/// Checks that the pool's descriptor matches the welcome (same instance's buffer).
pub fn same_pool(
    welcome: &Welcome,
    imported: &[u8; DESCRIPTOR_LEN],
) -> Result<(), DescriptorError> {
    if &welcome.pool == imported {
        Ok(())
    } else {
        Err(DescriptorError::Inconsistent(
            "the pool published under <name>.pool is not the one this channel's publisher \
             announced (it restarted in between): subscribe again"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Welcome {
        Welcome {
            slots: 8,
            max_subscribers: 16,
            policy: Policy::DropOldest,
            frame_len: 1000,
            stride: 1024,
            elem_size: 4,
            type_tag: 77,
            max_held: 2,
            id: 3,
            newest: 5,
            announced: 6,
            instance: 0xfeed,
            pool: [7; DESCRIPTOR_LEN],
        }
    }

    #[test]
    fn a_welcome_round_trips() {
        let w = example();
        assert_eq!(Welcome::decode(&w.encode()).unwrap(), w);
    }

    #[test]
    fn a_welcome_for_large_elements_that_publisher_create_accepts_decodes() {
        // `Publisher::create` accepts any non-empty `T: Pod`; a natural one is a whole frame
        // as one element (`Publisher::<[u8; 3840 * 2160 * 4]>`, frame_len 1). Its subscribers
        // must not be told that the *publisher* broke the protocol ("element size ... out of
        // range"): either create refuses such a type with a clear error, or decode accepts it.
        let frame = Welcome {
            elem_size: 3840 * 2160 * 4,
            frame_len: 1,
            stride: 1,
            ..example()
        };
        let decoded = Welcome::decode(&frame.encode());
        assert_eq!(
            decoded,
            Ok(frame),
            "every subscriber refuses a channel that Publisher::create made"
        );
    }

    #[test]
    fn every_bad_field_is_refused_without_panicking() {
        let good = example().encode();
        assert!(Welcome::decode(&good[..good.len() - 1]).is_err());
        for word in 0..WORDS {
            for value in [0u64, u64::MAX, 65, 1 << 40] {
                let mut b = good.clone();
                b[word * 8..word * 8 + 8].copy_from_slice(&value.to_le_bytes());
                let _ = Welcome::decode(&b); // never panics
            }
        }
        let mut b = good.clone();
        b[8..16].copy_from_slice(&65u64.to_le_bytes());
        assert!(Welcome::decode(&b).unwrap_err().contains("slots"));
        let mut b = good.clone();
        b[40..48].copy_from_slice(&10u64.to_le_bytes());
        assert!(Welcome::decode(&b).unwrap_err().contains("stride"));
        let mut b = good;
        b[80..88].copy_from_slice(&9u64.to_le_bytes());
        assert!(Welcome::decode(&b).unwrap_err().contains("newest"));
    }

    #[test]
    fn frame_numbers_past_max_seq_are_refused() {
        // A fake publisher announcing 2^63 would have its subscriber queue a GPU wait that no
        // value it can store releases (the GPU's comparison is cyclic).
        let at = |newest: u64, announced: u64| {
            let mut w = example();
            w.newest = newest;
            w.announced = announced;
            Welcome::decode(&w.encode())
        };
        for (newest, announced) in [
            (0, MAX_SEQ + 1),
            (1 << 63, 1 << 63),
            (5, 1 << 63),
            (0, u64::MAX),
            (u64::MAX, u64::MAX),
            ((1 << 63) | 5, (1 << 63) | 5),
        ] {
            let err = at(newest, announced).unwrap_err();
            assert!(
                err.contains("announced frame") && err.contains("largest frame number"),
                "{newest:#x}/{announced:#x}: {err}"
            );
        }
        // Up to MAX_SEQ is fine.
        let w = at(MAX_SEQ, MAX_SEQ).unwrap();
        assert_eq!((w.newest, w.announced), (MAX_SEQ, MAX_SEQ));
        assert!(at(MAX_SEQ + 1, MAX_SEQ).is_err(), "newest after announced");
    }
}
