//! Layer 5, the catalog: what every Phoenix `features` entry and `application_script`
//! means, in one table each. A name not in a table is unknown (a feature) or arbitrary
//! bash (a script). The resources themselves are made in layer 4 ([`features`],
//! [`scripts`]); guest assembly (layer 6) asks only this module what a name means.
//! Imports layers 0–4.

use super::builder::Builder;
use super::features::{self, FeatureCtx, FeatureProblem, Item};
use super::phoenix::GuestConfig;
use super::reader::Diag;
use super::scripts;

/// The resources a feature stands for, or the key it lacks.
pub(crate) type Bundle = fn(&FeatureCtx) -> Result<Vec<Item>, FeatureProblem>;
/// A warning about the guest that has the feature, if its setup cannot work.
pub(crate) type Check = fn(&GuestConfig, &FeatureCtx) -> Option<String>;
/// What a script does to the guest: resources added to `b`, problems to `d`; `path` is
/// the JSON path of `application_script`.
pub(crate) type Effect = fn(&GuestConfig, &str, &mut Builder, &mut Diag);

/// The part a guest plays in the routing tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Traefik: gets every route's dynamic configuration and its static one.
    Traefik,
    /// The Nginx gateway: gets `etc/nginx/`, checked before every reload.
    Gateway,
}

impl Role {
    /// The service that reads the role's configuration directory, the directory, and
    /// whether a changed file there reloads (else restarts) the service.
    pub fn config(self) -> (&'static str, &'static str, bool) {
        match self {
            Role::Gateway => ("nginx.service", "/etc/nginx/", true),
            Role::Traefik => ("traefik.service", "/etc/traefik/", false),
        }
    }
}

pub(crate) enum Meaning {
    Bundle(Bundle),
    /// Known to Phoenix, but its job is done elsewhere (or not by the agent): why.
    NotCompiled(&'static str),
}

pub(crate) struct Feature {
    pub name: &'static str,
    pub meaning: Meaning,
    pub role: Option<Role>,
    pub check: Option<Check>,
}

pub(crate) struct Script {
    pub name: &'static str,
    pub effect: Effect,
    /// Set for a script that writes the role's configuration directory (which the
    /// compiler cannot see) besides starting its service.
    pub role: Option<Role>,
}

const CERTS_BY_AGENT: &str =
    "certificates are `cert` resources renewed by the agent, not copied by a script";
const NO_DOCKER_PROXY: &str = "the agent talks to the local Docker socket; no TCP proxy is set up";
const HOST_ROLE: &str = "a host/network role outside the agent's scope";

const fn bundle(name: &'static str, bundle: Bundle) -> Feature {
    Feature {
        name,
        meaning: Meaning::Bundle(bundle),
        role: None,
        check: None,
    }
}

const fn not_compiled(name: &'static str, why: &'static str) -> Feature {
    Feature {
        name,
        meaning: Meaning::NotCompiled(why),
        role: None,
        check: None,
    }
}

/// Every feature Phoenix's scripts install (`phoenix_hypervisor_feature_install_<f>.sh`,
/// `feature_install_<f>.sh`), in the order the "unknown feature" error lists them.
pub(crate) const FEATURES: &[Feature] = &[
    bundle("base_setup", |c| Ok(features::base_setup(c))),
    Feature {
        check: Some(trusted_ca_source),
        ..bundle("trusted_ca", |c| Ok(features::trusted_ca(c)))
    },
    bundle("step_cli", |c| Ok(features::step_cli(c))),
    bundle("step_ca", |_| Ok(features::step_ca())),
    bundle("docker", |c| Ok(features::docker(c))),
    Feature {
        check: Some(nvidia_gpus),
        ..bundle("nvidia", features::nvidia)
    },
    bundle("vllm", |c| Ok(features::vllm(c))),
    bundle("ollama", |_| Ok(features::ollama())),
    Feature {
        role: Some(Role::Traefik),
        ..bundle("traefik", |_| Ok(features::traefik()))
    },
    bundle("portainer", |c| Ok(features::portainer(c))),
    bundle("python_api_service", |_| Ok(features::python_api_service())),
    not_compiled("sync_traefik_certs", CERTS_BY_AGENT),
    not_compiled("sync_docker_certs", CERTS_BY_AGENT),
    not_compiled("docker_proxy", NO_DOCKER_PROXY),
    not_compiled("sync_docker_proxy", NO_DOCKER_PROXY),
    not_compiled("dns_server", HOST_ROLE),
    not_compiled("nat_gateway", HOST_ROLE),
];

/// The application scripts whose effect is known (the design's gateway, Traefik,
/// Step-CA and Ollama guests, and vLLM).
pub(crate) const SCRIPTS: &[Script] = &[
    Script {
        name: "phoenix_hypervisor_lxc_vllm.sh",
        effect: scripts::vllm_server,
        role: None,
    },
    Script {
        name: "phoenix_hypervisor_lxc_101.sh",
        effect: scripts::nginx_gateway,
        role: Some(Role::Gateway),
    },
    Script {
        name: "phoenix_hypervisor_lxc_102.sh",
        effect: scripts::traefik_proxy,
        role: Some(Role::Traefik),
    },
    Script {
        name: "phoenix_hypervisor_lxc_103.sh",
        effect: scripts::step_ca_server,
        role: None,
    },
    Script {
        name: "phoenix_hypervisor_lxc_955.sh",
        effect: scripts::ollama_server,
        role: None,
    },
];

pub(crate) fn feature(name: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.name == name)
}

pub(crate) fn script(name: &str) -> Option<&'static Script> {
    SCRIPTS.iter().find(|s| s.name == name)
}

/// The features that compile, for the "unknown feature" error.
pub(crate) fn compiled_features() -> String {
    FEATURES
        .iter()
        .filter(|f| matches!(f.meaning, Meaning::Bundle(_)))
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The roles a guest plays: its script's, then its features', each once.
pub(crate) fn roles(g: &GuestConfig) -> Vec<Role> {
    let from_script = g
        .application_script
        .as_ref()
        .and_then(|(s, _)| script(s))
        .and_then(|s| s.role);
    let from_features = g
        .features
        .iter()
        .filter_map(|(f, _)| feature(f).and_then(|f| f.role));
    let mut out = Vec::new();
    for r in from_script.into_iter().chain(from_features) {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// `trusted_ca` copies the Step-CA root that Phoenix shares into each guest; without
/// explicit roots, a guest none of whose mounts provides it gets nothing to copy.
fn trusted_ca_source(g: &GuestConfig, ctx: &FeatureCtx) -> Option<String> {
    let root = &ctx.step_ca_root;
    (ctx.trust_roots_pem.is_none()
        && !g
            .facts
            .mount_points
            .iter()
            .any(|m| root.as_path().starts_with(m.guest_path.as_path())))
    .then(|| format!("trusted_ca copies {root}, but no mount point of this guest provides it"))
}

fn nvidia_gpus(g: &GuestConfig, _: &FeatureCtx) -> Option<String> {
    g.facts
        .gpus
        .is_empty()
        .then(|| "feature \"nvidia\" on a guest without gpu_assignment".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::GuestKind;
    use crate::compile::features::abs;
    use crate::compile::phoenix::Nvidia;

    #[test]
    fn every_name_is_in_its_table_once() {
        for (i, f) in FEATURES.iter().enumerate() {
            assert!(
                FEATURES[i + 1..].iter().all(|o| o.name != f.name),
                "{}",
                f.name
            );
        }
        for (i, s) in SCRIPTS.iter().enumerate() {
            assert!(
                SCRIPTS[i + 1..].iter().all(|o| o.name != s.name),
                "{}",
                s.name
            );
        }
        assert!(feature("warp_drive").is_none());
        assert_eq!(
            compiled_features(),
            "base_setup, trusted_ca, step_cli, step_ca, docker, nvidia, vllm, ollama, traefik, portainer, python_api_service"
        );
    }

    #[test]
    fn every_known_feature_builds_a_valid_bundle() {
        let nvidia = Nvidia {
            driver_version: Some("580.76.05".into()),
            repo_url: Some("https://example.invalid/repo/".into()),
            runfile_url: Some("https://example.invalid/NVIDIA.run".into()),
        };
        for kind in [GuestKind::Lxc, GuestKind::Vm] {
            for gpus in [&[][..], &[0u32][..]] {
                let ctx = FeatureCtx {
                    kind,
                    gpus,
                    nvidia: &nvidia,
                    cuda_version: "12.8",
                    portainer_role: Some("agent"),
                    bootstrap_ca_url: Some("https://10.0.0.10:9000"),
                    trust_roots_pem: None,
                    step_ca_root: abs("/etc/step-ca/ssl/phoenix_root_ca.crt"),
                    unprivileged: true,
                };
                for Feature {
                    name: f, meaning, ..
                } in FEATURES
                {
                    let items = match meaning {
                        Meaning::Bundle(bundle) => {
                            bundle(&ctx).unwrap_or_else(|e| panic!("{f}: {e:?}"))
                        }
                        Meaning::NotCompiled(_) => continue,
                    };
                    let mut spec = phoenix_proto::model::GuestSpec::default();
                    for i in items {
                        if !spec.resources.iter().any(|r| r.id() == i.resource.id()) {
                            spec.resources.push(i.resource);
                        }
                    }
                    assert_eq!(spec.validate(), Ok(()), "feature {f} on {kind}");
                }
            }
        }
    }
}
