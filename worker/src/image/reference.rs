//! Image references: `[registry[:port]/]path[:tag][@digest]`, normalised the way Docker
//! does (`busybox` is `docker.io/library/busybox:latest`).

use std::fmt;

use super::ImageError;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

const HINT: &str = "a reference looks like busybox, busybox:1.36, registry.example:5000/team/app:v2 or app@sha256:<64 hex digits>";

fn bad(input: &str, why: &str) -> ImageError {
    ImageError::InvalidReference(format!("invalid reference \"{input}\": {why}; {HINT}"))
}

fn valid_component(c: &str) -> bool {
    // lowercase letters and digits, separated by '.', '_', '__' or runs of '-'
    if c.is_empty() {
        return false;
    }
    let b = c.as_bytes();
    if !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    if !b[b.len() - 1].is_ascii_lowercase() && !b[b.len() - 1].is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        match ch {
            b'.' => {
                i += 1;
            }
            b'_' => {
                i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 };
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !b
            .get(i)
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => {
            hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        }
        Some(("sha512", hex)) => {
            hex.len() == 128 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        }
        _ => false,
    }
}

impl Reference {
    /// Parses and normalises a reference.
    pub fn parse(input: &str) -> Result<Reference, ImageError> {
        if input.is_empty() {
            return Err(bad(input, "it is empty"));
        }
        if input.chars().any(|c| c.is_whitespace()) {
            return Err(bad(input, "it contains whitespace"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(bad(
                        input,
                        "the digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(bad(
                        input,
                        &format!(
                            "\"{t}\" is not a valid tag (letters, digits, '_', '.', '-', at most 128)"
                        ),
                    ));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let r = parts.remove(0);
            let (host, port) = match r.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (r, None),
            };
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-'))
                || port.is_some_and(|p| p.parse::<u16>().is_err())
            {
                return Err(bad(
                    input,
                    &format!("\"{r}\" is not a valid registry host[:port]"),
                ));
            }
            r.to_string()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(bad(input, "the repository name is empty"));
        }
        for p in &parts {
            if p.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(bad(input, "repository names must be lowercase"));
            }
            if !valid_component(p) {
                return Err(bad(
                    input,
                    &format!("\"{p}\" is not a valid repository name component"),
                ));
            }
        }
        if registry == DEFAULT_REGISTRY && parts.len() == 1 {
            parts.insert(0, "library");
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository: parts.join("/"),
            tag,
            digest,
        })
    }

    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The short form people type: `busybox:latest`, `localhost:5000/a/b:1`.
    pub fn familiar(&self) -> String {
        let mut repo = if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        if let Some(t) = &self.tag {
            repo.push(':');
            repo.push_str(t);
        }
        if let Some(d) = &self.digest {
            repo.push('@');
            repo.push_str(d);
        }
        repo
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            (
                "busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                "busybox:1.36",
            ),
            ("team/app", "docker.io/team/app:latest", "team/app:latest"),
            (
                "localhost:5000/a/b:1.2",
                "localhost:5000/a/b:1.2",
                "localhost:5000/a/b:1.2",
            ),
            (
                "127.0.0.1:5000/x",
                "127.0.0.1:5000/x:latest",
                "127.0.0.1:5000/x:latest",
            ),
            (
                "registry.example/a_b/c-d__e:v_1",
                "registry.example/a_b/c-d__e:v_1",
                "registry.example/a_b/c-d__e:v_1",
            ),
        ];
        for (input, full, familiar) in cases {
            let r = Reference::parse(input).unwrap();
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar(), familiar, "{input}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("x@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(d.as_str()));
        let r = Reference::parse(&format!("x:t@{d}")).unwrap();
        assert_eq!(r.tag(), Some("t"));
    }

    #[test]
    fn malformed_references_say_why() {
        let cases = [
            ("", "empty"),
            ("UPPER", "lowercase"),
            ("a:b:c", "not a valid"),
            ("a b", "whitespace"),
            ("x@sha256:abc", "digest"),
            ("a//b", "empty"),
            ("-a", "not a valid repository"),
            ("a:", "not a valid tag"),
            ("host:99999/x", "registry"),
        ];
        for (input, want) in cases {
            let e = Reference::parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
            assert!(e.contains("a reference looks like"), "{input}: {e}");
        }
    }
}
