//! Every end-to-end test of the workspace, in one test binary. Each file here was its own
//! `tests/*.rs` binary, and each of those linked the whole dependency graph (coordinator,
//! agent, tonic, rustls, bollard, etcd-client, …): 40 links of ~40 MB in every CI build.
//! As modules of one binary it is one link (issue 14: the CI run on a fresh machine).
//!
//! A test's name is `<file>::<test>`: `cargo nextest run -p phoenix-tests -E
//! 'test(/^stacks::/)'` runs one file's tests, `cargo nextest run -p phoenix-tests stacks::`
//! by substring. cargo-nextest still runs each test in its own process, so state a file keeps
//! per process (a static lock, a raised open-file limit) behaves as before; the groups of
//! tests that must not overlap are in .config/nextest.toml. Under plain `cargo test` all of
//! them share one process: tests/run-all.sh runs this binary one test at a time there.

mod admin_socket;
mod admission;
mod agent_lifecycle;
mod apply_force;
mod apply_output;
mod apt;
mod bundles;
mod certs;
mod certs_reload;
mod compose_corpus;
mod compose_engine;
mod compose_parity;
mod declared_mounts;
mod etcd_serve;
mod etcd_store;
mod event_store;
mod events;
mod fleet;
mod guest_install;
mod ha;
mod ha_forward;
mod ha_sessions;
mod identity;
mod impersonation;
mod inject;
mod metrics;
mod nginx;
mod packages;
mod planted_links;
mod rotation;
mod routing_tls;
mod service;
mod sessions;
mod spine;
mod stack_prune;
mod stacks;
mod stalled_coordinator;
mod status_page;
mod store_backends;
mod systemd;
