//! The shim: one per container, the container's parent (being integrated).

// Waiting for the cgroups and security modules' APIs.
#[cfg(any())]
mod supervisor;

/// The hidden subcommand that runs the shim.
pub const SUBCOMMAND: &str = "__shim";

/// The shim's entry point.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let _ = args;
    1
}
