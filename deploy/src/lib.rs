//! Stacks, install assets and the multi-host lab. Compose translation arrives with the
//! control plane; this crate holds the place DESIGN.md gives it.
