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

/// `[ip:][host:]container[/proto]`, single ports only.
pub(super) fn parse_port(s: &str) -> Result<Port, String> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((a, p)) if matches!(p, "tcp" | "udp" | "sctp") => (a, p.to_string()),
        Some((_, p)) => return Err(format!("{s:?}: unknown protocol {p:?}")),
        None => (s, "tcp".to_string()),
    };
    let num = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port number (ranges are not supported)"))
    };
    let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
    let (host_ip, host_port, container) = match parts.as_slice() {
        [c] => (None, None, num(c)?),
        [c, h] => (None, Some(num(h)?), num(c)?),
        [c, h, ip] => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let host = if h.is_empty() { None } else { Some(num(h)?) };
            (Some(ip.to_string()), host, num(c)?)
        }
        _ => return Err(format!("{s:?}: not a port mapping")),
    };
    Ok(Port {
        host_ip,
        host_port,
        container_port: container,
        protocol,
    })
}

fn is_bind_source(s: &str) -> bool {
    s.starts_with('/') || s.starts_with('.') || s.starts_with('~')
}

/// A path-like source is a bind, anything else a named volume (as Compose decides);
/// `validate` then refuses relative paths.
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
    }
}

pub(super) fn parse_short_volume(s: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [_] => Err(format!(
            "{s:?}: anonymous volumes are not supported (they are lost on recreate); name the volume"
        )),
        [src, dst] => Ok(mount(src, dst, false)),
        [src, dst, mode] => {
            let mut ro = false;
            for m in mode.split(',') {
                match m {
                    "ro" => ro = true,
                    "rw" => ro = false,
                    "z" | "Z" | "cached" | "delegated" | "consistent" => {}
                    other => return Err(format!("{s:?}: unknown volume option {other:?}")),
                }
            }
            Ok(mount(src, dst, ro))
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
