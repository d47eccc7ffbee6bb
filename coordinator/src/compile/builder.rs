//! The resources of one guest, merged by id, with soft ordering edges resolved when the
//! spec is finished.
//!
//! Layer 4: imports layers 0–3 and `features` (for `Item`).

use super::features::Item;
use super::phoenix::GuestConfig;
use super::reader::Diag;
use phoenix_proto::model::{GuestSpec, Resource, ResourceRef};
use std::collections::BTreeSet;

/// Drop-in for nginx.service on the gateway: `nginx -t` runs before every reload, so a broken
/// configuration fails the reload (and the report) while the old one keeps serving. Debian's
/// own `nginx -s reload` parses the configuration too; the explicit check keeps that true
/// whatever unit the package ships.
pub const NGINX_CHECKED_RELOAD: &str = "[Service]\nExecReload=\nExecReload=/usr/sbin/nginx -t -q -g \"daemon on; master_process on;\"\nExecReload=/usr/sbin/nginx -g \"daemon on; master_process on;\" -s reload\n";

/// Resources of one guest, merged by id, with soft ordering edges.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    pub(crate) resources: Vec<Resource>,
    after: Vec<(ResourceRef, ResourceRef)>,
}

impl Builder {
    pub(crate) fn add(&mut self, item: Item, g: &GuestConfig, d: &mut Diag) {
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
    pub(crate) fn replace(&mut self, r: Resource) {
        let id = r.id();
        match self.resources.iter_mut().find(|x| x.id() == id) {
            Some(existing) => *existing = r,
            None => self.resources.push(r),
        }
    }

    /// `service` reloads (or restarts) when `changed` changed in the same pass.
    pub(crate) fn on_change(&mut self, service: &str, changed: ResourceRef, reload: bool) {
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
    pub(crate) fn nginx_checked_reload(&mut self) {
        for r in &mut self.resources {
            if let Resource::Service(s) = r
                && s.name == "nginx.service"
            {
                s.dropins
                    .insert("phoenix-checked-reload".into(), NGINX_CHECKED_RELOAD.into());
            }
        }
    }

    pub(crate) fn finish(mut self) -> GuestSpec {
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
