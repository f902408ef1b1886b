//! The one rule for names that cross hops: sandbox ids, template names (public and the
//! agent's own) and snapshot names. The control plane and the agent both check it, so a name
//! one accepts is never refused by the other.

/// The longest name: 63 bytes, so a name fits a DNS label and a Linux path component with
/// room to spare.
pub const MAX_NAME_LEN: usize = 63;

/// `[a-z0-9][a-z0-9._-]{0,62}`: short, lowercase, safe in paths, URLs and QEMU arguments.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule() {
        for ok in [
            "a",
            "0",
            "sb-abc123",
            "my.snap_1",
            &"a".repeat(MAX_NAME_LEN),
        ] {
            assert!(valid_name(ok), "{ok:?} refused");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "", "-a", ".a", "_a", "A", "aB", "a/b", "..", "a b", "é", &long,
        ] {
            assert!(!valid_name(bad), "{bad:?} accepted");
        }
    }
}
