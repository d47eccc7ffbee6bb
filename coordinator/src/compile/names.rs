//! Layer 0: checks of names that reach generated files, unit names or argv. Plain string
//! predicates; imports nothing of the compiler.

/// A stack, feature or file-ish name: letters, digits, `-`, `_`, `.`.
pub(crate) fn simple_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// RFC 1123 label: what a Host rule and a YAML key can hold without quoting.
pub(crate) fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A domain such as `internal.thinkheads.ai`: dot-separated DNS labels.
pub(crate) fn domain_ok(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_never_reach_the_yaml() {
        for bad in ["a`)||Host(`x", "a\nb: c", "A", "-a", "a b", "", "x\"y"] {
            assert!(!dns_label(bad), "{bad:?}");
        }
        assert!(dns_label("granite-3b"));
        assert!(domain_ok("internal.thinkheads.ai"));
        assert!(!domain_ok("internal..ai"));
    }
}
