//! One guest's resources: its features, vLLM service, application script, stacks and
//! `phoenix_resources`; then the routing tier, which needs every guest's routes.
//!
//! Layer 6, per-guest assembly: imports layers 0–5 and `routing`, `stacks`.

use super::builder::Builder;
use super::catalog::{self, Meaning, Role};
use super::features::{FeatureCtx, FeatureProblem, Item, abs};
use super::files::{Files, Layout, files_node};
use super::phoenix::{GuestConfig, Hypervisor};
use super::reader::{Diag, Node};
use super::types::{CompileOptions, FirewallRule, GuestKind, Problem};
use super::{routing, scripts, stacks};
use phoenix_proto::model::{Ensure, GuestId, Resource, ResourceRef};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub(crate) fn build_guest(
    g: &GuestConfig,
    layout: &Layout,
    files: &Files,
    hv: &Hypervisor,
    options: &CompileOptions,
    scanned: &mut BTreeSet<PathBuf>,
    d: &mut Diag,
) -> (Builder, BTreeMap<String, Vec<FirewallRule>>) {
    let mut b = Builder::default();
    let step_ca_root = match g.kind {
        GuestKind::Vm => abs("/etc/step-ca/certs/phoenix_root_ca.crt"),
        _ => abs("/etc/step-ca/ssl/phoenix_root_ca.crt"),
    };
    let ctx = FeatureCtx {
        kind: g.kind,
        gpus: &g.facts.gpus,
        nvidia: &g.nvidia,
        cuda_version: &hv.cuda_version,
        portainer_role: g.facts.portainer_role.as_deref(),
        bootstrap_ca_url: g.bootstrap_ca_url.as_deref(),
        trust_roots_pem: options.trust_roots_pem.as_deref(),
        step_ca_root: step_ca_root.clone(),
        unprivileged: g.unprivileged,
    };
    for (name, path) in &g.features {
        let Some(feature) = catalog::feature(name) else {
            d.error(
                &g.file,
                path,
                Problem::UnknownFeature {
                    name: name.clone(),
                    known: catalog::compiled_features(),
                },
            );
            continue;
        };
        match feature.meaning {
            Meaning::Bundle(bundle) => match bundle(&ctx) {
                Ok(items) => {
                    for i in items {
                        b.add(i, g, d);
                    }
                }
                Err(FeatureProblem::Missing(key)) => d.error(
                    &g.file,
                    &super::reader::join(&g.path, key),
                    Problem::Missing(format!(
                        "{key} for feature {name:?} (on the guest or at the file root)"
                    )),
                ),
            },
            Meaning::NotCompiled(why) => d.warn(
                &g.file,
                path,
                format!("feature {name:?} is not compiled: {why}"),
            ),
        }
        if let Some(warning) = feature.check.and_then(|check| check(g, &ctx)) {
            d.warn(&g.file, path, warning);
        }
    }
    if let Some(v) = &g.vllm {
        b.add(scripts::vllm_service(g, v), g, d);
    }
    let script = g
        .application_script
        .as_ref()
        .map(|(name, path)| (name, path, catalog::script(name)));
    match script {
        Some((_, path, Some(script))) => (script.effect)(g, path, &mut b, d),
        Some((name, path, None)) => d.warn(
            &g.file,
            path,
            format!(
                "application script {name:?} is arbitrary bash and is not compiled; declare its effect as resources (phoenix_resources)"
            ),
        ),
        None => {}
    }
    let catalog = files.stacks.as_ref().map(|(p, v)| Node::root(p, v));
    let mut stack_rules = BTreeMap::new();
    for s in &g.stacks {
        if let Some((item, rules)) = stacks::stack(layout, catalog.as_ref(), s, g, scanned, d) {
            b.add(item, g, d);
            if !rules.is_empty() {
                stack_rules.insert(s.name.clone(), rules);
            }
        }
    }
    if let Some(extra) = files_node(files, g).and_then(|n| n.get("phoenix_resources")) {
        for r in extra.items(d, "an array of Phoenix resources (native format)") {
            match serde_json::from_value::<Resource>(r.value.clone()) {
                Ok(res) => b.replace(res),
                Err(e) => r.error(
                    d,
                    Problem::Expected {
                        expected: "a Phoenix resource (see `phoenix schema`)".into(),
                        found: e.to_string(),
                    },
                ),
            }
        }
    }
    // What the application scripts wrote that nothing compiles: say so, unless the
    // user declared it; if declared, the service follows changes of those files.
    if let Some((_, path, Some(script))) = script
        && let Some((unit, dir, reload)) = script.role.map(Role::config)
    {
        let files: Vec<ResourceRef> = b
            .resources
            .iter()
            .filter(|r| {
                matches!(r, Resource::File(f) if f.ensure == Ensure::Present && f.path.as_str().starts_with(dir))
            })
            .map(Resource::id)
            .collect();
        // The routing tier (below, once every guest is built) adds the gateway's files from
        // etc/nginx/ and Traefik's dynamic configuration when there is a domain.
        let compiled_later = match script.role {
            Some(Role::Gateway) => layout.etc.join("nginx").is_dir(),
            Some(Role::Traefik) => hv.domain_name.is_some(),
            None => false,
        };
        if files.is_empty() && !compiled_later {
            d.warn(
                &g.file,
                path,
                format!("{unit} would run without its configuration: nothing under {dir} is declared (phoenix_resources)"),
            );
        }
        if let Some(Resource::Service(svc)) = b
            .resources
            .iter_mut()
            .find(|r| r.id() == ResourceRef::new("service", unit))
        {
            let triggers = if reload {
                &mut svc.reload_on
            } else {
                &mut svc.restart_on
            };
            for f in files {
                if !triggers.contains(&f) {
                    triggers.push(f.clone());
                }
                if !svc.depends_on.contains(&f) {
                    svc.depends_on.push(f);
                }
            }
        }
    }
    (b, stack_rules)
}

/// The Traefik guest gets the dynamic configuration of every route (Traefik watches the
/// file, so a changed route is live without a restart) and its static configuration
/// (restart on change); the gateway guest gets `etc/nginx/`, checked by `nginx -t` before
/// every reload, so a bad file fails the reload instead of taking the gateway down.
pub(crate) fn routing_tier(
    layout: &Layout,
    hv: &Hypervisor,
    routes: &[routing::Route],
    built: &mut BTreeMap<GuestId, (GuestConfig, Builder)>,
    d: &mut Diag,
) {
    for (g, b) in built.values_mut() {
        let roles = catalog::roles(g);
        if roles.contains(&Role::Traefik) {
            let Some(domain) = hv.domain_name.as_deref() else {
                d.warn(
                    &g.file,
                    &g.path,
                    "no domain_name in phoenix_hypervisor_config.json: Traefik's routes are not compiled",
                );
                continue;
            };
            let dynamic = routing::managed(
                routing::TRAEFIK_DYNAMIC,
                routing::traefik_dynamic(routes, domain),
            );
            b.add(Resource::File(dynamic).into(), g, d);
            let template = layout.etc.join("traefik/traefik.yml.template");
            if let Ok(text) = std::fs::read_to_string(&template) {
                let file = routing::managed(routing::TRAEFIK_STATIC, text);
                let id = Resource::File(file.clone()).id();
                b.add(Resource::File(file).into(), g, d);
                b.on_change("traefik.service", id, false);
            }
        }
        if roles.contains(&Role::Gateway) {
            let files = routing::gateway_files(&layout.etc, routes, hv.domain_name.as_deref(), d);
            for f in files {
                let id = Resource::File(f.clone()).id();
                b.add(
                    Item {
                        resource: Resource::File(f),
                        after: vec![ResourceRef::new("package", "nginx")],
                    },
                    g,
                    d,
                );
                b.on_change("nginx.service", id, true);
            }
            b.nginx_checked_reload();
        }
    }
}
