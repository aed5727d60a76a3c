//! The PROXY protocol header parser (what a trusted load balancer sends
//! first) on any bytes: an answer, never a panic, and a header never claims
//! more bytes than it was given or changes its mind when the bytes after it
//! are cut off.
#![no_main]

use dropgate_core::proxy::{MAX_HEADER, Parsed, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match parse_header(bytes) {
        Parsed::Header { len, proxied } => {
            assert!(len <= bytes.len() && len <= MAX_HEADER);
            assert_eq!(
                parse_header(&bytes[..len]),
                Parsed::Header { len, proxied },
                "the header alone must parse the same"
            );
        }
        Parsed::Incomplete => assert!(bytes.len() < MAX_HEADER),
        Parsed::Invalid(_) => {}
    }
});
