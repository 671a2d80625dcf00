//! The checks of `inject`'s option values, so that a typo is an exit 2 on
//! the command line and not a manifest the API server rejects later.

/// A Kubernetes object name (an RFC 1123 subdomain), as Secrets and
/// ConfigMaps have.
pub fn object(name: &str) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(name.to_owned())
    } else {
        Err("not a Kubernetes object name (lower-case letters, digits, '-' and '.')".into())
    }
}

/// An environment variable name every Kubernetes from 1.29 on accepts
/// (later versions accept more).
pub fn variable(name: &str) -> Result<String, String> {
    let first_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || matches!(c, '_' | '-' | '.'));
    if first_ok && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        Ok(name.to_owned())
    } else {
        Err("not an environment variable name (letters, digits, '_', '-' and '.', not starting with a digit)".into())
    }
}

/// An image reference: not empty, no whitespace (the registry checks the rest).
pub fn image(reference: &str) -> Result<String, String> {
    if reference.is_empty() || reference.contains(char::is_whitespace) {
        Err("not an image reference".into())
    } else {
        Ok(reference.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        for ok in ["truedat-auth-proxy-config", "a", "a.b-c", "x1"] {
            assert!(object(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", &"a".repeat(254)] {
            assert!(object(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn variable_names_and_images() {
        assert!(variable("TRUEDAT_URL").is_ok() && variable("my.var-1").is_ok());
        for bad in ["", "1A", "A=B", "A B"] {
            assert!(variable(bad).is_err(), "{bad}");
        }
        assert!(image("registry.example.com/truedat-auth-proxy@sha256:ab").is_ok());
        assert!(image("").is_err() && image("a b").is_err());
    }
}
