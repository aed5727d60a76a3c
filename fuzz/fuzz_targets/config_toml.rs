//! The config loader, fed arbitrary file contents. Properties: it never
//! panics; a refusal is one line (what `serve` prints before exiting 2);
//! an accepted config holds the invariants the rest of the binary relies on.
#![no_main]

// The loader lives in the binary crate, which has no library target to
// depend on: its one file is compiled in here as it is.
#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/dropgate/src/config.rs"]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::from_toml_str(text) {
        Err(e) => {
            let line = e.to_string();
            assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
        }
        Ok(eff) => {
            assert!(eff.passive_ports.start() <= eff.passive_ports.end());
            assert!(eff.raw.limits.max_connections >= 1);
            assert!(eff.raw.limits.max_connections_per_ip >= 1);
            assert!(eff.raw.database.max_connections >= 1);
            assert!(eff.data_dir.is_absolute() && eff.storage_root.is_absolute());
            assert!(!eff.database_url.is_empty());
        }
    }
});
