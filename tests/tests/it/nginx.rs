//! nginx from Debian's packages, installed by the agent with real apt inside the systemd
//! guest, serving a managed site over TLS, reloaded (not restarted) when its site file
//! changes; an HTTPS request proves each step. The `cert` resource kind is not in this
//! agent build yet, so a PEM file (certificate + key, made here with openssl) stands in.

use phoenix_tests::guest::Guest;
use serde_json::{Value, json};

const SITE: &str = "/etc/nginx/sites-enabled/phoenix.conf";
const PEM: &str = "/etc/ssl/phoenix/site.pem";
const INDEX: &str = "/var/www/phoenix/index.html";
const TUNING: &str = "/etc/nginx/conf.d/phoenix-tuning.conf";

/// The LXC 101 state: nginx, three files, a cert stand-in, one service.
fn state(rev: &str, pem: &str) -> Value {
    let site = format!(
        "server {{\n  listen 443 ssl;\n  server_name site.test;\n  ssl_certificate {PEM};\n  ssl_certificate_key {PEM};\n  root /var/www/phoenix;\n  add_header X-Phoenix-Rev {rev};\n}}\n"
    );
    json!({"resources": [
        {"kind": "package", "name": "nginx"},
        {"kind": "file", "path": PEM, "content": pem, "mode": "0600"},
        {"kind": "file", "path": INDEX, "content": "hello from phoenix\n"},
        {"kind": "file", "path": TUNING, "content": "server_tokens off;\n", "depends_on": ["package:nginx"]},
        {"kind": "file", "path": SITE, "content": site, "depends_on": ["package:nginx"]},
        {"kind": "service", "name": "nginx.service", "enabled": true, "state": "running",
         "reload_on": [format!("file:{SITE}"), format!("file:{PEM}"), format!("file:{TUNING}")],
         "depends_on": ["package:nginx", format!("file:{SITE}"), format!("file:{PEM}"),
                        format!("file:{TUNING}"), format!("file:{INDEX}")]}
    ]})
}

/// An HTTPS request inside the guest that verifies nginx's certificate against `PEM`.
fn https(g: &Guest) -> String {
    g.ok(&format!(
        "sed -n '/BEGIN CERT/,/END CERT/p' {PEM} > /root/ca.pem && curl -sS -i --cacert /root/ca.pem --resolve site.test:443:127.0.0.1 https://site.test/"
    ))
}

#[test]
fn nginx_serves_a_managed_site_over_tls_and_reloads_on_change() {
    let pem = phoenix_tests::guest::self_signed("site.test").map(|(c, k)| format!("{c}{k}"));
    if !phoenix_tests::require("openssl (to make the stand-in certificate)", pem.is_some()) {
        return;
    }
    let pem = pem.unwrap_or_default();
    let Some(g) = Guest::boot("nginx", &[]) else {
        return;
    };
    assert_eq!(
        g.ok("dpkg-query -W -f='${db:Status-Abbrev}' nginx 2>/dev/null || echo none"),
        "none"
    );

    let a = g.apply(&state("v1", &pem));
    a.assert(&[
        ("package:nginx", "changed"),
        (&format!("file:{SITE}"), "changed"),
        ("service:nginx.service", "changed"),
    ]);
    let page = https(&g);
    assert!(
        page.contains("hello from phoenix") && page.contains("X-Phoenix-Rev: v1"),
        "{page}"
    );
    assert!(
        !page.contains("Server: nginx/"),
        "server_tokens off applied: {page}"
    );

    // Idempotent: nothing touched, nginx not restarted or reloaded.
    let watched = [SITE, PEM, INDEX, TUNING, "/var/lib/dpkg/status"];
    let before = g.mtimes(&watched);
    let (pid, inv) = (
        g.unit_prop("nginx.service", "MainPID"),
        g.unit_prop("nginx.service", "InvocationID"),
    );
    let workers =
        g.ok("cat /proc/$(systemctl show -p MainPID --value nginx.service)/task/*/children");
    g.apply(&state("v1", &pem)).assert_all_unchanged();
    assert_eq!(g.mtimes(&watched), before);
    assert_eq!(g.unit_prop("nginx.service", "InvocationID"), inv);
    assert_eq!(
        g.ok("cat /proc/$(systemctl show -p MainPID --value nginx.service)/task/*/children"),
        workers,
        "same worker processes: no reload either"
    );

    // Site changed: reloaded (same master process, new workers), new header served.
    g.apply(&state("v2", &pem)).assert(&[
        (&format!("file:{SITE}"), "changed"),
        ("service:nginx.service", "changed"),
        ("package:nginx", "unchanged"),
    ]);
    assert_eq!(
        g.unit_prop("nginx.service", "MainPID"),
        pid,
        "reloaded, not restarted"
    );
    assert_eq!(g.unit_prop("nginx.service", "InvocationID"), inv);
    let page = phoenix_tests::wait_for(
        std::time::Duration::from_secs(10),
        "nginx to serve v2",
        || {
            let p = https(&g);
            p.contains("X-Phoenix-Rev: v2").then_some(p)
        },
    );
    assert!(page.contains("hello from phoenix"), "{page}");
}

/// The gateway's compiled drop-in (`compile::NGINX_CHECKED_RELOAD`) with the real nginx: a
/// broken site fails the reload, the report says so, and the old configuration keeps serving.
#[test]
fn a_broken_gateway_site_fails_the_checked_reload_and_the_old_site_keeps_serving() {
    let pem = phoenix_tests::guest::self_signed("site.test").map(|(c, k)| format!("{c}{k}"));
    if !phoenix_tests::require("openssl (to make the stand-in certificate)", pem.is_some()) {
        return;
    }
    let pem = pem.unwrap_or_default();
    let Some(g) = Guest::boot("nginx-checked", &[]) else {
        return;
    };
    let with_dropin = |mut v: Value| {
        for r in v["resources"].as_array_mut().into_iter().flatten() {
            if r["kind"] == "service" {
                r["dropins"] = json!({
                    "phoenix-checked-reload": phoenix_coordinator::compile::NGINX_CHECKED_RELOAD
                });
            }
        }
        v
    };
    g.apply(&with_dropin(state("v1", &pem))).assert(&[
        ("package:nginx", "changed"),
        ("service:nginx.service", "changed"),
    ]);
    assert!(https(&g).contains("X-Phoenix-Rev: v1"));
    let pid = g.unit_prop("nginx.service", "MainPID");

    // A site nginx refuses: `nginx -t` fails inside the reload, the service is reported failed.
    let mut broken = with_dropin(state("v1", &pem));
    for r in broken["resources"].as_array_mut().into_iter().flatten() {
        if r["path"] == SITE {
            r["content"] = json!("server {\n  listen 443 ssl;\n  no_such_directive on;\n}\n");
        }
    }
    let a = g.apply(&broken);
    assert!(!a.ok, "a failed reload fails the apply: {}", a.stderr);
    let st = a.statuses();
    assert_eq!(st[&format!("file:{SITE}")], "changed", "{st:?}");
    assert_eq!(st["service:nginx.service"], "failed", "{}", a.stderr);
    let detail = a.report["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == "service:nginx.service"))
        .map(|r| r.to_string())
        .unwrap_or_default();
    assert!(detail.contains("reload"), "{detail}");
    // Same master, old configuration still answering.
    assert_eq!(g.unit_prop("nginx.service", "MainPID"), pid);
    assert_eq!(g.unit_prop("nginx.service", "ActiveState"), "active");
    assert!(https(&g).contains("X-Phoenix-Rev: v1"));
}
