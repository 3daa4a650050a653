//! The hello a peer opens every connection with: the protocol version, the buffer it expects
//! (the id and generation of the descriptor it read; none for a channel subscriber) and the
//! name it asked for. A socket renamed (or linked) into another name refuses its peers instead
//! of serving them another buffer or channel, and an exporter whose buffer is not the one the
//! consumer read answers so before it grants a lease (a consumer that would have let go of an
//! unexpected buffer at once never counts as one that used it).
//!
//! Layout (little-endian): version (u32), expected buffer id (16 bytes), expected generation
//! (u64) — all zero for "no expectation" — then the name's bytes.

use crate::ipc::rendezvous::MAX_NAME_LEN;

/// The protocol version a peer announces in its hello. Version 2: the hello names the name
/// and the buffer the peer asked for, and channel subscribers say hello too.
pub(crate) const PROTOCOL_VERSION: u32 = 2;

/// Bytes before the name.
const FIXED: usize = 4 + 16 + 8;

/// The buffer a consumer expects: the one its descriptor file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected {
    /// The descriptor's buffer id.
    pub buffer_id: [u8; 16],
    /// The descriptor's generation.
    pub generation: u64,
}

/// What a peer said in its hello (its name was checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The buffer it expects, if it read a descriptor.
    pub expect: Option<Expected>,
}

/// The hello's payload for `name`, expecting `expect`.
pub(crate) fn encode_hello(name: &str, expect: Option<Expected>) -> Vec<u8> {
    let mut out = PROTOCOL_VERSION.to_le_bytes().to_vec();
    let e = expect.unwrap_or(Expected {
        buffer_id: [0; 16],
        generation: 0,
    });
    out.extend_from_slice(&e.buffer_id);
    out.extend_from_slice(&e.generation.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Checks a hello's payload against the name this service serves; the error is what the peer
/// is told.
pub(crate) fn decode_hello(payload: &[u8], served: &str) -> Result<Hello, String> {
    let wrong_version = |what: String| {
        format!(
            "{what}; this service speaks protocol version {PROTOCOL_VERSION}: use the same \
             cuda-ipc version on both sides"
        )
    };
    let Some((version, rest)) = payload.split_first_chunk::<4>() else {
        return Err(wrong_version(format!("a hello of {} bytes", payload.len())));
    };
    let version = u32::from_le_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(wrong_version(format!("protocol version {version}")));
    }
    let Some((id, rest)) = rest.split_first_chunk::<16>() else {
        return Err(wrong_version(format!("a hello of {} bytes", payload.len())));
    };
    let Some((generation, name)) = rest.split_first_chunk::<8>() else {
        return Err(wrong_version(format!("a hello of {} bytes", payload.len())));
    };
    let generation = u64::from_le_bytes(*generation);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a hello naming {} bytes; a name has 1 to {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name != served.as_bytes() {
        return Err(format!(
            "this socket serves {served:?}, not {:?}: it was renamed or linked into another \
             name in the rendezvous directory; check who can write there",
            String::from_utf8_lossy(name)
        ));
    }
    let expect = (*id != [0; 16] || generation != 0).then_some(Expected {
        buffer_id: *id,
        generation,
    });
    Ok(Hello { expect })
}

const _: () = assert!(FIXED == 28);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_names_what_it_asks_for() {
        assert_eq!(
            decode_hello(&encode_hello("frames", None), "frames"),
            Ok(Hello { expect: None })
        );
        let e = Expected {
            buffer_id: [7; 16],
            generation: 3,
        };
        assert_eq!(
            decode_hello(&encode_hello("frames", Some(e)), "frames"),
            Ok(Hello { expect: Some(e) })
        );
        let other = decode_hello(&encode_hello("weights", None), "frames").unwrap_err();
        assert!(
            other.contains("serves \"frames\", not \"weights\""),
            "{other}"
        );
        let old = decode_hello(&1u32.to_le_bytes(), "frames").unwrap_err();
        assert!(old.contains("protocol version 1"), "{old}");
        for short in [&[2u8, 0][..], &encode_hello("frames", None)[..FIXED - 1]] {
            assert!(decode_hello(short, "frames").is_err());
        }
        assert!(decode_hello(&encode_hello("", None), "").is_err());
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(decode_hello(&encode_hello(&long, None), &long).is_err());
    }
}
