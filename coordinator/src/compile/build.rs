//! Compiles the guests read by `phoenix` into one `GuestSpec` each: reads the directory's
//! files, checks the guest graph, assembles every guest, then adds what spans guests
//! (certificates, the routing tier) and validates each spec.
//!
//! Layer 7, orchestration: imports every lower layer and `graph`.

use super::builder::Builder;
use super::files::{Files, Layout};
use super::phoenix::{self, GuestConfig};
use super::reader::{Diag, Node};
use super::types::{CompileOptions, Compiled, CompiledGuest, MountKind, Problem};
use super::{certs, graph, guest, routing, secrets};
use phoenix_proto::model::{AbsPath, GuestId};
use std::collections::{BTreeMap, BTreeSet};

pub(crate) fn compile_phoenix(layout: &Layout, options: &CompileOptions, d: &mut Diag) -> Compiled {
    let files = Files::read(layout.etc.as_path(), d);
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
    graph::check_ids_and_dependencies(&guests, d);
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
        let (b, stack_rules) =
            guest::build_guest(&g, layout, &files, &hv, options, &mut scanned, d);
        g.facts.stack_firewall_rules = stack_rules;
        built.insert(g.id, (g, b));
    }
    if let Some((p, v)) = &files.manifest {
        certs::certificates(&Node::root(p, v), &mut built, d);
    }
    guest::routing_tier(layout, &hv, &routes, &mut built, d);

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
