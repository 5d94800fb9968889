//! The coordinator as a network service, as a process: secure defaults off loopback, token
//! files, and the token kept out of help, logs and errors.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn coordinator(args: &[&str], state: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("coordinator")
        .arg("--state-dir")
        .arg(state)
        .args(["--ops-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("CONVSWEEP_TOKEN")
        .env_remove("CONVSWEEP_TOKEN_FILE");
    cmd
}

/// `convsweep status` against `url`, with `env` set (and no token unless given there).
fn status(url: &str, env: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "--coordinator", url])
        .env_remove("CONVSWEEP_TOKEN")
        .env_remove("CONVSWEEP_TOKEN_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A coordinator started without a token makes one, writes it 0600 into its 0700 state
/// folder, logs the path and never the value, requires it (on loopback too), and keeps it
/// across restarts; clients on the machine use it through CONVSWEEP_TOKEN_FILE. Serving without
/// a token takes --insecure, which warns.
#[test]
fn without_a_token_file_it_makes_one_and_requires_it_loopback_included() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token_file = state.join("token");
    let main = loopback().unwrap();
    let url = url(&main);
    // A coordinator with `args` on `state`, its log in `log`.
    let start = |args: &[&str], state: &std::path::Path, log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        let mut cmd = coordinator(args, state);
        listen_on(&mut cmd, &main)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap()
    };
    // Until `status` with `env` succeeds.
    let until_answered = |env: &[(&str, &std::path::Path)], what: &str| {
        let begun = std::time::Instant::now();
        while status(&url, env).status.code() != Some(0) {
            assert!(begun.elapsed() < Duration::from_secs(30), "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let with_token: &[(&str, &std::path::Path)] = &[("CONVSWEEP_TOKEN_FILE", &token_file)];
    let mut served = start(&[], &state, "first.log");
    until_answered(with_token, "the coordinator never answered");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&state), 0o700);
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64);

    let out = status(&url, &[]);
    assert!(!out.status.success(), "served without the token");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");

    let stop = |child: &mut std::process::Child| assert!(terminate(child, Duration::from_secs(30)).success());
    stop(&mut served);
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert!(log.contains(&token_file.display().to_string()), "{log}");
    assert!(!log.contains(&token), "the token's value was logged");

    // Restarted, it keeps the token: clients' files stay good.
    let mut served = start(&[], &state, "second.log");
    until_answered(with_token, "the restarted coordinator refused its token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    stop(&mut served);

    // --insecure serves without one, and says so.
    let open_state = dir.path().join("open");
    let mut served = start(&["--insecure"], &open_state, "insecure.log");
    until_answered(&[], "the insecure coordinator never answered");
    assert!(!open_state.join("token").exists());
    stop(&mut served);
    let log = std::fs::read_to_string(dir.path().join("insecure.log")).unwrap();
    assert!(log.contains("WITHOUT A TOKEN"), "{log}");
}

/// A client refuses to send its token in plaintext to another machine unless told to.
#[test]
fn a_token_is_not_sent_over_plaintext_off_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "t0ken\n").unwrap();
    // 192.0.2.0/24 is TEST-NET-1: never this machine; the refusal comes before any connection.
    let out = status("http://192.0.2.1:9", &[("CONVSWEEP_TOKEN_FILE", &file)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to send the token over plaintext") && err.contains("--allow-plaintext-token"),
        "{err}"
    );
}

#[test]
fn nonsense_settings_are_refused_naming_the_flag_not_clamped() {
    let dir = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (
            ["--heartbeat-secs", "5", "--lease-timeout-secs", "5"],
            "--lease-timeout-secs",
        ),
        (
            ["--heartbeat-secs", "0", "--lease-timeout-secs", "60"],
            "--heartbeat-secs",
        ),
        (["--max-attempts", "0", "--max-message-mib", "16"], "--max-attempts"),
        (["--max-message-mib", "0", "--max-attempts", "3"], "--max-message-mib"),
    ] {
        let out = coordinator(&["--listen", "127.0.0.1:0"], &dir.path().join("state"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!dir.path().join("state").exists(), "refused before opening anything");
    }
}

#[test]
fn an_inherited_descriptor_that_is_no_listener_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // Standard error itself, and a number no descriptor has: refused, and the refusal of the
    // first still reaches standard error.
    for fd in ["2", "987"] {
        let out = coordinator(&["--listen-fd", fd], &dir.path().join("state"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("--listen-fd {fd}")), "{fd}: {err}");
        assert!(!dir.path().join("state").exists(), "refused before opening anything");
    }
}

#[test]
fn bad_token_files_are_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    for (file, expect) in [(empty.clone(), "is empty"), (dir.path().join("none"), "cannot be read")] {
        let out = coordinator(&["--listen", "127.0.0.1:0"], &dir.path().join("state"))
            .arg("--token-file")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&file.display().to_string()) && err.contains(expect),
            "{err}"
        );
    }
}

#[test]
fn the_token_never_shows_in_help_logs_or_errors() {
    const TOKEN: &str = "tok-4f1c9a7e-never-printed";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let help = Command::new(BIN)
        .args(["coordinator", "--help"])
        .env("CONVSWEEP_TOKEN", TOKEN)
        .env("CONVSWEEP_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--token-file") && !help.contains(TOKEN), "{help}");

    let main = loopback().unwrap();
    let url = url(&main);
    let mut cmd = coordinator(&[], &dir.path().join("state"));
    let mut server = listen_on(&mut cmd, &main)
        .arg("--token-file")
        .arg(&token_file)
        .env("RUST_LOG", "info,convsweep_coordinator=debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A client with the right token (by value) gets an answer; one with a wrong token a clear
    // refusal that does not echo it.
    let mut answered = false;
    for _ in 0..100 {
        let ok = Command::new(BIN)
            .args(["status", "--coordinator", &url])
            .env("CONVSWEEP_TOKEN", TOKEN)
            .output()
            .unwrap();
        if ok.status.success() {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered, "the coordinator answered a client with the token");
    let wrong = Command::new(BIN)
        .args(["status", "--coordinator", &url])
        .env("CONVSWEEP_TOKEN", "tok-wrong-value")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("token") && !err.contains("tok-wrong-value") && !err.contains(TOKEN),
        "{err}"
    );
    let none = Command::new(BIN)
        .args(["status", "--coordinator", &url])
        .env_remove("CONVSWEEP_TOKEN")
        .env_remove("CONVSWEEP_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&none.stderr).contains("--token-file"));

    let status = terminate(&mut server, Duration::from_secs(30));
    assert!(status.success());
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("coordinator listening"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token is not logged");
}

#[test]
fn certs_make_a_working_mtls_setup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new(BIN)
        .args(["certs", "--host", "convsweep-coordinator", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(pki.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pki), 0o700, "the folder that holds the keys");
    for key in ["ca.key", "server.key", "client.key"] {
        assert_eq!(mode(&pki.join(key)), 0o600, "{key} is private");
    }
    assert!(
        std::fs::read_dir(&pki).unwrap().count() == 6,
        "no temporary file is left"
    );

    // A name the API server would refuse is refused here, naming the flag and what is allowed.
    let out = Command::new(BIN)
        .args(["certs", "--kubernetes-secret", "TLS/../x", "--out"])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--kubernetes-secret") && err.contains("a-z, 0-9"),
        "{err}"
    );
    assert!(!dir.path().join("refused").exists());

    // The Secret a Kubernetes certs Job applies: the coordinator's pair and the CA, private.
    let k8s = dir.path().join("k8s");
    let out = Command::new(BIN)
        .args(["certs", "--kubernetes-secret", "convsweep-tls", "--out"])
        .arg(&k8s)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&k8s.join("secret.json")), 0o600);
    let secret: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(k8s.join("secret.json")).unwrap()).unwrap();
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["name"], "convsweep-tls");
    let data = &secret["stringData"];
    assert_eq!(
        data["tls.crt"],
        std::fs::read_to_string(k8s.join("server.pem")).unwrap().as_str()
    );
    assert_eq!(
        data["tls.key"],
        std::fs::read_to_string(k8s.join("server.key")).unwrap().as_str()
    );
    assert_eq!(
        data["ca.crt"],
        std::fs::read_to_string(k8s.join("ca.pem")).unwrap().as_str()
    );

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "mtls-process-token\n").unwrap();
    let main = loopback().unwrap();
    let port = main.local_addr().unwrap().port();
    let mut cmd = coordinator(&[], &dir.path().join("state"));
    let mut server = listen_on(&mut cmd, &main)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--tls-cert")
        .arg(pki.join("server.pem"))
        .arg("--tls-key")
        .arg(pki.join("server.key"))
        .arg("--tls-client-ca")
        .arg(pki.join("ca.pem"))
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let status = |with_cert: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "status",
            "--coordinator",
            &format!("https://127.0.0.1:{port}"),
            "--tls-ca",
        ])
        .arg(pki.join("ca.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .env_remove("CONVSWEEP_TOKEN");
        if with_cert {
            cmd.arg("--tls-cert").arg(pki.join("client.pem"));
            cmd.arg("--tls-key").arg(pki.join("client.key"));
        }
        cmd.output().unwrap()
    };
    let mut answered = false;
    for _ in 0..100 {
        if status(true).status.success() {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered, "an mTLS client with the token is served");
    assert!(!status(false).status.success(), "without a client certificate: refused");
    assert!(terminate(&mut server, Duration::from_secs(30)).success());
}
