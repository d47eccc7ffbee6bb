//! The string syntaxes inside Compose values: shell words, port mappings, short volume
//! mappings, Go durations. Pure string functions; each error says what was wrong with
//! the text (the caller adds the field).

use super::types::{Mount, MountKind, Port};

/// Splits like a POSIX shell would (quotes and backslashes), without expanding anything:
/// Compose runs a string `command` as these words, not through `sh -c`.
pub(super) fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Most ports one mapping may expand to (`8000-8999:8000-8999` is a thousand).
pub(super) const MAX_PORTS: usize = 1024;

/// `a` or `a-b`, each a port number 1–65535.
fn port_range(s: &str, whole: &str) -> Result<(u16, u16), String> {
    let num = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{whole:?}: {p:?} is not a port number"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("{whole:?}: range {s:?} runs backwards"));
            }
            Ok((a, b))
        }
        None => num(s).map(|n| (n, n)),
    }
}

/// `[ip:][host:]container[/proto]`, each port a number or a range (`8000-8010`); a range
/// expands to one mapping per port, as Compose does, host and container ranges of the
/// same length.
pub(super) fn parse_port(s: &str) -> Result<Vec<Port>, String> {
    let (addr, protocol) = split_protocol(s)?;
    let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [c] => (None, None, *c),
        [c, h] => (None, Some(*h), *c),
        [c, h, ip] => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let host = if h.is_empty() { None } else { Some(*h) };
            (Some(ip.to_string()), host, *c)
        }
        _ => return Err(format!("{s:?}: not a port mapping")),
    };
    ports(s, host_ip, host, container, &protocol)
}

/// `port[/proto]` → protocol checked, `tcp` by default.
fn split_protocol(s: &str) -> Result<(&str, String), String> {
    match s.rsplit_once('/') {
        Some((a, p)) if matches!(p, "tcp" | "udp" | "sctp") => Ok((a, p.to_string())),
        Some((_, p)) => Err(format!("{s:?}: unknown protocol {p:?}")),
        None => Ok((s, "tcp".to_string())),
    }
}

/// Expands one mapping; `whole` is the text as written, for errors.
pub(super) fn ports(
    whole: &str,
    host_ip: Option<String>,
    host: Option<&str>,
    container: &str,
    protocol: &str,
) -> Result<Vec<Port>, String> {
    let (c0, c1) = port_range(container, whole)?;
    let host = host.map(|h| port_range(h, whole)).transpose()?;
    let count = usize::from(c1 - c0) + 1;
    if count > MAX_PORTS {
        return Err(format!("{whole:?}: more than {MAX_PORTS} ports"));
    }
    if let Some((h0, h1)) = host
        && usize::from(h1 - h0) + 1 != count
    {
        return Err(format!(
            "{whole:?}: a host port range must be as long as the container range (a range to pick one port from is not supported)"
        ));
    }
    Ok((0..count)
        .map(|i| {
            // `count` fits in u16: it is at most the span of two u16 values.
            let off = u16::try_from(i).unwrap_or(u16::MAX);
            Port {
                host_ip: host_ip.clone(),
                host_port: host.map(|(h0, _)| h0.saturating_add(off)),
                container_port: c0.saturating_add(off),
                protocol: protocol.to_string(),
            }
        })
        .collect())
}

/// `expose` entries: `80`, `80/udp`, `8000-8010[/proto]` → `port/proto` each.
pub(super) fn parse_expose(s: &str) -> Result<Vec<String>, String> {
    let (p, protocol) = split_protocol(s)?;
    let (a, b) = port_range(p, s)?;
    if usize::from(b - a) + 1 > MAX_PORTS {
        return Err(format!("{s:?}: more than {MAX_PORTS} ports"));
    }
    Ok((a..=b).map(|n| format!("{n}/{protocol}")).collect())
}

/// Byte sizes as Compose reads them (Docker's `RAMInBytes`): a number of bytes, or a
/// number with `b`, `k`, `m`, `g`, `t` (optionally followed by `b` or `ib`), powers of
/// 1024. Only positive sizes up to 2^62.
pub(super) fn parse_bytes(s: &str) -> Option<i64> {
    let t = s.trim().to_ascii_lowercase();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..num_end].parse().ok()?;
    let unit = t[num_end..].trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && v >= 1.0 && v <= (1u64 << 62) as f64).then_some(v as i64)
}

fn is_bind_source(s: &str) -> bool {
    s.starts_with('/') || s.starts_with('.') || s.starts_with('~')
}

/// A path-like source is a bind, anything else a named volume (as Compose decides); the
/// parser then resolves relative paths against the project directory.
pub(super) fn mount(source: &str, target: &str, read_only: bool) -> Mount {
    let kind = if is_bind_source(source) {
        MountKind::Bind
    } else {
        MountKind::Volume
    };
    Mount {
        kind,
        source: source.to_string(),
        target: target.to_string(),
        read_only,
        nocopy: false,
    }
}

/// An anonymous volume at `target`.
pub(super) fn anonymous(target: &str, read_only: bool) -> Mount {
    Mount {
        kind: MountKind::Anonymous,
        source: String::new(),
        target: target.to_string(),
        read_only,
        nocopy: false,
    }
}

pub(super) fn parse_short_volume(s: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [target] => Ok(anonymous(target, false)),
        [src, dst] => Ok(mount(src, dst, false)),
        [src, dst, mode] => {
            let mut ro = false;
            let mut nocopy = false;
            for m in mode.split(',') {
                match m {
                    "ro" => ro = true,
                    "rw" => ro = false,
                    "nocopy" => nocopy = true,
                    // SELinux relabelling and macOS consistency hints: no effect on a
                    // Linux guest without SELinux, as with Compose there.
                    "z" | "Z" | "cached" | "delegated" | "consistent" => {}
                    other => return Err(format!("{s:?}: unknown volume option {other:?}")),
                }
            }
            let mut m = mount(src, dst, ro);
            m.nocopy = nocopy && m.kind == MountKind::Volume;
            Ok(m)
        }
        _ => Err(format!("{s:?}: not a volume mapping")),
    }
}

/// Go-style durations as Compose writes them: `1h2m3s`, `500ms`, `1.5s`, `10us`.
pub(super) fn parse_duration(s: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * mult;
    }
    Some(total as i64)
}
