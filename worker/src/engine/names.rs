//! Container ids and names: a random 64-hex-digit id, and a name the user gives or one made
//! from two words, unique among the containers of this node.

use super::EngineError;

/// A new random container id.
pub(crate) fn new_id() -> String {
    shoal_api::id::random_hex(32).unwrap_or_else(|_| {
        // Fall back to time and pid; ids only need to be unique on this node.
        let seed = crate::shim::now_nanos() as u128 ^ ((std::process::id() as u128) << 64);
        format!("{seed:064x}")
    })
}

/// Checks a user-given name: Docker's rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn validate(name: &str) -> Result<(), EngineError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() <= 128 {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "invalid container name \"{name}\": use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

const LEFT: &[&str] = &[
    "agile", "bold", "brisk", "calm", "clever", "deep", "eager", "fair", "gentle", "happy", "keen",
    "lively", "lucid", "merry", "nimble", "patient", "quiet", "rapid", "serene", "steady", "swift",
    "tidal", "vivid", "wise",
];
const RIGHT: &[&str] = &[
    "anchovy",
    "barracuda",
    "cod",
    "dolphin",
    "eel",
    "flounder",
    "grouper",
    "haddock",
    "herring",
    "koi",
    "mackerel",
    "marlin",
    "minnow",
    "octopus",
    "perch",
    "pike",
    "salmon",
    "sardine",
    "shark",
    "snapper",
    "sturgeon",
    "trout",
    "tuna",
    "wrasse",
];

/// A generated name not in `taken`.
pub(crate) fn generate(id: &str, taken: impl Fn(&str) -> bool) -> String {
    let bytes = hex::decode(&id[..8.min(id.len())]).unwrap_or_default();
    let a = bytes.first().copied().unwrap_or(0) as usize;
    let b = bytes.get(1).copied().unwrap_or(0) as usize;
    let base = format!("{}_{}", LEFT[a % LEFT.len()], RIGHT[b % RIGHT.len()]);
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}{n}"))
        .find(|n| !taken(n))
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn names_follow_docker_rules() {
        for ok in ["web", "web-1", "a.b_c", "9lives"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "_x", "a b", "a/b", "é"] {
            let e = validate(bad).unwrap_err().to_string();
            assert!(e.contains("invalid container name"), "{bad}: {e}");
        }
    }

    #[test]
    fn generated_names_avoid_taken_ones() {
        let id = "00010000";
        let first = generate(id, |_| false);
        assert_eq!(first, "agile_barracuda");
        let second = generate(id, |n| n == first);
        assert_eq!(second, "agile_barracuda2");
    }
}
