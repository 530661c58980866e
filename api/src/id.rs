//! The one source of random ids: containers, services, tasks, networks and join-token
//! secrets all take their digits from here (the kernel's random source).

/// `bytes` random bytes as lower-case hex (twice as many digits).
///
/// The kernel's source does not fail on Linux once booted; if it ever does, the process
/// cannot make a safe id or secret, so this is an error for the caller to report.
pub fn random_hex(bytes: usize) -> Result<String, IdError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| IdError(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The kernel's random source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system's random source failed: {0}")]
pub struct IdError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_of_the_length_asked_and_differ() {
        let a = random_hex(12).expect("random");
        let b = random_hex(12).expect("random");
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
