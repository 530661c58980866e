//! The cluster's objects as the managers store them and the orchestrators reason about
//! them: services, tasks and nodes. Plain data (serde), no I/O; the store keeps them as
//! JSON with a version (the Raft index of their last write).

mod container;
mod mount;
mod network;
mod node;
mod service;
mod task;
mod volume;

pub use container::*;
pub use mount::*;
pub use network::*;
pub use node::*;
pub use service::*;
pub use task::*;
pub use volume::*;

pub use crate::cluster::AddrPool;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_state_names_are_the_stored_ones() {
        for state in TaskState::ALL {
            let json = serde_json::to_string(&state).expect("encodes");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert!("flying".parse::<TaskState>().is_err());
    }

    #[test]
    fn task_states_only_move_forward() {
        use TaskState::*;
        assert!(New.can_move_to(Pending));
        assert!(Assigned.can_move_to(Running));
        assert!(Running.can_move_to(Failed));
        assert!(!Running.can_move_to(Assigned));
        assert!(!Failed.can_move_to(Running), "terminal states are final");
        assert!(!Complete.can_move_to(Shutdown));
        assert!(Shutdown.is_terminal() && !Running.is_terminal());
    }

    #[test]
    fn scaling_keeps_the_task_template() {
        let a = ServiceSpec {
            name: "web".into(),
            replicas: 3,
            ..Default::default()
        };
        let mut b = a.clone();
        b.replicas = 1;
        assert!(a.same_task_template(&b));
        b.image = "other".into();
        assert!(!a.same_task_template(&b));
    }

    #[test]
    fn specs_round_trip_as_json() {
        let spec = ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            replicas: 3,
            mode: ServiceMode::ReplicatedJob,
            ..Default::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"replicated-job\""), "{json}");
        assert_eq!(serde_json::from_str::<ServiceSpec>(&json).unwrap(), spec);
    }
}
