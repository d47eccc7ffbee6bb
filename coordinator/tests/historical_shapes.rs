//! One fixture tree per historical shape of `/usr/local/phoenix_hypervisor` found in the old
//! system's history (tests/shapes/<shape>/, each a base directory with its `etc/`), read as
//! the old scripts read them, given as the base directory and as `etc/`:
//! - `stale_compose_file_path`: the catalog names a compose file that is not there, while
//!   `stacks/<name>/` has one (main's scripts discover stacks there): `stacks/` wins.
//! - `compose_in_persistent_storage`: older trees keep the compose file under
//!   `persistent-storage/` and have no `stacks/`: `compose_file_path` is resolved against the
//!   base directory.
//! - `compose_nowhere`: neither exists: one error naming both places.
//! - `zfs_volumes`: LXC ZFS datasets declared as `volumes[{name, pool, size_gb,
//!   mount_point}]` or `zfs_volumes`, beside a bind `volumes[{path, mount_point}]`.
//!
//! The Compose keys of the real stacks are the compose model's fixtures
//! (proto/src/model/compose).

use phoenix_coordinator::compile;
use phoenix_proto::model::{GuestId, MountSource};
use std::path::PathBuf;

fn shape(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/shapes")
        .join(name)
}

fn id(n: u32) -> GuestId {
    GuestId::try_from(n).expect("valid id")
}

/// The shape compiled from its base directory and from its `etc/`: both must agree.
fn both_ways(name: &str) -> Result<compile::Compiled, String> {
    let base = compile::load(&shape(name)).map_err(|e| e.to_string());
    let etc = compile::load(&shape(name).join("etc")).map_err(|e| e.to_string());
    assert_eq!(
        base, etc,
        "{name}: the base directory and etc/ read differently"
    );
    base
}

fn compose_image_of_1002(c: &compile::Compiled) -> String {
    let json = String::from_utf8_lossy(&c.guests[&id(1002)].spec.to_json()).into_owned();
    ["busybox:from-stacks-dir", "busybox:from-persistent-storage"]
        .into_iter()
        .find(|m| json.contains(m))
        .unwrap_or_else(|| panic!("no fixture compose file in the stack: {json}"))
        .to_owned()
}

#[test]
fn a_stale_compose_file_path_yields_to_the_stacks_directory() {
    let c = both_ways("stale_compose_file_path").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compose_image_of_1002(&c), "busybox:from-stacks-dir");
}

#[test]
fn a_compose_file_under_persistent_storage_is_read_relative_to_the_base_directory() {
    assert!(
        !shape("compose_in_persistent_storage")
            .join("stacks")
            .exists()
    );
    let c = both_ways("compose_in_persistent_storage").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compose_image_of_1002(&c), "busybox:from-persistent-storage");
}

#[test]
fn a_compose_file_in_neither_place_is_one_error_naming_both() {
    let err = both_ways("compose_nowhere").expect_err("no compose file anywhere");
    let base = shape("compose_nowhere");
    assert!(err.starts_with("1 config error:"), "{err}");
    assert!(
        err.contains(
            &base
                .join("stacks/web/docker-compose.yml")
                .display()
                .to_string()
        ) && err.contains(
            &base
                .join("persistent-storage/web/docker-compose.yml")
                .display()
                .to_string()
        ),
        "{err}"
    );
}

#[test]
fn both_legacy_zfs_volume_shapes_and_binds_are_declared_mounts() {
    let c = both_ways("zfs_volumes").unwrap_or_else(|e| panic!("{e}"));
    let mounts = |g: u32| {
        c.guests[&id(g)]
            .declared
            .mounts
            .iter()
            .map(|m| (m.path.clone(), m.kind, m.source.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        mounts(950),
        [(
            "/qdrant/storage".into(),
            MountSource::Zfs,
            "quickOS-tank/qdrant-data".into()
        )]
    );
    assert_eq!(
        mounts(951),
        [
            (
                "/models".into(),
                MountSource::Zfs,
                "quickOS-tank/models".into()
            ),
            (
                "/shared".into(),
                MountSource::Bind,
                "/mnt/pve/shared".into()
            ),
        ]
    );
}
