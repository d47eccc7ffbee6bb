//! `docker_stacks` → `stack` resources: the stack's manifest (`stacks/<name>/phoenix.json`)
//! or catalog entry, its compose file parsed and interpolated by the model's parser (the
//! agent runs the same checks on what it receives), its labels, host-access grants and
//! firewall rules. Literal secrets are found on the parsed project and refused.
//!
//! Layer 6, per-guest assembly: imports layers 0–5.

use super::facts;
use super::features::Item;
use super::files::{Layout, STACKS_FILE};
use super::phoenix::{GuestConfig, StackRef};
use super::reader::{Diag, Node, read_json};
use super::secrets;
use super::types::{FirewallRule, Problem};

/// Files a stack ships to its project directory on the guest.
mod ship {
    use super::{AbsPath, StackFile};
    use phoenix_proto::model::compose::ComposeProject;
    use std::path::Path;

    /// Most bytes shipped per stack: desired states carry them to every pass.
    const MAX_SHIPPED: usize = 1 << 20;

    /// Build contexts and config files that exist beside the compose file, as stack
    /// files under the project directory. Secrets are never shipped (they stay on the
    /// guest, mounted by reference). Text only: a desired state carries UTF-8.
    pub(super) fn shipped_files(
        project: &ComposeProject,
        project_dir: &Path,
        compose_dir: &Path,
    ) -> Result<Vec<StackFile>, String> {
        let mut wanted: Vec<&str> = Vec::new();
        for svc in project.services().values() {
            if let Some(b) = &svc.build {
                wanted.push(b.context.as_str());
            }
        }
        let mut out: Vec<StackFile> = Vec::new();
        let mut total = 0usize;
        for guest in wanted {
            let Ok(rel) = Path::new(guest).strip_prefix(project_dir) else {
                continue;
            };
            let local = compose_dir.join(rel);
            if !local.is_dir() {
                continue;
            }
            let mut stack = vec![local.clone()];
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(&dir)
                    .map_err(|e| format!("read build context {}: {e}", dir.display()))?;
                for e in entries {
                    let e = e.map_err(|e| format!("read build context {}: {e}", dir.display()))?;
                    let path = e.path();
                    let kind = e.file_type().map_err(|e| e.to_string())?;
                    if kind.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    if !kind.is_file() {
                        continue;
                    }
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        format!("build context file {}: {e} (only text files are shipped; keep others on the guest)", path.display())
                    })?;
                    total += text.len();
                    if total > MAX_SHIPPED {
                        return Err(format!(
                            "build contexts are larger than {MAX_SHIPPED} bytes; keep them on the guest"
                        ));
                    }
                    let Ok(inner) = path.strip_prefix(compose_dir) else {
                        continue;
                    };
                    let dest = project_dir.join(inner);
                    let dest = AbsPath::try_from(dest.to_string_lossy().into_owned())
                        .map_err(|e| e.to_string())?;
                    if !out.iter().any(|f| f.path == dest) {
                        out.push(StackFile {
                            path: dest,
                            content: text,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        Ok(out)
    }
}
use phoenix_proto::model::compose;
use phoenix_proto::model::{
    AbsPath, DEFAULT_PROJECTS_DIR, Resource, ResourceRef, StackFile, StackSpec,
};
use phoenix_proto::redact;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub(crate) fn stack(
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
        .map(|n| facts::firewall_rules(&n, d))
        .unwrap_or_default();
    // Compose profiles to enable (`profiles`, a list of names; `*` for all).
    let mut profiles = Vec::new();
    if let Some(list) = pick("profiles") {
        for n in list.items(d, "an array of Compose profile names") {
            if let Some(p) = n.text(d, "a profile name") {
                profiles.push(p);
            }
        }
    }
    // The project directory on the guest: where relative paths of the compose file
    // lead and where shipped files (build contexts, configs) are written.
    let default_dir = format!("{DEFAULT_PROJECTS_DIR}/{}", s.name);
    let project_dir = match pick("project_dir") {
        Some(n) => {
            let text = n.text(d, "an absolute directory on the guest")?;
            match AbsPath::try_from(text) {
                Ok(p) => p,
                Err(e) => {
                    n.error(d, Problem::Model(e.to_string()));
                    return None;
                }
            }
        }
        None => AbsPath::try_from(default_dir).ok()?,
    };
    let opts = compose::ParseOptions {
        variables: variables.clone(),
        project_dir: Some(project_dir.as_path().to_path_buf()),
        project_name: Some(s.name.clone()),
        profiles: profiles.clone(),
    };
    // The model's Compose parser: what passes here is what the agent will accept.
    let project = match compose::parse_with(&compose_raw, &opts) {
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
        &[PathBuf::from(compose::grants::DEFAULT_AGENT_STATE_DIR)],
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
    // Never let a literal secret into a spec, whatever else failed.
    if !literals.is_empty() {
        return None;
    }
    let compose_dir = compose_path.parent().map(PathBuf::from).unwrap_or_default();
    let files =
        ship::shipped_files(&project, project_dir.as_path(), &compose_dir).unwrap_or_else(|why| {
            d.error(&compose_path, "", Problem::Compose(why));
            Vec::new()
        });
    let mut spec = StackSpec::new(s.name.clone(), project);
    spec.environment = s.environment.clone();
    spec.labels = labels;
    spec.host_access = host_access;
    spec.project_dir = Some(project_dir);
    spec.profiles = profiles;
    spec.files = files;
    Some((
        Item {
            resource: Resource::Stack(spec),
            after: vec![ResourceRef::new("service", "docker.service")],
        },
        rules,
    ))
}
