//! Fuzzes the descriptor decoder: any bytes must give Ok or a typed error, never a panic, and
//! whatever decodes must encode back to the same bytes.
//!
//!     cargo install cargo-fuzz && cargo +nightly fuzz run descriptor
#![no_main]

use cuda_ipc::ipc::{Descriptor, TypeTag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Descriptor::decode(data) {
        assert_eq!(&d.encode()[..], data);
        let _ = d.check_type::<u32>(TypeTag::of::<u32>());
        let _ = d.check_len(d.len);
    }
});
