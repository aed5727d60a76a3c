//! Property tests (proptest) of the two rules every operation passes: the
//! permission check (the longest matching prefix decides, component-wise)
//! and the quota arithmetic (a reservation fits or changes nothing; usage
//! never goes below zero; concurrent reservations never overshoot).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use dropgate_core::store::{Permission, PermissionMap, Quota};
use dropgate_core::vfs::VirtualPath;
use dropgate_core::{PermissionSet, QuotaGuard};
use proptest::prelude::*;

/// Paths over a tiny alphabet, so prefixes of each other come up often
/// (`/a` against `/ab` is the classic mistake).
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "ab", "b", "c"]), 0..4)
        .prop_map(|parts| format!("/{}", parts.join("/")))
}

fn rights() -> impl Strategy<Value = BTreeSet<Permission>> {
    let mut all = Permission::EACH.to_vec();
    all.push(Permission::All);
    prop::collection::btree_set(prop::sample::select(all), 0..4)
}

fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_longest_matching_prefix_decides(
        rules in prop::collection::btree_map(path(), rights(), 0..6),
        target in path(),
        perm in prop::sample::select(Permission::EACH.to_vec()),
    ) {
        let map: PermissionMap = rules.clone();
        let set = PermissionSet::new(&map);
        let expected = rules
            .iter()
            .filter(|(prefix, _)| covers(prefix, &target))
            .max_by_key(|(prefix, _)| prefix.len())
            .is_some_and(|(_, r)| r.contains(&perm) || r.contains(&Permission::All));
        prop_assert_eq!(set.allows(&VirtualPath::parse(&target).unwrap(), perm), expected);
    }

    #[test]
    fn uniform_rights_mean_every_path_agrees(
        rules in prop::collection::btree_map(path(), rights(), 0..5),
        a in path(),
        b in path(),
    ) {
        let set = PermissionSet::new(&rules);
        if set.is_uniform() {
            let (a, b) = (VirtualPath::parse(&a).unwrap(), VirtualPath::parse(&b).unwrap());
            for p in Permission::EACH {
                prop_assert_eq!(set.allows(&a, p), set.allows(&b, p));
            }
        }
    }

    #[test]
    fn quota_reservations_fit_or_change_nothing(
        max in 0u64..10_000,
        ops in prop::collection::vec((any::<bool>(), 0u64..3_000), 0..60),
    ) {
        let guard = QuotaGuard::counting(Quota { max_bytes: max, max_files: 0 }, 0, 0);
        let mut model = 0u64;
        for (reserve, n) in ops {
            if reserve {
                let fits = max == 0 || model + n <= max;
                prop_assert_eq!(guard.reserve_bytes(n).is_ok(), fits);
                if fits {
                    model += n;
                }
            } else {
                guard.release_bytes(n);
                model = model.saturating_sub(n);
            }
            prop_assert_eq!(guard.usage().unwrap().bytes(), model);
        }
        // A reservation so large it would wrap the counter is refused whole.
        if max > 0 {
            prop_assert!(guard.reserve_bytes(u64::MAX).is_err());
            prop_assert_eq!(guard.usage().unwrap().bytes(), model);
        }
    }
}

#[test]
fn concurrent_reservations_never_overshoot() {
    const MAX: u64 = 1_000_000;
    let guard = Arc::new(QuotaGuard::counting(
        Quota {
            max_bytes: MAX,
            max_files: 0,
        },
        0,
        0,
    ));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let g = guard.clone();
            std::thread::spawn(move || {
                let mut kept = 0u64;
                for i in 0..20_000u64 {
                    let n = 1 + (i * 7 + t) % 500;
                    if g.reserve_bytes(n).is_ok() {
                        kept += n;
                        if i % 3 == 0 {
                            g.release_bytes(n);
                            kept -= n;
                        }
                    }
                }
                kept
            })
        })
        .collect();
    let kept: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let used = guard.usage().unwrap().bytes();
    assert_eq!(used, kept, "the count is exactly what was kept");
    assert!(used <= MAX, "{used} > {MAX}");
}
