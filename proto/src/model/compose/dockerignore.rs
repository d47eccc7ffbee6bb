//! `.dockerignore`, read as the Docker CLI reads it, and the secret-looking files of a
//! build context. Shared by the coordinator (which ships a context with the stack) and
//! the agent (which packs it for the engine and hashes it), so both leave out the same
//! files: an ignored file is neither shipped, nor sent to the build, nor in the digest
//! (changing it rebuilds nothing).
//!
//! Rules (moby's patternmatcher): one pattern per line, `#` starts a comment line,
//! blank lines are skipped; a leading `!` re-includes what an earlier line excluded;
//! the last matching line wins; patterns are cleaned paths relative to the context
//! (a leading `/` is dropped); `*` and `?` match within one path segment, `[…]` is a
//! character class, `\` escapes, `**` matches any number of segments; a pattern that
//! matches a directory excludes everything beneath it. The Dockerfile and
//! `.dockerignore` itself are always sent, as the CLI sends them.

/// One line of a `.dockerignore`.
#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    /// `!pattern`: re-includes.
    exception: bool,
}

/// The patterns of one `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, p) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let segments = clean(p);
            if segments.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                segments,
                exception,
            });
        }
        DockerIgnore { patterns }
    }

    /// Whether the file or directory at `path` (relative to the context, `/`-separated)
    /// is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for p in &self.patterns {
            // A pattern matching the path or one of its parent directories.
            let hit = (1..=segs.len()).any(|k| matches(&p.segments, &segs[..k]));
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether some `!` line could re-include a path beneath an excluded directory (then
    /// the directory is walked and each entry judged; else it is skipped whole).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }
}

/// A cleaned pattern's segments: `.` dropped, `..` pops, a leading `/` dropped.
fn clean(p: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

fn matches(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            matches(rest, path) || (!path.is_empty() && matches(pat, &path[1..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((seg, path_rest)) => {
                segment_match(first.as_bytes(), seg.as_bytes()) && matches(rest, path_rest)
            }
            None => false,
        },
    }
}

/// Go's `filepath.Match` within one segment: `*`, `?`, `[…]` (with `^`/`!` negation and
/// ranges) and `\` escapes.
fn segment_match(pat: &[u8], name: &[u8]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|i| segment_match(&pat[1..], &name[i..])),
        Some(b'?') => !name.is_empty() && segment_match(&pat[1..], &name[1..]),
        Some(b'[') => {
            let Some((&c, rest_name)) = name.split_first() else {
                return false;
            };
            let mut i = 1;
            let negate = matches!(pat.get(i), Some(b'^' | b'!'));
            if negate {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            loop {
                let Some(&p) = pat.get(i) else {
                    return false; // unterminated class: matches nothing, as in Go
                };
                if p == b']' && !first {
                    i += 1;
                    break;
                }
                first = false;
                let lo = if p == b'\\' {
                    i += 1;
                    match pat.get(i) {
                        Some(&x) => x,
                        None => return false,
                    }
                } else {
                    p
                };
                i += 1;
                let hi = if pat.get(i) == Some(&b'-') && pat.get(i + 1).is_some_and(|&x| x != b']')
                {
                    let h = pat[i + 1];
                    i += 2;
                    h
                } else {
                    lo
                };
                if lo <= c && c <= hi {
                    hit = true;
                }
            }
            hit != negate && segment_match(&pat[i..], rest_name)
        }
        Some(b'\\') if pat.len() > 1 => {
            name.first() == Some(&pat[1]) && segment_match(&pat[2..], &name[1..])
        }
        Some(&p) => name.first() == Some(&p) && segment_match(&pat[1..], &name[1..]),
    }
}

/// Names of files that usually hold credentials.
const SECRET_NAMES: &[&str] = &[
    ".env",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".git-credentials",
    ".htpasswd",
    "credentials",
    "credentials.json",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
];

/// Extensions of files that usually hold keys or keystores.
const SECRET_EXTENSIONS: &[&str] = &["pem", "key", "p12", "pfx", "jks", "keystore", "kdbx"];

/// Why a context file at `path` (relative) with `content` looks secret, if it does: a
/// PEM private key in its content, or a name that usually holds credentials. Never
/// returns or quotes the content.
pub fn secret_looking(path: &str, content: &[u8]) -> Option<&'static str> {
    let has_key = content
        .windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----");
    if has_key {
        return Some("holds a PEM private key");
    }
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let secret_name = SECRET_NAMES.contains(&name.as_str())
        || (name.starts_with(".env.") && name != ".env.example" && name != ".env.sample")
        || SECRET_EXTENSIONS.contains(&ext);
    secret_name.then_some("is named like a credentials file")
}

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn patterns_follow_the_docker_cli() {
        let d = DockerIgnore::parse(
            "# comment\n\n*.log\n/build\nsecrets/\n**/*.tmp\n!keep.log\ndocs/*/draft?.md\n[ab]c.txt\n",
        );
        for (path, excluded) in [
            ("app.log", true),
            ("keep.log", false),
            ("sub/app.log", false), // `*` does not cross a segment
            ("build", true),
            ("build/out/x.bin", true), // beneath an excluded directory
            ("src/build", false),
            ("secrets/key.pem", true),
            ("a.tmp", true),
            ("deep/er/x.tmp", true),
            ("docs/v1/draft1.md", true),
            ("docs/v1/draft10.md", false),
            ("ac.txt", true),
            ("cc.txt", false),
            ("Dockerfile", false),
        ] {
            assert_eq!(d.excludes(path), excluded, "{path}");
        }
        assert!(d.has_exceptions());
        // The last matching line wins.
        let d = DockerIgnore::parse("!a.txt\n*.txt\n");
        assert!(d.excludes("a.txt"));
        let d = DockerIgnore::parse("*\n!src\n");
        assert!(!d.excludes("src/main.rs") && d.excludes("README.md"));
    }

    #[test]
    fn secret_looking_files_are_named_never_quoted() {
        let pem = b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n";
        assert_eq!(
            secret_looking("deploy/key.txt", pem),
            Some("holds a PEM private key")
        );
        assert!(secret_looking("conf/server.key", b"x").is_some());
        assert!(secret_looking(".env", b"A=1").is_some());
        assert!(secret_looking(".env.production", b"A=1").is_some());
        assert!(secret_looking(".env.example", b"A=").is_none());
        assert!(secret_looking("src/main.rs", b"fn main() {}").is_none());
        assert!(secret_looking("certs/ca.crt", b"-----BEGIN CERTIFICATE-----").is_none());
    }
}
