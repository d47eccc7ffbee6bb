//! A local account that can write into a managed directory (here `/srv/www`, owned by the
//! unprivileged user `evil` in a real systemd guest) plants symbolic links where the root
//! agent writes: at the temp name older builds used, at the target, at a parent directory,
//! and swapped in a loop while the agent applies. The root-owned victims keep their content,
//! owner and mode, and the report names the refusal.

use phoenix_tests::guest::Guest;
use serde_json::{Value, json};

const VICTIM: &str = "/root/victim";
const VICTIM_DIR: &str = "/root/vdir";

/// Content, owner, mode and link count of every victim, plus the victim directory's listing.
fn victims(g: &Guest) -> String {
    g.ok(&format!(
        "stat -c '%n %U:%G %a %h %s' {VICTIM} {VICTIM_DIR} {VICTIM_DIR}/index.html; \
         sha256sum {VICTIM} {VICTIM_DIR}/index.html; ls -a {VICTIM_DIR}"
    ))
}

fn as_evil(g: &Guest, script: &str) {
    g.ok(&format!("runuser -u evil -- /bin/sh -c '{script}'"));
}

fn file(path: &str, content: &str) -> Value {
    json!({"kind": "file", "path": path, "content": content, "mode": "0644", "owner": "evil"})
}

fn assert_refused(applied: &phoenix_tests::guest::Applied, id: &str, link: &str) {
    assert_eq!(
        applied.status(id),
        "failed",
        "{id}: {}",
        applied.message(id)
    );
    let msg = applied.message(id);
    assert!(
        msg.contains(&format!("refusing to follow symbolic link {link}")),
        "{id}: {msg}"
    );
}

#[test]
fn links_planted_by_a_local_user_never_redirect_root_writes() {
    let Some(g) = Guest::boot("planted-links", &[]) else {
        return;
    };
    g.ok("useradd -m evil && mkdir -p /srv/www && chown evil:evil /srv/www");
    g.ok(&format!(
        "printf 'root:$6$victimhash:19000:0:99999:7:::\\n' > {VICTIM} && chmod 0600 {VICTIM} \
         && mkdir -m 0700 {VICTIM_DIR} && echo original > {VICTIM_DIR}/index.html \
         && chmod 0600 {VICTIM_DIR}/index.html"
    ));
    let before = victims(&g);
    assert!(before.contains("root:root 600"), "{before}");

    // (1) A link at the temp name older builds used (predictable from the target's name).
    as_evil(
        &g,
        &format!("ln -s {VICTIM} /srv/www/.index.html.phoenix-tmp"),
    );
    let spec = json!({"resources": [file("/srv/www/index.html", "hello\n")]});
    let a = g.apply(&spec);
    assert_eq!(
        victims(&g),
        before,
        "victim untouched by the temp-name link"
    );
    a.assert(&[("file:/srv/www/index.html", "changed")]);
    assert_eq!(g.ok("cat /srv/www/index.html"), "hello");
    assert_eq!(
        g.ok("stat -c '%U %a %F' /srv/www/index.html"),
        "evil 644 regular file"
    );
    assert_eq!(
        g.ok("ls -A /srv/www"),
        "index.html",
        "stale temp link removed"
    );

    // (2) A link at the target: reading it to compare is refused; nothing is followed.
    as_evil(
        &g,
        &format!("rm /srv/www/index.html && ln -s {VICTIM} /srv/www/index.html"),
    );
    let a = g.apply(&json!({"resources": [file("/srv/www/index.html", "again\n")]}));
    assert_refused(&a, "file:/srv/www/index.html", "/srv/www/index.html");
    assert_eq!(victims(&g), before, "victim untouched by the target link");
    assert_eq!(g.ok("readlink /srv/www/index.html"), VICTIM);

    // (3) A link at a parent directory, for a managed file and for a certificate's key.
    as_evil(&g, &format!("ln -s {VICTIM_DIR} /srv/www/sub"));
    let a = g.apply(&json!({"resources": [
        file("/srv/www/sub/index.html", "pwned\n"),
        {"kind": "cert", "name": "web", "common_name": "web.lab",
         "cert_path": "/srv/www/sub/web.crt", "key_path": "/srv/www/sub/web.key",
         "mode": "0644", "key_mode": "0600", "ttl_seconds": 3600}
    ]}));
    assert_refused(&a, "file:/srv/www/sub/index.html", "/srv/www/sub");
    assert_refused(&a, "cert:web", "/srv/www/sub");
    assert_eq!(victims(&g), before, "victim directory untouched");

    // (4) A race: the user swaps a directory and a link at a parent, and a link and a
    // regular file at a target, as fast as it can while the agent applies again and again.
    // (Once the agent has created the parent itself, root owns it and that swap stops.)
    as_evil(&g, "rm -f /srv/www/sub /srv/www/index.html");
    as_evil(
        &g,
        &format!(
            "cd /srv/www; while :; do rm -rf race; mkdir race; ln -sf {VICTIM} race/index.html; \
             rm -rf race; ln -s {VICTIM_DIR} race; done >/dev/null 2>&1 & echo $! > /tmp/race1.pid; \
             while :; do rm -f t.html; ln -s {VICTIM} t.html; rm -f t.html; echo x > t.html; \
             done >/dev/null 2>&1 & echo $! > /tmp/race2.pid"
        ),
    );
    let ids = ["file:/srv/www/race/index.html", "file:/srv/www/t.html"];
    let spec = json!({"resources": [
        file("/srv/www/race/index.html", "raced\n"),
        file("/srv/www/t.html", "raced\n"),
    ]});
    let mut outcomes = std::collections::BTreeMap::<(usize, String), usize>::new();
    for _ in 0..40 {
        let a = g.apply(&spec);
        for (i, id) in ids.iter().enumerate() {
            *outcomes.entry((i, a.status(id))).or_default() += 1;
            let msg = a.message(id);
            assert_eq!(victims(&g), before, "victim changed during the race: {msg}");
        }
    }
    g.ok("kill $(cat /tmp/race1.pid) $(cat /tmp/race2.pid)");
    eprintln!("race outcomes over 40 applies (resource index, status): {outcomes:?}");
    assert!(
        outcomes
            .keys()
            .all(|(_, s)| ["changed", "unchanged", "failed"].contains(&s.as_str())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains_key(&(1, "failed".into())),
        "the target swap was never caught in the act: {outcomes:?}"
    );
    assert_eq!(victims(&g), before);
}
