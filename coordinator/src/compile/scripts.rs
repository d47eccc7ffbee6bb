//! Application scripts whose effect is known, as resources: the vLLM unit, the gateway's
//! nginx, Traefik, Step-CA and Ollama. Other scripts are arbitrary bash and are reported.

use super::Problem;
use super::builder::Builder;
use super::features::{self, Item, abs};
use super::phoenix::GuestConfig;
use super::reader::Diag;
use phoenix_proto::model::{Resource, ResourceRef, UnitSpec};
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
    let environment: BTreeMap<String, String> = [
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
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut svc = features::service(VLLM_UNIT);
    svc.unit = Some(UnitSpec {
        description: format!("vLLM OpenAI-compatible API server ({})", g.name),
        exec_start,
        environment,
        secret_environment: v.secret_environment.clone(),
        user: Some("root".into()),
        working_directory: Some(abs("/opt/vllm")),
        restart: Some("always".into()),
        restart_sec: Some(10),
        after: vec!["network-online.target".into()],
        wants: vec!["network-online.target".into()],
        ..UnitSpec::default()
    });
    Item {
        resource: Resource::Service(svc),
        after: vec![ResourceRef::new("exec", "vllm-install")],
    }
}

/// Application scripts whose effect is known become resources; others are reported.
pub(crate) fn application(
    script: &str,
    path: &str,
    g: &GuestConfig,
    b: &mut Builder,
    d: &mut Diag,
) {
    match script {
        "phoenix_hypervisor_lxc_vllm.sh" => {
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
        "phoenix_hypervisor_lxc_101.sh" => {
            b.add(features::pkg("nginx").into(), g, d);
            let mut svc = features::service("nginx.service");
            svc.depends_on = vec![ResourceRef::new("package", "nginx")];
            b.add(Resource::Service(svc).into(), g, d);
        }
        "phoenix_hypervisor_lxc_102.sh" => {
            let mut svc = features::service("traefik.service");
            svc.unit = Some(UnitSpec {
                description: "Traefik reverse proxy".into(),
                exec_start: vec![
                    "/usr/local/bin/traefik".into(),
                    "--configFile=/etc/traefik/traefik.yml".into(),
                ],
                restart: Some("always".into()),
                restart_sec: Some(5),
                after: vec!["network-online.target".into()],
                wants: vec!["network-online.target".into()],
                ..UnitSpec::default()
            });
            b.add(
                Item {
                    resource: Resource::Service(svc),
                    after: vec![ResourceRef::new("exec", "install-traefik")],
                },
                g,
                d,
            );
        }
        "phoenix_hypervisor_lxc_103.sh" => {
            let mut svc = features::service("step-ca.service");
            svc.unit = Some(UnitSpec {
                description: "Step-CA certificate authority".into(),
                // Flags before the config path: step-ca 0.19 (urfave/cli) takes everything
                // after the first positional argument as positional and refuses to start
                // ("too many positional arguments").
                exec_start: vec![
                    "/usr/bin/step-ca".into(),
                    "--password-file".into(),
                    "/root/.step/secrets/password.txt".into(),
                    "/root/.step/config/ca.json".into(),
                ],
                environment: [("STEPPATH".to_string(), "/root/.step".to_string())].into(),
                restart: Some("always".into()),
                restart_sec: Some(5),
                after: vec!["network-online.target".into()],
                wants: vec!["network-online.target".into()],
                ..UnitSpec::default()
            });
            b.add(
                Item {
                    resource: Resource::Service(svc),
                    after: vec![ResourceRef::new("exec", "install-step-ca")],
                },
                g,
                d,
            );
            d.warn(
                &g.file,
                path,
                "`step ca init` (creates the CA and its password file once) is not compiled; step-ca.service expects /root/.step",
            );
        }
        "phoenix_hypervisor_lxc_955.sh" => {
            let mut svc = features::service("ollama.service");
            svc.depends_on = Vec::new();
            b.add(
                Item {
                    resource: Resource::Service(svc),
                    after: vec![ResourceRef::new("exec", "install-ollama")],
                },
                g,
                d,
            );
        }
        other => d.warn(
            &g.file,
            path,
            format!(
                "application script {other:?} is arbitrary bash and is not compiled; declare its effect as resources (phoenix_resources)"
            ),
        ),
    }
}
