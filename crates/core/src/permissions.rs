//! The permission check: the longest matching virtual path prefix wins.

use std::collections::BTreeSet;

use dropgate_store::{Permission, PermissionMap};
use dropgate_vfs::VirtualPath;

/// An account's permissions, pre-parsed for fast checks.
#[derive(Debug, Clone)]
pub struct PermissionSet {
    /// (prefix, permissions), longest prefix first.
    rules: Vec<(VirtualPath, BTreeSet<Permission>)>,
}

impl PermissionSet {
    /// Builds the set from the stored map; unparsable prefixes are dropped
    /// (the store validates them, so that only guards against old rows).
    pub fn new(map: &PermissionMap) -> Self {
        let mut rules: Vec<(VirtualPath, BTreeSet<Permission>)> = map
            .iter()
            .filter_map(|(p, perms)| VirtualPath::parse(p).ok().map(|vp| (vp, perms.clone())))
            .collect();
        rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_str().len()));
        PermissionSet { rules }
    }

    /// Whether `perm` is granted on `path`. No matching rule: denied.
    pub fn allows(&self, path: &VirtualPath, perm: Permission) -> bool {
        self.rules
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .is_some_and(|(_, perms)| perms.contains(&Permission::All) || perms.contains(&perm))
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

    #[test]
    fn no_rule_means_denied() {
        let map: PermissionMap =
            BTreeMap::from([("/only".into(), BTreeSet::from([Permission::All]))]);
        let p = PermissionSet::new(&map);
        assert!(!p.allows(&vp("/"), Permission::List));
        assert!(p.allows(&vp("/only"), Permission::List));
    }
}
