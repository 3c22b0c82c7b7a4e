//! Unguessable identifiers (lease ids, candidate ids).
//!
//! A lease id is a capability: whoever knows it may extend or release the lease, so it is
//! 122 random bits from the operating system's CSPRNG, never a counter.

/// A fresh unguessable id: 32 lowercase hex characters (a v4 UUID without dashes).
pub fn unguessable() -> String {
    uuid::Uuid::new_v4().simple().to_string()
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
}
