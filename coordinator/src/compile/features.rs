//! Feature bundles: what each Phoenix `features` entry
//! (`bin/lxc_setup/phoenix_hypervisor_feature_install_<f>.sh`,
//! `bin/vm_features/feature_install_<f>.sh`) means as declarative resources.
//!
//! Each bundle is self-contained (it lists the packages it needs; duplicates across
//! bundles merge). Ordering against *other* bundles is soft: an `after` edge is kept only
//! when the other resource is in the guest's spec, because a clone may already carry a
//! feature its template installed (801 lists `vllm` but gets `nvidia` from 911).
//! Vendor installers without an apt repository key we could pin (step-cli, Ollama,
//! Traefik, the NVIDIA runfile, vLLM wheels) are guarded `exec`s that run once.
//!
//! Layer 4, resource makers: imports layers 0–3. Which feature name means which bundle
//! is said once, in [`super::catalog`].
//!
//! Longer than 600 lines: one bundle per feature script, kept side by side so that a
//! bundle reads next to the packages and installers it shares with the others.

use super::phoenix::Nvidia;
use super::types::GuestKind;
use phoenix_proto::model::{
    AbsPath, Ensure, ExecSpec, FileMode, FileSpec, PackageSpec, PackageState, Resource,
    ResourceRef, RunState, ServiceSpec, StackSpec,
};
use std::collections::BTreeMap;

/// A bundle member plus soft ordering edges (kept only if the target exists).
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub resource: Resource,
    pub after: Vec<ResourceRef>,
}

impl From<Resource> for Item {
    fn from(resource: Resource) -> Self {
        Item {
            resource,
            after: Vec::new(),
        }
    }
}

impl Item {
    fn after(mut self, r: ResourceRef) -> Self {
        self.after.push(r);
        self
    }
}

/// What a bundle needs to know about its guest.
pub(crate) struct FeatureCtx<'a> {
    pub kind: GuestKind,
    pub gpus: &'a [u32],
    pub nvidia: &'a Nvidia,
    pub cuda_version: &'a str,
    pub portainer_role: Option<&'a str>,
    pub bootstrap_ca_url: Option<&'a str>,
    pub trust_roots_pem: Option<&'a str>,
    /// In-guest path of the Step-CA root that existing Phoenix shares with every guest.
    pub step_ca_root: AbsPath,
    pub unprivileged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FeatureProblem {
    /// A key the bundle needs is missing (e.g. `nvidia_runfile_url`).
    Missing(&'static str),
}

pub(crate) fn abs(s: &str) -> AbsPath {
    // Only called with constant or already-validated paths.
    AbsPath::try_from(s.to_string()).unwrap_or_else(|_| unreachable!("constant path {s}"))
}

fn mode(s: &str) -> FileMode {
    FileMode::try_from(s.to_string()).unwrap_or_else(|_| unreachable!("constant mode {s}"))
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A constant shell script. Config values never become part of `script`: they are
/// passed as positional parameters (`$1`, `$2`, …), which the shell never re-parses.
fn sh(script: &'static str) -> Vec<String> {
    argv(&["/bin/sh", "-c", script])
}

/// `sh -c SCRIPT sh ARGS…`: `script` sees each of `args` as one literal word in `"$N"`.
fn sh_with(script: &'static str, args: &[&str]) -> Vec<String> {
    let mut v = argv(&["/bin/sh", "-c", script, "sh"]);
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

pub(crate) fn pkg(name: &str) -> Resource {
    Resource::Package(PackageSpec {
        name: name.into(),
        version: None,
        state: PackageState::Present,
        hold: false,
        depends_on: Vec::new(),
    })
}

fn pkg_ref(name: &str) -> ResourceRef {
    ResourceRef::new("package", name)
}

pub(crate) fn exec(name: &str, command: Vec<String>) -> ExecSpec {
    ExecSpec {
        name: name.into(),
        command,
        creates: None,
        unless: None,
        onlyif: None,
        refresh_on: Vec::new(),
        timeout_seconds: 300,
        environment: BTreeMap::new(),
        secret_environment: BTreeMap::new(),
        cwd: None,
        user: None,
        depends_on: Vec::new(),
    }
}

pub(crate) fn service(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        ensure: Ensure::Present,
        unit: None,
        dropins: BTreeMap::new(),
        enabled: Some(true),
        state: Some(RunState::Running),
        restart_on: Vec::new(),
        reload_on: Vec::new(),
        depends_on: Vec::new(),
    }
}

fn file(path: &str, content: String, file_mode: &str) -> FileSpec {
    FileSpec {
        path: abs(path),
        ensure: Ensure::Present,
        content,
        mode: Some(mode(file_mode)),
        owner: Some("root".into()),
        group: Some("root".into()),
        depends_on: Vec::new(),
    }
}

/// A vendor installer fetched with curl: a guarded `exec` that runs until `creates`
/// exists, after the packages it needs.
fn download(name: &str, script: &'static str, creates: &str) -> ExecSpec {
    let mut install = exec(name, sh(script));
    install.creates = Some(abs(creates));
    install.depends_on = vec![pkg_ref("curl"), pkg_ref("ca-certificates")];
    install
}

/// The packages a `download` needs, then the download.
fn installer(install: ExecSpec) -> Vec<Item> {
    let mut items = packages(&["curl", "ca-certificates"]);
    items.push(Resource::Exec(install).into());
    items
}

fn packages(names: &[&str]) -> Vec<Item> {
    names.iter().map(|n| Item::from(pkg(n))).collect()
}

/// Essentials and the en_US.UTF-8 locale; VMs also get the NFS client (their
/// `volumes` are NFS) and IPv6 off, as the VM script does.
pub(crate) fn base_setup(ctx: &FeatureCtx) -> Vec<Item> {
    let mut items = packages(&[
        "ca-certificates",
        "curl",
        "wget",
        "vim",
        "htop",
        "jq",
        "git",
        "locales",
    ]);
    let mut locale = exec(
        "locale-en-us-utf8",
        argv(&["/usr/sbin/locale-gen", "en_US.UTF-8"]),
    );
    locale.unless = Some(sh("locale -a | grep -qix 'en_US.utf8'"));
    locale.depends_on = vec![pkg_ref("locales")];
    items.push(Resource::Exec(locale).into());
    if ctx.kind == GuestKind::Vm {
        items.push(pkg("nfs-common").into());
        let path = "/etc/sysctl.d/90-phoenix-disable-ipv6.conf";
        items.push(
            Resource::File(file(
                path,
                "net.ipv6.conf.all.disable_ipv6 = 1\nnet.ipv6.conf.default.disable_ipv6 = 1\n"
                    .into(),
                "0644",
            ))
            .into(),
        );
        let mut apply = exec(
            "sysctl-disable-ipv6",
            argv(&["/usr/sbin/sysctl", "--system"]),
        );
        apply.refresh_on = vec![ResourceRef::new("file", path)];
        apply.depends_on = vec![ResourceRef::new("file", path)];
        items.push(Resource::Exec(apply).into());
    }
    items
}

const TRUST_STORE_ROOT: &str = "/usr/local/share/ca-certificates/phoenix_root_ca.crt";

/// Puts the Phoenix root into the system trust store and refreshes the bundle. The
/// refresh runs when the root changed, and also while the store lacks it (`creates`),
/// so a failed refresh is retried on the next pass.
pub(crate) fn trusted_ca(ctx: &FeatureCtx) -> Vec<Item> {
    let mut items = vec![Item::from(pkg("ca-certificates"))];
    let installed = match ctx.trust_roots_pem {
        Some(pem) => {
            let mut f = file(TRUST_STORE_ROOT, pem.to_string(), "0644");
            f.depends_on = vec![pkg_ref("ca-certificates")];
            items.push(Resource::File(f).into());
            ResourceRef::new("file", TRUST_STORE_ROOT)
        }
        None => {
            let src = ctx.step_ca_root.as_str();
            let mut copy = exec(
                "install-phoenix-root-ca",
                argv(&["/usr/bin/install", "-m", "0644", src, TRUST_STORE_ROOT]),
            );
            copy.unless = Some(argv(&["/usr/bin/cmp", "-s", src, TRUST_STORE_ROOT]));
            copy.depends_on = vec![pkg_ref("ca-certificates")];
            items.push(Resource::Exec(copy).into());
            ResourceRef::new("exec", "install-phoenix-root-ca")
        }
    };
    let mut refresh = exec(
        "update-ca-certificates",
        argv(&["/usr/sbin/update-ca-certificates"]),
    );
    refresh.creates = Some(abs("/etc/ssl/certs/phoenix_root_ca.pem"));
    refresh.refresh_on = vec![installed.clone()];
    refresh.depends_on = vec![installed];
    items.push(Resource::Exec(refresh).into());
    items
}

pub(crate) fn step_cli(ctx: &FeatureCtx) -> Vec<Item> {
    let mut items = step_cli_install();
    if let Some(url) = ctx.bootstrap_ca_url {
        // The fingerprint file is exported by the Step-CA guest next to its root.
        let fingerprint = ctx
            .step_ca_root
            .as_path()
            .with_file_name("root_ca.fingerprint");
        let fingerprint = fingerprint.display().to_string();
        let mut bootstrap = exec(
            "step-ca-bootstrap",
            sh_with(
                "exec step ca bootstrap --ca-url \"$1\" --fingerprint \"$(cat -- \"$2\")\" --force",
                &[url, &fingerprint],
            ),
        );
        bootstrap.creates = Some(abs("/root/.step/config/defaults.json"));
        bootstrap.depends_on = vec![ResourceRef::new("exec", "install-step-cli")];
        items.push(Resource::Exec(bootstrap).into());
    }
    items
}

fn step_cli_install() -> Vec<Item> {
    installer(download(
        "install-step-cli",
        "curl -fsSL -o /tmp/step-cli_amd64.deb https://dl.smallstep.com/cli/docs-cli-install/latest/step-cli_amd64.deb && dpkg -i /tmp/step-cli_amd64.deb && rm -f /tmp/step-cli_amd64.deb",
        "/usr/bin/step",
    ))
}

pub(crate) fn step_ca() -> Vec<Item> {
    let mut items = installer(download(
        "install-step-ca",
        "curl -fsSL -o /tmp/step-ca_amd64.deb https://dl.smallstep.com/certificates/docs-ca-install/latest/step-ca_amd64.deb && dpkg -i /tmp/step-ca_amd64.deb && rm -f /tmp/step-ca_amd64.deb",
        "/usr/bin/step-ca",
    ));
    items.extend(step_cli_install());
    items
}

#[cfg(test)]
fn placeholder_ctx() -> FeatureCtx<'static> {
    static NVIDIA: Nvidia = Nvidia {
        driver_version: None,
        repo_url: None,
        runfile_url: None,
    };
    FeatureCtx {
        kind: GuestKind::Lxc,
        gpus: &[],
        nvidia: &NVIDIA,
        cuda_version: "",
        portainer_role: None,
        bootstrap_ca_url: None,
        trust_roots_pem: None,
        step_ca_root: abs("/etc/step-ca/ssl/phoenix_root_ca.crt"),
        unprivileged: false,
    }
}

/// Docker from the distribution (docker.io + compose v2). Unprivileged LXC needs the
/// fuse-overlayfs storage driver; a GPU adds the NVIDIA runtime.
pub(crate) fn docker(ctx: &FeatureCtx) -> Vec<Item> {
    let mut items = packages(&["docker.io", "docker-compose-v2"]);
    let mut daemon = serde_json::Map::new();
    let lxc_unprivileged = ctx.kind == GuestKind::Lxc && ctx.unprivileged;
    if lxc_unprivileged {
        items.push(pkg("fuse-overlayfs").into());
        daemon.insert("storage-driver".into(), "fuse-overlayfs".into());
    }
    if !ctx.gpus.is_empty() {
        daemon.insert(
            "runtimes".into(),
            serde_json::json!({"nvidia": {"path": "nvidia-container-runtime", "args": []}}),
        );
        let mut repo = exec(
            "nvidia-container-toolkit-repo",
            sh(
                "curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg && curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' > /etc/apt/sources.list.d/nvidia-container-toolkit.list && apt-get update",
            ),
        );
        repo.creates = Some(abs("/etc/apt/sources.list.d/nvidia-container-toolkit.list"));
        repo.depends_on = vec![pkg_ref("curl"), pkg_ref("gpg")];
        items.push(pkg("curl").into());
        items.push(pkg("gpg").into());
        items.push(Resource::Exec(repo).into());
        let toolkit = PackageSpec {
            depends_on: vec![ResourceRef::new("exec", "nvidia-container-toolkit-repo")],
            ..package_spec("nvidia-container-toolkit")
        };
        items.push(Resource::Package(toolkit).into());
    }
    let mut svc = service("docker.service");
    svc.depends_on = vec![pkg_ref("docker.io")];
    if !daemon.is_empty() {
        let path = "/etc/docker/daemon.json";
        let content = serde_json::to_string_pretty(&serde_json::Value::Object(daemon))
            .unwrap_or_default()
            + "\n";
        items.push(Resource::File(file(path, content, "0644")).into());
        svc.restart_on = vec![ResourceRef::new("file", path)];
        svc.depends_on.push(ResourceRef::new("file", path));
        if !ctx.gpus.is_empty() {
            svc.depends_on.push(pkg_ref("nvidia-container-toolkit"));
        }
    }
    items.push(Resource::Service(svc).into());
    items
}

fn package_spec(name: &str) -> PackageSpec {
    match pkg(name) {
        Resource::Package(p) => p,
        _ => unreachable!("pkg builds a package"),
    }
}

/// The NVIDIA driver from the runfile (user space only in an LXC) and the CUDA toolkit
/// from NVIDIA's repository.
pub(crate) fn nvidia(ctx: &FeatureCtx) -> Result<Vec<Item>, FeatureProblem> {
    let version = ctx
        .nvidia
        .driver_version
        .as_deref()
        .ok_or(FeatureProblem::Missing("nvidia_driver_version"))?;
    let runfile = ctx
        .nvidia
        .runfile_url
        .as_deref()
        .ok_or(FeatureProblem::Missing("nvidia_runfile_url"))?;
    let repo = ctx
        .nvidia
        .repo_url
        .as_deref()
        .ok_or(FeatureProblem::Missing("nvidia_repo_url"))?;
    let repo = repo.trim_end_matches('/');
    let mut items = packages(&["curl", "ca-certificates", "kmod"]);
    let mut keyring = exec(
        "cuda-keyring",
        sh_with(
            "curl -fsSL -o /tmp/cuda-keyring.deb \"$1/cuda-keyring_1.1-1_all.deb\" && dpkg -i /tmp/cuda-keyring.deb && rm -f /tmp/cuda-keyring.deb && apt-get update",
            &[repo],
        ),
    );
    keyring.creates = Some(abs("/usr/share/keyrings/cuda-archive-keyring.gpg"));
    keyring.depends_on = vec![pkg_ref("curl"), pkg_ref("ca-certificates")];
    items.push(Resource::Exec(keyring).into());
    // In an LXC the host owns the kernel module; a VM (PCI passthrough) builds its own.
    let (flags, needs) = match ctx.kind {
        GuestKind::Vm => (
            &["--silent", "--no-questions", "--dkms"][..],
            &["build-essential", "dkms", "linux-headers-generic"][..],
        ),
        _ => (
            &["--silent", "--no-questions", "--no-kernel-module"][..],
            &[][..],
        ),
    };
    items.extend(packages(needs));
    let mut driver = exec(
        "nvidia-driver",
        sh_with(
            "curl -fsSL -o /tmp/nvidia-driver.run \"$1\" && shift && sh /tmp/nvidia-driver.run \"$@\" && rm -f /tmp/nvidia-driver.run",
            &[&[runfile][..], flags].concat(),
        ),
    );
    driver.unless = Some(sh_with(
        "nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | grep -qxF -- \"$1\"",
        &[version],
    ));
    driver.timeout_seconds = 1800;
    driver.depends_on = [&["curl", "kmod"][..], needs]
        .concat()
        .iter()
        .map(|p| pkg_ref(p))
        .collect();
    items.push(Resource::Exec(driver).into());
    let toolkit = cuda_toolkit(ctx);
    items.push(
        Resource::Package(PackageSpec {
            depends_on: vec![ResourceRef::new("exec", "cuda-keyring")],
            ..package_spec(&toolkit)
        })
        .into(),
    );
    Ok(items)
}

fn cuda_toolkit(ctx: &FeatureCtx) -> String {
    format!("cuda-toolkit-{}", ctx.cuda_version.replace('.', "-"))
}

/// vLLM in a virtualenv at /opt/vllm (the unit's interpreter). The original script
/// builds torch nightly + FlashInfer from source; here the pinned wheel brings its own
/// torch build.
pub(crate) fn vllm(ctx: &FeatureCtx) -> Vec<Item> {
    let mut items = packages(&[
        "python3",
        "python3-venv",
        "python3-dev",
        "build-essential",
        "git",
    ]);
    let mut venv = exec(
        "vllm-venv",
        argv(&["/usr/bin/python3", "-m", "venv", "/opt/vllm"]),
    );
    venv.creates = Some(abs("/opt/vllm/bin/python"));
    venv.depends_on = vec![pkg_ref("python3-venv")];
    items.push(Resource::Exec(venv).into());
    let mut install = exec(
        "vllm-install",
        argv(&[
            "/opt/vllm/bin/pip",
            "install",
            "--no-cache-dir",
            "vllm==0.10.2",
        ]),
    );
    install.creates = Some(abs("/opt/vllm/bin/vllm"));
    install.timeout_seconds = 3600;
    install
        .environment
        .insert("TORCH_CUDA_ARCH_LIST".into(), "12.0".into());
    install.depends_on = vec![
        ResourceRef::new("exec", "vllm-venv"),
        pkg_ref("build-essential"),
        pkg_ref("python3-dev"),
    ];
    items.push(
        Item::from(Resource::Exec(install))
            .after(pkg_ref(&cuda_toolkit(ctx)))
            .after(ResourceRef::new("exec", "nvidia-driver")),
    );
    items
}

pub(crate) fn ollama() -> Vec<Item> {
    let mut items = packages(&["curl", "ca-certificates"]);
    let mut install = download(
        "install-ollama",
        "curl -fsSL https://ollama.com/install.sh | sh",
        "/usr/local/bin/ollama",
    );
    install.timeout_seconds = 1800;
    items
        .push(Item::from(Resource::Exec(install)).after(ResourceRef::new("exec", "nvidia-driver")));
    let mut svc = service("ollama.service");
    svc.depends_on = vec![ResourceRef::new("exec", "install-ollama")];
    items.push(Resource::Service(svc).into());
    items
}

/// The Traefik binary; its configuration and unit come from the guest's application.
pub(crate) fn traefik() -> Vec<Item> {
    installer(download(
        "install-traefik",
        "curl -fsSL https://github.com/traefik/traefik/releases/download/v3.1.2/traefik_v3.1.2_linux_amd64.tar.gz | tar -xz -C /usr/local/bin traefik",
        "/usr/local/bin/traefik",
    ))
}

/// Portainer server or agent as a Docker stack, by `portainer_role`.
pub(crate) fn portainer(ctx: &FeatureCtx) -> Vec<Item> {
    let compose = match ctx.portainer_role {
        Some("server") | Some("primary") => {
            "services:\n  portainer:\n    image: portainer/portainer-ce:latest\n    container_name: portainer_server\n    restart: always\n    ports:\n      - \"9443:9443\"\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n      - portainer_data:/data\nvolumes:\n  portainer_data: {}\n"
        }
        Some("agent") => {
            "services:\n  agent:\n    image: portainer/agent:latest\n    container_name: portainer_agent\n    restart: always\n    ports:\n      - \"9001:9001\"\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n      - /var/lib/docker/volumes:/var/lib/docker/volumes\n"
        }
        _ => return Vec::new(),
    };
    // Portainer manages the guest's Docker engine through its socket: a grant Phoenix
    // makes on purpose for this feature, so it is declared here, in the open.
    let mut host_access = vec!["bind /var/run/docker.sock".to_string()];
    if ctx.portainer_role == Some("agent") {
        host_access.push("bind /var/lib/docker/volumes".into());
    }
    let stack = StackSpec {
        name: "portainer".into(),
        environment: "production".into(),
        compose: compose.into(),
        variables: BTreeMap::new(),
        labels: BTreeMap::new(),
        files: Vec::new(),
        registry_auth: None,
        rollback_on_failure: true,
        depends_on: Vec::new(),
        host_access,
    };
    vec![Item::from(Resource::Stack(stack)).after(ResourceRef::new("service", "docker.service"))]
}

pub(crate) fn python_api_service() -> Vec<Item> {
    packages(&["python3", "python3-pip", "python3-venv"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bootstrap command run by the real `/bin/sh` with a stand-in `step` that records
    /// its argv: hostile URLs arrive as one literal argument and run nothing.
    #[test]
    fn config_values_reach_the_shell_as_literal_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("root_ca.fingerprint"), "abc123").expect("fingerprint");
        let step = d.join("step");
        std::fs::write(&step, "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$OUT\"\n").expect("step");
        std::fs::set_permissions(&step, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let pwned = d.join("pwned");
        let p = pwned.display();
        for url in [
            format!("https://x'; touch {p}; '"),
            format!("https://x$(touch {p})"),
            format!("https://x`touch {p}`\"; touch {p}; \""),
        ] {
            let mut ctx = placeholder_ctx();
            ctx.bootstrap_ca_url = Some(&url);
            ctx.step_ca_root = abs(&d.join("phoenix_root_ca.crt").display().to_string());
            let items = step_cli(&ctx);
            let cmd = items
                .iter()
                .find_map(|i| match &i.resource {
                    Resource::Exec(e) if e.name == "step-ca-bootstrap" => Some(e.command.clone()),
                    _ => None,
                })
                .expect("bootstrap exec");
            assert!(
                !cmd[2].contains("https://"),
                "value inside the script: {cmd:?}"
            );
            let out = d.join("argv");
            let status = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .current_dir(d)
                .env("PATH", format!("{}:/usr/bin:/bin", d.display()))
                .env("OUT", &out)
                .status()
                .expect("run sh");
            assert!(status.success());
            assert!(!pwned.exists(), "{url} ran a command");
            let argv = std::fs::read_to_string(&out).expect("argv");
            assert_eq!(
                argv,
                format!("ca\nbootstrap\n--ca-url\n{url}\n--fingerprint\nabc123\n--force\n")
            );
        }
    }

    #[test]
    fn nvidia_values_are_not_pasted_into_scripts() {
        let nvidia = Nvidia {
            driver_version: Some("1'; touch /pwned; '".into()),
            repo_url: Some("https://x/$(touch${IFS}/pwned)".into()),
            runfile_url: Some("https://x/'$(touch${IFS}/pwned)'".into()),
        };
        let mut ctx = placeholder_ctx();
        ctx.nvidia = &nvidia;
        for i in super::nvidia(&ctx).expect("bundle") {
            if let Resource::Exec(e) = &i.resource {
                for argv in std::iter::once(&e.command).chain(e.unless.iter()) {
                    if argv[0] == "/bin/sh" {
                        assert!(!argv[2].contains("pwned"), "{argv:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn nvidia_without_globals_names_the_missing_key() {
        let ctx = placeholder_ctx();
        assert_eq!(
            nvidia(&ctx).err(),
            Some(FeatureProblem::Missing("nvidia_driver_version"))
        );
    }
}
