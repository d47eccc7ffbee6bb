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
        for (key, n) in self.networks() {
            check_key("networks", key)?;
            if n.driver.as_deref() == Some("overlay") {
                return Err(invalid(
                    format!("networks.{key}.driver"),
                    "overlay networks need a swarm; a stack on one engine uses bridge (the default)",
                ));
            }
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
        for p in svc.env_files.iter().chain(&svc.optional_env_files) {
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
                MountKind::Anonymous if !m.source.is_empty() => {
                    return Err(invalid(
                        f("volumes"),
                        format!("anonymous volume at {:?} has a source", m.target),
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
        self.check_network_mode(name, svc)?;
        self.check_addresses(name, svc)?;
        if svc.replicas.is_some_and(|r| r > 1) && svc.container_name.is_some() {
            return Err(invalid(
                f("container_name"),
                "a fixed container name cannot be given to more than one replica",
            ));
        }
        if svc.replicas.is_some_and(|r| r > super::MAX_REPLICAS) {
            return Err(invalid(
                f("deploy.replicas"),
                format!("at most {}", super::MAX_REPLICAS),
            ));
        }
        for t in &svc.tmpfs {
            let path = t.split(':').next().unwrap_or_default();
            if !path.starts_with('/') {
                return Err(invalid(
                    f("tmpfs"),
                    format!("{path:?} must be an absolute path"),
                ));
            }
        }
        for k in svc.sysctls.keys() {
            let ok = !k.is_empty()
                && k.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'.' | b'_' | b'-' | b'/')
                });
            if !ok {
                return Err(invalid(f("sysctls"), format!("{k:?} is not a sysctl name")));
            }
        }
        if let Some(sig) = &svc.stop_signal {
            let ok = !sig.is_empty()
                && sig.len() <= 16
                && sig.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-')
                });
            if !ok {
                return Err(invalid(
                    f("stop_signal"),
                    format!("{sig:?} is not a signal name"),
                ));
            }
        }
        if svc.stop_grace_period.is_some_and(|n| n < 0) {
            return Err(invalid(f("stop_grace_period"), "must not be negative"));
        }
        for e in &svc.expose {
            let ok = e.split_once('/').is_some_and(|(p, proto)| {
                p.parse::<u16>().is_ok_and(|n| n > 0) && matches!(proto, "tcp" | "udp" | "sctp")
            });
            if !ok {
                return Err(invalid(f("expose"), format!("{e:?} is not port/protocol")));
            }
        }
        match (&svc.build, svc.pull_policy.as_deref()) {
            (None, Some("build")) => {
                return Err(invalid(f("pull_policy"), "`build` needs a build section"));
            }
            (Some(b), _) if !b.context.starts_with('/') => {
                return Err(invalid(
                    f("build.context"),
                    format!("{:?} must be an absolute path on the guest", b.context),
                ));
            }
            _ => {}
        }
        if let Some(p) = svc.pull_policy.as_deref()
            && !matches!(p, "never" | "build")
        {
            return Err(invalid(
                f("pull_policy"),
                format!("{p:?} is not never or build"),
            ));
        }
        for o in &svc.security_opt {
            if !o.starts_with("no-new-privileges") {
                return Err(invalid(
                    f("security_opt"),
                    format!("{o:?}: only no-new-privileges is supported"),
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

    /// `network_mode`: `none`, `bridge`, `host` (a grant, see `grants`) or
    /// `service:<name>` of another service of the stack; the service then joins no
    /// network and publishes no port (the engine refuses or ignores them).
    fn check_network_mode(&self, name: &str, svc: &Service) -> Result<(), ComposeError> {
        let field = format!("services.{name}.network_mode");
        let Some(mode) = &svc.network_mode else {
            return Ok(());
        };
        match mode.as_str() {
            "none" | "host" | "bridge" => {}
            m => match m.strip_prefix("service:") {
                Some(other) if other == name => {
                    return Err(invalid(field, "a service cannot share its own network"));
                }
                Some(other) if self.services().contains_key(other) => {
                    if self.services()[other].replicas.is_some_and(|r| r != 1) {
                        return Err(invalid(
                            field,
                            format!(
                                "service {other:?} must run exactly one container to share its network"
                            ),
                        ));
                    }
                }
                Some(other) => {
                    return Err(invalid(field, format!("unknown service {other:?}")));
                }
                None => {
                    return Err(invalid(
                        field,
                        format!(
                            "{m:?}: only none, bridge, host or service:<name> (a container outside the stack is not Phoenix's to name)"
                        ),
                    ));
                }
            },
        }
        if !svc.networks.is_empty() {
            return Err(invalid(field, "cannot be combined with `networks`"));
        }
        if !svc.ports.is_empty() && mode != "bridge" {
            return Err(invalid(
                format!("services.{name}.ports"),
                format!("cannot publish ports with network_mode {mode}"),
            ));
        }
        Ok(())
    }

    /// Static addresses: on a network the service joins, inside one of the subnets the
    /// network declares under `ipam` (the engine assigns fixed addresses only there), and
    /// for one container only.
    fn check_addresses(&self, name: &str, svc: &Service) -> Result<(), ComposeError> {
        for (net, a) in &svc.addresses {
            let field = format!("services.{name}.networks.{net}");
            if svc.replicas.is_some_and(|r| r > 1) {
                return Err(invalid(
                    field,
                    "a fixed address cannot be given to more than one replica",
                ));
            }
            let Some(def) = self.networks().get(net) else {
                return Err(invalid(
                    field,
                    "network is not declared under top-level networks",
                ));
            };
            let subnets: Vec<&str> = def
                .ipam
                .iter()
                .flat_map(|i| &i.config)
                .filter_map(|p| p.subnet.as_deref())
                .collect();
            for (kind, addr) in [("ipv4_address", &a.ipv4), ("ipv6_address", &a.ipv6)] {
                let Some(addr) = addr else { continue };
                let ip: std::net::IpAddr = addr.parse().map_err(|_| {
                    invalid(
                        format!("{field}.{kind}"),
                        format!("{addr:?} is not an IP address"),
                    )
                })?;
                if kind == "ipv4_address" && !ip.is_ipv4()
                    || kind == "ipv6_address" && !ip.is_ipv6()
                {
                    return Err(invalid(
                        format!("{field}.{kind}"),
                        format!("{addr:?} is the wrong family"),
                    ));
                }
                // An external network's subnets are the engine's to know.
                if def.external {
                    continue;
                }
                if !subnets.iter().any(|s| in_subnet(ip, s)) {
                    return Err(invalid(
                        format!("{field}.{kind}"),
                        format!(
                            "{addr} is in no subnet of networks.{net}.ipam.config; a fixed address needs a declared subnet"
                        ),
                    ));
                }
            }
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
        // A service sharing another's network namespace starts after it, as in Compose.
        graph::sort(self.services().iter().map(|(n, s)| {
            let shared = s
                .network_mode
                .as_deref()
                .and_then(|m| m.strip_prefix("service:"));
            (
                n.as_str(),
                s.depends_on.keys().map(String::as_str).chain(shared),
            )
        }))
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

/// Whether `ip` is inside `cidr` (`10.5.0.0/16`, `fd00::/64`).
fn in_subnet(ip: std::net::IpAddr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u32>() else {
        return false;
    };
    match (ip, net.parse::<std::net::IpAddr>()) {
        (std::net::IpAddr::V4(a), Ok(std::net::IpAddr::V4(n))) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (std::net::IpAddr::V6(a), Ok(std::net::IpAddr::V6(n))) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}
