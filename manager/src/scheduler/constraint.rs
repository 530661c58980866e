//! Placement constraints, as Swarm writes them: `node.hostname==web1`,
//! `node.role!=manager`, `node.labels.zone==east`, `node.id==…`,
//! `node.platform.os==linux`, `node.platform.arch==x86_64`.

use std::fmt;

use super::NodeInfo;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// The node id.
    Id,
    /// The hostname.
    Hostname,
    /// manager or worker.
    Role,
    /// A node label.
    Label(String),
    /// The operating system.
    Os,
    /// The architecture.
    Arch,
}

/// A parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The attribute.
    pub attribute: Attribute,
    /// `==` when true, `!=` when false.
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

/// A constraint that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid constraint \"{input}\": {why}; write ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE with node.id, node.hostname, node.role, node.labels.KEY, node.platform.os or node.platform.arch"
)]
pub struct ConstraintError {
    input: String,
    why: String,
}

impl Constraint {
    /// Parses one constraint.
    pub fn parse(input: &str) -> Result<Constraint, ConstraintError> {
        let err = |why: &str| ConstraintError {
            input: input.to_string(),
            why: why.to_string(),
        };
        let (key, value, equal) = if let Some((k, v)) = input.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = input.split_once("!=") {
            (k, v, false)
        } else {
            return Err(err("no == or != operator"));
        };
        let key = key.trim();
        let value = value.trim();
        if value.is_empty() {
            return Err(err("the value is empty"));
        }
        let attribute = match key.to_ascii_lowercase().as_str() {
            "node.id" => Attribute::Id,
            "node.hostname" => Attribute::Hostname,
            "node.role" => {
                if !matches!(value, "manager" | "worker") {
                    return Err(err("node.role is manager or worker"));
                }
                Attribute::Role
            }
            "node.platform.os" => Attribute::Os,
            "node.platform.arch" => Attribute::Arch,
            k if k.starts_with("node.labels.") && k.len() > "node.labels.".len() => {
                Attribute::Label(key["node.labels.".len()..].to_string())
            }
            _ => return Err(err(&format!("unknown attribute \"{key}\""))),
        };
        Ok(Constraint {
            attribute,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether `node` satisfies the constraint.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let actual: Option<&str> = match &self.attribute {
            Attribute::Id => Some(&node.id),
            Attribute::Hostname => Some(&node.hostname),
            Attribute::Role => Some(if node.manager { "manager" } else { "worker" }),
            Attribute::Label(k) => node.labels.get(k).map(String::as_str),
            Attribute::Os => Some(&node.os),
            Attribute::Arch => Some(&node.arch),
        };
        // Case-insensitive like Swarm, except label values and ids.
        let same = match (&self.attribute, actual) {
            (_, None) => false,
            (Attribute::Label(_) | Attribute::Id, Some(a)) => a == self.value,
            (_, Some(a)) => a.eq_ignore_ascii_case(&self.value),
        };
        same == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.attribute {
            Attribute::Id => "node.id".to_string(),
            Attribute::Hostname => "node.hostname".to_string(),
            Attribute::Role => "node.role".to_string(),
            Attribute::Label(k) => format!("node.labels.{k}"),
            Attribute::Os => "node.platform.os".to_string(),
            Attribute::Arch => "node.platform.arch".to_string(),
        };
        write!(
            f,
            "{key}{}{}",
            if self.equal { "==" } else { "!=" },
            self.value
        )
    }
}
