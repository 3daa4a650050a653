//! CPU references of the kernels: the same values, computed on the host.
//!
//! A producer and a consumer in different processes agree on data without sharing anything
//! but a seed: one fills with [`pattern_word`] on the GPU, the other compares the GPU digest
//! with [`pattern_checksum`].
//!
//! ```
//! use cuda_ipc::kernels::reference::*;
//! let words: Vec<u32> = (0..1000).map(|i| pattern_word(9, i)).collect();
//! assert_eq!(checksum_words(&words), pattern_checksum(9, 1000));
//! ```

const GOLDEN64: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser, as the kernels use it.
pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The word `fill_pattern` writes at `index` for `seed`.
pub fn pattern_word(seed: u32, index: u64) -> u32 {
    mix64(((seed as u64) << 32) ^ index.wrapping_mul(GOLDEN64).wrapping_add(1)) as u32
}

/// One term of the digest: `word` at `index`.
pub fn digest_term(word: u32, index: u64) -> u64 {
    mix64(word as u64 ^ index.wrapping_mul(GOLDEN64))
}

/// The digest `checksum` computes: the wrapping sum of [`digest_term`] over all words.
pub fn checksum_words(words: &[u32]) -> u64 {
    words.iter().enumerate().fold(0u64, |acc, (i, &w)| {
        acc.wrapping_add(digest_term(w, i as u64))
    })
}

/// The digest of a byte buffer read as little-endian words (its length must be a multiple of 4).
pub fn checksum_bytes(bytes: &[u8]) -> Option<u64> {
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(bytes.chunks_exact(4).enumerate().fold(0u64, |acc, (i, c)| {
        let w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        acc.wrapping_add(digest_term(w, i as u64))
    }))
}

/// What `transform_words` makes of `word` with `key`.
pub fn transform_word(word: u32, key: u32) -> u32 {
    word.wrapping_mul(0x9E37_79B1).wrapping_add(key)
}

/// What `add_words_atomic` makes of `word` with `value`.
pub fn add_word(word: u32, value: u32) -> u32 {
    word.wrapping_add(value)
}

/// The digest of the pattern of `seed` after `add_words_atomic` with `value`.
pub fn added_pattern_checksum(seed: u32, value: u32, words: u64) -> u64 {
    (0..words).fold(0u64, |acc, i| {
        acc.wrapping_add(digest_term(add_word(pattern_word(seed, i), value), i))
    })
}

/// What `scale_add_f32` makes of `x`: one fused multiply-add, as on the GPU.
pub fn scale_add_f32(x: f32, a: f32, b: f32) -> f32 {
    a.mul_add(x, b)
}

/// The word `fill_frame` writes at `index` of frame `seq`, and `verify_frame` expects:
/// `mix64((seq * GOLDEN64) ^ (index + 0x51ED270B27)) as u32` (wrapping). For each frame it
/// is a bijection of the index, and two frames agree at a position only by chance (about one
/// word in 2^32), so a stale or torn frame shows as almost every word wrong.
pub fn frame_word(seq: u64, index: u64) -> u32 {
    mix64(seq.wrapping_mul(GOLDEN64) ^ index.wrapping_add(0x51_ED27_0B27)) as u32
}

/// The first `words` words of frame `seq`, as `fill_frame` writes them.
pub fn frame_words(seq: u64, words: u64) -> Vec<u32> {
    (0..words).map(|i| frame_word(seq, i)).collect()
}

/// What `verify_frame` adds to its counter for `words` checked as frame `seq`: the number of
/// words that differ from [`frame_word`].
pub fn frame_errors(words: &[u32], seq: u64) -> u64 {
    words
        .iter()
        .enumerate()
        .filter(|&(i, &w)| w != frame_word(seq, i as u64))
        .count() as u64
}

/// The digest of `words` words of the pattern of `seed`.
pub fn pattern_checksum(seed: u32, words: u64) -> u64 {
    (0..words).fold(0u64, |acc, i| {
        acc.wrapping_add(digest_term(pattern_word(seed, i), i))
    })
}

/// The digest of the pattern of `seed` after `transform_words` with `key`.
pub fn transformed_pattern_checksum(seed: u32, key: u32, words: u64) -> u64 {
    (0..words).fold(0u64, |acc, i| {
        acc.wrapping_add(digest_term(transform_word(pattern_word(seed, i), key), i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_seed_dependent() {
        assert_eq!(pattern_word(1, 5), pattern_word(1, 5));
        assert_ne!(pattern_word(1, 5), pattern_word(2, 5));
        assert_ne!(pattern_word(1, 5), pattern_word(1, 6));
    }

    #[test]
    fn digest_depends_on_position() {
        assert_ne!(checksum_words(&[1, 2]), checksum_words(&[2, 1]));
        assert_eq!(checksum_words(&[]), 0);
    }

    #[test]
    fn transform_is_invertible() {
        // 0x9E3779B1 is odd, so multiplication by it is a bijection mod 2^32.
        let words: std::collections::HashSet<u32> =
            (0..10_000u32).map(|w| transform_word(w, 17)).collect();
        assert_eq!(words.len(), 10_000);
    }

    #[test]
    fn frame_words_are_deterministic_and_differ_between_frames() {
        assert_eq!(frame_word(3, 10), frame_word(3, 10));
        assert_eq!(frame_words(3, 4)[2], frame_word(3, 2));
        // Pinned values: the kernel in kernels/cuda_ipc.cu must produce exactly these.
        assert_eq!(
            frame_word(0, 0),
            mix64(0x51_ED27_0B27) as u32,
            "seq 0 is mix64 of the index offset"
        );
        let a = frame_words(1, 4096);
        let b = frame_words(2, 4096);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(
            same <= 1,
            "{same} of 4096 words agree between frames 1 and 2"
        );
        // Consecutive frames and large sequence numbers too.
        assert_ne!(frame_word(u64::MAX, 0), frame_word(u64::MAX - 1, 0));
        assert_ne!(frame_word(7, 0), frame_word(7, 1));
    }

    #[test]
    fn frame_words_are_a_bijection_of_the_index() {
        let words: std::collections::HashSet<u32> = frame_words(42, 100_000).into_iter().collect();
        // mix64 is a bijection on u64; truncated to 32 bits collisions are possible but rare.
        assert!(words.len() >= 99_990, "{} distinct of 100000", words.len());
    }

    #[test]
    fn frame_errors_counts_every_wrong_word() {
        let mut words = frame_words(5, 1000);
        assert_eq!(frame_errors(&words, 5), 0);
        words[0] ^= 1;
        words[999] = words[999].wrapping_add(1);
        assert_eq!(frame_errors(&words, 5), 2);
        // A whole stale frame: (almost) every word is wrong.
        assert!(frame_errors(&frame_words(4, 1000), 5) >= 999);
    }

    #[test]
    fn bytes_and_words_agree() {
        let words = [0xdead_beefu32, 7, 9];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(checksum_bytes(&bytes), Some(checksum_words(&words)));
        assert_eq!(checksum_bytes(&bytes[..5]), None);
    }
}
