//! Unguessable identifiers (lease ids, candidate ids).
//!
//! A lease id is a capability: whoever knows it may extend or release the lease, so it is
//! 122 random bits from the operating system's CSPRNG, never a counter.

/// A fresh unguessable id: 32 lowercase hex characters (a v4 UUID without dashes).
pub fn unguessable() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A stable id for `content` (a name-based v5 UUID, 32 hex characters): equal content,
/// equal id. For content-addressed rows (saga definition snapshots), not for secrets.
pub fn content_id(content: &[u8]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, content)
        .simple()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = unguessable();
        let b = unguessable();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn content_ids_are_stable_and_distinct() {
        assert_eq!(content_id(b"a"), content_id(b"a"));
        assert_ne!(content_id(b"a"), content_id(b"b"));
        assert_eq!(content_id(b"a").len(), 32);
    }
}
