//! The one encoding of shoal's objects inside gRPC messages: JSON of the types in
//! [`crate::types`], in the messages' `json` and `*_json` fields. The protos stay small
//! and stable while the types grow; every encode and decode of those fields goes through
//! this module, so a failure is an error that names what failed (never an empty value),
//! and a change of encoding is a change of this file.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::control as pc;
use crate::dispatcher as pd;
use crate::types::{
    AttachmentSpec, NetworkSpec, NetworkView, ServiceSpec, Task, TaskState, Volume,
};

/// An object that could not be put on the wire or read from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Encoding failed (a map with non-string keys, say: a bug).
    #[error("encoding a {what}: {message}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// The encoder's complaint.
        message: String,
    },
    /// The bytes are not a valid object of the kind expected.
    #[error("malformed {what}: {message}")]
    Decode {
        /// What was expected.
        what: &'static str,
        /// The decoder's complaint.
        message: String,
    },
}

/// Encodes `value`, which is a `what`.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<String, WireError> {
    serde_json::to_string(value).map_err(|e| WireError::Encode {
        what,
        message: e.to_string(),
    })
}

/// Decodes a `what`.
pub fn decode<T: DeserializeOwned>(what: &'static str, json: &str) -> Result<T, WireError> {
    serde_json::from_str(json).map_err(|e| WireError::Decode {
        what,
        message: e.to_string(),
    })
}

impl pc::Object {
    /// A stored object with its id and version.
    pub fn of<T: Serialize>(id: &str, version: u64, value: &T) -> Result<pc::Object, WireError> {
        Ok(pc::Object {
            id: id.to_string(),
            version,
            json: encode("stored object", value)?,
        })
    }

    /// The object (a [`crate::types::Service`], [`crate::types::Task`], ...).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, WireError> {
        decode("stored object", &self.json)
    }
}

impl pc::ObjectReply {
    /// The object the reply carries.
    pub fn object(&self) -> Result<&pc::Object, WireError> {
        self.object.as_ref().ok_or(WireError::Decode {
            what: "reply",
            message: "the manager's reply carries no object".into(),
        })
    }

    /// The object the reply carries, decoded.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, WireError> {
        self.object()?.decode()
    }
}

/// Every object of a listing, decoded; one that does not decode fails the whole.
pub fn decode_all<T: DeserializeOwned>(objects: &[pc::Object]) -> Result<Vec<T>, WireError> {
    objects.iter().map(pc::Object::decode).collect()
}

impl pc::CreateServiceRequest {
    /// Asks for a service of `spec`.
    pub fn new(spec: &ServiceSpec) -> Result<Self, WireError> {
        Ok(pc::CreateServiceRequest {
            spec_json: encode("service spec", spec)?,
        })
    }

    /// The spec asked for.
    pub fn spec(&self) -> Result<ServiceSpec, WireError> {
        decode("service spec", &self.spec_json)
    }
}

impl pc::UpdateServiceRequest {
    /// Asks that `service` (id or name), read at `version` (0: whatever it is now), get
    /// the whole new `spec`.
    pub fn new(service: &str, spec: &ServiceSpec, version: u64) -> Result<Self, WireError> {
        Ok(pc::UpdateServiceRequest {
            service: service.to_string(),
            spec_json: encode("service spec", spec)?,
            version,
            rollback: false,
        })
    }

    /// Asks that `service` go back to its previous spec.
    pub fn rollback(service: &str) -> Self {
        pc::UpdateServiceRequest {
            service: service.to_string(),
            spec_json: String::new(),
            version: 0,
            rollback: true,
        }
    }

    /// The new spec (not for a rollback, which carries none).
    pub fn spec(&self) -> Result<ServiceSpec, WireError> {
        decode("service spec", &self.spec_json)
    }
}

impl pc::CreateNetworkRequest {
    /// Asks for a network of `spec`.
    pub fn new(spec: &NetworkSpec) -> Result<Self, WireError> {
        Ok(pc::CreateNetworkRequest {
            spec_json: encode("network spec", spec)?,
        })
    }

    /// The spec asked for.
    pub fn spec(&self) -> Result<NetworkSpec, WireError> {
        decode("network spec", &self.spec_json)
    }
}

impl pd::Assignment {
    /// A task of the node's, at its version.
    pub fn new(task: &Task, version: u64) -> Result<Self, WireError> {
        Ok(pd::Assignment {
            json: encode("task", task)?,
            version,
            id: task.id.clone(),
        })
    }

    /// The task.
    pub fn task(&self) -> Result<Task, WireError> {
        decode("task", &self.json)
    }
}

impl pd::AssignmentSet {
    /// The network views that come with the tasks.
    pub fn networks(&self) -> Result<Vec<NetworkView>, WireError> {
        if self.networks_json.is_empty() {
            return Ok(Vec::new());
        }
        decode("network views", &self.networks_json)
    }

    /// Encodes the network views of a set.
    pub fn encode_networks(views: &[NetworkView]) -> Result<String, WireError> {
        if views.is_empty() {
            return Ok(String::new());
        }
        encode("network views", &views)
    }
}

impl pd::AttachReply {
    /// The managers' answer to an attachment.
    pub fn new(attachment: &AttachmentSpec) -> Result<Self, WireError> {
        Ok(pd::AttachReply {
            attachment_json: encode("network attachment", attachment)?,
        })
    }

    /// The network and the address the container got.
    pub fn attachment(&self) -> Result<AttachmentSpec, WireError> {
        decode("network attachment", &self.attachment_json)
    }
}

impl pd::RecordVolumeRequest {
    /// Node `node_id` tells of `volume`, a volume of cluster-wide scope.
    pub fn new(node_id: &str, volume: &Volume) -> Result<Self, WireError> {
        Ok(pd::RecordVolumeRequest {
            node_id: node_id.to_string(),
            volume_json: encode("volume", volume)?,
        })
    }

    /// The volume the node tells of.
    pub fn volume(&self) -> Result<Volume, WireError> {
        decode("volume", &self.volume_json)
    }
}

impl pd::StatusUpdate {
    /// A task reached `state`.
    pub fn new(task_id: &str, state: TaskState, message: impl Into<String>) -> Self {
        pd::StatusUpdate {
            task_id: task_id.to_string(),
            state: state.as_str().to_string(),
            message: message.into(),
            ..Default::default()
        }
    }

    /// The state reported.
    pub fn task_state(&self) -> Result<TaskState, WireError> {
        self.state.parse().map_err(|message| WireError::Decode {
            what: "task state",
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_round_trips_and_a_bad_one_is_named() {
        let spec = ServiceSpec {
            name: "web".into(),
            replicas: 2,
            ..Default::default()
        };
        let o = pc::Object::of("s1", 7, &spec).expect("encodes");
        assert_eq!(o.decode::<ServiceSpec>().expect("decodes"), spec);
        let bad = pc::Object {
            json: "{\"name\": 3}".into(),
            ..o
        };
        let e = bad.decode::<ServiceSpec>().expect_err("malformed");
        assert!(e.to_string().starts_with("malformed stored object"), "{e}");
    }

    #[test]
    fn status_states_use_the_stored_names() {
        let u = pd::StatusUpdate::new("t1", TaskState::Running, "started");
        assert_eq!(u.state, "running");
        assert_eq!(u.task_state(), Ok(TaskState::Running));
        let bad = pd::StatusUpdate {
            state: "flying".into(),
            ..u
        };
        assert!(bad.task_state().is_err());
    }

    #[test]
    fn an_empty_set_has_no_networks() {
        let set = pd::AssignmentSet::default();
        assert_eq!(set.networks(), Ok(Vec::new()));
        assert_eq!(pd::AssignmentSet::encode_networks(&[]), Ok(String::new()));
    }
}
