//! Host-root grants: the parts of a Compose project that hand a container control of the
//! guest (binds of `/`, `/etc` or the Docker socket, extra capabilities, host devices).
//!
//! Docker accepts all of them silently, so a stack could take the guest while its plan
//! said only "create container". Phoenix refuses each grant unless the stack lists it in
//! `StackSpec::host_access` (exactly as printed here, e.g. `bind /var/run/docker.sock`),
//! and every plan line that creates such a container names its grants.
//!
//! `network_mode: host` puts the container in the guest's network namespace (every
//! interface, every port, services bound to localhost): a grant, declared as
//! `network_mode host`. `privileged`, `pid`, `ipc` and `userns_mode` are refused by the
//! parser with their reason, and `security_opt` accepts only `no-new-privileges`, so they
//! cannot be granted. GPU reservations (`deploy.resources.reservations.devices`) are not counted:
//! they expose accelerator nodes, not the guest.

use super::{ComposeProject, MountKind};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Where the agent keeps its state (owner key, persisted desired state) unless told
/// otherwise. A bind of it would hand a container the agent's keys, so it is protected
/// like `SENSITIVE`; the coordinator checks with this default, the agent with its own.
pub const DEFAULT_AGENT_STATE_DIR: &str = "/var/lib/phoenix-agent";

/// Host paths a container must not see without a declaration: the guest's root, its
/// configuration and credentials, kernel interfaces, raw devices and the Docker engine
/// (whose socket and data directory are root on the guest). A bind of any of them, of
/// anything beneath them, or of any parent of them (`/var` contains `/var/run/docker.sock`)
/// is a grant, with one exception: a read-only bind of a single item beneath `/etc` (an
/// application's config or secret file) is not, unless it is one of `ETC_CREDENTIALS`.
pub const SENSITIVE: &[&str] = &[
    "/",
    "/etc",
    "/root",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
];

/// Beneath `/etc`, what even a read-only bind must not expose: password hashes, sudo
/// rules, SSH host keys.
const ETC_CREDENTIALS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
];

/// Capabilities in Docker's default set: adding them changes nothing. Any other
/// capability (SYS_ADMIN, SYS_MODULE, SYS_PTRACE, NET_ADMIN, ALL, ones unknown today) is a
/// grant.
const DEFAULT_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// One grant of one service (or one volume, for `service` = `volumes`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// The Compose key that asks for it, e.g. `services.web.volumes`.
    pub field: String,
    /// The service whose container receives it.
    pub service: String,
    /// What is granted, in the form a stack declares it: `bind /`, `cap_add SYS_ADMIN`,
    /// `device /dev/mem`.
    pub access: String,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.access, self.field)
    }
}

/// `path` with `.` and `..` folded and trailing slashes dropped, without touching the
/// file system (`..` above `/` stays at `/`, as the kernel resolves it).
pub fn normalize(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Whether a bind of `path` (absolute, normalized) exposes a sensitive path or one of
/// `protected` (the agent's own state directory).
pub fn is_sensitive(path: &Path, read_only: bool, protected: &[PathBuf]) -> bool {
    let etc = Path::new("/etc");
    if read_only
        && path.starts_with(etc)
        && path != etc
        && !ETC_CREDENTIALS.iter().any(|c| path.starts_with(c))
        && !protected
            .iter()
            .any(|p| p.starts_with(path) || path.starts_with(p))
    {
        return false;
    }
    SENSITIVE
        .iter()
        .map(PathBuf::from)
        .chain(protected.iter().cloned())
        // Everything is beneath `/`: only `/` itself counts for it.
        .any(|s| (s != Path::new("/") && path.starts_with(&s)) || s.starts_with(path))
}

fn cap_name(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

/// Every grant of `project`, by looking at the file only: bind sources as written
/// (normalized), capabilities, devices, and named volumes whose local-driver options
/// bind a host path. `protected` adds directories beyond `SENSITIVE`.
pub fn detect(project: &ComposeProject, protected: &[PathBuf]) -> Vec<Grant> {
    detect_resolved(project, protected, |_| None)
}

/// As `detect`, and also checks where each bind source really leads: `resolve` returns
/// the canonical path of an existing source (Docker follows links in bind sources, so
/// `/srv/x -> /` is a bind of `/`).
pub fn detect_resolved(
    project: &ComposeProject,
    protected: &[PathBuf],
    resolve: impl Fn(&Path) -> Option<PathBuf>,
) -> Vec<Grant> {
    let mut out = Vec::new();
    let bind_grant = |source: &str, read_only: bool| -> Option<String> {
        let lexical = normalize(source);
        if is_sensitive(&lexical, read_only, protected) {
            return Some(format!("bind {}", lexical.display()));
        }
        let real = resolve(&lexical)?;
        is_sensitive(&real, read_only, protected).then(|| format!("bind {}", real.display()))
    };
    // A local-driver volume with `o: bind` (or a device path) mounts a host path too.
    let mut volume_grants: BTreeMap<&str, String> = BTreeMap::new();
    for (key, v) in project.volumes() {
        if let Some(device) = v.driver_opts.get("device")
            && device.starts_with('/')
            && let Some(access) = bind_grant(device, false)
        {
            volume_grants.insert(key, access);
        }
    }
    for (name, svc) in project.services() {
        let field = |k: &str| format!("services.{name}.{k}");
        let mut push = |field: String, access: String| {
            out.push(Grant {
                field,
                service: name.clone(),
                access,
            })
        };
        for m in &svc.volumes {
            match m.kind {
                MountKind::Bind => {
                    if let Some(access) = bind_grant(&m.source, m.read_only) {
                        push(field("volumes"), access);
                    }
                }
                // Created empty by the engine; it grants nothing of the guest.
                MountKind::Anonymous => {}
                MountKind::Volume => {
                    if let Some(access) = volume_grants.get(m.source.as_str()) {
                        push(
                            format!("volumes.{}.driver_opts.device", m.source),
                            access.clone(),
                        );
                    }
                }
            }
        }
        for cap in &svc.cap_add {
            let cap = cap_name(cap);
            if !DEFAULT_CAPS.contains(&cap.as_str()) {
                push(field("cap_add"), format!("cap_add {cap}"));
            }
        }
        if svc.network_mode.as_deref() == Some("host") {
            push(field("network_mode"), "network_mode host".to_string());
        }
        for d in &svc.devices {
            let host = d.split(':').next().unwrap_or_default();
            push(
                field("devices"),
                format!("device {}", normalize(host).display()),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The grants not listed in `declared`.
pub fn undeclared<'a>(grants: &'a [Grant], declared: &[String]) -> Vec<&'a Grant> {
    grants
        .iter()
        .filter(|g| !declared.iter().any(|d| d.trim() == g.access))
        .collect()
}

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::compose::parse;

    fn grants(compose: &str, protected: &[&str]) -> Vec<String> {
        let p = parse(compose, &BTreeMap::new()).unwrap();
        let protected: Vec<PathBuf> = protected.iter().map(PathBuf::from).collect();
        detect(&p, &protected)
            .into_iter()
            .map(|g| format!("{}: {}", g.field, g.access))
            .collect()
    }

    #[test]
    fn sensitive_binds_their_parents_and_children_are_grants() {
        let g = grants(
            r#"
services:
  a:
    image: x
    volumes:
      - /:/host
      - /etc/:/e:ro
      - /var/run/docker.sock:/var/run/docker.sock
      - /run/docker.sock:/d
      - /var:/v
      - /etc/shadow:/s:ro
      - /etc/ssh/ssh_host_ed25519_key:/k:ro
      - /etc/cron.d:/cron
      - /etc/app/secret:/secret:ro
      - /srv/../proc:/p
      - /dev/sda:/sda
      - /sys/./kernel:/k
      - /root:/r
      - /boot:/b
      - /var/lib/phoenix-agent:/state
      - /var/lib:/lib2
      - /srv/app:/app
      - /opt/data:/data
      - /var/lib/app:/appdata
"#,
            &["/var/lib/phoenix-agent"],
        );
        assert_eq!(
            g,
            [
                "services.a.volumes: bind /",
                "services.a.volumes: bind /boot",
                "services.a.volumes: bind /dev/sda",
                "services.a.volumes: bind /etc",
                "services.a.volumes: bind /etc/cron.d",
                "services.a.volumes: bind /etc/shadow",
                "services.a.volumes: bind /etc/ssh/ssh_host_ed25519_key",
                "services.a.volumes: bind /proc",
                "services.a.volumes: bind /root",
                "services.a.volumes: bind /run/docker.sock",
                "services.a.volumes: bind /sys/kernel",
                "services.a.volumes: bind /var",
                "services.a.volumes: bind /var/lib",
                "services.a.volumes: bind /var/lib/phoenix-agent",
                "services.a.volumes: bind /var/run/docker.sock",
            ]
        );
    }

    #[test]
    fn capabilities_beyond_the_default_set_and_devices_are_grants() {
        let g = grants(
            r#"
services:
  a:
    image: x
    cap_add: [ALL, SYS_ADMIN, cap_sys_module, SYS_PTRACE, SYS_RAWIO, DAC_READ_SEARCH, NET_ADMIN, CHOWN, NET_BIND_SERVICE]
    devices: ["/dev/mem", "/dev/fuse:/dev/fuse:rwm"]
"#,
            &[],
        );
        assert_eq!(
            g,
            [
                "services.a.cap_add: cap_add ALL",
                "services.a.cap_add: cap_add DAC_READ_SEARCH",
                "services.a.cap_add: cap_add NET_ADMIN",
                "services.a.cap_add: cap_add SYS_ADMIN",
                "services.a.cap_add: cap_add SYS_MODULE",
                "services.a.cap_add: cap_add SYS_PTRACE",
                "services.a.cap_add: cap_add SYS_RAWIO",
                "services.a.devices: device /dev/fuse",
                "services.a.devices: device /dev/mem",
            ]
        );
    }

    #[test]
    fn a_bind_volume_is_a_bind() {
        let g = grants(
            r#"
services:
  a:
    image: x
    volumes: ["v:/v", "nfs:/n"]
volumes:
  v:
    driver_opts: {type: none, o: bind, device: /etc}
  nfs:
    driver_opts: {type: nfs, o: "addr=10.0.0.1", device: ":/export"}
"#,
            &[],
        );
        assert_eq!(g, ["volumes.v.driver_opts.device: bind /etc"]);
    }

    #[test]
    fn ordinary_stacks_grant_nothing() {
        let g = grants(
            r#"
services:
  a:
    image: x
    volumes: ["/srv/app/conf:/conf:ro", "/opt/x:/x", "data:/data", "/etc/phoenix/secrets/key:/run/secrets/key:ro"]
    cap_add: [NET_BIND_SERVICE]
volumes:
  data: {}
"#,
            &["/var/lib/phoenix-agent"],
        );
        assert!(g.is_empty(), "{g:?}");
    }

    #[test]
    fn links_are_judged_by_where_they_lead() {
        let p = parse(
            "services:\n  a:\n    image: x\n    volumes: [\"/srv/innocent:/h\"]\n",
            &BTreeMap::new(),
        )
        .unwrap();
        let g = detect_resolved(&p, &[], |path| {
            (path == Path::new("/srv/innocent")).then(|| PathBuf::from("/"))
        });
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].access, "bind /");
    }

    #[test]
    fn the_host_network_is_a_grant() {
        let g = grants(
            "services:\n  a:\n    image: x\n    network_mode: host\n",
            &[],
        );
        assert_eq!(g, ["services.a.network_mode: network_mode host"]);
        let g = grants(
            "services:\n  a:\n    image: x\n  b:\n    image: x\n    network_mode: service:a\n  c:\n    image: x\n    network_mode: none\n",
            &[],
        );
        assert!(g.is_empty(), "{g:?}");
    }

    #[test]
    fn host_namespace_keys_are_refused_by_the_parser() {
        for key in [
            "privileged: true",
            "pid: host",
            "ipc: host",
            "network_mode: container:other",
            "userns_mode: host",
            "security_opt: [\"seccomp:unconfined\"]",
            "security_opt: [\"apparmor:unconfined\"]",
        ] {
            let compose = format!("services:\n  a:\n    image: x\n    {key}\n");
            let e = parse(&compose, &BTreeMap::new()).unwrap_err().to_string();
            let name = key.split(':').next().unwrap();
            assert!(e.contains(name), "{key}: {e}");
        }
    }

    #[test]
    fn declared_grants_are_matched_exactly() {
        let p = parse(
            "services:\n  a:\n    image: x\n    volumes: [\"/var/run/docker.sock:/s\", \"/:/h\"]\n",
            &BTreeMap::new(),
        )
        .unwrap();
        let g = detect(&p, &[]);
        let left = undeclared(&g, &["bind /var/run/docker.sock".to_string()]);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].access, "bind /");
        assert!(undeclared(&g, &["bind /".into(), "bind /var/run/docker.sock".into()]).is_empty());
    }
}
