//! Compiles the guests read by `phoenix` into one `GuestSpec` each.

use super::features::{self, FeatureCtx, FeatureProblem, Item, abs};
use super::phoenix::{self, GuestConfig, Hypervisor, StackRef, read_json};
use super::reader::{Diag, Node};
use super::{
    CompileOptions, Compiled, CompiledGuest, FirewallRule, GuestKind, Layout, MountKind, Problem,
    routing, secrets,
};
use phoenix_proto::model::compose;
use phoenix_proto::redact;
use phoenix_proto::model::{
    AbsPath, CertSpec, FileMode, GuestId, GuestSpec, Reload, Resource, ResourceRef, UnitSpec,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LXC_FILE: &str = "phoenix_lxc_configs.json";
const VM_FILE: &str = "phoenix_vm_configs.json";
const STACKS_FILE: &str = "phoenix_stacks_config.json";
const MANIFEST_FILE: &str = "certificate-manifest.json";
const HYPERVISOR_FILE: &str = "phoenix_hypervisor_config.json";

/// Files of the directory, parsed once and kept alive for the `Node`s that borrow them.
struct Files {
    lxc: Option<(PathBuf, Value)>,
    vm: Option<(PathBuf, Value)>,
    stacks: Option<(PathBuf, Value)>,
    manifest: Option<(PathBuf, Value)>,
    hypervisor: Option<(PathBuf, Value)>,
}

fn optional(dir: &Path, name: &str, d: &mut Diag) -> Option<(PathBuf, Value)> {
    let path = dir.join(name);
    if !path.exists() {
        return None;
    }
    let value = read_json(&path, d)?;
    secrets::scan(&Node::root(&path, &value), d);
    Some((path, value))
}

pub(crate) fn compile_phoenix(layout: &Layout, options: &CompileOptions, d: &mut Diag) -> Compiled {
    let dir = layout.etc.as_path();
    let files = Files {
        lxc: optional(dir, LXC_FILE, d),
        vm: optional(dir, VM_FILE, d),
        stacks: optional(dir, STACKS_FILE, d),
        manifest: optional(dir, MANIFEST_FILE, d),
        hypervisor: optional(dir, HYPERVISOR_FILE, d),
    };
    let hv = files
        .hypervisor
        .as_ref()
        .map(|(p, v)| phoenix::hypervisor(&Node::root(p, v), d))
        .unwrap_or_default();
    let mut guests: Vec<GuestConfig> = Vec::new();
    if let Some((p, v)) = &files.lxc {
        guests.extend(phoenix::lxc_guests(&Node::root(p, v), d));
    }
    if let Some((p, v)) = &files.vm {
        guests.extend(phoenix::vm_guests(&Node::root(p, v), d));
    }
    // The host sees a VM's NFS export under the Proxmox storage mount base.
    for g in &mut guests {
        for m in &mut g.facts.mount_points {
            if m.kind == MountKind::Nfs
                && let Some(export) = &m.host_path
            {
                let host = format!(
                    "{}{}",
                    hv.mount_point_base.trim_end_matches('/'),
                    export.as_str()
                );
                m.host_path = AbsPath::try_from(host).ok();
            }
        }
    }
    check_ids_and_dependencies(&guests, d);
    let routes = hv
        .domain_name
        .as_deref()
        .map(|domain| routing::routes(&guests, domain, d))
        .unwrap_or_default();

    let mut built: BTreeMap<GuestId, (GuestConfig, Builder)> = BTreeMap::new();
    let mut scanned = BTreeSet::new();
    for mut g in guests {
        if built.contains_key(&g.id) {
            continue;
        }
        let (b, stack_rules) = build_guest(&g, layout, &files, &hv, options, &mut scanned, d);
        g.facts.stack_firewall_rules = stack_rules;
        built.insert(g.id, (g, b));
    }
    if let Some((p, v)) = &files.manifest {
        certificates(&Node::root(p, v), &mut built, d);
    }
    routing_tier(layout, &hv, &routes, &mut built, d);

    let mut out = Compiled::default();
    for (id, (g, b)) in built {
        let spec = b.finish();
        secrets::check_leak(&spec, id, &g.file, &g.path, d);
        if let Err(errors) = spec.validate() {
            for e in errors {
                d.error(&g.file, &g.path, Problem::Model(e.to_string()));
            }
        }
        out.guests.insert(
            id,
            CompiledGuest {
                name: g.name,
                kind: g.kind,
                spec,
                declared: g.declared,
                facts: g.facts,
            },
        );
    }
    out
}

fn check_ids_and_dependencies(guests: &[GuestConfig], d: &mut Diag) {
    let mut seen: BTreeMap<GuestId, &GuestConfig> = BTreeMap::new();
    for g in guests {
        if seen.insert(g.id, g).is_some() {
            d.error(&g.file, &g.path, Problem::DuplicateGuest(g.id));
        }
    }
    for g in guests {
        for dep in &g.facts.dependencies {
            if !seen.contains_key(dep) {
                d.error(
                    &g.file,
                    &super::reader::join(&g.path, "dependencies"),
                    Problem::UnknownGuest(*dep),
                );
            }
        }
        if let Some(c) = g.facts.clone_from
            && !seen.contains_key(&c)
        {
            d.warn(
                &g.file,
                &g.path,
                format!("clones guest {c}, which no config defines"),
            );
        }
    }
    // Cycle check: depth-first over `dependencies`.
    fn visit(
        id: GuestId,
        seen: &BTreeMap<GuestId, &GuestConfig>,
        state: &mut BTreeMap<GuestId, bool>,
        stack: &mut Vec<GuestId>,
    ) -> Option<Vec<GuestId>> {
        match state.get(&id) {
            Some(true) => return None,
            Some(false) => {
                let start = stack.iter().position(|s| *s == id).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(id);
                return Some(cycle);
            }
            None => {}
        }
        state.insert(id, false);
        stack.push(id);
        if let Some(g) = seen.get(&id) {
            for dep in &g.facts.dependencies {
                if let Some(c) = visit(*dep, seen, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state.insert(id, true);
        None
    }
    let mut state = BTreeMap::new();
    for id in seen.keys() {
        if let Some(cycle) = visit(*id, &seen, &mut state, &mut Vec::new()) {
            let g = seen[&cycle[0]];
            let text: Vec<String> = cycle.iter().map(|c| c.to_string()).collect();
            d.error(
                &g.file,
                &super::reader::join(&g.path, "dependencies"),
                Problem::DependencyCycle(text.join(" -> ")),
            );
            break;
        }
    }
}

/// Resources of one guest, merged by id, with soft ordering edges.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    resources: Vec<Resource>,
    after: Vec<(ResourceRef, ResourceRef)>,
}

impl Builder {
    fn add(&mut self, item: Item, g: &GuestConfig, d: &mut Diag) {
        let id = item.resource.id();
        for a in item.after {
            self.after.push((id.clone(), a));
        }
        match self.resources.iter_mut().find(|r| r.id() == id) {
            None => self.resources.push(item.resource),
            Some(existing) => {
                let mut a = existing.clone();
                let mut b = item.resource;
                let deps: BTreeSet<ResourceRef> = deps_mut(&mut a)
                    .drain(..)
                    .chain(deps_mut(&mut b).drain(..))
                    .collect();
                if a != b {
                    d.warn(
                        &g.file,
                        &g.path,
                        format!(
                            "{id} is declared twice with different settings; the first one is kept"
                        ),
                    );
                }
                *deps_mut(existing) = deps.into_iter().collect();
            }
        }
    }

    /// `phoenix_resources` are the user's word: they replace a bundle's resource of
    /// the same id instead of merging with it.
    fn replace(&mut self, r: Resource) {
        let id = r.id();
        match self.resources.iter_mut().find(|x| x.id() == id) {
            Some(existing) => *existing = r,
            None => self.resources.push(r),
        }
    }

    /// `service` reloads (or restarts) when `changed` changed in the same pass.
    fn on_change(&mut self, service: &str, changed: ResourceRef, reload: bool) {
        for r in &mut self.resources {
            if let Resource::Service(s) = r
                && s.name == service
            {
                let list = if reload {
                    &mut s.reload_on
                } else {
                    &mut s.restart_on
                };
                if !list.contains(&changed) {
                    list.push(changed.clone());
                }
                self.after
                    .push((ResourceRef::new("service", service), changed));
                return;
            }
        }
    }

    /// Debian's nginx.service reloads without checking the configuration; this drop-in
    /// runs `nginx -t` first, so a broken file fails the reload and the old config keeps serving.
    fn nginx_checked_reload(&mut self) {
        for r in &mut self.resources {
            if let Resource::Service(s) = r
                && s.name == "nginx.service"
            {
                s.dropins.insert(
                    "phoenix-checked-reload".into(),
                    super::NGINX_CHECKED_RELOAD.into(),
                );
            }
        }
    }

    fn finish(mut self) -> GuestSpec {
        let ids: BTreeSet<ResourceRef> = self.resources.iter().map(Resource::id).collect();
        for (from, to) in std::mem::take(&mut self.after) {
            if from == to || !ids.contains(&to) {
                continue;
            }
            if let Some(r) = self.resources.iter_mut().find(|r| r.id() == from) {
                let deps = deps_mut(r);
                if !deps.contains(&to) {
                    deps.push(to);
                }
            }
        }
        GuestSpec {
            resources: self.resources,
        }
    }
}

fn deps_mut(r: &mut Resource) -> &mut Vec<ResourceRef> {
    match r {
        Resource::File(s) => &mut s.depends_on,
        Resource::Package(s) => &mut s.depends_on,
        Resource::AptSource(s) => &mut s.depends_on,
        Resource::Service(s) => &mut s.depends_on,
        Resource::Stack(s) => &mut s.depends_on,
        Resource::Cert(s) => &mut s.depends_on,
        Resource::Exec(s) => &mut s.depends_on,
    }
}

fn build_guest(
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
        match features::bundle(name, &ctx) {
            Ok(items) => {
                for i in items {
                    b.add(i, g, d);
                }
            }
            Err(FeatureProblem::Unknown) => d.error(
                &g.file,
                path,
                Problem::UnknownFeature {
                    name: name.clone(),
                    known: features::KNOWN.join(", "),
                },
            ),
            Err(FeatureProblem::NotCompiled(why)) => d.warn(
                &g.file,
                path,
                format!("feature {name:?} is not compiled: {why}"),
            ),
            Err(FeatureProblem::Missing(key)) => d.error(
                &g.file,
                &super::reader::join(&g.path, key),
                Problem::Missing(format!(
                    "{key} for feature {name:?} (on the guest or at the file root)"
                )),
            ),
        }
        if name == "trusted_ca"
            && options.trust_roots_pem.is_none()
            && !g
                .facts
                .mount_points
                .iter()
                .any(|m| step_ca_root.as_path().starts_with(m.guest_path.as_path()))
        {
            d.warn(
                &g.file,
                path,
                format!(
                    "trusted_ca copies {step_ca_root}, but no mount point of this guest provides it"
                ),
            );
        }
        if name == "nvidia" && g.facts.gpus.is_empty() {
            d.warn(
                &g.file,
                path,
                "feature \"nvidia\" on a guest without gpu_assignment",
            );
        }
    }
    if let Some(v) = &g.vllm {
        b.add(vllm_service(g, v), g, d);
    }
    if let Some((script, path)) = &g.application_script {
        application(script, path, g, &mut b, d);
    }
    let catalog = files.stacks.as_ref().map(|(p, v)| Node::root(p, v));
    let mut stack_rules = BTreeMap::new();
    for s in &g.stacks {
        if let Some((item, rules)) = stack(layout, catalog.as_ref(), s, g, scanned, d) {
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
    if let Some((script, path)) = &g.application_script {
        let (unit, dir, reload) = match script.as_str() {
            "phoenix_hypervisor_lxc_101.sh" => ("nginx.service", "/etc/nginx/", true),
            "phoenix_hypervisor_lxc_102.sh" => ("traefik.service", "/etc/traefik/", false),
            _ => ("", "", false),
        };
        if !unit.is_empty() {
            let files: Vec<ResourceRef> = b
                .resources
                .iter()
                .filter(|r| matches!(r, Resource::File(f) if f.path.as_str().starts_with(dir)))
                .map(Resource::id)
                .collect();
            if files.is_empty() {
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
    }
    (b, stack_rules)
}

/// The guest's own JSON node again (for keys only the compiler reads).
fn files_node<'a>(files: &'a Files, g: &GuestConfig) -> Option<Node<'a>> {
    let (p, v) = match g.kind {
        GuestKind::Lxc => files.lxc.as_ref()?,
        GuestKind::Vm => files.vm.as_ref()?,
        GuestKind::Unspecified => return None,
    };
    let root = Node::root(p, v);
    match g.kind {
        GuestKind::Lxc => root.get("lxc_configs")?.get(&g.id.to_string()),
        _ => {
            let vms = root.get("vms")?;
            let idx = vms.value.as_array()?.iter().position(|vm| {
                vm.get("vmid").is_some_and(|x| {
                    x.as_u64() == Some(u64::from(g.id.get()))
                        || x.as_str().map(str::trim) == Some(&g.id.to_string())
                })
            })?;
            Some(Node {
                file: p,
                path: format!("vms[{idx}]"),
                value: &v["vms"][idx],
            })
        }
    }
}

/// The Traefik guest gets the dynamic configuration of every route (Traefik watches the
/// file, so a changed route is live without a restart) and its static configuration
/// (restart on change); the gateway guest gets `etc/nginx/`, checked by `nginx -t` before
/// every reload, so a bad file fails the reload instead of taking the gateway down.
fn routing_tier(
    layout: &Layout,
    hv: &Hypervisor,
    routes: &[routing::Route],
    built: &mut BTreeMap<GuestId, (GuestConfig, Builder)>,
    d: &mut Diag,
) {
    for (g, b) in built.values_mut() {
        let script = g.application_script.as_ref().map(|(s, _)| s.as_str());
        let has = |f: &str| g.features.iter().any(|(n, _)| n == f);
        if script == Some("phoenix_hypervisor_lxc_102.sh") || has("traefik") {
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
        if script == Some("phoenix_hypervisor_lxc_101.sh") {
            let files = routing::gateway_files(&layout.etc, d);
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

const VLLM_UNIT: &str = "vllm_model_server.service";

/// The unit `phoenix_hypervisor_lxc_vllm.sh` writes, with the same environment.
fn vllm_service(g: &GuestConfig, v: &super::vllm::VllmArgs) -> Item {
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
fn application(script: &str, path: &str, g: &GuestConfig, b: &mut Builder, d: &mut Diag) {
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

fn stack(
    layout: &Layout,
    catalog: Option<&Node>,
    s: &StackRef,
    g: &GuestConfig,
    scanned: &mut BTreeSet<PathBuf>,
    d: &mut Diag,
) -> Option<(Item, Vec<FirewallRule>)> {
    let stack_dir = layout.stacks_dir().join(&s.name);
    let manifest_path = stack_dir.join("phoenix.json");
    let manifest_value = if manifest_path.is_file() {
        let v = read_json(&manifest_path, d)?;
        if scanned.insert(manifest_path.clone()) {
            secrets::scan(&Node::root(&manifest_path, &v), d);
        }
        Some(v)
    } else {
        None
    };
    let manifest = manifest_value
        .as_ref()
        .map(|v| Node::root(&manifest_path, v));
    let entry = catalog
        .and_then(|c| c.get("docker_stacks"))
        .and_then(|c| c.get(&s.name));
    if manifest.is_none() && entry.is_none() {
        d.error(
            &g.file,
            &s.path,
            Problem::Missing(format!(
                "stacks/{0}/phoenix.json or docker_stacks.{0} in {STACKS_FILE}",
                s.name
            )),
        );
        return None;
    }
    fn env_of<'a>(n: Option<&Node<'a>>, env: &str) -> Option<Node<'a>> {
        n.and_then(|n| n.get("environments"))
            .and_then(|e| e.get(env))
    }
    let env_manifest = env_of(manifest.as_ref(), &s.environment);
    let env_catalog = env_of(entry.as_ref(), &s.environment);
    if env_manifest.is_none() && env_catalog.is_none() {
        d.error(
            &g.file,
            &s.path,
            Problem::Missing(format!(
                "environment {:?} of stack {:?}",
                s.environment, s.name
            )),
        );
        return None;
    }
    // The manifest wins key by key; a key it lacks falls back to the catalog.
    let pick = |key: &str| {
        env_manifest
            .as_ref()
            .and_then(|e| e.get(key))
            .or_else(|| env_catalog.as_ref().and_then(|e| e.get(key)))
    };

    // main's scripts discover stacks from `stacks/<name>/`, so its compose file wins; the
    // catalog's `compose_file_path` (relative to the base directory) is the older place.
    let in_stack_dir = stack_dir.join("docker-compose.yml");
    let compose_path = if in_stack_dir.is_file() {
        in_stack_dir
    } else {
        let rel = entry
            .as_ref()
            .and_then(|e| e.get("compose_file_path"))
            .and_then(|n| n.text(d, "a path to the compose file"));
        match rel.map(|r| layout.base.join(r)) {
            Some(p) if p.is_file() => p,
            other => {
                let also = other
                    .map(|p| format!(" nor {}", p.display()))
                    .unwrap_or_default();
                d.error(
                    &g.file,
                    &s.path,
                    Problem::Missing(format!(
                        "compose file of stack {:?}: neither {}{also}",
                        s.name,
                        stack_dir.join("docker-compose.yml").display()
                    )),
                );
                return None;
            }
        }
    };
    let compose_raw = match std::fs::read_to_string(&compose_path) {
        Ok(t) => t,
        Err(e) => {
            d.error(&compose_path, "", Problem::Read(e.to_string()));
            return None;
        }
    };
    let mut variables = BTreeMap::new();
    if let Some(vars) = pick("variables") {
        for v in vars.items(d, "an array of {name, value}") {
            let name = v.opt(d, "name", |n, d| n.text(d, "a variable name"));
            let value = v.get("value").and_then(|n| match n.value {
                Value::String(x) => Some(x.clone()),
                Value::Number(x) => Some(x.to_string()),
                Value::Bool(x) => Some(x.to_string()),
                _ => {
                    n.expected(d, "a string, number or boolean");
                    None
                }
            });
            let Some(name) = name else {
                v.error(d, Problem::Missing("\"name\"".into()));
                continue;
            };
            let Some(value) = value else { continue };
            // Flagged by the secret scan; never copied into a spec.
            if secrets::is_literal_secret(&name, &value) {
                continue;
            }
            variables.insert(name, value);
        }
    }
    let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut label_paths: BTreeMap<String, Node> = BTreeMap::new();
    if let Some(services) = pick("services") {
        for (svc, n) in services.entries(d, "an object of services") {
            label_paths.insert(svc.clone(), n.clone());
            if let Some(list) = n.get("traefik_labels") {
                for l in list.items(d, "an array of \"key=value\" labels") {
                    match l.value.as_str() {
                        Some(t) if t.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty()) => {
                            labels.entry(svc.clone()).or_default().push(t.to_string())
                        }
                        _ => l.expected(d, "a label \"key=value\""),
                    }
                }
            }
        }
    }
    if let Some(f) = pick("files")
        && f.value.as_array().is_some_and(|a| !a.is_empty())
    {
        f.warn(
            d,
            "stack files (Portainer configs) are not compiled; mount them from the guest instead",
        );
    }
    // Host-root grants must be declared by the stack (manifest or catalog environment
    // key `host_access`, a list of grants as the agent prints them).
    let mut host_access = Vec::new();
    if let Some(list) = pick("host_access") {
        for n in list.items(
            d,
            "an array of grants such as \"bind /var/run/docker.sock\"",
        ) {
            if let Some(g) = n.text(d, "a grant such as \"bind /var/run/docker.sock\"") {
                host_access.push(g.trim().to_string());
            }
        }
    }
    let rules: Vec<FirewallRule> = pick("firewall_rules")
        .map(|n| phoenix::firewall_rules(&n, d))
        .unwrap_or_default();
    // The model's Compose parser: what passes here is what the agent will accept.
    let project = match compose::parse(&compose_raw, &variables) {
        Ok(p) => p,
        // One line per error: the parser's source excerpt repeats the file. Redacted,
        // since the line may quote a value.
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("").trim();
            d.error(
                &compose_path,
                "",
                Problem::Compose(redact::redact_line(line).into_owned()),
            );
            return None;
        }
    };
    let literals = secrets::compose_literals(&project);
    for l in &literals {
        d.secrets.push(l.value.clone());
        d.error(
            &compose_path,
            &l.field,
            Problem::Conflict(format!(
                "literal secret for {} (value redacted); keep it on the guest, e.g. in an env_file such as /etc/phoenix/secrets/{}.env",
                l.key, s.name
            )),
        );
    }
    // The agent also refuses binds of its own state directory and binds whose links lead
    // somewhere sensitive; only the guest can see those.
    let grants = compose::grants::detect(
        &project,
        &[std::path::PathBuf::from(
            compose::grants::DEFAULT_AGENT_STATE_DIR,
        )],
    );
    for g in &grants {
        let declared = host_access.iter().any(|a| a == &g.access);
        d.warn(
            &compose_path,
            &g.field,
            if declared {
                format!("service {} GRANTS HOST ACCESS: {} (declared in host_access)", g.service, g.access)
            } else {
                format!(
                    "service {} GRANTS HOST ACCESS: {}, not declared: the agent refuses stack {} until \"host_access\": [\"{}\"] is added to its environment {:?} in stacks/{}/phoenix.json",
                    g.service, g.access, s.name, g.access, s.environment, s.name
                )
            },
        );
    }
    for (svc, n) in &label_paths {
        if labels.contains_key(svc) && !project.services().contains_key(svc) {
            n.error(
                d,
                Problem::Expected {
                    expected: format!("a service of {}", compose_path.display()),
                    found: format!("{svc:?}"),
                },
            );
        }
    }
    if !literals.is_empty() {
        return None;
    }
    let mut spec = phoenix_proto::model::StackSpec::new(s.name.clone(), project);
    spec.environment = s.environment.clone();
    spec.labels = labels;
    spec.host_access = host_access;
    Some((
        Item {
            resource: Resource::Stack(spec),
            after: vec![ResourceRef::new("service", "docker.service")],
        },
        rules,
    ))
}

/// Certificate-manifest entries → `cert` resources in the guest that owns the path.
fn certificates(root: &Node, built: &mut BTreeMap<GuestId, (GuestConfig, Builder)>, d: &mut Diag) {
    for e in root.items(d, "an array of certificate entries") {
        if let Some((gid, item)) = certificate(&e, built, d)
            && let Some((g, b)) = built.get_mut(&gid)
        {
            b.add(item, g, d);
        }
    }
}

fn certificate(
    e: &Node,
    built: &BTreeMap<GuestId, (GuestConfig, Builder)>,
    d: &mut Diag,
) -> Option<(GuestId, Item)> {
    let required = |key: &str, d: &mut Diag| -> Option<Node> {
        let n = e.get(key);
        if n.is_none() {
            e.error(d, Problem::Missing(format!("\"{key}\"")));
        }
        n
    };
    let common_name = required("common_name", d).and_then(|n| host_name(&n, d));
    let cert_path = required("cert_path", d).and_then(|n| phoenix::abs_path(&n, d));
    let key_path = required("key_path", d).and_then(|n| phoenix::abs_path(&n, d));
    let sans: Vec<String> = e
        .get("sans")
        .map(|n| {
            n.items(d, "an array of DNS names or IPs")
                .iter()
                .filter_map(|s| host_name(s, d))
                .collect()
        })
        .unwrap_or_default();
    let (owner, group) = match e.get("owner") {
        Some(n) => match n.value.as_str() {
            Some(s) if !s.is_empty() => match s.split_once(':') {
                Some((u, g)) => (Some(u.to_string()), Some(g.to_string())),
                None => (Some(s.to_string()), None),
            },
            _ => {
                n.expected(d, "\"user\" or \"user:group\"");
                (None, None)
            }
        },
        None => (None, None),
    };
    let mode = e.get("permissions").and_then(|n| {
        let s = match n.value {
            Value::String(s) => s.clone(),
            Value::Number(x) => x.to_string(),
            _ => String::new(),
        };
        match FileMode::try_from(s) {
            Ok(m) if m.bits() <= 0o777 => Some((m, n)),
            _ => {
                n.expected(d, "octal permissions such as \"640\"");
                None
            }
        }
    });
    let command = e.opt(d, "post_renewal_command", |n, d| {
        n.string(d, "a shell command")
    });
    let command_target = command.as_deref().and_then(command_guest);
    let explicit = e.opt(d, "guest_id", |n, d| n.guest_id(d));
    if let Some(t) = e.get("cert_type")
        && t.value.as_str() == Some("client")
    {
        t.warn(
            d,
            "client certificates are issued with the same request as server ones",
        );
    }
    let (cn, cert_path, key_path) = (common_name?, cert_path?, key_path?);

    // Which guest: guest_id, else the guest the hook runs in, else the one whose mount
    // holds the path.
    let target = explicit.or(command_target).or_else(|| {
        let owners: Vec<GuestId> = built
            .iter()
            .filter(|(_, (g, _))| map_path(g, &cert_path).is_some())
            .map(|(id, _)| *id)
            .collect();
        (owners.len() == 1).then(|| owners[0])
    });
    let Some(target) = target else {
        e.error(
            d,
            Problem::Expected {
                expected: "a cert_path inside exactly one guest's mount points (or a guest_id)"
                    .into(),
                found: format!("{:?}", cert_path.as_str()),
            },
        );
        return None;
    };
    let Some((g, _)) = built.get(&target) else {
        e.error(d, Problem::UnknownGuest(target));
        return None;
    };
    if let (Some(a), Some(b)) = (explicit, command_target)
        && a != b
    {
        e.error(
            d,
            Problem::Conflict(format!(
                "guest_id is {a} but post_renewal_command runs in guest {b}"
            )),
        );
    }
    // Newer manifests with a guest_id may already give in-guest paths.
    let map = |p: &AbsPath, key: &str, d: &mut Diag| -> Option<AbsPath> {
        match map_path(g, p) {
            Some(mapped) => Some(mapped),
            None if explicit.is_some() => Some(p.clone()),
            None => {
                if let Some(n) = e.get(key) {
                    n.expected(d, format!("a path inside a mount point of guest {target}"));
                }
                None
            }
        }
    };
    let cert_in_guest = map(&cert_path, "cert_path", d)?;
    let key_in_guest = map(&key_path, "key_path", d)?;

    let mut reload = Vec::new();
    if let Some(cmd) = &command {
        match renewal_reload(cmd) {
            Some(r) => reload.push(r),
            None => {
                if let Some(n) = e.get("post_renewal_command") {
                    n.warn(
                        d,
                        "post_renewal_command has no `systemctl reload|restart <unit>` or `docker restart <container>`; nothing is reloaded",
                    );
                }
            }
        }
    }
    let (mode, key_mode) = match mode {
        Some((m, n)) => {
            let key_mode = if m.bits() & 0o007 != 0 {
                n.warn(
                    d,
                    format!(
                        "permissions {:04o} would make the private key world-readable; the key gets {:04o}",
                        m.bits(),
                        m.bits() & !0o007
                    ),
                );
                FileMode::try_from(format!("{:04o}", m.bits() & !0o007)).ok()?
            } else {
                m
            };
            (m, key_mode)
        }
        None => (
            FileMode::try_from("0644".to_string()).ok()?,
            FileMode::try_from("0600".to_string()).ok()?,
        ),
    };
    // A container restart needs the container: the cert waits for the stack that creates
    // it (the RCA's second failure). A reloaded service needs its unit: the cert waits for
    // what provides it (the package, or Phoenix's own unit file), not for the service's
    // start, since its configuration usually needs the cert first.
    let after = reload
        .iter()
        .flat_map(|r| match r {
            Reload::ContainerRestart(c) => built
                .get(&target)
                .and_then(|(_, b)| {
                    b.resources.iter().find_map(|r| match r {
                        Resource::Stack(s)
                            if s.project.service_with_container_name(c).is_some() =>
                        {
                            Some(r.id())
                        }
                        _ => None,
                    })
                })
                .into_iter()
                .collect::<Vec<_>>(),
            Reload::ServiceReload(u) | Reload::ServiceRestart(u) => built
                .get(&target)
                .and_then(|(_, b)| {
                    b.resources.iter().find_map(|r| match r {
                        Resource::Service(s) if &s.name == u => Some(if s.unit.is_some() {
                            vec![r.id()]
                        } else {
                            s.depends_on
                                .iter()
                                .filter(|d| d.kind() == "package")
                                .cloned()
                                .collect()
                        }),
                        _ => None,
                    })
                })
                .unwrap_or_default(),
        })
        .collect();
    let name: String = cn.chars().map(|c| if c == '*' { '_' } else { c }).collect();
    let spec = CertSpec {
        name,
        common_name: cn,
        sans,
        cert_path: cert_in_guest,
        key_path: key_in_guest,
        chain_path: None,
        ca_path: None,
        owner,
        group,
        mode,
        key_mode,
        ttl_seconds: 24 * 3600,
        reload,
        depends_on: Vec::new(),
    };
    Some((
        target,
        Item {
            resource: Resource::Cert(spec),
            after,
        },
    ))
}

fn host_name(n: &Node, d: &mut Diag) -> Option<String> {
    match n.value.as_str() {
        Some(s)
            if !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'*')
                }) =>
        {
            Some(s.to_string())
        }
        _ => {
            n.expected(d, "a DNS name or IP address");
            None
        }
    }
}

/// Host path → in-guest path through the guest's mounts (longest host prefix wins).
fn map_path(g: &GuestConfig, host: &AbsPath) -> Option<AbsPath> {
    g.facts
        .mount_points
        .iter()
        .filter_map(|m| {
            let base = m.host_path.as_ref()?;
            let rest = host.as_path().strip_prefix(base.as_path()).ok()?;
            Some((base.as_str().len(), m.guest_path.as_path().join(rest)))
        })
        .max_by_key(|(len, _)| *len)
        .and_then(|(_, p)| {
            AbsPath::try_from(p.to_string_lossy().trim_end_matches('/').to_string()).ok()
        })
}

/// `pct exec 101 -- ...` / `qm guest exec 1001 -- ...`.
fn command_guest(cmd: &str) -> Option<GuestId> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    words.windows(3).find_map(|w| match w {
        ["pct", "exec", id] => id.parse().ok(),
        ["guest", "exec", id] => id.parse().ok(),
        _ => None,
    })
}

/// The last `systemctl reload|restart <unit>` or `docker restart <name>` in the hook.
/// Waiting for the file (the traefik hook's loop) is unnecessary: the agent reloads
/// only after the new files are written and verified.
fn renewal_reload(cmd: &str) -> Option<Reload> {
    let words: Vec<String> = cmd
        .split(|c: char| c.is_whitespace() || c == ';' || c == '\'' || c == '"')
        .filter(|w| !w.is_empty() && *w != "&&")
        .map(str::to_string)
        .collect();
    let unit = |u: &str| {
        if u.contains('.') {
            u.to_string()
        } else {
            format!("{u}.service")
        }
    };
    words
        .windows(3)
        .rev()
        .find_map(|w| match [w[0].as_str(), w[1].as_str(), w[2].as_str()] {
            ["systemctl", "reload", u] => Some(Reload::ServiceReload(unit(u))),
            ["systemctl", "restart", u] => Some(Reload::ServiceRestart(unit(u))),
            ["docker", "restart", c] => Some(Reload::ContainerRestart(c.to_string())),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_hooks_become_reloads_in_the_guest() {
        assert_eq!(
            renewal_reload("pct exec 101 -- systemctl reload nginx"),
            Some(Reload::ServiceReload("nginx.service".into()))
        );
        assert_eq!(
            renewal_reload("qm guest exec 1001 -- docker restart portainer_server"),
            Some(Reload::ContainerRestart("portainer_server".into()))
        );
        assert_eq!(
            renewal_reload(
                "pct exec 102 -- /bin/bash -c 'while [ ! -f /x ]; do sleep 1; done; systemctl reload traefik'"
            ),
            Some(Reload::ServiceReload("traefik.service".into()))
        );
        assert_eq!(renewal_reload("echo rotated"), None);
        assert_eq!(
            command_guest("qm guest exec 1001 -- docker restart p").map(u32::from),
            Some(1001)
        );
        assert_eq!(command_guest("pct exec 102 -- x").map(u32::from), Some(102));
    }
}
