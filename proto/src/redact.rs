//! Recognising secrets, and hiding them in anything printed. One implementation for both
//! sides: the compiler flags literal secrets in configs with it, and every output that
//! shows content (plan diffs of files and units, `phoenix validate --show`) passes text
//! through [`redact_text`].
//!
//! Detection is by key name ([`secret_key`]), by the shape of the value alone
//! ([`secret_value`]: URL userinfo, htpasswd hashes, PEM private keys, long random
//! tokens), and by `--flag value` pairs in a command ([`secret_args`]). It is a
//! heuristic: it errs towards flagging, and a value it misses is still never logged by
//! the agent, which prints no content of private (mode without the "other read" bit) files.

use std::borrow::Cow;

/// What replaces a secret in printed text.
pub const REDACTED: &str = "<redacted>";

/// Key segments (split at `_ - .`, case-insensitive) that name a credential.
const SECRET_SEGMENTS: [&str; 16] = [
    "password",
    "passwd",
    "pwd",
    "pw",
    "pass",
    "passphrase",
    "secret",
    "token",
    "auth",
    "credential",
    "credentials",
    "apikey",
    "jwt",
    "htpasswd",
    "dsn",
    "basicauth",
];

/// Substrings that name a credential even inside a compound word (`DBPASSWORD`).
const SECRET_WORDS: [&str; 6] = [
    "password",
    "passwd",
    "secret",
    "private_key",
    "privatekey",
    "credential",
];

/// True when `key` names a credential: `DB_PWD`, `SMTP_AUTH`, `JWT_SIGNING_KEY`,
/// `N8N_ENCRYPTION_KEY`, `admin_password`, `--db-password`. Keys naming where a secret
/// lives (`*_file`, `*_path`, `*_ref`, `*_url`) and public keys are not secrets.
pub fn secret_key(key: &str) -> bool {
    let k = key.trim_start_matches('-').to_ascii_lowercase();
    let segments: Vec<&str> = k.split(['_', '-', '.']).filter(|s| !s.is_empty()).collect();
    let Some(last) = segments.last() else {
        return false;
    };
    if matches!(
        *last,
        "file" | "path" | "ref" | "url" | "dir" | "user" | "username"
    ) {
        return false;
    }
    if segments.contains(&"public") || segments.contains(&"pub") {
        return false;
    }
    segments.iter().any(|s| SECRET_SEGMENTS.contains(s))
        || SECRET_WORDS.iter().any(|w| k.contains(w))
        // `*_KEY` (signing, encryption, API, SSH …), but not `KEY` alone nor `key_id`.
        || (segments.len() > 1 && matches!(*last, "key" | "keys"))
}

/// Values that are obviously not a real secret: unset markers and references.
pub fn is_placeholder(v: &str) -> bool {
    let t = v.trim();
    t.is_empty()
        || t.starts_with('/')
        || (t.starts_with("${") && t.ends_with('}'))
        || (t.starts_with('<') && t.ends_with('>'))
        || matches!(
            t.to_ascii_uppercase().as_str(),
            "NOT_SET" | "NONE" | "NULL" | "CHANGEME" | "CHANGE_ME" | "REDACTED" | "TODO"
        )
}

/// Why `v` is a secret by its shape alone, whatever key it sits under.
pub fn secret_value(v: &str) -> Option<&'static str> {
    if v.contains("PRIVATE KEY-----") {
        return Some("a PEM private key");
    }
    if userinfo_password(v).is_some() {
        return Some("a URL with a password");
    }
    if htpasswd_hash(v).is_some() {
        return Some("an htpasswd hash");
    }
    if random_token(v) {
        return Some("a long random token");
    }
    None
}

/// The byte range of the password in `scheme://user:password@host`.
fn userinfo_password(v: &str) -> Option<(usize, usize)> {
    let start = v.find("://")? + 3;
    let rest = &v[start..];
    let end = rest
        .find(['/', '?', '#', ' ', '"', '\''])
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    let (from, to) = (start + colon + 1, start + at);
    (to > from && !is_placeholder(&v[from..to])).then_some((from, to))
}

/// The byte range of the hash in `user:$apr1$…`, `user:$2y$…`, `user:{SHA}…`.
fn htpasswd_hash(v: &str) -> Option<(usize, usize)> {
    for marker in [
        "$apr1$", "$2y$", "$2a$", "$2b$", "$5$", "$6$", "$1$", "{SHA}",
    ] {
        // In Compose files `$` is written `$$`.
        for m in [marker.to_string(), marker.replace('$', "$$")] {
            if let Some(i) = v.find(&m) {
                let end = v[i..]
                    .find([' ', ',', '"', '\'', '\n'])
                    .map_or(v.len(), |e| i + e);
                return Some((i, end));
            }
        }
    }
    None
}

/// A run of 24+ characters mixing digits, lower and upper case with high entropy, as
/// API keys and JWTs are. Names (`Qwen2.5-7B-Instruct`) split into short words and pure
/// hex (digests, commit ids, how images and releases are pinned) are left alone.
fn random_token(v: &str) -> bool {
    let t = v.trim();
    if t.len() < 24 || t.len() > 4096 || t.contains(char::is_whitespace) {
        return false;
    }
    t.split(['-', '_', '.', '/', '+', '=', ':'])
        .any(|seg| seg.len() >= 24 && random_word(seg))
}

fn random_word(t: &str) -> bool {
    if !t.bytes().all(|b| b.is_ascii_alphanumeric())
        || !t.bytes().any(|b| b.is_ascii_digit())
        || !t.bytes().any(|b| b.is_ascii_lowercase())
        || !t.bytes().any(|b| b.is_ascii_uppercase())
    {
        return false;
    }
    let mut counts = [0usize; 256];
    for b in t.bytes() {
        counts[b as usize] += 1;
    }
    let n = t.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    entropy >= 4.0
}

/// Indices of literal secret values in an argv: `--db-password x`, `--token=x`,
/// and values that are secrets by shape.
pub fn secret_args(argv: &[String]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, a) in argv.iter().enumerate() {
        if let Some((flag, value)) = a.split_once('=')
            && flag.starts_with('-')
            && secret_key(flag)
            && !is_placeholder(value)
        {
            out.push(i);
        } else if a.starts_with('-')
            && !a.contains('=')
            && secret_key(a)
            && let Some(next) = argv.get(i + 1)
            && !next.starts_with('-')
            && !is_placeholder(next)
            && !next.starts_with('$')
        {
            out.push(i + 1);
        } else if secret_value(a).is_some() {
            out.push(i);
        }
    }
    out.dedup();
    out
}

/// `line` with secrets replaced by [`REDACTED`]: the value of `KEY=value`, `KEY: value`
/// or `"KEY": "value"` under a secret key, URL passwords, htpasswd hashes, tokens, and
/// whole lines of a PEM private key body.
pub fn redact_line(line: &str) -> Cow<'_, str> {
    if let Some(r) = redact_assignment(line) {
        return Cow::Owned(r);
    }
    let mut out = line.to_string();
    let mut changed = false;
    while let Some((a, b)) = userinfo_password(&out).filter(|(a, b)| &out[*a..*b] != REDACTED) {
        out.replace_range(a..b, REDACTED);
        changed = true;
    }
    if let Some((a, b)) = htpasswd_hash(&out) {
        out.replace_range(a..b, REDACTED);
        changed = true;
    }
    let words: Vec<String> = out
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '=' | ':'))
        .filter(|w| random_token(w))
        .map(str::to_string)
        .collect();
    for w in words {
        out = out.replace(&w, REDACTED);
        changed = true;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(line)
    }
}

/// `KEY=value` / `KEY: value` with a secret key, in any of the usual quotings
/// (`export K=`, `Environment="K=v"`, `"k": "v",`, `- K=v`, `--password=v`).
fn redact_assignment(line: &str) -> Option<String> {
    for (sep, _) in line.match_indices(['=', ':']) {
        let before = line[..sep].trim_end().trim_end_matches(['"', '\'']);
        let key_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let key = &before[key_start..];
        if key.is_empty() || !secret_key(key) {
            continue;
        }
        let value = line[sep + 1..].trim().trim_matches(['"', '\'', ',']);
        if is_placeholder(value) || value.starts_with("${") || value.starts_with('{') {
            return None;
        }
        return Some(format!("{}{REDACTED}", &line[..=sep]));
    }
    None
}

/// Every line of `text` through [`redact_line`]; PEM private key blocks become one line.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut in_key = false;
    for line in text.split_inclusive('\n') {
        if line.contains("-----BEGIN") && line.contains("PRIVATE KEY-----") {
            in_key = true;
            out.push_str(REDACTED);
            out.push_str(" (private key)\n");
            changed = true;
            continue;
        }
        if in_key {
            in_key = !(line.contains("-----END") && line.contains("PRIVATE KEY-----"));
            continue;
        }
        let r = redact_line(line);
        changed |= matches!(r, Cow::Owned(_));
        out.push_str(&r);
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Every string inside `v` through [`redact_text`].
pub fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let Cow::Owned(r) = redact_text(s) {
                *s = r;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_name_credentials() {
        for k in [
            "JWT_SIGNING_KEY",
            "DB_PWD",
            "SMTP_AUTH",
            "N8N_ENCRYPTION_KEY",
            "admin_password",
            "DATABASE_PASS",
            "--db-password",
            "HF_TOKEN",
            "api_key",
            "POSTGRESPASSWORD",
        ] {
            assert!(secret_key(k), "{k}");
        }
        for k in [
            "hf_token_file",
            "REDIS_URL",
            "tokenizer",
            "KEY",
            "ssh_public_key",
            "POSTGRES_USER",
            "author",
            "max_model_len",
        ] {
            assert!(!secret_key(k), "{k}");
        }
    }

    #[test]
    fn values_that_are_secrets_by_shape() {
        for v in [
            "redis://:pw@host:6379/0",
            "postgres://app:s3cret@db/app",
            "admin:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/",
            "admin:$$2y$$05$$abcdefghijklmnopqrstuv",
            "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dcXyZ9aBq1",
        ] {
            assert!(secret_value(v).is_some(), "{v}");
        }
        for v in [
            "https://10.0.0.10:9000",
            "redis://host:6379",
            "/usr/local/cuda/lib64",
            "sha256:4c9e1b7a0f6d3e2c8b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716253443526170",
            "4c9e1b7a0f6d3e2c8b5a4f3e2d1c0b9a8f7e6d5c",
            "Qwen/Qwen2.5-7B-Instruct-AWQ-with-a-long-name",
        ] {
            assert!(secret_value(v).is_none(), "{v}");
        }
    }

    #[test]
    fn secret_flags_in_commands() {
        let argv: Vec<String> = [
            "/usr/bin/app",
            "--db-password",
            "x",
            "--token=abc",
            "--port",
            "80",
            "--password-file",
            "/etc/p",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(secret_args(&argv), [2, 3]);
    }

    #[test]
    fn redaction_keeps_the_key_and_hides_the_value() {
        for (line, hidden) in [
            ("password=hunter2", "hunter2"),
            ("export DB_PWD='x y'", "x y"),
            ("Environment=\"JWT_SIGNING_KEY=abc\"", "abc"),
            ("  \"admin_password\": \"pw123\",", "pw123"),
            ("url = redis://:pw1234@host", "pw1234"),
            (
                "- traefik.http.middlewares.a.basicauth.users=admin:$apr1$x$y",
                "$apr1$x$y",
            ),
        ] {
            let r = redact_line(line);
            assert!(!r.contains(hidden), "{line} → {r}");
            assert!(r.contains(REDACTED), "{line} → {r}");
        }
        assert_eq!(redact_line("port=8080"), "port=8080");
        let t =
            redact_text("a=1\n-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\nb=2\n");
        assert_eq!(t, "a=1\n<redacted> (private key)\nb=2\n");
    }
}
