//! Ref names and repository names: what git would refuse, we refuse. Pure.

/// Whether `name` is a ref name git accepts for a push (`git check-ref-format` rules,
/// and it must start with `refs/`).
pub fn valid_ref_name(name: &[u8]) -> bool {
    if !name.starts_with(b"refs/") || name.ends_with(b"/") || name.ends_with(b".") {
        return false;
    }
    if name == b"@"
        || name
            .windows(2)
            .any(|w| w == b".." || w == b"@{" || w == b"//")
    {
        return false;
    }
    if name
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b))
    {
        return false;
    }
    name.split(|b| *b == b'/').all(|c| {
        !c.is_empty() && !c.starts_with(b".") && !c.ends_with(b".lock") && !c.starts_with(b"-")
    })
}

/// Whether `name` is a repository name we serve: path components of
/// `A-Za-z0-9._+-` that are not `.` or `..` and do not start with `.` or `-`.
pub fn valid_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && !c.starts_with('-')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        for ok in [
            "refs/heads/master",
            "refs/tags/v1.0",
            "refs/heads/feature/x-y",
            "refs/heads/🦀",
        ] {
            assert!(valid_ref_name(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "refs/heads/a..b",
            "refs/heads/-x",
            "refs/heads/a\x01",
            "refs/heads/a b",
            "refs/heads/",
            "refs/heads/x.lock",
            "refs/heads/.hidden",
            "HEAD",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads//x",
            "refs/heads/x@{1}",
            "refs/heads/x.",
            "refs/heads/a\\b",
        ] {
            assert!(!valid_ref_name(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn repo_names() {
        for ok in ["test", "rpms/bash", "a.b-c_d+e"] {
            assert!(valid_repo_name(ok), "{ok}");
        }
        for bad in [
            "", "../x", "a/../b", ".x", "a/.git", "-x", "a//b", "a\0b", "%2e%2e/x", "a b", "/abs",
        ] {
            assert!(!valid_repo_name(bad), "{bad:?}");
        }
    }
}
