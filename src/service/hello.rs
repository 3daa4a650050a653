//! The hello a peer opens every connection with: the protocol version and the name it asked
//! for, so that a socket renamed (or linked) into another name refuses its peers instead of
//! serving them another buffer or channel.

use crate::ipc::rendezvous::MAX_NAME_LEN;

/// The protocol version a peer announces in its hello. Version 2: the hello names the name
/// the peer asked for, and channel subscribers say hello too.
pub(crate) const PROTOCOL_VERSION: u32 = 2;

/// The hello's payload: the version (u32, little-endian), then the name's bytes.
pub(crate) fn encode_hello(name: &str) -> Vec<u8> {
    let mut out = PROTOCOL_VERSION.to_le_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

/// Checks a hello's payload against the name this service serves; the error is what the peer
/// is told.
pub(crate) fn decode_hello(payload: &[u8], served: &str) -> Result<(), String> {
    let Some((version, name)) = payload.split_first_chunk::<4>() else {
        return Err(format!(
            "a hello of {} bytes; this service speaks protocol version {PROTOCOL_VERSION}: use \
             the same cuda-ipc version on both sides",
            payload.len()
        ));
    };
    let version = u32::from_le_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version}; this service speaks version {PROTOCOL_VERSION}: use \
             the same cuda-ipc version on both sides"
        ));
    }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_names_what_it_asks_for() {
        assert_eq!(decode_hello(&encode_hello("frames"), "frames"), Ok(()));
        let other = decode_hello(&encode_hello("weights"), "frames").unwrap_err();
        assert!(
            other.contains("serves \"frames\", not \"weights\""),
            "{other}"
        );
        let old = decode_hello(&1u32.to_le_bytes(), "frames").unwrap_err();
        assert!(old.contains("protocol version 1"), "{old}");
        assert!(decode_hello(&[2, 0], "frames").is_err());
        assert!(decode_hello(&encode_hello(""), "").is_err());
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(decode_hello(&encode_hello(&long), &long).is_err());
    }
}
