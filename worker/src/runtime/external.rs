//! External OCI runtimes.
