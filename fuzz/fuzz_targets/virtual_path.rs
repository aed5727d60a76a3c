//! The one path canonicalizer. Properties: whatever a client sends (as the
//! working folder and the argument), the result is absolute, has no `.` or
//! `..` component, no empty component, no NUL or line break, never names an
//! upload temporary, and is a fixed point of parsing.
#![no_main]

use dropgate_vfs::{TEMP_PREFIX, VirtualPath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cwd, input) = text.split_once('\u{1}').unwrap_or(("/", text));
    let Ok(cwd) = VirtualPath::parse(cwd) else {
        return;
    };
    let Ok(p) = VirtualPath::resolve(&cwd, input) else {
        return;
    };
    let s = p.as_str();
    assert!(s.starts_with('/'), "{s:?}");
    assert!(!s.contains(['\0', '\n', '\r']), "{s:?}");
    if s != "/" {
        for c in s[1..].split('/') {
            assert!(!c.is_empty() && c != "." && c != "..", "{s:?}");
            assert!(!c.starts_with(TEMP_PREFIX), "{s:?}");
        }
    }
    assert!(!p.relative().starts_with('/'), "{s:?}");
    assert_eq!(VirtualPath::parse(s).ok().as_ref(), Some(&p), "{s:?}");
});
