//! The permission check: the longest matching virtual path prefix wins.

use std::collections::BTreeSet;

use dropgate_store::{Permission, PermissionMap};
use dropgate_vfs::VirtualPath;

/// An account's permissions, pre-parsed for fast checks.
#[derive(Debug, Clone)]
pub struct PermissionSet {
    /// (prefix, permissions with `*` expanded), longest prefix first.
    /// Expanded once here: every file operation checks at least once.
    rules: Vec<(VirtualPath, BTreeSet<Permission>)>,
}

impl PermissionSet {
    /// Builds the set from the stored map; unparsable prefixes are dropped
    /// (the store validates them, so that only guards against old rows).
    pub fn new(map: &PermissionMap) -> Self {
        let mut rules: Vec<(VirtualPath, BTreeSet<Permission>)> = map
            .iter()
            .filter_map(|(p, perms)| VirtualPath::parse(p).ok().map(|vp| (vp, expand(perms))))
            .collect();
        rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_str().len()));
        PermissionSet { rules }
    }

    /// Whether `perm` is granted on `path`. No matching rule: denied.
    pub fn allows(&self, path: &VirtualPath, perm: Permission) -> bool {
        self.rights_at(path).contains(&perm)
    }

    /// Every right granted on `path` (`*` expanded); none where no rule covers it.
    fn rights_at(&self, path: &VirtualPath) -> &BTreeSet<Permission> {
        static NONE: BTreeSet<Permission> = BTreeSet::new();
        self.rules
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map_or(&NONE, |(_, perms)| perms)
    }

    /// Whether every path of the home has the same rights: then where a
    /// symlink points or where a folder moves cannot change what is allowed.
    pub fn is_uniform(&self) -> bool {
        // A path no rule covers has no rights; with no rule at `/` that is a
        // second set of rights.
        let root_covered = self.rules.iter().any(|(p, _)| p.is_root());
        let mut sets = self.rules.iter().map(|(_, perms)| perms);
        let Some(first) = sets.next() else {
            return true;
        };
        (root_covered || first.is_empty()) && sets.all(|s| s == first)
    }

    /// Whether moving the folder `from` to `to` keeps every path below it
    /// under the same rights: each rule below either side must grant at its
    /// place under `to` exactly what it grants under `from`. (The rights of
    /// `from` and `to` themselves are the `rename` check's business.)
    pub fn subtree_moves_intact(&self, from: &VirtualPath, to: &VirtualPath) -> bool {
        let below = |base: &VirtualPath, other: &VirtualPath| {
            self.rules
                .iter()
                .filter(|(p, _)| p != base && p.starts_with(base))
                .all(|(p, _)| {
                    let rel = p.as_str()[base.as_str().len()..].trim_start_matches('/');
                    match other.join_relative(rel) {
                        Some(mirror) => self.rights_at(p) == self.rights_at(&mirror),
                        None => false,
                    }
                })
        };
        below(from, to) && below(to, from)
    }
}

fn expand(perms: &BTreeSet<Permission>) -> BTreeSet<Permission> {
    if perms.contains(&Permission::All) {
        Permission::EACH.iter().copied().collect()
    } else {
        perms.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn vp(s: &str) -> VirtualPath {
        VirtualPath::parse(s).unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let map: PermissionMap = BTreeMap::from([
            ("/".into(), BTreeSet::from([Permission::List])),
            (
                "/inbox".into(),
                BTreeSet::from([Permission::List, Permission::Upload]),
            ),
            ("/inbox/locked".into(), BTreeSet::new()),
            ("/out".into(), BTreeSet::from([Permission::All])),
        ]);
        let p = PermissionSet::new(&map);
        assert!(p.allows(&vp("/"), Permission::List));
        assert!(!p.allows(&vp("/x"), Permission::Upload));
        assert!(p.allows(&vp("/inbox/a.csv"), Permission::Upload));
        assert!(!p.allows(&vp("/inbox/a.csv"), Permission::Delete));
        assert!(
            !p.allows(&vp("/inbox2/a.csv"), Permission::Upload),
            "prefix is per component"
        );
        assert!(!p.allows(&vp("/inbox/locked/x"), Permission::List));
        assert!(p.allows(&vp("/out/deep/file"), Permission::Delete));
    }

    fn set(rules: &[(&str, &[Permission])]) -> PermissionSet {
        PermissionSet::new(
            &rules
                .iter()
                .map(|(p, perms)| (p.to_string(), perms.iter().copied().collect()))
                .collect(),
        )
    }

    #[test]
    fn uniform_sets() {
        use Permission::*;
        assert!(set(&[("/", &[All])]).is_uniform());
        assert!(set(&[("/", &[All]), ("/x", &[All])]).is_uniform());
        assert!(
            set(&[
                ("/", &[All]),
                (
                    "/x",
                    &[
                        List, Download, Upload, Overwrite, Delete, Rename, Mkdir, Rmdir, Chtimes
                    ]
                )
            ])
            .is_uniform()
        );
        assert!(!set(&[("/", &[All]), ("/archive", &[List, Download])]).is_uniform());
        assert!(!set(&[("/", &[List]), ("/inbox", &[List, Upload])]).is_uniform());
        assert!(
            !set(&[("/only", &[All])]).is_uniform(),
            "the rest has no rights"
        );
        assert!(set(&[]).is_uniform());
    }

    #[test]
    fn folder_moves_keep_the_rules_below_them() {
        use Permission::*;
        let p = set(&[("/", &[All]), ("/a/ro", &[List, Download])]);
        assert!(
            !p.subtree_moves_intact(&vp("/a"), &vp("/b")),
            "ro would lose its rule"
        );
        assert!(
            !p.subtree_moves_intact(&vp("/b"), &vp("/a")),
            "b/ro would gain one"
        );
        assert!(p.subtree_moves_intact(&vp("/c"), &vp("/d")));
        assert!(!p.subtree_moves_intact(&vp("/"), &vp("/x")));
        let p = set(&[
            ("/", &[All]),
            ("/a/ro", &[List, Download]),
            ("/b/ro", &[List, Download]),
        ]);
        assert!(
            p.subtree_moves_intact(&vp("/a"), &vp("/b")),
            "same rules on both sides"
        );
    }

    #[test]
    fn no_rule_means_denied() {
        let map: PermissionMap =
            BTreeMap::from([("/only".into(), BTreeSet::from([Permission::All]))]);
        let p = PermissionSet::new(&map);
        assert!(!p.allows(&vp("/"), Permission::List));
        assert!(p.allows(&vp("/only"), Permission::List));
    }
}
