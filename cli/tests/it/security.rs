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

#[test]
fn off_loopback_without_a_token_it_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator(&["--listen", "0.0.0.0:0"], &dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token-file") && err.contains("--insecure"), "{err}");
    assert!(!dir.path().join("state").exists(), "refused before opening anything");
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

    #[allow(unsafe_code)]
    // SAFETY: signalling a child we spawned.
    unsafe {
        libc::kill(server.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_exit(&mut server, Duration::from_secs(30));
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
    let mode = std::fs::metadata(pki.join("server.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "keys are private");

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
    #[allow(unsafe_code)]
    // SAFETY: signalling a child we spawned.
    unsafe {
        libc::kill(server.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(wait_exit(&mut server, Duration::from_secs(30)).success());
}
