//! `${VAR}` interpolation from the stack's variables, and the helpers that apply it to
//! each shape of raw value. Only the given variables are read, never a process
//! environment. An unset variable without a default becomes an empty string and a
//! warning naming the field and the variable (never a value), as `docker compose` does.

use super::raw::{Scalar, SeqOrMap};
use super::{ComposeError, invalid};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

pub(super) struct Vars<'a> {
    pub(super) map: &'a BTreeMap<String, String>,
    /// Known to the caller but kept out (literal secrets): referring to one is refused.
    withheld: &'a BTreeSet<String>,
    /// `(field, variable)` of every unset variable substituted by an empty string.
    unset: RefCell<BTreeSet<(String, String)>>,
}

impl<'a> Vars<'a> {
    pub(super) fn new(map: &'a BTreeMap<String, String>, withheld: &'a BTreeSet<String>) -> Self {
        Vars {
            map,
            withheld,
            unset: RefCell::new(BTreeSet::new()),
        }
    }

    /// The stack variable `name`, when set.
    pub(super) fn get(&self, name: &str) -> Option<&'a String> {
        self.map.get(name)
    }

    /// Records a warning about `var` in `field` (the parser's other warnings use it too).
    pub(super) fn note_unset(&self, field: &str, var: &str) {
        self.unset
            .borrow_mut()
            .insert((field.to_string(), var.to_string()));
    }

    /// The warnings gathered so far, one line each, in field order.
    pub(super) fn warnings(&self) -> Vec<String> {
        self.unset
            .borrow()
            .iter()
            .map(|(field, var)| {
                format!("{field}: variable {var} is not set; an empty string was substituted")
            })
            .collect()
    }

    /// `e` with the variables left empty in its field named, when there are any.
    pub(super) fn explain(&self, e: ComposeError) -> ComposeError {
        match e {
            ComposeError::Invalid { field, message } => {
                let empty: Vec<String> = self
                    .unset
                    .borrow()
                    .iter()
                    .filter(|(f, _)| *f == field)
                    .map(|(_, v)| v.clone())
                    .collect();
                if empty.is_empty() {
                    ComposeError::Invalid { field, message }
                } else {
                    let what = if empty.len() == 1 {
                        format!("variable {} is not set and was", empty[0])
                    } else {
                        format!("variables {} are not set and were", empty.join(", "))
                    };
                    ComposeError::Invalid {
                        message: format!("{message} ({what} substituted by an empty string)"),
                        field,
                    }
                }
            }
            other => other,
        }
    }

    pub(super) fn s(&self, field: &str, input: &str) -> Result<String, ComposeError> {
        let mut unset = Vec::new();
        let out = interpolate(input, self.map, self.withheld, &mut unset).map_err(|e| match e {
            Interp::Withheld(var) => invalid(
                field,
                format!(
                    "variable {var} is a literal secret in the stack's manifest, which Phoenix keeps out of the desired state; give the value to the container from the guest (an env_file or a secret file)"
                ),
            ),
            Interp::Required { var, message } => ComposeError::RequiredVariable {
                field: field.to_string(),
                var,
                message,
            },
            Interp::Syntax(m) => invalid(field, m),
        })?;
        for var in unset {
            self.note_unset(field, &var);
        }
        Ok(out)
    }

    pub(super) fn opt(
        &self,
        field: &str,
        v: Option<String>,
    ) -> Result<Option<String>, ComposeError> {
        v.map(|v| self.s(field, &v)).transpose()
    }

    pub(super) fn list(&self, field: &str, v: Vec<String>) -> Result<Vec<String>, ComposeError> {
        v.iter().map(|x| self.s(field, x)).collect()
    }

    pub(super) fn map(
        &self,
        field: &str,
        m: BTreeMap<String, Scalar>,
    ) -> Result<BTreeMap<String, String>, ComposeError> {
        m.into_iter()
            .map(|(k, v)| Ok((k, self.s(field, &v.into_string())?)))
            .collect()
    }

    pub(super) fn pairs(
        &self,
        field: &str,
        v: SeqOrMap<Option<Scalar>>,
    ) -> Result<Vec<(String, Option<String>)>, ComposeError> {
        self.pairs_sep(field, v, '=')
    }

    /// A list of `key<sep>value` strings or a map; interpolates values (and list items).
    pub(super) fn pairs_sep(
        &self,
        field: &str,
        v: SeqOrMap<Option<Scalar>>,
        sep: char,
    ) -> Result<Vec<(String, Option<String>)>, ComposeError> {
        let mut out = Vec::new();
        match v {
            SeqOrMap::Seq(list) => {
                for item in list {
                    let item = self.s(field, &item)?;
                    match item.split_once(sep) {
                        Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                        None => out.push((item, None)),
                    }
                }
            }
            SeqOrMap::Map(map) => {
                for (k, v) in map {
                    let v = v.map(|v| self.s(field, &v.into_string())).transpose()?;
                    out.push((k, v));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, PartialEq)]
pub(super) enum Interp {
    /// A variable the caller withholds (see `ParseOptions::withheld`).
    Withheld(String),
    /// `${VAR:?message}` with VAR unset (or empty).
    Required {
        var: String,
        message: String,
    },
    Syntax(String),
}

fn is_var_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The end of a `${…}` expression that starts right after `${`: the `}` that closes it,
/// skipping nested `${…}` in a default (`${A:-${B}}`).
fn closing_brace(r: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = r.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?message}`, `${VAR?message}`, `${VAR:+alternative}`, `${VAR+alternative}`
/// (the colon forms treat an empty value as unset). An unset variable without a default
/// becomes an empty string and its name is added to `unset`, as Compose substitutes and
/// warns; a `?` error carries the file's message and the variable's name only.
pub(super) fn interpolate(
    input: &str,
    vars: &BTreeMap<String, String>,
    withheld: &BTreeSet<String>,
    unset: &mut Vec<String>,
) -> Result<String, Interp> {
    interpolate_depth(input, &Scope { vars, withheld }, 0, unset)
}

/// The variables an interpolation reads, and those it must refuse.
struct Scope<'a> {
    vars: &'a BTreeMap<String, String>,
    withheld: &'a BTreeSet<String>,
}

impl Scope<'_> {
    fn get(&self, name: &str) -> Result<Option<&String>, Interp> {
        if self.withheld.contains(name) {
            return Err(Interp::Withheld(name.to_string()));
        }
        Ok(self.vars.get(name))
    }
}

/// Nesting bound: a default inside a default inside … cannot recurse without limit.
const MAX_DEPTH: usize = 8;

fn interpolate_depth(
    input: &str,
    vars: &Scope,
    depth: usize,
    unset: &mut Vec<String>,
) -> Result<String, Interp> {
    if depth > MAX_DEPTH {
        return Err(Interp::Syntax(format!(
            "interpolation nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = closing_brace(r)
                .ok_or_else(|| Interp::Syntax(format!("unterminated ${{ in {input:?}")))?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let name_end = expr.find(|c| !is_var_char(c)).unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            if name.is_empty() {
                return Err(Interp::Syntax(format!("empty variable name in {input:?}")));
            }
            let value = vars.get(name)?;
            let set_nonempty = value.is_some_and(|v| !v.is_empty());
            let v = if op.is_empty() {
                match value {
                    Some(v) => v.clone(),
                    None => {
                        unset.push(name.to_string());
                        String::new()
                    }
                }
            } else if let Some(default) = op.strip_prefix(":-") {
                match value {
                    Some(v) if set_nonempty => v.clone(),
                    _ => interpolate_depth(default, vars, depth + 1, unset)?,
                }
            } else if let Some(default) = op.strip_prefix('-') {
                match value {
                    Some(v) => v.clone(),
                    None => interpolate_depth(default, vars, depth + 1, unset)?,
                }
            } else if let Some(message) = op.strip_prefix(":?") {
                match value {
                    Some(v) if set_nonempty => v.clone(),
                    _ => {
                        return Err(Interp::Required {
                            var: name.to_string(),
                            message: message.to_string(),
                        });
                    }
                }
            } else if let Some(message) = op.strip_prefix('?') {
                match value {
                    Some(v) => v.clone(),
                    None => {
                        return Err(Interp::Required {
                            var: name.to_string(),
                            message: message.to_string(),
                        });
                    }
                }
            } else if let Some(alt) = op.strip_prefix(":+") {
                if set_nonempty {
                    interpolate_depth(alt, vars, depth + 1, unset)?
                } else {
                    String::new()
                }
            } else if let Some(alt) = op.strip_prefix('+') {
                if value.is_some() {
                    interpolate_depth(alt, vars, depth + 1, unset)?
                } else {
                    String::new()
                }
            } else {
                return Err(Interp::Syntax(format!(
                    "unsupported interpolation ${{{expr}}} (Compose knows ${{VAR}}, ${{VAR:-default}}, ${{VAR-default}}, ${{VAR:?error}}, ${{VAR?error}}, ${{VAR:+alt}}, ${{VAR+alt}})"
                )));
            };
            out.push_str(&v);
        } else {
            let name_end = rest.find(|c| !is_var_char(c)).unwrap_or(rest.len());
            if name_end == 0 {
                return Err(Interp::Syntax(format!(
                    "lone $ in {input:?} (write $$ for a literal $)"
                )));
            }
            let name = &rest[..name_end];
            match vars.get(name)? {
                Some(v) => out.push_str(v),
                None => unset.push(name.to_string()),
            }
            rest = &rest[name_end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
