//! The real Phoenix config files (read in place, never copied into this repo) load and
//! compile unchanged, and compile to what the Phoenix scripts would have done.

mod common;

use phoenix_coordinator::compile::{self, Compiled, GuestKind};
use phoenix_proto::model::{GuestId, Reload, Resource};
use std::path::PathBuf;

/// `PHOENIX_SAMPLES`, else `../shared/phoenix/main` next to the repository: the base
/// directory of a real host (`/usr/local/phoenix_hypervisor`), with `etc/` beside `stacks/`.
fn samples() -> Option<PathBuf> {
    let dir = std::env::var_os("PHOENIX_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/phoenix/main")
        });
    if dir.join("etc/phoenix_lxc_configs.json").is_file() {
        return Some(dir);
    }
    let reason = format!("Phoenix sample configs not found at {}", dir.display());
    if std::env::var("PHOENIX_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{reason} (PHOENIX_REQUIRE_ALL=1; set PHOENIX_SAMPLES)");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

fn id(n: u32) -> GuestId {
    GuestId::try_from(n).expect("valid id")
}

fn load() -> Option<Compiled> {
    let dir = samples()?;
    Some(compile::load(&dir).unwrap_or_else(|e| panic!("samples must compile:\n{e}")))
}

#[test]
fn every_sample_file_loads_and_compiles() {
    let Some(dir) = samples() else { return };
    let whole = compile::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    // 12 containers and 3 VMs in the main branch's files.
    let lxc = whole
        .guests
        .values()
        .filter(|g| g.kind == GuestKind::Lxc)
        .count();
    let vm = whole
        .guests
        .values()
        .filter(|g| g.kind == GuestKind::Vm)
        .count();
    assert_eq!((lxc, vm), (12, 3));
    // The base directory and its etc/ are the same install.
    let etc = compile::load(&dir.join("etc")).unwrap_or_else(|e| panic!("etc/: {e}"));
    assert_eq!(etc.guests, whole.guests, "etc/ vs base dir");
    // Each Phoenix file named directly stands for its directory and compiles the same.
    for entry in std::fs::read_dir(dir.join("etc")).expect("read samples") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") && !name.ends_with(".schema.json") {
            let one = compile::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(one.guests, whole.guests, "{name}");
        }
    }
    // Every stack manifest the VMs name was read (stacks/<name>/phoenix.json).
    for g in whole.guests.values() {
        for r in g.spec.resources() {
            if let Resource::Stack(s) = r {
                assert!(
                    dir.join("stacks")
                        .join(&s.name)
                        .join("phoenix.json")
                        .is_file()
                );
            }
        }
    }
}

/// Every guest compiled from the real configs (templates too) is a state the agent
/// accepts through its wire conversion: the VM 1002 portainer cert's container restart
/// included.
#[test]
fn every_compiled_sample_passes_the_agents_validation() {
    let Some(c) = load() else { return };
    for (id, g) in &c.guests {
        let d = common::as_the_agent_receives(g.spec.to_json())
            .unwrap_or_else(|e| panic!("guest {id}: {e}"));
        assert_eq!(d.spec, g.spec, "guest {id}");
    }
}

#[test]
fn vllm_engine_config_becomes_the_model_server_unit() {
    let Some(c) = load() else { return };
    let g = &c.guests[&id(910)];
    let unit = g
        .spec
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::Service(s) if s.name == "vllm_model_server.service" => s.unit.clone(),
            _ => None,
        })
        .expect("vllm unit");
    let argv = unit.exec_start.join(" ");
    assert!(argv.starts_with("/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server "));
    for part in [
        "--model Qwen/Qwen2.5-7B-Instruct-AWQ",
        "--quantization awq_marlin",
        "--gpu_memory_utilization 0.5",
        "--tensor_parallel_size 2",
        "--served_model_name qwen2.5-7b-awq",
        "--port 8000",
    ] {
        assert!(argv.contains(part), "{part} missing from {argv}");
    }
    // true is a bare flag.
    assert!(unit.exec_start.iter().any(|a| a == "--trust_remote_code"));
    let i = unit
        .exec_start
        .iter()
        .position(|a| a == "--trust_remote_code")
        .expect("flag");
    assert!(
        unit.exec_start
            .get(i + 1)
            .is_none_or(|n| n.starts_with("--"))
    );
    // 801's CacheConfig has no quantization (schema drift): no flag, no error.
    let g801 = serde_json::to_string(&c.guests[&id(801)].spec).expect("json");
    assert!(!g801.contains("--quantization"));
    assert!(g801.contains("ibm-granite/granite-embedding-english-r2"));
}

#[test]
fn manifest_certs_land_in_the_owning_guest_with_in_guest_paths_and_reloads() {
    let Some(c) = load() else { return };
    let cert = |g: u32, cn: &str| {
        c.guests[&id(g)]
            .spec
            .resources()
            .iter()
            .find_map(|r| match r {
                Resource::Cert(s) if s.common_name == cn => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("cert {cn} in guest {g}"))
    };
    let nginx = cert(101, "nginx.internal.thinkheads.ai");
    assert_eq!(
        nginx.cert_path.as_str(),
        "/etc/nginx/ssl/nginx.internal.thinkheads.ai.crt"
    );
    assert_eq!(nginx.group.as_deref(), Some("www-data"));
    assert_eq!(nginx.key_mode.bits(), 0o640);
    assert_eq!(
        nginx.reload,
        [Reload::ServiceReload(
            "nginx.service".parse().expect("name")
        )]
    );

    let portainer = cert(1001, "portainer.internal.thinkheads.ai");
    assert_eq!(
        portainer.cert_path.as_str(),
        "/persistent-storage/portainer/certs/portainer.crt"
    );
    assert_eq!(
        portainer.reload,
        [Reload::ContainerRestart(
            "portainer_server".parse().expect("name")
        )]
    );
    // The hook needs the container: the cert waits for the stack that creates it.
    assert!(
        portainer
            .depends_on
            .iter()
            .any(|d| d.as_str() == "stack:portainer_service")
    );

    let traefik = cert(102, "traefik.internal.thinkheads.ai");
    assert_eq!(
        traefik.cert_path.as_str(),
        "/etc/traefik/certs/traefik.internal.thinkheads.ai.crt"
    );
    // The hook says `systemctl reload traefik`, but the unit Phoenix generates for Traefik
    // has no reload command (systemctl reload would fail after every renewal): the cert
    // restarts it instead, with a warning.
    assert_eq!(
        traefik.reload,
        [Reload::ServiceRestart(
            "traefik.service".parse().expect("name")
        )]
    );
    assert!(c.warnings.iter().any(|w| {
        w.path == "[2].post_renewal_command"
            && w.message
                .contains("traefik.service is a unit Phoenix generates without a reload command")
    }));
    // "644" for a private key is not copied: the key loses world access, with a warning.
    assert_eq!(traefik.key_mode.bits(), 0o640);
    assert!(c.warnings.iter().any(|w| w.path == "[2].permissions"));
}

#[test]
fn stacks_get_manifest_labels_and_catalog_variables_but_never_literal_secrets() {
    let Some(c) = load() else { return };
    let vm = &c.guests[&id(1002)];
    let stacks: Vec<_> = vm
        .spec
        .resources()
        .iter()
        .filter_map(|r| match r {
            Resource::Stack(s) => Some(s),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = stacks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["qdrant_service", "thinkheads_ai_app"]);
    let qdrant = stacks[0];
    assert_eq!(
        qdrant.project.services()["qdrant"].image.as_str(),
        "qdrant/qdrant:latest"
    );
    assert!(qdrant.labels["qdrant"].contains(&"traefik.enable=true".to_string()));
    assert!(
        qdrant
            .depends_on
            .iter()
            .any(|d| d.as_str() == "service:docker.service")
    );
    let app = stacks[1];
    // The catalog's variables are interpolated at compile time.
    let svc = &app.project.services()["thinkheads_ai_app"];
    assert_eq!(
        svc.environment.get("API_PORT").map(String::as_str),
        Some("8000")
    );
    assert_eq!(svc.ports[0].host_port, Some(8000));
    assert!(
        !serde_json::to_string(app)
            .expect("json")
            .contains("DATABASE_PASS")
    );
    for g in c.guests.values() {
        let json = serde_json::to_string(g).expect("json");
        assert!(
            !json.contains("SECRET_PASSWORD"),
            "a literal secret reached a spec"
        );
    }
    let flagged: Vec<&str> = c
        .warnings
        .iter()
        .filter(|w| w.message.starts_with("literal secret"))
        .map(|w| w.path.as_str())
        .collect();
    assert!(
        flagged.contains(
            &"docker_stacks.thinkheads_ai_app.environments.production.variables[1].value"
        )
    );
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.to_string().contains("SECRET_PASSWORD"))
    );
    // portainer_service binds the Docker socket and its manifest declares no host_access:
    // validate shows the grant, and the agent will refuse the stack until it is declared.
    assert!(
        c.warnings.iter().any(|w| w.message.contains(
            "service portainer GRANTS HOST ACCESS: bind /var/run/docker.sock, not declared"
        )),
        "{:?}",
        c.warnings
    );
    // Stack manifests' firewall rules are kept as facts of the guest.
    assert_eq!(vm.facts.stack_firewall_rules["qdrant_service"].len(), 2);
}

#[test]
fn declared_resources_facts_and_root_fallbacks_are_kept() {
    let Some(c) = load() else { return };
    let g = &c.guests[&id(101)];
    assert_eq!(g.declared.cores, Some(4));
    assert_eq!(g.declared.memory_mb, Some(4096));
    assert_eq!(g.declared.storage_gb, Some(32));
    assert_eq!(g.declared.ips, ["10.0.0.153/24"]);
    assert_eq!(g.facts.mount_points.len(), 3);
    assert_eq!(g.facts.dependencies, [id(103)]);
    let fw = g.facts.firewall.as_ref().expect("firewall");
    assert!(fw.rules.iter().any(|r| r.ports == ["80", "443"]));
    // "0, 1" with a space.
    assert_eq!(c.guests[&id(901)].facts.gpus, [0, 1]);
    // nvidia_* come from the file root: the driver exec names the root's version.
    let json = serde_json::to_string(&c.guests[&id(901)].spec).expect("json");
    assert!(json.contains("580.76.05"));
    // VM values fall back to vm_defaults; "dhcp" is accepted.
    let tmpl = &c.guests[&id(9000)];
    assert_eq!(tmpl.declared.cores, Some(2));
    assert_eq!(tmpl.declared.ips, ["dhcp"]);
    // Dependencies give a start order.
    let order = c.start_order();
    let pos = |g: u32| order.iter().position(|x| *x == id(g)).expect("in order");
    assert!(pos(103) < pos(102) && pos(102) < pos(1001) && pos(1001) < pos(1002));
    assert!(pos(1002) < pos(801));
}

/// The routes `bin/generate_traefik_config.sh` would write for the sample, by guest: the
/// compiled `dynamic_conf.yml` in the Traefik guest (102) is parsed as YAML and compared
/// route by route. Traefik itself is not installable here (no Debian package), so the
/// file is checked by parsing, not by a running Traefik.
#[test]
fn traefik_routes_of_the_sample_match_the_old_generator() {
    let Some(c) = load() else { return };
    let file = c.guests[&id(102)]
        .spec
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::File(f) if f.path.as_str() == "/etc/traefik/dynamic/dynamic_conf.yml" => {
                Some(f.content.clone())
            }
            _ => None,
        })
        .expect("102 carries Traefik's dynamic configuration");
    let y: serde_json::Value = serde_saphyr::from_str(&file).expect("valid YAML");
    let expected = [
        ("granite-embedding", "http://10.0.0.141:8000", false),
        ("granite-3b", "http://10.0.0.142:8000", false),
        ("nginx", "http://10.0.0.153:443", false),
        ("ollama", "http://10.0.0.155:11434", false),
        ("llamacpp", "http://10.0.0.157:8081", false),
        ("ca", "http://10.0.0.10:9000", false),
        ("portainer", "https://10.0.0.111:9443", true),
        ("portainer-agent", "https://10.0.0.102:9001", true),
    ];
    let routers = y["http"]["routers"].as_object().expect("routers");
    let services = y["http"]["services"].as_object().expect("services");
    assert_eq!(routers.len(), expected.len() + 1, "{routers:?}");
    assert_eq!(services.len(), expected.len(), "{services:?}");
    assert_eq!(
        routers["traefik-dashboard-router"]["service"],
        "api@internal"
    );
    for (name, url, tls) in expected {
        let r = &routers[&format!("{name}-router")];
        assert_eq!(
            r["rule"],
            format!("Host(`{name}.internal.thinkheads.ai`)"),
            "{name}"
        );
        assert_eq!(r["service"], format!("{name}-service"));
        assert_eq!(r["entryPoints"], serde_json::json!(["web"]));
        let lb = &services[&format!("{name}-service")]["loadBalancer"];
        assert_eq!(lb["servers"], serde_json::json!([{ "url": url }]), "{name}");
        assert_eq!(
            lb.get("serversTransport").and_then(|t| t.as_str()),
            tls.then_some("internal-ca@file"),
            "{name}"
        );
    }
    assert_eq!(
        y["http"]["serversTransports"]["internal-ca"]["rootCAs"],
        serde_json::json!(["/etc/step-ca/ssl/phoenix_root_ca.crt"])
    );
    // Only 102 gets it; the gateway (101) gets etc/nginx instead, reloaded after `nginx -t`.
    for (gid, g) in &c.guests {
        let has = g.spec.resources().iter().any(
            |r| matches!(r, Resource::File(f) if f.path.as_str().starts_with("/etc/traefik/")),
        );
        assert_eq!(has, u32::from(*gid) == 102, "guest {gid}");
    }
    let gw = &c.guests[&id(101)].spec;
    let site = gw
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::File(f) if f.path.as_str() == "/etc/nginx/sites-enabled/gateway" => Some(f),
            _ => None,
        })
        .expect("gateway site");
    assert!(site.content.contains("proxy_pass $upstream_service;"));
    let nginx = gw
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::Service(s) if s.name == "nginx.service" => Some(s),
            _ => None,
        })
        .expect("nginx.service");
    assert!(
        nginx
            .reload_on
            .iter()
            .any(|r| r.to_string().contains("/etc/nginx/sites-enabled/gateway")),
        "{:?}",
        nginx.reload_on
    );
    assert!(nginx.dropins["phoenix-checked-reload"].contains("nginx -t"));
}

/// A cert that reloads a service waits for what provides the unit (here nginx's package):
/// before, it could be issued first and its reload failed on a unit that did not exist yet.
#[test]
fn the_gateway_cert_is_issued_after_the_unit_it_reloads_exists() {
    let Some(c) = load() else { return };
    let cert = c.guests[&id(101)]
        .spec
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::Cert(s) if s.common_name == "nginx.internal.thinkheads.ai" => Some(s),
            _ => None,
        })
        .expect("101's cert from the manifest");
    assert_eq!(
        cert.reload,
        [Reload::ServiceReload(
            "nginx.service".parse().expect("name")
        )]
    );
    assert!(
        cert.depends_on
            .iter()
            .any(|d| d.to_string() == "package:nginx"),
        "{:?}",
        cert.depends_on
    );
}
