//! End-to-end test harness: locates the built binaries, runs them in temporary
//! state directories and cleans up after itself.
