//! The ops port during a sweep: health over gRPC and HTTP, readiness, and metrics that a real
//! exposition-format parser reads.

use std::io::{Read, Write};

use convsweep_coordinator::{Coordinator, ServeConfig};
use convsweep_proto::client::{Connection, Secret};
use convsweep_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::common::{SPEC, config, epoch};

/// `GET path` over HTTP/1.1; returns the status code, the headers and the body.
fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
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
        async move { convsweep_coordinator::serve_ops(ops, c, async move { s.cancelled().await }).await }
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
    let id = worker
        .register(pb::RegisterRequest {
            protocol_version: convsweep_proto::PROTOCOL_VERSION,
            slots: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
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
