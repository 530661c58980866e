//! Hidden subcommands: the `shoal` binary re-executed as a container's shim or as the helper
//! that enters a container for `exec`. They are dispatched before anything else runs, so the
//! process stays single-threaded.

/// Runs a hidden subcommand if `argv[1]` names one, returning its exit code.
pub fn dispatch() -> Option<i32> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(crate::shim::SUBCOMMAND) => Some(crate::shim::main(&args[2..])),
        Some(crate::runtime::builtin::exec::SUBCOMMAND) => {
            Some(crate::runtime::builtin::exec::main(&args[2..]))
        }
        Some(crate::runtime::builtin::run_bundle::SUBCOMMAND) => {
            Some(crate::runtime::builtin::run_bundle::main(&args[2..]))
        }
        _ => None,
    }
}
