//! A guest service certificate against the real coordinator and a real systemd: issued and
//! renewed through the coordinator, owner and mode intact after every renewal, the declared
//! reload run exactly once per issuance.

use phoenix_tests::guest::Guest;
use phoenix_tests::spine::{Coordinator, converged, write_spec};
use phoenix_tests::wait_for;
use serde_json::json;
use std::time::Duration;

fn serial(g: &Guest) -> Option<String> {
    let pem = g.sh("cat /etc/ssl/phoenix/gw.crt").stdout;
    let chain = phoenix_pki::x509::parse_chain(&String::from_utf8_lossy(&pem), "cert").ok()?;
    Some(phoenix_pki::x509::inspect(&chain[0]).ok()?.serial_hex)
}

#[test]
fn service_cert_rotates_with_owner_mode_and_one_reload_per_renewal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let Some(g) = Guest::boot_on("certs", &[], "host") else {
        return;
    };
    let token = c.token(401);
    g.ok(&format!(
        "phoenix-agent --state-dir /var/lib/phoenix-agent join '{token}'"
    ));
    g.ok("nohup phoenix-agent --state-dir /var/lib/phoenix-agent run --file-root /etc --drift-interval 3 >/var/log/phoenix-agent.log 2>&1 &");
    let spec = json!({"resources": [
        {"kind": "service", "name": "fake-web.service", "state": "running", "enabled": true,
         "unit": {"description": "stands in for nginx", "exec_start": ["/bin/sleep", "infinity"],
                  "exec_reload": ["/bin/sh", "-c", "echo reload >> /etc/phoenix-reloads"]}},
        {"kind": "cert", "name": "gw", "common_name": "gw.lab", "sans": ["10.0.0.153"],
         "cert_path": "/etc/ssl/phoenix/gw.crt", "key_path": "/etc/ssl/phoenix/gw.key",
         "ca_path": "/etc/ssl/phoenix/ca.crt", "owner": "root", "group": "www-data",
         "mode": "0644", "key_mode": "0640", "ttl_seconds": 60,
         "reload": [{"service_reload": "fake-web.service"}],
         "depends_on": ["service:fake-web.service"]}
    ]});
    let file = tmp.path().join("spec.json");
    write_spec(&file, &[(401, spec)]);
    let out = c.cli(&[
        "apply",
        "-f",
        file.to_str().expect("utf8"),
        "--timeout",
        "60s",
    ]);
    assert!(
        out.status.success(),
        "{}{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        g.sh("cat /var/log/phoenix-agent.log").stdout.escape_ascii()
    );
    assert!(converged(&c.status(), 401));
    let mut serials = vec![serial(&g).expect("issued")];
    // Renewal is due at 2/3 of ~66 s; the agent's drift pass notices it.
    while serials.len() < 3 {
        let last = serials.last().cloned().unwrap_or_default();
        let next = wait_for(Duration::from_secs(90), "a renewal", || {
            serial(&g).filter(|s| *s != last)
        });
        serials.push(next);
        let meta = g.ok("stat -c '%U:%G %a' /etc/ssl/phoenix/gw.key /etc/ssl/phoenix/gw.crt");
        assert_eq!(
            meta,
            "root:www-data 640\nroot:www-data 644",
            "after renewal {}",
            serials.len() - 1
        );
        // nginx's worker user can read the key (the historical failure).
        g.ok("su -s /bin/sh www-data -c 'cat /etc/ssl/phoenix/gw.key' >/dev/null");
    }
    // Let the last renewal's reload happen, then count: one per issuance, no more.
    std::thread::sleep(Duration::from_secs(4));
    let reloads = g.ok("wc -l < /etc/phoenix-reloads");
    assert_eq!(reloads, "3", "issued 3 times: {serials:?}");
    assert_eq!(g.ok("systemctl is-active fake-web.service"), "active");
    let certs: serde_json::Value =
        serde_json::from_slice(&c.cli(&["certs", "-o", "json"]).stdout).expect("certs json");
    let entry = certs
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "cert:gw"))
        .cloned()
        .unwrap_or_else(|| panic!("service cert listed: {certs:#}"));
    assert_eq!(entry["guest"], 401);
    assert_eq!(entry["subject"], "gw.lab");
    assert!(entry["not_after_unix"].as_i64().unwrap_or(0) > 0, "{entry}");
    assert!(
        entry["last_result"] != "" && !entry["last_result"].to_string().contains("failed"),
        "{entry}"
    );
}
