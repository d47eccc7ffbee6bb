//! Declared mount points and volumes against what a real agent observes in
//! `/proc/self/mountinfo`: a missing one and a wrong filesystem are listed under DECLARED VS
//! OBSERVED in `phoenix status`, one that is there is not.

use phoenix_tests::spine::{Coordinator, enrolled, guest_status};

/// The filesystem type of `/` on this machine, from the same file the agent reads.
fn root_fs_type() -> String {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    phoenix_agent::facts::mounts(&text)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == "/")
        .map(|m| m.fs_type)
        .unwrap_or_default()
}

#[test]
fn status_shows_declared_mounts_that_are_missing_or_of_the_wrong_kind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let _a = enrolled(&c, tmp.path(), 902);
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    // Both historical shapes: `mount_points` (binds) and `zfs_volumes`.
    std::fs::write(
        etc.join("phoenix_lxc_configs.json"),
        r#"{"lxc_configs": {"902": {"name": "mounts", "memory_mb": 512,
            "network_config": {"name": "eth0", "bridge": "vmbr0", "ip": "dhcp"},
            "mount_points": [
                {"host_path": "/mnt/pve/root", "container_path": "/"},
                {"host_path": "/mnt/pve/models", "container_path": "/mnt/phoenix-test-not-mounted"}
            ],
            "zfs_volumes": [
                {"name": "qdrant-data", "pool": "quickOS-tank", "size_gb": 10, "mount_point": "/"}
            ]}}}"#,
    )
    .expect("write");
    let out = c.cli(&[
        "apply",
        "-f",
        etc.to_str().expect("utf8"),
        "--timeout",
        "30s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = guest_status(&c.status(), 902).expect("row");
    let mismatches: Vec<String> = row["mismatches"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        mismatches.iter().any(|m| m
            == "mount: declared /mnt/phoenix-test-not-mounted (bind /mnt/pve/models), observed nothing mounted"),
        "{mismatches:#?}"
    );
    // `/` is mounted (a bind only needs something there): not listed as a bind.
    assert!(
        !mismatches
            .iter()
            .any(|m| m.starts_with("mount: declared / (bind")),
        "{mismatches:#?}"
    );
    let root = root_fs_type();
    if root != "zfs" {
        assert!(
            mismatches.iter().any(|m| m
                .starts_with("mount: declared / (zfs quickOS-tank/qdrant-data), observed ")
                && m.contains(&root)),
            "{mismatches:#?}"
        );
    }
    let table = String::from_utf8_lossy(&c.cli(&["status", "-o", "wide"]).stdout).to_string();
    assert!(
        table.contains("DECLARED VS OBSERVED")
            && table.contains("mount: declared /mnt/phoenix-test-not-mounted"),
        "{table}"
    );
}
