//! Bounds and checks on what clients send, shared by every route module.
//!
//! A leaf: it imports nothing from this crate, so any module (the error
//! mapping included) can use it without an import cycle.

use dropgate_store::FieldError;

/// Largest request body accepted (user JSON is a few KiB at most).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Refuses text a database may reject (PostgreSQL stores no NUL byte) with
/// a 422 naming `field` instead of a 5xx from the store.
pub(crate) fn check_text(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        return Err(FieldError::new(field, "must not contain a NUL character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused_and_named() {
        assert!(check_text("description", "a partner").is_ok());
        let e = check_text("description", "a\0b").err();
        assert_eq!(e.map(|e| e.field), Some("description"));
    }
}
