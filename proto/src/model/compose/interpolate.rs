//! `${VAR}` interpolation from the stack's variables, and the helpers that apply it to
//! each shape of raw value. Only the given variables are read, never a process
//! environment.

use super::raw::{Scalar, SeqOrMap};
use super::{ComposeError, invalid};
use std::collections::BTreeMap;
pub(super) struct Vars<'a>(pub(super) &'a BTreeMap<String, String>);

impl Vars<'_> {
    pub(super) fn s(&self, field: &str, input: &str) -> Result<String, ComposeError> {
        interpolate(input, self.0).map_err(|e| match e {
            Interp::Unset(var) => ComposeError::UnsetVariable {
                field: field.to_string(),
                var,
            },
            Interp::Syntax(m) => invalid(field, m),
        })
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
    Unset(String),
    Syntax(String),
}

fn is_var_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

pub(super) fn interpolate(input: &str, vars: &BTreeMap<String, String>) -> Result<String, Interp> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| Interp::Syntax(format!("unterminated ${{ in {input:?}")))?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let name_end = expr.find(|c| !is_var_char(c)).unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            if name.is_empty() {
                return Err(Interp::Syntax(format!("empty variable name in {input:?}")));
            }
            let value = vars.get(name);
            let v = if op.is_empty() {
                value
                    .cloned()
                    .ok_or_else(|| Interp::Unset(name.to_string()))?
            } else if let Some(default) = op.strip_prefix(":-") {
                match value {
                    Some(v) if !v.is_empty() => v.clone(),
                    _ => interpolate(default, vars)?,
                }
            } else if let Some(default) = op.strip_prefix('-') {
                match value {
                    Some(v) => v.clone(),
                    None => interpolate(default, vars)?,
                }
            } else {
                return Err(Interp::Syntax(format!(
                    "unsupported interpolation ${{{expr}}} (only ${{VAR}}, ${{VAR:-default}} and ${{VAR-default}})"
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
            out.push_str(
                vars.get(name)
                    .ok_or_else(|| Interp::Unset(name.to_string()))?,
            );
            rest = &rest[name_end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
