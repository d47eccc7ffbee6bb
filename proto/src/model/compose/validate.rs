//! The checks a typed project must pass, whoever built it: the parser runs them on what it
//! produced, deserialization on what arrived in a desired state. Errors name the Compose
//! field (`services.web.volumes`), as the parser's do.

use super::types::{ComposeProject, MountKind, Service};
use super::{ComposeError, LABEL_PREFIX, invalid};
use crate::graph::{self, Cycle};
use std::collections::BTreeSet;

impl ComposeProject {
    /// Every rule of the subset that the types alone do not enforce: safe keys, absolute
    /// paths, declared references, known restart policies and healthcheck forms, no
    /// reserved labels, unique container names and no dependency cycle.
    pub fn validate(&self) -> Result<(), ComposeError> {
        if self.services().is_empty() {
            return Err(invalid("services", "no services defined"));
        }
        for key in self.networks().keys() {
            check_key("networks", key)?;
        }
        for key in self.volumes().keys() {
            check_key("volumes", key)?;
        }
        let mut container_names = BTreeSet::new();
        for (name, svc) in self.services() {
            check_key("services", name)?;
            self.check_service(name, svc)?;
            if let Some(cn) = &svc.container_name
                && !container_names.insert(cn.as_str())
            {
                return Err(invalid(
                    format!("services.{name}.container_name"),
                    format!("{cn:?} is used by two services"),
                ));
            }
        }
        self.order().map_err(|cycle| {
            invalid(
                "depends_on",
                format!("dependency cycle between services: {cycle}"),
            )
        })?;
        Ok(())
    }

    fn check_service(&self, name: &str, svc: &Service) -> Result<(), ComposeError> {
        let f = |k: &str| format!("services.{name}.{k}");
        if let Some(cn) = &svc.container_name {
            check_key(&f("container_name"), cn)
                .map_err(|_| invalid(f("container_name"), format!("{cn:?}: {NAME_RULE}")))?;
        }
        for p in &svc.env_files {
            if !p.starts_with('/') {
                return Err(invalid(
                    f("env_file"),
                    format!("{p:?} must be an absolute path (there is no project directory)"),
                ));
            }
        }
        for p in &svc.ports {
            if p.container_port == 0 || p.host_port == Some(0) {
                return Err(invalid(f("ports"), "port 0 is not a port number"));
            }
            if !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(invalid(
                    f("ports"),
                    format!("unknown protocol {:?}", p.protocol),
                ));
            }
        }
        for m in &svc.volumes {
            if !m.target.starts_with('/') {
                return Err(invalid(
                    f("volumes"),
                    format!("target {:?} must be an absolute path", m.target),
                ));
            }
            match m.kind {
                MountKind::Bind if !m.source.starts_with('/') => {
                    return Err(invalid(
                        f("volumes"),
                        format!(
                            "bind source {:?} must be an absolute path (there is no project directory)",
                            m.source
                        ),
                    ));
                }
                MountKind::Volume if !self.volumes().contains_key(&m.source) => {
                    return Err(invalid(
                        f("volumes"),
                        format!(
                            "volume {:?} is not declared under top-level volumes",
                            m.source
                        ),
                    ));
                }
                _ => {}
            }
        }
        for net in svc.networks.keys() {
            if !self.networks().contains_key(net) {
                return Err(invalid(
                    f("networks"),
                    format!("network {net:?} is not declared under top-level networks"),
                ));
            }
        }
        if let Some(r) = &svc.restart {
            let ok = matches!(
                r.as_str(),
                "no" | "always" | "unless-stopped" | "on-failure"
            ) || r
                .strip_prefix("on-failure:")
                .is_some_and(|n| n.parse::<u32>().is_ok());
            if !ok {
                return Err(invalid(
                    f("restart"),
                    format!("{r:?} is not one of no, always, unless-stopped, on-failure[:N]"),
                ));
            }
        }
        if let Some(h) = &svc.healthcheck
            && !matches!(
                h.test.first().map(String::as_str),
                Some("CMD" | "CMD-SHELL" | "NONE")
            )
        {
            return Err(invalid(
                f("healthcheck.test"),
                "a list must start with CMD, CMD-SHELL or NONE",
            ));
        }
        for dep in svc.depends_on.keys() {
            if dep == name {
                return Err(invalid(
                    f("depends_on"),
                    "a service cannot depend on itself",
                ));
            }
            if !self.services().contains_key(dep) {
                return Err(invalid(f("depends_on"), format!("unknown service {dep:?}")));
            }
        }
        if let Some(k) = svc.labels.keys().find(|k| k.starts_with(LABEL_PREFIX)) {
            return Err(invalid(
                f("labels"),
                format!("{k:?}: the {LABEL_PREFIX} prefix is reserved"),
            ));
        }
        Ok(())
    }

    /// Services in an order where every service comes after what it depends on (ties
    /// broken by name, so the order is stable). A project is checked to have no cycle, so
    /// every service appears.
    pub fn start_order(&self) -> Vec<&str> {
        self.order().unwrap_or_default()
    }

    fn order(&self) -> Result<Vec<&str>, Cycle<&str>> {
        graph::sort(
            self.services()
                .iter()
                .map(|(n, s)| (n.as_str(), s.depends_on.keys().map(String::as_str))),
        )
    }
}

const NAME_RULE: &str =
    "name may only contain letters, digits, '-', '_' and '.', starting with a letter or digit";

fn check_key(section: &str, key: &str) -> Result<(), ComposeError> {
    let ok = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{section}.{key}"), NAME_RULE))
    }
}
