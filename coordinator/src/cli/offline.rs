//! What runs without the daemon: compiling configs (warnings printed, all errors at
//! once) and `validate`.

use super::CliError;
use super::args::Output;
use crate::compile;
use phoenix_proto::model::TrustDomain;
use std::path::Path;

/// Compiles `path` and prints what each guest gets (`--show`: the state itself,
/// redacted). With `-o json`, one object: `ok`, `guests` (in start order), `warnings`
/// and `errors` (each with file, JSON path and message), and nothing on stderr.
pub(super) fn validate(
    path: &Path,
    show: bool,
    trust_domain: &str,
    output: Output,
) -> Result<(), CliError> {
    if output == Output::Json {
        return validate_json(path, show, trust_domain);
    }
    let compiled = load(path)?;
    refuse_reserved_names(&compiled, trust_domain)?;
    for g in compiled.start_order() {
        let c = &compiled.guests[&g];
        println!(
            "{} {g} ({}): {} resources",
            c.kind,
            c.name,
            c.spec.resources().len()
        );
        if show {
            println!(
                "{}",
                serde_json::to_string_pretty(&shown_spec(&c.spec)).unwrap_or_default()
            );
        }
    }
    println!("ok: {} guests", compiled.guests.len());
    Ok(())
}

/// File contents may hold secret-looking lines meant for the guest.
fn shown_spec(spec: &phoenix_proto::model::GuestSpec) -> serde_json::Value {
    let mut json = serde_json::to_value(spec).unwrap_or_default();
    phoenix_proto::redact::redact_json(&mut json);
    json
}

fn validate_json(path: &Path, show: bool, trust_domain: &str) -> Result<(), CliError> {
    let located = |file: &Path, at: &str, message: String| serde_json::json!({"file": file.display().to_string(), "path": at, "message": message});
    let (compiled, warnings, mut errors) = match compile::load(path) {
        Ok(c) => {
            let w = c.warnings.clone();
            (Some(c), w, Vec::new())
        }
        Err(e) => {
            let errors =
                e.0.iter()
                    .map(|x| located(&x.file, &x.path, x.problem.to_string()))
                    .collect();
            (None, e.1, errors)
        }
    };
    let mut guests = Vec::new();
    if let Some(compiled) = &compiled {
        if let Err(e) = refuse_reserved_names(compiled, trust_domain) {
            errors.extend(
                e.to_string()
                    .lines()
                    .map(|l| serde_json::json!({"message": l})),
            );
        }
        for g in compiled.start_order() {
            let c = &compiled.guests[&g];
            let mut entry = serde_json::json!({
                "guest": g.get(),
                "kind": c.kind.to_string(),
                "name": c.name,
                "template": c.facts.is_template,
                "resources": c.spec.resources().len(),
            });
            if show {
                entry["state"] = shown_spec(&c.spec);
            }
            guests.push(entry);
        }
    }
    let ok = errors.is_empty();
    let doc = serde_json::json!({
        "ok": ok,
        "guests": guests,
        "warnings": warnings
            .iter()
            .map(|w| located(&w.file, &w.path, w.message.clone()))
            .collect::<Vec<_>>(),
        "errors": errors,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    if ok {
        Ok(())
    } else {
        Err(CliError::Input(format!(
            "{} config error(s); see \"errors\"",
            doc["errors"].as_array().map(Vec::len).unwrap_or(0)
        )))
    }
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
