//! Helpers for the end-to-end tests: a daemon on temporary roots, the shoal binary, images
//! built from busybox-static.
