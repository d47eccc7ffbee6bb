//! Layer 4, resource makers: the effect of each application script whose effect is known,
//! as resources (the vLLM unit, the gateway's nginx, Traefik, Step-CA, Ollama). Which
//! script name means which function is said once, in [`super::catalog`]. Imports layers
//! 0–3 and `builder`, `features`.

use super::builder::Builder;
use super::features::{self, Item, abs};
use super::phoenix::GuestConfig;
use super::reader::Diag;
use super::types::Problem;
use phoenix_proto::model::{Ensure, EnvName, FileSpec, Resource, ResourceRef, UnitSpec};
use std::collections::BTreeMap;

const VLLM_UNIT: &str = "vllm_model_server.service";

/// The unit `phoenix_hypervisor_lxc_vllm.sh` writes, with the same environment.
pub(crate) fn vllm_service(g: &GuestConfig, v: &super::vllm::VllmArgs) -> Item {
    let mut exec_start = vec![
        "/opt/vllm/bin/python".to_string(),
        "-m".into(),
        "vllm.entrypoints.openai.api_server".into(),
    ];
    exec_start.extend(v.args.iter().cloned());
    let environment: BTreeMap<EnvName, String> = [
        ("CUDA_HOME", "/usr/local/cuda"),
        ("LD_LIBRARY_PATH", "/usr/local/cuda/lib64"),
        (
            "PATH",
            "/opt/vllm/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("VLLM_USE_FLASHINFER_SAMPLER", "1"),
        ("TORCH_CUDA_ARCH_LIST", "12.0"),
    ]
    .into_iter()
    .map(|(k, v)| (features::known(k), v.to_string()))
    .collect();
    let unit = UnitSpec {
        environment,
        secret_environment: v.secret_environment.clone(),
        user: Some(features::known("root")),
        working_directory: Some(abs("/opt/vllm")),
        ..daemon(
            format!("vLLM OpenAI-compatible API server ({})", g.name),
            exec_start,
            10,
        )
    };
    installed_service(VLLM_UNIT, Some(unit), "vllm-install")
}

/// A long-running server's unit: always restarted, started once the network is online.
fn daemon(description: String, exec_start: Vec<String>, restart_sec: u32) -> UnitSpec {
    UnitSpec {
        description,
        exec_start,
        restart: Some("always".into()),
        restart_sec: Some(restart_sec),
        after: vec![features::known("network-online.target")],
        wants: vec![features::known("network-online.target")],
        ..UnitSpec::default()
    }
}

/// Service `name` (with Phoenix's own `unit`, if any), ordered after the guarded `exec`
/// that installs its program.
fn installed_service(name: &str, unit: Option<UnitSpec>, install: &str) -> Item {
    let mut svc = features::service(name);
    svc.unit = unit;
    Item {
        resource: Resource::Service(svc),
        after: vec![ResourceRef::new("exec", install)],
    }
}

/// `phoenix_hypervisor_lxc_vllm.sh`: its unit comes from `vllm_engine_config` (see [`vllm_service`]), which must be there.
pub(crate) fn vllm_server(g: &GuestConfig, path: &str, _b: &mut Builder, d: &mut Diag) {
    if g.vllm.is_none() {
        d.error(
            &g.file,
            path,
            Problem::Missing(
                "vllm_engine_config (or the legacy vllm_* keys) for phoenix_hypervisor_lxc_vllm.sh"
                    .into(),
            ),
        );
    }
}

/// Debian's default site, enabled by the nginx package: it listens on port 80 as
/// `default_server`, like the gateway, and nginx refuses two (`nginx -t` fails).
const NGINX_DEFAULT_SITE: &str = "/etc/nginx/sites-enabled/default";

/// `phoenix_hypervisor_lxc_101.sh`: the Nginx gateway (its files come from `etc/nginx/`).
/// The script empties `sites-enabled/` before linking the gateway in; here only Debian's
/// default site is disabled (its link removed; `sites-available/default` stays), so a file
/// someone else put there is left alone.
pub(crate) fn nginx_gateway(g: &GuestConfig, _path: &str, b: &mut Builder, d: &mut Diag) {
    b.add(features::pkg("nginx").into(), g, d);
    let default_site = Resource::File(FileSpec {
        path: abs(NGINX_DEFAULT_SITE),
        ensure: Ensure::Absent,
        content: String::new(),
        mode: None,
        owner: None,
        group: None,
        depends_on: vec![ResourceRef::new("package", "nginx")],
    });
    let default_site_id = default_site.id();
    b.add(default_site.into(), g, d);
    let mut svc = features::service("nginx.service");
    svc.depends_on = vec![
        ResourceRef::new("package", "nginx"),
        default_site_id.clone(),
    ];
    svc.reload_on = vec![default_site_id];
    b.add(Resource::Service(svc).into(), g, d);
}

/// `phoenix_hypervisor_lxc_102.sh`: Traefik, as a unit of its own.
pub(crate) fn traefik_proxy(g: &GuestConfig, _path: &str, b: &mut Builder, d: &mut Diag) {
    let unit = daemon(
        "Traefik reverse proxy".into(),
        vec![
            "/usr/local/bin/traefik".into(),
            "--configFile=/etc/traefik/traefik.yml".into(),
        ],
        5,
    );
    b.add(
        installed_service("traefik.service", Some(unit), "install-traefik"),
        g,
        d,
    );
}

/// `phoenix_hypervisor_lxc_103.sh`: the Step-CA server, as a unit of its own.
pub(crate) fn step_ca_server(g: &GuestConfig, path: &str, b: &mut Builder, d: &mut Diag) {
    let unit = UnitSpec {
        environment: [(features::known("STEPPATH"), "/root/.step".to_string())].into(),
        ..daemon(
            "Step-CA certificate authority".into(),
            // Flags before the config path: step-ca 0.19 (urfave/cli) takes everything
            // after the first positional argument as positional and refuses to start
            // ("too many positional arguments").
            vec![
                "/usr/bin/step-ca".into(),
                "--password-file".into(),
                "/root/.step/secrets/password.txt".into(),
                "/root/.step/config/ca.json".into(),
            ],
            5,
        )
    };
    b.add(
        installed_service("step-ca.service", Some(unit), "install-step-ca"),
        g,
        d,
    );
    d.warn(
        &g.file,
        path,
        "`step ca init` (creates the CA and its password file once) is not compiled; step-ca.service expects /root/.step",
    );
}

/// `phoenix_hypervisor_lxc_955.sh`: Ollama's service, installed by the `ollama` feature.
pub(crate) fn ollama_server(g: &GuestConfig, _path: &str, b: &mut Builder, d: &mut Diag) {
    b.add(
        installed_service("ollama.service", None, "install-ollama"),
        g,
        d,
    );
}
