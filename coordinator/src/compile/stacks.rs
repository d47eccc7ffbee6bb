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
    use phoenix_proto::model::compose::dockerignore::{DockerIgnore, secret_looking};
    use std::path::Path;

    /// Most bytes shipped per stack: desired states carry them to every pass.
    const MAX_SHIPPED: usize = 1 << 20;

    /// What shipping the build contexts found besides the files.
    #[derive(Default)]
    pub(super) struct Shipped {
        pub(super) files: Vec<StackFile>,
        /// Secret-looking files that are shipped (named like credentials): `path (why)`.
        pub(super) warnings: Vec<String>,
        /// Files holding a private key, not excluded by `.dockerignore`: never shipped,
        /// and the stack is refused (a private key does not belong in a desired state,
        /// which every pass carries and the coordinator stores).
        pub(super) refused: Vec<String>,
    }

    /// Build contexts that exist beside the compose file (as directories), as stack
    /// files under the project directory, leaving out what each context's
    /// `.dockerignore` excludes (the build would not see it either; the Dockerfile is
    /// always kept). Secrets are never shipped (they stay on the guest, mounted by
    /// reference). Text only: a desired state carries UTF-8.
    pub(super) fn shipped_files(
        project: &ComposeProject,
        project_dir: &Path,
        compose_dir: &Path,
    ) -> Result<Shipped, String> {
        let mut shipped = Shipped::default();
        let mut wanted: Vec<(&str, String)> = Vec::new();
        for svc in project.services().values() {
            if let Some(b) = &svc.build {
                let dockerfile = b.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
                wanted.push((b.context.as_str(), dockerfile));
            }
        }
        let mut out: Vec<StackFile> = Vec::new();
        let mut total = 0usize;
        for (guest, dockerfile) in wanted {
            let Ok(rel) = Path::new(guest).strip_prefix(project_dir) else {
                continue;
            };
            let local = compose_dir.join(rel);
            if !local.is_dir() {
                continue;
            }
            let ignore = std::fs::read_to_string(local.join(".dockerignore"))
                .map(|t| DockerIgnore::parse(&t))
                .unwrap_or_default();
            let mut stack = vec![local.clone()];
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(&dir)
                    .map_err(|e| format!("read build context {}: {e}", dir.display()))?;
                for e in entries {
                    let e = e.map_err(|e| format!("read build context {}: {e}", dir.display()))?;
                    let path = e.path();
                    let kind = e.file_type().map_err(|e| e.to_string())?;
                    let in_context = path
                        .strip_prefix(&local)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let always = in_context == dockerfile || in_context == ".dockerignore";
                    if !always && ignore.excludes(&in_context) {
                        // Ignored: skipped whole unless a `!` line may re-include below.
                        if !(kind.is_dir() && ignore.has_exceptions()) {
                            continue;
                        }
                    }
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
                    match secret_looking(&in_context, text.as_bytes()) {
                        Some(why) if why.contains("private key") => {
                            shipped.refused.push(path.display().to_string());
                            continue;
                        }
                        Some(why) => shipped.warnings.push(format!("{} ({why})", path.display())),
                        None => {}
                    }
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
        shipped.files = out;
        Ok(shipped)
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

/// Reads another file of the project (`extends: {file: …}`) beside the compose file.
/// The parser hands a path relative to the project directory that does not lead out of
/// it; a link that would is refused here.
fn project_reader(compose_dir: &std::path::Path) -> compose::FileReader {
    let dir = compose_dir.to_path_buf();
    compose::FileReader::new(move |rel| {
        let base = std::fs::canonicalize(&dir).map_err(|e| e.to_string())?;
        let path = std::fs::canonicalize(base.join(rel)).map_err(|e| e.to_string())?;
        if !path.starts_with(&base) {
            return Err("is reached through a link that leads out of the project directory".into());
        }
        std::fs::read_to_string(&path).map_err(|e| e.to_string())
    })
}

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
    let mut withheld = BTreeSet::new();
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
            // Flagged by the secret scan; never copied into a spec. Withheld from the
            // parser, so a reference to it is refused instead of becoming empty.
            if secrets::is_literal_secret(&name, &value) {
                withheld.insert(name);
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
    let compose_dir = compose_path.parent().map(PathBuf::from).unwrap_or_default();
    let opts = compose::ParseOptions {
        variables: variables.clone(),
        project_dir: Some(project_dir.as_path().to_path_buf()),
        project_name: Some(s.name.clone()),
        profiles: profiles.clone(),
        files: Some(project_reader(&compose_dir)),
        withheld,
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
    // Unset variables and the like: substituted as Compose does, and said (names only).
    for w in project.warnings() {
        d.warn(&compose_path, "", w.clone());
    }
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
    let shipped = ship::shipped_files(&project, project_dir.as_path(), &compose_dir)
        .unwrap_or_else(|why| {
            d.error(&compose_path, "", Problem::Compose(why));
            ship::Shipped::default()
        });
    for f in &shipped.warnings {
        d.warn(
            &compose_path,
            "",
            format!("build context file {f} looks like a secret: it is shipped to the guest and sent into the image build; list it in the context's .dockerignore or keep it on the guest"),
        );
    }
    for f in &shipped.refused {
        d.error(
            &compose_path,
            "",
            Problem::Compose(format!("build context file {f} holds a private key: it would be shipped in the desired state and built into the image; list it in the context's .dockerignore or keep it on the guest")),
        );
    }
    if !shipped.refused.is_empty() {
        return None;
    }
    let files = shipped.files;
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

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use phoenix_proto::model::{GuestId, Resource, StackSpec};
    use std::path::Path;

    fn compile(base: &Path) -> Result<StackSpec, String> {
        let c = crate::compile::load(&base.join("etc")).map_err(|e| e.to_string())?;
        let g = &c.guests[&GuestId::try_from(1002u32).unwrap()];
        g.spec
            .resources()
            .iter()
            .find_map(|r| match r {
                Resource::Stack(s) => Some(s.clone()),
                _ => None,
            })
            .ok_or_else(|| "no stack".into())
    }

    fn layout(base: &Path, manifest: &str, compose: &str) {
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::create_dir_all(base.join("stacks/web/app")).unwrap();
        std::fs::write(
            base.join("etc/phoenix_vm_configs.json"),
            r#"{"vms": [{"vmid": 1002, "name": "dr", "docker_stacks": ["web"]}]}"#,
        )
        .unwrap();
        std::fs::write(base.join("stacks/web/phoenix.json"), manifest).unwrap();
        std::fs::write(base.join("stacks/web/docker-compose.yml"), compose).unwrap();
        std::fs::write(base.join("stacks/web/app/Dockerfile"), "FROM busybox\n").unwrap();
    }

    const COMPOSE: &str = "services:\n  web:\n    build: ./app\n    volumes: [\"./data:/data\"]\n  debug:\n    image: busybox\n    profiles: [debug]\n";

    /// The manifest chooses the project directory and profiles; relative paths resolve
    /// there on the guest and the build context ships with the stack.
    #[test]
    fn project_directory_profiles_and_build_contexts_come_from_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        layout(
            dir.path(),
            r#"{"environments": {"production": {}}}"#,
            COMPOSE,
        );
        let s = compile(dir.path()).unwrap();
        assert_eq!(
            s.project_dir.as_ref().unwrap().as_str(),
            "/srv/phoenix/stacks/web"
        );
        let web = &s.project.services()["web"];
        assert_eq!(web.volumes[0].source, "/srv/phoenix/stacks/web/data");
        assert_eq!(
            web.build.as_ref().unwrap().context,
            "/srv/phoenix/stacks/web/app"
        );
        assert_eq!(web.image.as_str(), "web-web");
        assert!(!s.project.services().contains_key("debug"));
        let shipped: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(shipped, ["/srv/phoenix/stacks/web/app/Dockerfile"]);

        let dir = tempfile::tempdir().unwrap();
        layout(
            dir.path(),
            r#"{"environments": {"production": {"project_dir": "/opt/web", "profiles": ["debug"]}}}"#,
            COMPOSE,
        );
        let s = compile(dir.path()).unwrap();
        assert_eq!(s.profiles, ["debug"]);
        assert!(s.project.services().contains_key("debug"));
        assert_eq!(
            s.project.services()["web"].volumes[0].source,
            "/opt/web/data"
        );

        let dir = tempfile::tempdir().unwrap();
        layout(
            dir.path(),
            r#"{"environments": {"production": {}}}"#,
            "services:\n  web:\n    image: busybox\n    volumes: [\"../../etc:/host-etc\"]\n",
        );
        let e = compile(dir.path()).unwrap_err();
        assert!(e.contains("leads out of the project directory"), "{e}");
    }

    /// `phoenix validate` says what Compose would substitute (an unset variable, by name
    /// only), reads `extends` from another file beside the compose file, ships a build
    /// context without what its `.dockerignore` excludes, warns about a secret-looking
    /// file it ships and refuses to ship a private key.
    #[test]
    fn validate_warns_extends_other_files_and_ships_contexts_as_the_build_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        layout(
            base,
            r#"{"environments": {"production": {}}}"#,
            "services:\n  web:\n    extends: {file: common.yml, service: base}\n    build: ./app\n    environment: {MODE: \"${MODE}\"}\n",
        );
        std::fs::write(
            base.join("stacks/web/common.yml"),
            "services:\n  base:\n    image: busybox\n    labels: [from=common]\n",
        )
        .unwrap();
        std::fs::write(
            base.join("stacks/web/app/.dockerignore"),
            "*.log\nsecrets/\n",
        )
        .unwrap();
        std::fs::write(base.join("stacks/web/app/build.log"), "noise").unwrap();
        std::fs::create_dir_all(base.join("stacks/web/app/secrets")).unwrap();
        std::fs::write(
            base.join("stacks/web/app/secrets/id_rsa"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(base.join("stacks/web/app/.env"), "A=1\n").unwrap();
        let c = crate::compile::load(&base.join("etc")).unwrap();
        let warnings: Vec<&str> = c.warnings.iter().map(|w| w.message.as_str()).collect();
        let all = warnings.join("\n");
        assert!(
            all.contains("services.web.environment: variable MODE is not set"),
            "{all}"
        );
        assert!(
            all.contains("app/.env (is named like a credentials file)")
                && all.contains(".dockerignore"),
            "{all}"
        );
        let g = &c.guests[&GuestId::try_from(1002u32).unwrap()];
        let s = g
            .spec
            .resources()
            .iter()
            .find_map(|r| match r {
                Resource::Stack(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(s.project.services()["web"].labels["from"], "common");
        let shipped: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            shipped,
            [
                "/srv/phoenix/stacks/web/app/.dockerignore",
                "/srv/phoenix/stacks/web/app/.env",
                "/srv/phoenix/stacks/web/app/Dockerfile",
            ]
        );

        // `extends` through a link that leads out of the stack's directory: refused.
        std::fs::write(
            base.join("outside.yml"),
            "services:\n  base:\n    image: x\n",
        )
        .unwrap();
        std::fs::remove_file(base.join("stacks/web/common.yml")).unwrap();
        std::os::unix::fs::symlink(base.join("outside.yml"), base.join("stacks/web/common.yml"))
            .unwrap();
        let e = compile(base).unwrap_err();
        assert!(
            e.contains("services.web.extends") && e.contains("leads out of the project directory"),
            "{e}"
        );
        std::fs::remove_file(base.join("stacks/web/common.yml")).unwrap();
        std::fs::write(
            base.join("stacks/web/common.yml"),
            "services:\n  base:\n    image: busybox\n",
        )
        .unwrap();

        // A manifest variable that is a literal secret is kept out of the spec; a
        // reference to it is refused, never substituted by an empty string.
        std::fs::write(
            base.join("stacks/web/phoenix.json"),
            r#"{"environments": {"production": {"variables": [{"name": "MODE", "value": "hunter2-manifest-secret"}, {"name": "DB_PASSWORD", "value": "hunter2-manifest-secret"}]}}}"#,
        )
        .unwrap();
        std::fs::write(
            base.join("stacks/web/docker-compose.yml"),
            "services:\n  web:\n    build: ./app\n    environment: {PW: \"${DB_PASSWORD}\"}\n",
        )
        .unwrap();
        let e = compile(base).unwrap_err();
        assert!(
            e.contains("variable DB_PASSWORD is a literal secret") && !e.contains("hunter2"),
            "{e}"
        );
        std::fs::write(
            base.join("stacks/web/phoenix.json"),
            r#"{"environments": {"production": {}}}"#,
        )
        .unwrap();

        // A private key the .dockerignore does not exclude: refused, named, not quoted.
        std::fs::write(base.join("stacks/web/app/.dockerignore"), "*.log\n").unwrap();
        let e = compile(base).unwrap_err();
        assert!(
            e.contains("app/secrets/id_rsa holds a private key") && !e.contains("AAAA"),
            "{e}"
        );
    }
}
