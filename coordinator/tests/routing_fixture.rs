//! What the routing fixture (tests/fixtures/routing, the configs of the real-nginx test
//! tests/tests/it/routing_tls.rs) compiles to, without Docker: the gateway's site is
//! `gateway.template` with the routing map of every `traefik_service`, Debian's default site
//! is disabled, the manifest's certificate lands in 101 and reloads nginx, and a changed
//! backend port changes the gateway's two site files and nothing else in any guest.

use phoenix_coordinator::compile;
use phoenix_proto::model::{Ensure, GuestId, Reload, Resource};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/routing")
}

fn id(n: u32) -> GuestId {
    GuestId::try_from(n).expect("id")
}

fn file<'a>(
    c: &'a compile::Compiled,
    guest: u32,
    path: &str,
) -> &'a phoenix_proto::model::FileSpec {
    c.guests[&id(guest)]
        .spec
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::File(f) if f.path.as_str() == path => Some(f),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{path} in guest {guest}"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

#[test]
fn the_gateway_gets_the_template_with_the_routes_its_cert_and_no_default_site() {
    let c = compile::load(&fixture()).unwrap_or_else(|e| panic!("{e}"));
    let site = &file(&c, 101, "/etc/nginx/sites-enabled/gateway").content;
    assert!(
        site.contains(
            "map $host $upstream_service {\n    default https://traefik.internal.phoenix.test:443;\n    ca.internal.phoenix.test http://10.0.0.10:9000;\n    web.internal.phoenix.test http://10.0.0.150:8000;\n}\n"
        ),
        "{site}"
    );
    assert!(!site.contains("##MAP_BLOCK##"), "{site}");
    assert_eq!(
        file(&c, 101, "/etc/nginx/sites-available/gateway").content,
        *site
    );
    assert_eq!(
        file(&c, 101, "/etc/nginx/sites-enabled/default").ensure,
        Ensure::Absent
    );
    let spec = &c.guests[&id(101)].spec;
    let cert = spec
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::Cert(s) => Some(s),
            _ => None,
        })
        .expect("the manifest's cert in 101");
    assert_eq!(
        cert.reload,
        [Reload::ServiceReload(
            "nginx.service".parse().expect("unit")
        )]
    );
    assert!(c.guests[&id(150)].spec.resources().is_empty());
    // The gateway's configuration is compiled: no warning that nginx runs without one.
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.message.contains("would run without")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn a_changed_backend_port_changes_only_the_gateways_site() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture(), dir.path());
    let before = compile::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let lxc = dir.path().join("etc/phoenix_lxc_configs.json");
    let text = std::fs::read_to_string(&lxc).expect("read");
    let moved = text.replace("\"port\": 8000", "\"port\": 8001");
    assert_ne!(moved, text);
    std::fs::write(&lxc, moved).expect("write");
    let after = compile::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let mut changed = Vec::new();
    for (gid, g) in &after.guests {
        let old = before.guests[gid].spec.resources();
        for (a, b) in g.spec.resources().iter().zip(old) {
            if a != b {
                changed.push(format!("{gid} {}", a.id()));
            }
        }
        assert_eq!(g.spec.resources().len(), old.len());
    }
    assert_eq!(
        changed,
        [
            "101 file:/etc/nginx/sites-available/gateway",
            "101 file:/etc/nginx/sites-enabled/gateway"
        ]
    );
    assert!(
        file(&after, 101, "/etc/nginx/sites-enabled/gateway")
            .content
            .contains("web.internal.phoenix.test http://10.0.0.150:8001;")
    );
}

/// Without `etc/nginx/`, nothing configures the gateway's nginx: the warning says so.
#[test]
fn a_gateway_without_etc_nginx_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture(), dir.path());
    std::fs::remove_dir_all(dir.path().join("etc/nginx")).expect("rm etc/nginx");
    let c = compile::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.warnings.iter().any(|w| w
            .message
            .contains("nginx.service would run without its configuration")),
        "{:?}",
        c.warnings
    );
}
