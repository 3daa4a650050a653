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
    fn bytes_and_words_agree() {
        let words = [0xdead_beefu32, 7, 9];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(checksum_bytes(&bytes), Some(checksum_words(&words)));
        assert_eq!(checksum_bytes(&bytes[..5]), None);
    }
}
