//! The SFTP framer and request decoder on any byte stream, delivered in
//! two pieces: every packet decodes or is refused, never a panic, and a
//! length field can never make it buffer more than one packet.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dropgate_sftp::fuzz_support::decode_stream(data);
});
