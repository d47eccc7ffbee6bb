//! Hostile config values against the real `phoenix validate`: values pasted into shell
//! strings, line breaks that would add unit directives, and literal secrets. Each fixture
//! is written in the real Phoenix formats (etc/ + stacks/) or Phoenix's native format.

use phoenix_tests::bin;
use std::path::Path;
use std::process::Output;

fn validate(path: &Path, show: bool) -> Output {
    let mut cmd = std::process::Command::new(bin("phoenix"));
    cmd.arg("validate").arg(path);
    if show {
        cmd.arg("--show");
    }
    cmd.output().expect("run phoenix validate")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(path: &Path, body: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, body).expect("write fixture");
}

/// An etc/ with one LXC whose `bootstrap_ca_url` is hostile.
fn lxc_etc(dir: &Path, url: &str) -> std::path::PathBuf {
    let etc = dir.join("etc");
    let lxc = serde_json::json!({"lxc_configs": {"120": {
        "name": "ca-client", "memory_mb": 512, "cores": 1, "storage_size_gb": 8,
        "network_config": {"name": "eth0", "bridge": "vmbr0", "ip": "10.0.0.120/24", "gw": "10.0.0.1"},
        "unprivileged": true, "features": ["step_cli"], "bootstrap_ca_url": url
    }}});
    write(&etc.join("phoenix_lxc_configs.json"), &lxc.to_string());
    etc
}

/// A URL that passes the URL check (no blanks) and would run `touch /pwned` if it were
/// pasted into the script: it reaches `sh` only as the positional parameter `$1`.
const HOSTILE_URL: &str = "https://ca.lab:9000/'$(touch${IFS}/pwned)'`touch${IFS}/pwned`";

/// The `step-ca-bootstrap` exec compiled by the real `phoenix validate --show`.
fn compiled_bootstrap(url: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = validate(&lxc_etc(dir.path(), url), true);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let json_start = stdout.find('{').expect("spec json");
    let spec: serde_json::Value = serde_json::Deserializer::from_str(&stdout[json_start..])
        .into_iter()
        .next()
        .expect("one value")
        .expect("json");
    spec["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "step-ca-bootstrap")
        .cloned()
        .expect("bootstrap exec")
}

#[test]
fn bootstrap_ca_url_reaches_the_command_as_one_literal_argument() {
    let url = HOSTILE_URL;
    let cmd = compiled_bootstrap(url)["command"].clone();
    let argv: Vec<&str> = cmd
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(&argv[..2], ["/bin/sh", "-c"]);
    assert!(
        !argv[2].contains("pwned"),
        "value pasted into the script: {argv:?}"
    );
    assert_eq!(argv[4], url, "the URL is its own argument, unchanged");

    // With blanks it is not a URL at all: refused, naming the file and the key.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = validate(&lxc_etc(dir.path(), "https://x'; touch /pwned; '"), false);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("phoenix_lxc_configs.json: lxc_configs.\"120\".bootstrap_ca_url: expected an http(s) URL"),
        "{stderr}"
    );
}

/// Each field that is rendered into a unit, with LF, CR and NUL: `phoenix validate`
/// refuses the file, naming the field, as the agent would.
#[test]
fn validate_refuses_line_breaks_in_every_unit_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    const INJECT: &str = "ExecStartPre=/bin/touch /pwned";
    type UnitWith = Box<dyn Fn(&str) -> serde_json::Value>;
    let cases: Vec<(&str, UnitWith)> = vec![
        (
            "working_directory",
            Box::new(
                |b| serde_json::json!({"exec_start": ["/bin/true"], "working_directory": format!("/srv{b}{INJECT}")}),
            ),
        ),
        (
            "environment.MODE",
            Box::new(
                |b| serde_json::json!({"exec_start": ["/bin/true"], "environment": {"MODE": format!("x{b}{INJECT}")}}),
            ),
        ),
        (
            "description",
            Box::new(
                |b| serde_json::json!({"exec_start": ["/bin/true"], "description": format!("d{b}{INJECT}")}),
            ),
        ),
        (
            "exec_start[1]",
            Box::new(|b| serde_json::json!({"exec_start": ["/bin/true", format!("a{b}{INJECT}")]})),
        ),
        (
            "user",
            Box::new(
                |b| serde_json::json!({"exec_start": ["/bin/true"], "user": format!("www{b}data")}),
            ),
        ),
    ];
    for (field, unit) in &cases {
        for (name, b) in [("lf", "\n"), ("cr", "\r"), ("nul", "\0")] {
            let file = dir.path().join(format!(
                "{}-{name}.json",
                field.replace(['[', ']', '.'], "_")
            ));
            let native = serde_json::json!({"guests": {"130": {"resources": [
                {"kind": "service", "name": "app.service", "unit": unit(b)}
            ]}}});
            write(&file, &native.to_string());
            let out = validate(&file, false);
            let (stdout, stderr) = text(&out);
            assert!(
                !out.status.success(),
                "{field} with {name} accepted: {stdout}"
            );
            assert!(stderr.contains(&file.display().to_string()), "{stderr}");
            let tail = field.rsplit('.').next().unwrap_or(field);
            assert!(
                stderr.contains(tail)
                    || (*field == "working_directory" && stderr.contains("absolute")),
                "{field} with {name}: {stderr}"
            );
        }
    }
}

/// Stack variables, a compose file and a command carrying secrets of every listed kind,
/// beside an unrelated error: every warning is printed together with the error, and no
/// secret value appears in any output, nor in `--show` once the error is fixed.
#[test]
fn secrets_are_flagged_with_errors_and_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path();
    let secrets = [
        "jwt-sign-0xDEADBEEF",
        "db-pwd-hunter2",
        "smtp-auth-letmein",
        "redis-pw-swordfish",
        "n8n-enc-key-opensesame",
        "$$apr1$$ruca84Hq$$mbjdMZBAG.KWn7vfN/SNK/",
        "cli-pw-zebra",
        "filepw-penguin",
    ];
    let stacks = serde_json::json!({"docker_stacks": {"app": {
        "compose_file_path": "stacks/app/docker-compose.yml"
    }}});
    write(
        &base.join("etc/phoenix_stacks_config.json"),
        &stacks.to_string(),
    );
    let vm = |feature: &str| {
        serde_json::json!({"vms": [{"vmid": 1003, "name": "apps", "cores": 2, "memory_mb": 2048,
            "disk_size_gb": 20, "network_config": {"ip": "10.0.0.103/24"},
            "features": [feature], "docker_stacks": ["app"]}]})
        .to_string()
    };
    write(&base.join("etc/phoenix_vm_configs.json"), &vm("warp_drive"));
    let manifest = serde_json::json!({"environments": {"production": {"variables": [
        {"name": "JWT_SIGNING_KEY", "value": secrets[0]},
        {"name": "DB_PWD", "value": secrets[1]},
        {"name": "SMTP_AUTH", "value": secrets[2]},
        {"name": "REDIS_URL", "value": format!("redis://:{}@cache:6379", secrets[3])},
        {"name": "ADMIN_PASSWORD", "value": 20261202},
        {"name": "APP_PORT", "value": "8080"}
    ]}}});
    write(&base.join("stacks/app/phoenix.json"), &manifest.to_string());
    write(
        &base.join("stacks/app/docker-compose.yml"),
        &format!(
            "services:\n  app:\n    image: n8nio/n8n:1.0\n    environment:\n      N8N_ENCRYPTION_KEY: {}\n    labels:\n      - \"traefik.http.middlewares.app-auth.basicauth.users=admin:{}\"\n",
            secrets[4], secrets[5]
        ),
    );
    let native = serde_json::json!({"guests": {"140": {"resources": [
        {"kind": "exec", "name": "migrate", "command": ["/usr/bin/app", "migrate", "--db-password", secrets[6]],
         "creates": "/var/lib/app/migrated"},
        {"kind": "file", "path": "/etc/app/app.ini", "mode": "0644",
         "content": format!("host=db\npassword={}\n", secrets[7])}
    ]}}});
    let native_file = base.join("native.json");
    write(&native_file, &native.to_string());

    let out = validate(&base.join("etc"), false);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown feature \"warp_drive\""),
        "{stderr}"
    );
    for path in [
        "variables[0].value",
        "variables[1].value",
        "variables[2].value",
        "variables[3].value",
        "variables[4].value",
    ] {
        assert!(
            stderr.contains(&format!(
                "warning: {}",
                base.join("stacks/app/phoenix.json").display()
            )) && stderr.contains(path),
            "no warning for {path}: {stderr}"
        );
    }
    assert!(
        stderr.contains("literal secret for N8N_ENCRYPTION_KEY"),
        "{stderr}"
    );
    assert!(
        stderr.contains("literal secret for traefik.http.middlewares.app-auth.basicauth.users"),
        "basic-auth label: {stderr}"
    );
    assert!(!stderr.contains("APP_PORT"), "{stderr}");

    let native_out = validate(&native_file, true);
    let (nout, nerr) = text(&native_out);
    assert!(
        nerr.contains("guests.\"140\".resources[0].command[3]"),
        "{nerr}"
    );
    assert!(
        nerr.contains("guests.\"140\".resources[1].content"),
        "{nerr}"
    );
    // The command's secret would reach the guest: refused.
    assert!(!native_out.status.success());
    assert!(
        nerr.contains("would reach the desired state of guest 140"),
        "{nerr}"
    );

    // A world-readable file with a password line is sent (it is the file's purpose), but
    // `--show` prints it redacted.
    let file_only = base.join("file-only.json");
    let mut only = native.clone();
    only["guests"]["140"]["resources"]
        .as_array_mut()
        .expect("resources")
        .remove(0);
    write(&file_only, &only.to_string());
    let shown = validate(&file_only, true);
    let (sout, serr) = text(&shown);
    assert!(shown.status.success(), "{sout}{serr}");
    assert!(sout.contains("password=<redacted>"), "{sout}");
    assert!(!sout.contains(secrets[7]), "{sout}");

    // Fixed the unrelated error: the literal secrets still keep the compose stack out.
    write(&base.join("etc/phoenix_vm_configs.json"), &vm("base_setup"));
    let fixed = validate(&base.join("etc"), true);
    let (fout, ferr) = text(&fixed);
    for s in secrets {
        for (what, o) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("native stdout", &nout),
            ("native stderr", &nerr),
            ("--show stdout", &fout),
            ("--show stderr", &ferr),
        ] {
            assert!(
                !o.contains(s) && !o.contains(&s.replace("$$", "$")),
                "{s} printed on {what}:\n{o}"
            );
        }
    }
    assert!(!stdout.contains("20261202") && !stderr.contains("20261202"));
}

/// The compiled bootstrap exec applied by the real `phoenix-agent` in a real systemd guest,
/// with a stand-in `step` that records its argv: nothing is run, the URL arrives whole.
#[test]
fn hostile_bootstrap_url_applied_in_a_guest_runs_nothing() {
    let mut exec = compiled_bootstrap(HOSTILE_URL);
    let Some(g) = phoenix_tests::guest::Guest::boot("inject-url", &[]) else {
        return;
    };
    exec["depends_on"] = serde_json::json!([]);
    let argv: Vec<String> = exec["command"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let fingerprint = &argv[5];
    g.ok(&format!(
        "mkdir -p \"$(dirname '{fingerprint}')\" && printf abc123 > '{fingerprint}'"
    ));
    g.write(
        "/usr/bin/step",
        b"#!/bin/sh\nprintf '%s\\n' \"$@\" > /var/lib/step-argv\n",
    );
    g.ok("chmod 755 /usr/bin/step");
    let applied = g.apply(&serde_json::json!({"resources": [exec]}));
    assert!(applied.ok, "{}", applied.stderr);
    assert_eq!(g.ok("test -e /pwned && echo yes || echo no"), "no");
    assert_eq!(
        g.ok("cat /var/lib/step-argv"),
        format!("ca\nbootstrap\n--ca-url\n{HOSTILE_URL}\n--fingerprint\nabc123\n--force")
    );
}

/// Valid odd characters in every rendered field: the unit passes `systemd-analyze verify`
/// in a real systemd, and the service sees exactly the configured argv, environment and
/// working directory.
#[test]
fn odd_characters_reach_the_service_exactly() {
    let Some(g) = phoenix_tests::guest::Guest::boot("inject-odd", &[]) else {
        return;
    };
    let dir = "/srv/odd dir %h $X";
    let args = [
        "a b",
        "%n",
        "$HOME",
        "${HOME}",
        "q\"uote",
        "back\\slash",
        "it's",
        ";",
        "tab\there",
        "",
    ];
    let env = "100% \"q\" $X ${Y} \\ end\\";
    let script = "printf '%s\\n' \"$@\" > /var/lib/odd-argv; printf '%s' \"$ODD\" > /var/lib/odd-env; pwd > /var/lib/odd-cwd; exec sleep 600";
    let mut exec_start = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        script.into(),
        "sh".into(),
    ];
    exec_start.extend(args.iter().map(|a| a.to_string()));
    let spec = serde_json::json!({"resources": [
        {"kind": "exec", "name": "odd-dir", "command": ["/bin/mkdir", "-p", dir], "creates": dir},
        {"kind": "service", "name": "odd.service", "depends_on": ["exec:odd-dir"],
         "unit": {"description": "odd 100% \"chars\" $X back\\slash", "exec_start": exec_start,
                  "environment": {"ODD": env}, "working_directory": dir},
         "enabled": true, "state": "running"}
    ]});
    let applied = g.apply(&spec);
    assert!(applied.ok, "{}", applied.stderr);
    let verify = g.sh("systemd-analyze verify /etc/systemd/system/odd.service 2>&1");
    let said = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(verify.status.success(), "{said}");
    assert!(!said.contains("odd.service"), "verify complained: {said}");
    crate_wait(&g, "/var/lib/odd-cwd");
    let want_argv: String = args.iter().map(|a| format!("{a}\n")).collect();
    assert_eq!(
        g.ok("cat /var/lib/odd-argv; echo END"),
        format!("{want_argv}END")
    );
    assert_eq!(g.ok("cat /var/lib/odd-env"), env.trim_end());
    assert_eq!(g.ok("cat /var/lib/odd-cwd"), dir);
    assert_eq!(
        g.unit_prop("odd.service", "Description"),
        "odd 100% \"chars\" $X back\\slash"
    );
}

fn crate_wait(g: &phoenix_tests::guest::Guest, path: &str) {
    phoenix_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the service to record what it saw",
        || {
            g.sh(&format!("test -s '{path}'"))
                .status
                .success()
                .then_some(())
        },
    );
}
