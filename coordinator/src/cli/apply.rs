//! `apply` and `plan`: compile, keep the guests in scope, refuse what cannot be sent,
//! push, and hand the report stream to [`super::follow`]; [`Progress`] shows it all.
//! With `--force`, every guest the push left unchanged is asked for a pass now, as
//! `phoenix converge` asks one guest (through etcd when its session is on another
//! replica of a cluster), and followed the same way.

use super::args::Output;
use super::offline::load;
use super::progress::Progress;
use super::{CliError, converge, follow};
use crate::{admin_client, compile};
use phoenix_proto::model::GuestId;
use phoenix_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use tokio_stream::StreamExt;

/// Which compiled guests an apply or plan pushes to and waits for.
pub(super) struct Scope {
    /// Empty: every compiled guest.
    pub guests: Vec<GuestId>,
    pub wait_all: bool,
}

/// One `apply` or `plan` run.
pub(super) struct Run {
    pub dry_run: bool,
    pub timeout: Duration,
    pub no_wait: bool,
    pub output: Output,
    pub scope: Scope,
    /// Run a pass now also where the revision is unchanged.
    pub force: bool,
}

/// Drops templates (compiled and validated, but a clone source is never a running guest)
/// and guests outside `--guest`; an id in `--guest` that the configs lack is an error.
/// Returns the templates dropped.
pub(super) fn select(
    compiled: &mut compile::Compiled,
    scope: &Scope,
) -> Result<Vec<GuestId>, CliError> {
    let unknown: Vec<String> = scope
        .guests
        .iter()
        .filter(|g| !compiled.guests.contains_key(g))
        .map(|g| g.to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(CliError::Input(format!(
            "--guest names guests the configs do not declare: {}",
            unknown.join(", ")
        )));
    }
    let mut templates = Vec::new();
    compiled.guests.retain(|g, c| {
        if !scope.guests.is_empty() && !scope.guests.contains(g) {
            return false;
        }
        if c.facts.is_template {
            templates.push(*g);
            return false;
        }
        true
    });
    Ok(templates)
}

pub(super) async fn apply(socket: &Path, path: &Path, run: &Run) -> Result<(), CliError> {
    let dry_run = run.dry_run;
    let mut progress = Progress::new(run.output);
    let mut compiled = load(path)?;
    for t in select(&mut compiled, &run.scope)? {
        progress.template(t.get());
    }
    if compiled.guests.is_empty() {
        progress.done(&[], &[], &[]);
        if run.output != Output::Json {
            println!("nothing to apply: no guest in scope");
        }
        return Ok(());
    }
    check_sizes(&compiled)?;
    let mut admin = admin_client::connect(socket).await?;
    let enrolled: BTreeSet<u32> = admin_client::status(&mut admin)
        .await?
        .iter()
        .filter(|s| s.enrolled)
        .map(|s| s.guest_id)
        .collect();
    let guests = compiled
        .guests
        .iter()
        .map(|(g, c)| (g.get(), c.spec.to_json()))
        .collect();
    let declared_json = compiled
        .guests
        .iter()
        .map(|(g, c)| (g.get(), serde_json::to_vec(&c.declared).unwrap_or_default()))
        .collect();
    // Watch before pushing so no report can slip past.
    let ids: Vec<u32> = compiled.guests.keys().map(|g| g.get()).collect();
    let reports = admin
        .watch_reports(v1::WatchReportsRequest {
            guest_ids: ids.clone(),
        })
        .await?
        .into_inner();
    // A plan forwarded to another replica must outlive the wait for its reports.
    let wait = if run.no_wait {
        Duration::ZERO
    } else {
        run.timeout
    };
    let mut answers =
        admin_client::apply_waiting(&mut admin, guests, declared_json, dry_run, wait).await?;
    // The daemon answers in no particular order; operators read fleets by id.
    answers.sort_by_key(|g| g.guest_id);
    let mut pending: BTreeMap<u32, (u64, String)> = BTreeMap::new();
    for g in &answers {
        progress.pushed(g, dry_run, enrolled.contains(&g.guest_id));
        let waited = if dry_run {
            g.connected
        } else {
            run.scope.wait_all || enrolled.contains(&g.guest_id)
        };
        if waited {
            pending.insert(g.guest_id, (g.revision, g.digest.clone()));
        }
    }
    // A new revision runs a pass by itself; an unchanged one only when asked to.
    let mut forced: Vec<u32> = Vec::new();
    let mut not_forced: Vec<u32> = Vec::new();
    let mut since = u64::MAX;
    if run.force {
        for g in answers.iter().filter(|g| !g.changed) {
            match converge::request(&mut admin, g.guest_id).await {
                Ok(r) => {
                    since = since.min(r.after_index);
                    forced.push(g.guest_id);
                    progress.forced(
                        g.guest_id,
                        Some(r.replica.as_str()).filter(|r| !r.is_empty()),
                        None,
                    );
                }
                Err(s) => {
                    progress.forced(g.guest_id, None, Some(s.message()));
                    // Waited for: it counts as not converged. Otherwise (not enrolled),
                    // it converges once it joins, as without --force.
                    if pending.remove(&g.guest_id).is_some() {
                        not_forced.push(g.guest_id);
                    }
                }
            }
        }
    }
    if run.no_wait || pending.is_empty() {
        progress.done(&[], &not_forced, &[]);
        return if not_forced.is_empty() {
            Ok(())
        } else {
            Err(not_forced_error(&not_forced))
        };
    }
    // The watch starts with each guest's last stored report, which for a forced guest is
    // an earlier pass: its report comes from the event log after the request instead.
    let watched = reports.filter(|ev| !matches!(ev, Ok(ev) if forced.contains(&ev.guest_id)));
    if forced.is_empty() {
        let mut watched = watched;
        return follow::follow(
            &mut watched,
            pending,
            dry_run,
            run.timeout,
            &mut progress,
            not_forced,
        )
        .await;
    }
    let requested = converge::requested_reports(&mut admin, forced.clone(), since).await?;
    let mut merged = watched.merge(requested);
    follow::follow(
        &mut merged,
        pending,
        dry_run,
        run.timeout,
        &mut progress,
        not_forced,
    )
    .await
}

fn not_forced_error(guests: &[u32]) -> CliError {
    let list: Vec<String> = guests.iter().map(u32::to_string).collect();
    CliError::NotConverged(format!(
        "no pass could be forced on guests {}",
        list.join(", ")
    ))
}

/// Each guest's state travels as one message to its agent: refuse what cannot be sent
/// here, with the guest named, rather than as a transport error later. The fleet as a
/// whole has no limit: the apply is streamed to the daemon in parts.
fn check_sizes(compiled: &compile::Compiled) -> Result<(), CliError> {
    let limit = phoenix_proto::MAX_MESSAGE_BYTES;
    for (g, c) in &compiled.guests {
        let size = c.spec.to_json().len();
        if size > limit / 2 {
            return Err(CliError::Input(format!(
                "desired state of guest {g} is {size} bytes, too large (limit {} bytes per guest): ship big content as packages or stack images, not inline files",
                limit / 2
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> compile::Compiled {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        compile::load(&dir).unwrap_or_else(|e| panic!("{e}"))
    }

    fn id(n: u32) -> GuestId {
        GuestId::try_from(n).expect("id")
    }

    #[test]
    fn templates_are_compiled_but_never_in_scope() {
        let mut c = example();
        assert!(c.guests[&id(9000)].facts.is_template);
        let templates = select(
            &mut c,
            &Scope {
                guests: vec![],
                wait_all: false,
            },
        )
        .expect("scope");
        assert_eq!(templates, [id(9000)]);
        let ids: Vec<u32> = c.guests.keys().map(|g| g.get()).collect();
        assert_eq!(ids, [101, 102, 103, 801, 1002]);
    }

    #[test]
    fn guest_scope_keeps_only_the_named_guests_and_refuses_unknown_ones() {
        let mut c = example();
        let scope = Scope {
            guests: vec![id(101), id(1002)],
            wait_all: false,
        };
        select(&mut c, &scope).expect("scope");
        let ids: Vec<u32> = c.guests.keys().map(|g| g.get()).collect();
        assert_eq!(ids, [101, 1002]);
        let mut c = example();
        let e = select(
            &mut c,
            &Scope {
                guests: vec![id(555)],
                wait_all: false,
            },
        )
        .expect_err("unknown guest");
        assert!(e.to_string().contains("555"), "{e}");
    }
}
