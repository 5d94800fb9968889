//! Token auth and TLS on the main port, with certificates made at run time.

use std::path::{Path, PathBuf};

use convsweep_coordinator::{Coordinator, ServeConfig, TlsFiles};
use convsweep_proto::client::{Connection, Secret};
use convsweep_proto::pb;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::common::config;

/// A CA and the PEM files of one certificate it signed for `127.0.0.1` and `localhost`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} leaf"));
    let cert = params.signed_by(&key, &ca).unwrap();
    let files = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.ca, ca.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

/// A coordinator served with `serve` on 127.0.0.1:0; returns its port.
async fn start(dir: &Path, serve: ServeConfig) -> (u16, CancellationToken) {
    let coordinator = Coordinator::open(config(&dir.join("state"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        convsweep_coordinator::serve_with(listener, coordinator, &serve, async move { s.cancelled().await }).await
    });
    (port, stop)
}

async fn status(conn: &Connection) -> Result<pb::GetStatusResponse, tonic::Status> {
    let mut admin = conn
        .admin()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    admin
        .get_status(pb::GetStatusRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn every_rpc_needs_the_token_but_health_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let token = Secret::new("s3cret-token-value", "test").unwrap();
    let serve = ServeConfig {
        token: Some(token.clone()),
        ..Default::default()
    };
    let (port, stop) = start(dir.path(), serve).await;
    let url = format!("http://127.0.0.1:{port}");

    let none = Connection::plain(&url);
    let err = status(&none).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The library says what is missing; which flag gives it is the CLI's to say.
    assert!(err.message().contains("requires a bearer token"), "{}", err.message());
    let mut worker = none.worker().unwrap();
    let err = worker
        .register(pb::RegisterRequest {
            protocol_version: convsweep_proto::PROTOCOL_VERSION,
            slots: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "worker RPCs too");

    let wrong = Connection {
        token: Some(Secret::new("s3cret-token-valuX", "test").unwrap()),
        ..Connection::plain(&url)
    };
    let err = status(&wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        !err.message().contains("s3cret"),
        "no token in errors: {}",
        err.message()
    );

    let right = Connection {
        token: Some(token),
        ..Connection::plain(&url)
    };
    assert!(status(&right).await.unwrap().sweeps.is_empty());

    // The health service answers without a token (kubelets have none).
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
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

#[test]
fn tokens_never_show_and_bad_token_files_are_named() {
    let token = Secret::new("  visible-only-to-the-header\n", "test").unwrap();
    assert_eq!(
        token.expose(),
        "visible-only-to-the-header",
        "a file's newline is trimmed"
    );
    assert!(!format!("{token:?}").contains("visible"));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = Secret::from_file(&empty).unwrap_err().to_string();
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("is empty"),
        "{err}"
    );
    let missing = dir.path().join("missing");
    let err = Secret::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("cannot be read"), "{err}");
    assert!(
        Secret::new("two words", "test").is_err(),
        "a header cannot carry a space-split token"
    );
    let a = Secret::random().unwrap();
    assert_eq!(a.expose().len(), 64);
    assert_ne!(a, Secret::random().unwrap());
}

#[tokio::test]
async fn tls_round_trip_and_the_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(dir.path(), "server");
    let other = pki(dir.path(), "other");
    let serve = ServeConfig {
        tls: Some(TlsFiles {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_ca: None,
        }),
        ..Default::default()
    };
    let (port, stop) = start(dir.path(), serve).await;
    let https = format!("https://127.0.0.1:{port}");

    let trusted = Connection {
        tls_ca: Some(server.ca.clone()),
        ..Connection::plain(&https)
    };
    assert!(status(&trusted).await.unwrap().sweeps.is_empty(), "TLS round trip");

    let wrong_ca = Connection {
        tls_ca: Some(other.ca.clone()),
        ..Connection::plain(&https)
    };
    assert!(
        status(&wrong_ca).await.is_err(),
        "a client that trusts another CA is refused"
    );

    let plaintext = Connection::plain(format!("http://127.0.0.1:{port}"));
    assert!(
        status(&plaintext).await.is_err(),
        "a plaintext client is refused by a TLS coordinator"
    );
    stop.cancel();
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(dir.path(), "server");
    let client = pki(dir.path(), "client");
    let stranger = pki(dir.path(), "stranger");
    let serve = ServeConfig {
        tls: Some(TlsFiles {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_ca: Some(client.ca.clone()),
        }),
        ..Default::default()
    };
    let (port, stop) = start(dir.path(), serve).await;
    let https = format!("https://127.0.0.1:{port}");
    let base = Connection {
        tls_ca: Some(server.ca.clone()),
        ..Connection::plain(&https)
    };
    assert!(status(&base).await.is_err(), "no client certificate: refused");
    let foreign = Connection {
        tls_cert: Some(stranger.cert.clone()),
        tls_key: Some(stranger.key.clone()),
        ..base.clone()
    };
    assert!(status(&foreign).await.is_err(), "a certificate of another CA: refused");
    let good = Connection {
        tls_cert: Some(client.cert.clone()),
        tls_key: Some(client.key.clone()),
        ..base
    };
    assert!(status(&good).await.unwrap().sweeps.is_empty(), "mTLS round trip");
    stop.cancel();
}

#[tokio::test]
async fn reflection_lists_the_services_behind_the_token() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let token = Secret::new("reflection-token", "test").unwrap();
    let serve = ServeConfig {
        token: Some(token.clone()),
        ..Default::default()
    };
    let (port, stop) = start(dir.path(), serve).await;
    let url = format!("http://127.0.0.1:{port}");
    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let mut anonymous = ServerReflectionClient::new(Connection::plain(&url).connect().await.unwrap());
    let err = anonymous.server_reflection_info(list()).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "reflection is authenticated like the rest"
    );

    let conn = Connection {
        token: Some(token),
        ..Connection::plain(&url)
    };
    let mut client = ServerReflectionClient::new(conn.connect().await.unwrap());
    let mut replies = client.server_reflection_info(list()).await.unwrap().into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(services)) = reply.message_response else {
        panic!("a service list, got {reply:?}");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    for want in [
        "convsweep.v1.WorkerService",
        "convsweep.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    stop.cancel();
}

#[tokio::test]
async fn requests_over_a_limit_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeConfig {
        limits: convsweep_coordinator::Limits {
            max_message_bytes: 4096,
            request_timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        },
        ..Default::default()
    };
    let (port, stop) = start(dir.path(), serve).await;
    let conn = Connection::plain(format!("http://127.0.0.1:{port}"));
    let mut admin = conn.admin().await.unwrap();
    let big = format!("{}\n# {}", crate::common::SPEC, "x".repeat(8192));
    let err = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: big })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(
        err.message().contains("the limit is: 4096 bytes"),
        "names the limit: {}",
        err.message()
    );
    // A long poll that outlives the request timeout is cut off, by name.
    let mut worker = conn.worker().unwrap();
    let id = crate::common::register(&mut worker, 1).await;
    let err = worker
        .lease(pb::LeaseRequest {
            worker_id: id,
            max_trials: 1,
            wait_ms: 5_000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        err.message().contains("0.3 s") && err.message().contains("per request"),
        "{}",
        err.message()
    );
    stop.cancel();
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeConfig {
        limits: convsweep_coordinator::Limits {
            max_concurrent_requests: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let (port, stop) = start(dir.path(), serve).await;
    let conn = Connection::plain(format!("http://127.0.0.1:{port}"));
    let mut worker = conn.worker().unwrap();
    let id = crate::common::register(&mut worker, 1).await;
    // One long poll holds the only slot (the queue is empty, so it waits).
    let mut waiting = worker.clone();
    let poll = tokio::spawn(async move {
        waiting
            .lease(pb::LeaseRequest {
                worker_id: id,
                max_trials: 1,
                wait_ms: 3_000,
            })
            .await
    });
    // Until the long poll holds it, a status call may get through; once it does, refused.
    let mut refused = None;
    for _ in 0..100 {
        match status(&conn).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let err = refused.expect("a second call is refused while the first holds the slot");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("limit of 1 calls at once"), "{}", err.message());
    assert!(poll.await.unwrap().unwrap().into_inner().leases.is_empty());
    stop.cancel();
}
