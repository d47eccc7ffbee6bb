//! What runs without the daemon: compiling configs (warnings printed, all errors at
//! once) and `validate`.

use super::CliError;
use crate::compile;
use phoenix_proto::model::TrustDomain;
use std::path::Path;

/// Compiles `path` and prints what each guest gets (`--show`: the state itself,
/// redacted).
pub(super) fn validate(path: &Path, show: bool, trust_domain: &str) -> Result<(), CliError> {
    let compiled = load(path)?;
    refuse_reserved_names(&compiled, trust_domain)?;
    for g in compiled.start_order() {
        let c = &compiled.guests[&g];
        println!(
            "{} {g} ({}): {} resources",
            c.kind,
            c.name,
            c.spec.resources.len()
        );
        if show {
            // File contents may hold secret-looking lines meant for the guest.
            let mut json = serde_json::to_value(&c.spec).unwrap_or_default();
            phoenix_proto::redact::redact_json(&mut json);
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
    }
    println!("ok: {} guests", compiled.guests.len());
    Ok(())
}

/// Certificates naming an identity of `trust_domain` (the daemon refuses them at apply
/// and at signing too), all at once.
fn refuse_reserved_names(compiled: &compile::Compiled, trust_domain: &str) -> Result<(), CliError> {
    let td = TrustDomain::try_from(trust_domain.to_string())
        .map_err(|e| CliError::Input(e.to_string()))?;
    let errors: Vec<String> = compiled
        .guests
        .iter()
        .flat_map(|(g, c)| {
            phoenix_proto::model::reserved_cert_names(&c.spec, &td)
                .into_iter()
                .map(move |e| format!("guest {g}: {e}"))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Input(errors.join("\n")))
    }
}

/// Compiles `path`, printing warnings; all errors at once.
/// Warnings are printed whether or not there are errors: a flagged secret must not go
/// unmentioned because an unrelated value failed.
pub(super) fn load(path: &Path) -> Result<compile::Compiled, CliError> {
    let (result, warnings) = match compile::load(path) {
        Ok(c) => {
            let w = c.warnings.clone();
            (Ok(c), w)
        }
        Err(e) => {
            let w = e.1.clone();
            (Err(CliError::Input(e.to_string())), w)
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    result
}
