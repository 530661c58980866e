//! The one wall clock: Unix time as every stored object and every log line records it.
//! The pipeline's pure cores never read it: their callers pass the time in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as a system time (for certificates' validity).
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    since_epoch().as_nanos() as i64
}

/// Now, in Unix seconds.
pub fn now_secs() -> u64 {
    since_epoch().as_secs()
}

fn since_epoch() -> std::time::Duration {
    // A clock set before 1970 reads as 1970: nothing shoal stores is that old.
    now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
