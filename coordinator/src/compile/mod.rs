//! The config compiler: reads the real Phoenix Hypervisor config files unchanged (or
//! Phoenix's own normalized format) and compiles one desired state per guest.
//!
//! Built as three steps. [`phoenix`] reads every file leniently (the real files fail
//! their own schemas) into typed guest configs, collecting *all* errors of the run;
//! [`build`] turns each guest into a [`GuestSpec`](phoenix_proto::model::GuestSpec):
//! `features` become resource bundles ([`features`]), `application_script`/
//! `vllm_engine_config` become services ([`scripts`]), certificate-manifest entries become
//! `cert` resources in the guest that owns the path ([`certs`]), `docker_stacks` become
//! `stack` resources ([`stacks`]); what the configs say about the guest itself is kept as
//! [`Declared`] (compared with agent facts by [`compare`]) and the rest as checked
//! [`GuestFacts`]. Literal secrets are flagged and never copied into a spec ([`secrets`]).
//!
//! Layers, bottom up; a module imports only from layers below its own (and the few
//! same-layer helpers its header names), so the house reads top-down:
//!
//! | layer | modules | job |
//! |---|---|---|
//! | 0 | [`types`], [`names`] | what the compiler produces and reports; string checks |
//! | 1 | [`reader`], [`compare`] | lenient JSON access and the run's diagnostics; declared vs observed |
//! | 2 | [`keys`], [`secrets`] | known keys (near misses); literal secrets and references |
//! | 3 | [`phoenix`], [`facts`], [`vllm`], [`files`] | the Phoenix config readers |
//! | 4 | [`features`], [`scripts`], [`builder`] | resources each feature / script makes; one guest's resources |
//! | 5 | [`catalog`] | the one table of what each feature and script name means |
//! | 6 | [`guest`], [`stacks`], [`certs`], [`routing`] | per-guest assembly |
//! | 7 | [`build`], [`graph`], [`native`], this module | orchestration |
//!
//! Limits: application scripts are arbitrary bash; only the ones whose effect is known
//! (vLLM, the design's gateway/Traefik/Step-CA/Ollama scripts) compile into resources,
//! others produce a warning. Host-side settings (Proxmox conf lines, ZFS, firewall) are
//! not applied by the agent; they are kept as facts for checks and reports.

mod build;
mod builder;
mod catalog;
mod certs;
mod compare;
mod facts;
mod features;
mod files;
mod graph;
mod guest;
mod keys;
mod names;
mod native;
mod phoenix;
mod reader;
mod routing;
mod scripts;
mod secrets;
mod stacks;
mod types;
mod vllm;

pub use builder::NGINX_CHECKED_RELOAD;
pub use compare::{Mismatch, compare};
pub use native::NativeConfig;

pub use types::{
    CompileOptions, Compiled, CompiledGuest, ConfigError, ConfigErrors, Declared, Direction,
    Firewall, FirewallAction, FirewallRule, GuestFacts, GuestKind, MountKind, MountPoint,
    NetworkInterface, PortMapping, Problem, TraefikService, Warning,
};

use files::{LXC_FILE, Layout, VM_FILE};
use std::path::{Path, PathBuf};

/// Loads and compiles `path`: a Phoenix etc directory (or one of its files), or a file
/// or directory of Phoenix's native format. Returns every error of the run at once.
pub fn load(path: &Path) -> Result<Compiled, ConfigErrors> {
    load_with(path, &CompileOptions::default())
}

pub fn load_with(path: &Path, options: &CompileOptions) -> Result<Compiled, ConfigErrors> {
    let mut diag = reader::Diag::default();
    let compiled = match detect(path) {
        Ok(Input::Phoenix(layout)) => build::compile_phoenix(&layout, options, &mut diag),
        Ok(Input::Native(files)) => native::load(&files, &mut diag),
        Err(e) => {
            diag.errors.push(e);
            Compiled::default()
        }
    };
    if diag.errors.is_empty() {
        Ok(Compiled {
            warnings: diag.warnings,
            ..compiled
        })
    } else {
        Err(ConfigErrors(diag.errors, diag.warnings))
    }
}

/// JSON Schema (draft 2020-12) of the native format, for editors.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(NativeConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

enum Input {
    Phoenix(Layout),
    Native(Vec<PathBuf>),
}

fn has_phoenix_files(dir: &Path) -> bool {
    [LXC_FILE, VM_FILE].iter().any(|f| dir.join(f).is_file())
}

fn detect(path: &Path) -> Result<Input, ConfigError> {
    let err = |problem| ConfigError {
        file: path.to_path_buf(),
        path: String::new(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(Problem::Read(e.to_string())))?;
    if meta.is_dir() {
        if has_phoenix_files(path) {
            return Ok(Input::Phoenix(Layout::from_etc(path.to_path_buf())));
        }
        // The base directory (`/usr/local/phoenix_hypervisor`) given instead of its etc/.
        if has_phoenix_files(&path.join("etc")) {
            return Ok(Input::Phoenix(Layout {
                etc: path.join("etc"),
                base: path.to_path_buf(),
            }));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| err(Problem::Read(e.to_string())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err(Problem::Missing(
                "phoenix_lxc_configs.json or phoenix_vm_configs.json (a Phoenix etc directory), or native *.json files"
                    .into(),
            )));
        }
        return Ok(Input::Native(files));
    }
    // A single Phoenix file stands for its directory: the files refer to each other.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("phoenix_") || name == "certificate-manifest.json" {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        return Ok(Input::Phoenix(Layout::from_etc(dir)));
    }
    Ok(Input::Native(vec![path.to_path_buf()]))
}
