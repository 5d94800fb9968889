//! The ops port during a sweep: health over gRPC and HTTP, readiness, and metrics that a real
//! exposition-format parser reads.

use std::io::{Read, Write};

use convsweep_coordinator::{Coordinator, ServeConfig};
use convsweep_proto::client::{Connection, Secret};
use convsweep_proto::pb;
use tokio_util::sync::CancellationToken;

use convsweep_testkit::browser::{Browser, KillOnDrop, browser};

use crate::common::{SPEC, config, epoch, lease_now, scripted_worker};

/// `GET path` over HTTP/1.1; returns the status code, the headers and the body.
fn get(port: u16, path: &str) -> (u16, String, String) {
    http(port, "GET", path, "", "")
}

/// One HTTP/1.1 request with extra header lines (each ending in CRLF) and a body.
fn http(port: u16, method: &str, path: &str, headers: &str, body: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_port_serves_health_readiness_and_metrics_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::open(config(dir.path())).unwrap();
    let token = Secret::new("ops-test-token", "test").unwrap();
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (main_port, ops_port) = (main.local_addr().unwrap().port(), ops.local_addr().unwrap().port());
    let stop = CancellationToken::new();
    let serve = ServeConfig {
        token: Some(token.clone()),
        ..Default::default()
    };
    tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        async move { convsweep_coordinator::serve_with(main, c, &serve, async move { s.cancelled().await }).await }
    });
    tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        let config = ServeConfig {
            token: Some(token.clone()),
            ..Default::default()
        };
        async move { convsweep_coordinator::serve_ops(ops, c, &config, async move { s.cancelled().await }).await }
    });

    // A sweep in progress: one trial leased, two epochs reported, one completed.
    let conn = Connection {
        token: Some(token),
        ..Connection::plain(format!("http://127.0.0.1:{main_port}"))
    };
    conn.admin()
        .await
        .unwrap()
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
        .await
        .unwrap();
    let mut worker = conn.worker().unwrap();
    let id = crate::common::register(&mut worker, 2).await;
    let leases = worker
        .lease(pb::LeaseRequest {
            worker_id: id.clone(),
            max_trials: 2,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    let l = &leases[0];
    worker
        .report_epochs(pb::ReportEpochsRequest {
            worker_id: id.clone(),
            trial_id: l.trial_id.clone(),
            lease_token: l.lease_token.clone(),
            epochs: vec![epoch(1, 0.5), epoch(2, 0.6)],
        })
        .await
        .unwrap();
    // And one refused call.
    let refused = Connection::plain(format!("http://127.0.0.1:{main_port}"));
    assert!(
        refused
            .admin()
            .await
            .unwrap()
            .get_status(pb::GetStatusRequest::default())
            .await
            .is_err()
    );

    let (code, _, body) = tokio::task::spawn_blocking(move || get(ops_port, "/healthz"))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, _) = tokio::task::spawn_blocking(move || get(ops_port, "/readyz"))
        .await
        .unwrap();
    assert_eq!(code, 200, "ready: the store is open and expiry runs");
    let (code, head, body) = tokio::task::spawn_blocking(move || get(ops_port, "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(head.to_lowercase().contains("application/openmetrics-text"), "{head}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let trials = |state: &str| sample(&scrape, "convsweep_trials", &[("sweep", "small"), ("state", state)]);
    assert_eq!(trials("pending"), Some(2.0), "{body}");
    assert_eq!(trials("leased"), Some(1.0));
    assert_eq!(trials("running"), Some(1.0));
    assert_eq!(sample(&scrape, "convsweep_queue_depth", &[]), Some(2.0));
    assert_eq!(sample(&scrape, "convsweep_active_leases", &[]), Some(2.0));
    assert_eq!(sample(&scrape, "convsweep_epoch_rows_ingested_total", &[]), Some(2.0));
    assert_eq!(sample(&scrape, "convsweep_workers", &[("state", "alive")]), Some(1.0));
    assert_eq!(
        sample(&scrape, "convsweep_rpcs_total", &[("method", "Lease"), ("code", "Ok")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "convsweep_rpcs_total",
            &[("method", "GetStatus"), ("code", "Unauthenticated")]
        ),
        Some(1.0)
    );
    for name in [
        "convsweep_rpc_duration_seconds",
        "convsweep_lease_wait_seconds",
        "convsweep_store_transaction_seconds",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing:\n{body}"
        );
    }
    // No per-trial or per-worker labels, and never the token.
    assert!(!body.contains(&l.trial_id) && !body.contains(&id) && !body.contains("ops-test-token"));

    // The status (trial ids, accuracies, reasons) only with the token: as a bearer header, or
    // in the cookie that the page's sign-in form sets once.
    let trial = l.trial_id.clone();
    tokio::task::spawn_blocking(move || {
        let (code, _, body) = get(ops_port, "/status.json");
        assert_eq!(code, 401, "{body}");
        assert!(!body.contains(&trial), "{body}");
        let (code, _, _) = http(ops_port, "GET", "/status.json", "Authorization: Bearer nope\r\n", "");
        assert_eq!(code, 401);
        let (code, _, body) = http(
            ops_port,
            "GET",
            "/status.json",
            "Authorization: Bearer ops-test-token\r\n",
            "",
        );
        assert_eq!(code, 200);
        assert!(body.contains(&trial), "{body}");
        let (code, _, body) = get(ops_port, "/");
        assert_eq!(code, 200, "the sign-in form");
        assert!(
            body.contains(r#"action="/login""#) && !body.contains("/status.json"),
            "{body}"
        );
        let form = "Content-Type: application/x-www-form-urlencoded\r\n";
        let (code, head, _) = http(ops_port, "POST", "/login", form, "token=wrong");
        assert_eq!(code, 401);
        assert!(!head.to_lowercase().contains("set-cookie"), "{head}");
        let (code, head, _) = http(ops_port, "POST", "/login", form, "token=ops-test-token");
        assert_eq!(code, 303, "{head}");
        let cookie = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("set-cookie: ")
                    .or_else(|| l.strip_prefix("Set-Cookie: "))
            })
            .expect("a cookie")
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap();
        let with_cookie = format!("Cookie: {pair}\r\n");
        let (code, _, body) = http(ops_port, "GET", "/status.json", &with_cookie, "");
        assert_eq!(code, 200);
        assert!(body.contains(&trial), "{body}");
        let (code, _, body) = http(ops_port, "GET", "/", &with_cookie, "");
        assert_eq!(code, 200);
        assert!(body.contains("/status.json"), "{body}");
    })
    .await
    .unwrap();

    // gRPC health on the ops port, without a token.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{ops_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reply = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    stop.cancel();
}

/// `server::run`, the one entry point of `convsweep coordinator`: both ports from one config,
/// the ops port answering on its own thread, the token required on the main port, and both
/// stopping on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_run_serves_both_ports_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let token = Secret::new("run-test-token", "test").unwrap();
    let config = convsweep_coordinator::ServerConfig {
        coordinator: config(dir.path()),
        serve: ServeConfig {
            token: Some(token.clone()),
            ..Default::default()
        },
        insecure: false,
    };
    let (main, ops) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (main_port, ops_port) = (main.local_addr().unwrap().port(), ops.local_addr().unwrap().port());
    let stop = CancellationToken::new();
    let running = tokio::spawn(convsweep_coordinator::server::run(config, main, ops, stop.clone()));
    let (code, _, body) = tokio::task::spawn_blocking(move || get(ops_port, "/healthz"))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let url = format!("http://127.0.0.1:{main_port}");
    let refused = Connection::plain(&url)
        .admin()
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let with_token = Connection {
        token: Some(token),
        ..Connection::plain(&url)
    };
    let status = with_token
        .admin()
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(status.sweeps.is_empty());
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(30), running)
        .await
        .expect("both ports stop on shutdown")
        .unwrap()
        .unwrap();
}

/// The workspace folder (where `.deps/` is).
fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Starts the browser script `coordinator/tests/browser/<script>` on `url`, screenshotting to
/// `screenshot`, with `env`; the script's stdout lines arrive on the receiver, and it is killed
/// (with its Chromium) when the guard drops.
fn browse(
    browser: &Browser,
    script: &str,
    url: &str,
    screenshot: &std::path::Path,
    env: &[(&str, &str)],
) -> (KillOnDrop, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use std::io::BufRead;
    let mut child = KillOnDrop(
        std::process::Command::new("node")
            .arg(workspace().join("coordinator/tests/browser").join(script))
            .arg(url)
            .arg(screenshot)
            .env("NODE_PATH", &browser.node_modules)
            .env("CHROMIUM", &browser.chromium)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs"),
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_real_browser_sees_trials_finish() {
    let Some(chromium) = browser(&workspace(), "the_status_page_in_a_real_browser_sees_trials_finish") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::open(config(dir.path())).unwrap();
    coordinator.submit(&format!("seeds = 8\n{SPEC}")).unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = ops.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let config = ServeConfig {
        token: Some(Secret::new("browser-test-token", "test").unwrap()),
        ..Default::default()
    };
    tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        async move { convsweep_coordinator::serve_ops(ops, c, &config, async move { s.cancelled().await }).await }
    });
    let worker = scripted_worker(&coordinator, 1);

    let screenshot = dir.path().join("status.png");
    let (mut browser, mut rx) = browse(
        &chromium,
        "status_page.cjs",
        &format!("http://127.0.0.1:{port}/"),
        &screenshot,
        &[("STATUS_TOKEN", "browser-test-token")],
    );
    let ready = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
        .await
        .expect("the page loaded within a minute")
        .expect("the browser script printed");
    assert!(ready.starts_with("ready "), "{ready}");
    // Finish trials one by one until the browser saw the count grow (at most all 32).
    let mut report = None;
    for _ in 0..32 {
        let lease = lease_now(&coordinator, &worker, 1).await.remove(0);
        let spec = convsweep_proto::TrialSpec::from_json(&lease.spec_json).unwrap();
        let acc = if spec.model.train_mode.as_str() == "frozen" {
            0.4
        } else {
            0.8
        };
        coordinator
            .complete(pb::CompleteRequest {
                worker_id: worker.clone(),
                trial_id: lease.trial_id.clone(),
                lease_token: lease.lease_token.clone(),
                outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                    result: Some(crate::common::result(acc)),
                })),
            })
            .await
            .unwrap();
        if let Ok(Some(line)) = tokio::time::timeout(std::time::Duration::from_millis(400), rx.recv()).await {
            report = Some(line);
            break;
        }
    }
    let report = match report {
        Some(r) => r,
        None => tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
            .await
            .expect("the browser saw the count grow within a minute")
            .expect("the browser script reported"),
    };
    assert!(browser.0.wait().unwrap().success(), "{report}");
    let seen: serde_json::Value = serde_json::from_str(&report).unwrap();
    let (first, later) = (seen["first"].as_u64().unwrap(), seen["later"].as_u64().unwrap());
    assert!(later > first, "{seen}");
    let log: Vec<u64> = seen["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        log.len() >= 2 && log.windows(2).all(|w| w[0] < w[1]),
        "the progress log grows: {log:?}"
    );
    assert!(
        seen["plotted"].as_u64().unwrap() >= 1,
        "an accuracy line is drawn: {seen}"
    );
    assert_eq!(seen["sweeps"][0].as_str().unwrap().split(':').next(), Some("small"));
    assert_eq!(seen["errors"].as_array().unwrap().len(), 0, "no script errors: {seen}");
    assert_eq!(
        seen["signedIn"],
        serde_json::Value::Bool(true),
        "signed in once, the token kept in an HttpOnly, SameSite=Strict cookie: {seen}"
    );
    assert!(screenshot.exists());
    if let Some(keep) = std::env::var_os("CONVSWEEP_KEEP_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
    stop.cancel();
}

/// The status page's learning curves on a sweep of 1,000 trials in headless Chromium: every
/// configuration's mean curve with its band, the running trials' curves, which grow as epochs
/// arrive, and the page's own drawing time under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_draws_learning_curves_of_a_1000_trial_sweep() {
    let Some(chromium) = browser(
        &workspace(),
        "the_status_page_draws_learning_curves_of_a_1000_trial_sweep",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Leases that outlive the test: the scripted worker sends no heartbeats.
    let coordinator = Coordinator::open(convsweep_coordinator::CoordinatorConfig {
        lease_timeout: std::time::Duration::from_secs(600),
        ..config(dir.path())
    })
    .unwrap();
    // 4 kernel sizes x 25 learning rates x 10 seeds.
    let lrs: Vec<String> = (1..=25).map(|i| format!("{}", f64::from(i) * 0.004)).collect();
    let spec = format!(
        r#"
name = "big"
seeds = 10
[dataset]
name = "synthetic"
train_size = 64
test_size = 32
[model]
arch = "resnet"
depth = 8
width = 4
init = "kaiming-uniform"
train_mode = "frozen"
[train]
epochs = 5
[grid]
kernel_size = [3, 5, 7, 9]
"train.lr" = [{}]
"#,
        lrs.join(", ")
    );
    coordinator.submit(&spec).unwrap();
    let worker = scripted_worker(&coordinator, 1000);
    let mut leases = Vec::new();
    while leases.len() < 1000 {
        let got = lease_now(&coordinator, &worker, 1000).await;
        assert!(!got.is_empty(), "all 1000 trials lease");
        leases.extend(got);
    }
    let report = |l: &pb::TrialLease, e: u32| {
        let spec = convsweep_proto::TrialSpec::from_json(&l.spec_json).unwrap();
        let acc = (0.1 + 0.1 * f64::from(e) + spec.train.lr + 0.002 * spec.seed as f64).min(1.0);
        pb::ReportEpochsRequest {
            worker_id: worker.clone(),
            trial_id: l.trial_id.clone(),
            lease_token: l.lease_token.clone(),
            epochs: vec![epoch(e, acc)],
        }
    };
    // 992 trials report 2 epochs and finish; 8 keep running.
    for (i, l) in leases.iter().enumerate() {
        for e in 1..=2 {
            coordinator.report_epochs(report(l, e)).await.unwrap();
        }
        if i >= 8 {
            coordinator
                .complete(pb::CompleteRequest {
                    worker_id: worker.clone(),
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                    outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                        result: Some(crate::common::result(0.5)),
                    })),
                })
                .await
                .unwrap();
        }
    }
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = ops.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        async move {
            convsweep_coordinator::serve_ops(ops, c, &ServeConfig::default(), async move { s.cancelled().await }).await
        }
    });
    let screenshot = dir.path().join("curves.png");
    let (mut browser, mut rx) = browse(
        &chromium,
        "curves.cjs",
        &format!("http://127.0.0.1:{port}/"),
        &screenshot,
        &[],
    );
    let ready = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
        .await
        .expect("the curves were drawn within a minute")
        .expect("the browser script printed");
    let first: serde_json::Value = serde_json::from_str(ready.strip_prefix("ready ").expect(&ready)).unwrap();
    assert_eq!(first["running"], 16, "test and train of the 8 running trials: {first}");
    assert_eq!(first["longest"], 2, "{first}");
    assert_eq!(first["configs"], 100, "one mean curve per configuration: {first}");
    assert_eq!(first["bands"], 100, "each with its band over seeds: {first}");
    // The third epoch of the running trials arrives: their curves grow.
    for l in &leases[..8] {
        coordinator.report_epochs(report(l, 3)).await.unwrap();
    }
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
        .await
        .expect("the browser saw a curve grow within a minute")
        .expect("the browser script reported");
    assert!(browser.0.wait().unwrap().success(), "{line}");
    let seen: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(seen["later"]["longest"], 3, "{seen}");
    assert_eq!(seen["errors"].as_array().unwrap().len(), 0, "no script errors: {seen}");
    let ms = seen["maxDrawMs"].as_f64().unwrap();
    assert!(
        ms < 1000.0,
        "the page draws the curves of 1,000 trials in under a second: {ms} ms"
    );
    eprintln!("curves of 1,000 trials drawn in at most {ms} ms");
    if let Some(keep) = std::env::var_os("CONVSWEEP_KEEP_CURVES_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
    stop.cancel();
}

/// Clients hammering the status get 429 past the ops port's rate, while its health endpoints
/// answer every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammering_the_status_is_rate_limited_and_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::open(config(dir.path())).unwrap();
    coordinator.submit(SPEC).unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = ops.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        async move {
            convsweep_coordinator::serve_ops(ops, c, &ServeConfig::default(), async move { s.cancelled().await }).await
        }
    });
    let (codes, health) = tokio::task::spawn_blocking(move || {
        let hammer: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..250).map(|_| get(port, "/status.json").0).collect::<Vec<_>>()))
            .collect();
        let health: Vec<u16> = (0..50).map(|_| get(port, "/healthz").0).collect();
        let codes: Vec<u16> = hammer.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (codes, health)
    })
    .await
    .unwrap();
    assert!(health.iter().all(|c| *c == 200), "{health:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert!(limited > 0, "1,000 requests in a burst and none limited");
    assert!(codes.contains(&200));
    stop.cancel();
}
