//! The one path canonicalizer every protocol uses.
//!
//! Whatever a client sends (FTP argument, SFTP path) becomes a [`VirtualPath`]
//! here and nowhere else. The rules are deliberately simple: backslash is a
//! separator, NUL, CR and LF are refused, `.` and empty components vanish, `..` pops a
//! component and stops at the virtual root. Nothing is percent-decoded: a name
//! like `%2e%2e` is a literal (harmless) file name, never a parent reference.

use std::fmt;

use crate::VfsError;

/// Longest accepted single name, in bytes (the Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest accepted virtual path, in bytes (the Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Prefix of the hidden temporaries of atomic uploads. Reserved: clients can
/// neither see nor name such files.
pub const TEMP_PREFIX: &str = ".dropgate-part-";

/// An absolute, normalised path inside an account's home: `/` is the home.
///
/// Invariants: starts with `/`, no empty, `.` or `..` components, no NUL, no
/// backslash, no trailing slash (except the root itself).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualPath(String);

impl VirtualPath {
    /// The home itself.
    pub fn root() -> Self {
        VirtualPath("/".to_owned())
    }

    /// Resolves client input against a current directory.
    pub fn resolve(cwd: &VirtualPath, input: &str) -> Result<VirtualPath, VfsError> {
        if input.contains('\0') {
            return Err(VfsError::InvalidName("NUL byte in path"));
        }
        // A line break in a name forges entries in line-based listings
        // (FTP LIST/NLST/MLSD, audit exports): refused on every protocol.
        if input.contains(['\r', '\n']) {
            return Err(VfsError::InvalidName("line break in name"));
        }
        if input.len() > MAX_PATH_LEN {
            return Err(VfsError::InvalidName("path too long"));
        }
        let input = input.replace('\\', "/");
        let mut parts: Vec<&str> = if input.starts_with('/') {
            Vec::new()
        } else {
            cwd.components().collect()
        };
        for comp in input.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name => {
                    if name.len() > MAX_NAME_LEN {
                        return Err(VfsError::InvalidName("name too long"));
                    }
                    parts.push(name);
                }
            }
        }
        if parts.iter().any(|p| p.starts_with(TEMP_PREFIX)) {
            return Err(VfsError::InvalidName("reserved name"));
        }
        let mut out = String::with_capacity(input.len() + 1);
        for p in &parts {
            out.push('/');
            out.push_str(p);
        }
        if out.is_empty() {
            out.push('/');
        }
        if out.len() > MAX_PATH_LEN {
            return Err(VfsError::InvalidName("path too long"));
        }
        Ok(VirtualPath(out))
    }

    /// Resolves client input against the root.
    pub fn parse(input: &str) -> Result<VirtualPath, VfsError> {
        Self::resolve(&Self::root(), input)
    }

    /// Wraps a string without any check.
    ///
    /// Exists only so tests can prove the OS-level confinement holds on its
    /// own, with the canonicalizer bypassed. Never call it with client input.
    #[doc(hidden)]
    pub fn from_raw_unchecked(raw: &str) -> VirtualPath {
        VirtualPath(raw.to_owned())
    }

    /// The path as the client sees it, e.g. `/inbox/a.txt`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path relative to the home, for the jailed backend (`.` for the root).
    pub fn relative(&self) -> &str {
        let rel = self.0.trim_start_matches('/');
        if rel.is_empty() { "." } else { rel }
    }

    /// Whether this is the home itself.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The components, root excluded.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The last component (`None` for the root).
    pub fn file_name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The containing folder (the root is its own parent).
    pub fn parent(&self) -> VirtualPath {
        match self.0.rfind('/') {
            Some(0) | None => Self::root(),
            Some(i) => VirtualPath(self.0[..i].to_owned()),
        }
    }

    /// A child of this folder; `name` must be a single valid component.
    pub fn join(&self, name: &str) -> Result<VirtualPath, VfsError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return Err(VfsError::InvalidName("not a single name"));
        }
        Self::resolve(self, name)
    }

    /// `self` with a relative path of names below it appended (`""` is
    /// `self`); `None` if `rel` is not a plain relative path.
    pub fn join_relative(&self, rel: &str) -> Option<VirtualPath> {
        rel.split('/')
            .filter(|c| !c.is_empty())
            .try_fold(self.clone(), |p, name| p.join(name).ok())
    }

    /// Whether `self` equals `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &VirtualPath) -> bool {
        if prefix.is_root() {
            return true;
        }
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        VirtualPath::parse(s)
            .map(|v| v.0)
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn dotdot_stops_at_root() {
        assert_eq!(p("/../.."), "/");
        assert_eq!(p("../../etc/passwd"), "/etc/passwd");
        assert_eq!(p("a/../../b"), "/b");
        assert_eq!(p("..\\..\\windows"), "/windows");
        assert_eq!(p("/a/./b//c/"), "/a/b/c");
        assert_eq!(p(""), "/");
        assert_eq!(p("."), "/");
    }

    #[test]
    fn literal_names_are_not_decoded() {
        assert_eq!(p("%2e%2e/%2e%2e/x"), "/%2e%2e/%2e%2e/x");
        assert_eq!(p("\u{ff0e}\u{ff0e}/x"), "/\u{ff0e}\u{ff0e}/x");
    }

    #[test]
    fn refuses_nul_long_and_reserved() {
        assert!(p("a\0b").starts_with("ERR"));
        assert!(p("a\nb").starts_with("ERR"), "LF forges listing lines");
        assert!(p("a\rb").starts_with("ERR"), "so may CR");
        assert!(p("/in/x\r\n-rw-r--r-- 1 ftp ftp 0 Jan 1 00:00 forged").starts_with("ERR"));
        assert!(p(&"x".repeat(256)).starts_with("ERR"));
        assert_eq!(p(&"x".repeat(255)).len(), 256);
        assert!(p(&"a/".repeat(3000)).starts_with("ERR"));
        assert!(p("/in/.dropgate-part-123").starts_with("ERR"));
    }

    #[test]
    fn relative_to_cwd() {
        let cwd = VirtualPath::parse("/in/box").unwrap_or_else(|_| VirtualPath::root());
        assert_eq!(
            VirtualPath::resolve(&cwd, "x").map(|v| v.0).ok(),
            Some("/in/box/x".into())
        );
        assert_eq!(
            VirtualPath::resolve(&cwd, "..").map(|v| v.0).ok(),
            Some("/in".into())
        );
        assert_eq!(cwd.parent().as_str(), "/in");
        assert_eq!(cwd.file_name(), Some("box"));
        assert_eq!(cwd.relative(), "in/box");
        assert_eq!(VirtualPath::root().relative(), ".");
    }

    #[test]
    fn prefix_matching_is_per_component() {
        let a = VirtualPath::parse("/inbox").unwrap_or_else(|_| VirtualPath::root());
        let b = VirtualPath::parse("/inbox2/x").unwrap_or_else(|_| VirtualPath::root());
        let c = VirtualPath::parse("/inbox/x").unwrap_or_else(|_| VirtualPath::root());
        assert!(!b.starts_with(&a));
        assert!(c.starts_with(&a));
        assert!(a.starts_with(&a));
        assert!(a.starts_with(&VirtualPath::root()));
    }
}
