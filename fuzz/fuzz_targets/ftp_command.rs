//! The FTP command parser on any control line: an answer (a command or a
//! syntax error), never a panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let _ = dropgate_ftp::bench_support::parse_line(line);
});
