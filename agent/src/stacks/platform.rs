//! `platform` and build `platforms` against the engine's own platform. The parser
//! cannot know the engine, so the check runs here, in the plan step of every pass (dry
//! run included) against the real engine, before anything is pulled, built or created:
//! a service or build for another platform would need emulation (binfmt/QEMU), which
//! Phoenix does not set up, so the stack is refused naming the key and why.

use super::{StackConverger, StackError};
use phoenix_proto::model::StackSpec;

/// `os/arch[/variant]` → `(os, arch)` with the architecture under its Go name, the name
/// the engine reports (`x86_64` is `amd64`, `aarch64` is `arm64`). The variant is not
/// compared: the engine's version endpoint does not report one.
pub(super) fn normalize(p: &str) -> (String, String) {
    let mut parts = p.split('/');
    let os = parts.next().unwrap_or_default().to_ascii_lowercase();
    let arch = parts.next().unwrap_or_default().to_ascii_lowercase();
    let arch = match arch.as_str() {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        "i386" | "i686" => "386".to_string(),
        "armhf" | "armel" => "arm".to_string(),
        _ => arch,
    };
    (os, arch)
}

/// Whether `wanted` is the platform `engine` (`os/arch`) runs without emulation.
pub(super) fn is_native(wanted: &str, engine: &str) -> bool {
    normalize(wanted) == normalize(engine)
}

impl StackConverger {
    /// Refuses a stack whose `platform` or build `platforms` name another platform than
    /// the engine's. Asks the engine only when some service names a platform.
    pub(super) async fn check_platforms(&self, spec: &StackSpec) -> Result<(), StackError> {
        let mut wanted: Vec<(&str, String, &str)> = Vec::new();
        for (name, svc) in spec.project.services() {
            if let Some(p) = &svc.platform {
                wanted.push((name.as_str(), "platform".into(), p.as_str()));
            }
            for p in svc.build.iter().flat_map(|b| &b.platforms) {
                wanted.push((name.as_str(), "build.platforms".into(), p.as_str()));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let engine = self
            .engine
            .platform()
            .await
            .map_err(Self::engine_err(&spec.name))?;
        for (service, key, p) in wanted {
            if !is_native(p, &engine) {
                return Err(StackError::Platform {
                    stack: spec.name.clone(),
                    service: service.to_string(),
                    key,
                    wanted: p.to_string(),
                    engine,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_compare_by_os_and_go_architecture() {
        assert!(is_native("linux/amd64", "linux/amd64"));
        assert!(is_native("linux/x86_64", "linux/amd64"));
        assert!(is_native("linux/arm64/v8", "linux/arm64"));
        assert!(is_native("linux/aarch64", "linux/arm64"));
        assert!(!is_native("linux/arm64", "linux/amd64"));
        assert!(!is_native("linux/386", "linux/amd64"));
        assert!(!is_native("windows/amd64", "linux/amd64"));
    }
}
