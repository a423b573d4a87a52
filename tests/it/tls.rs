//! TLS on the API: real `herald serve` processes with certificates made by
//! the test with the `openssl` command line (no build cost; under CI=true a
//! missing `openssl` fails the test), the CLI trusting a CA with --cacert,
//! mTLS, and a reload that changes the certificate while an event stream
//! on an old connection goes on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use herald::client::{Client, ClientError};

use crate::reload::destination_toml;
use crate::support::*;

/// A CA and certificates it signs, in one temporary folder.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A new CA named `name` (files `NAME-ca.pem`, `NAME-ca.key`).
    fn new(dir: &Path, name: &str) -> Pki {
        make_ca(dir, name);
        Pki {
            dir: dir.join(name),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.with_file_name(format!("{}-ca.pem", self.name()))
    }

    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// A certificate signed by this CA: `NAME-LEAF.pem` and `.key`; for
    /// 127.0.0.1 and localhost, as a server or a client.
    fn issue(&self, leaf: &str, usage: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.parent().unwrap();
        let base = format!("{}-{leaf}", self.name());
        std::fs::write(
            dir.join(format!("{base}.ext")),
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={leaf}"),
                "-keyout",
                &format!("{base}.key"),
                "-out",
                &format!("{base}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{base}.csr"),
                "-CA",
                &format!("{}-ca.pem", self.name()),
                "-CAkey",
                &format!("{}-ca.key", self.name()),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{base}.ext"),
                "-out",
                &format!("{base}.pem"),
            ],
        );
        (
            dir.join(format!("{base}.pem")),
            dir.join(format!("{base}.key")),
        )
    }
}

/// A destination, since a config needs one; nothing is sent to it.
const SOME_DESTINATION: &str =
    "[destinations.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n";

/// `[server]` with TLS, as config text.
fn tls_server_toml(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut text = format!(
        "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        text.push_str(&format!("tls_client_ca_file = \"{}\"\n", ca.display()));
    }
    text.push('\n');
    text
}

/// An HTTPS client that trusts `ca` only (not the system roots), so which
/// certificate the server presents is what the test checks.
fn https_trusting(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let roots = reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap();
    let mut builder = herald::connector::http_client_builder()
        .tls_certs_only(roots)
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

struct TlsServed {
    process: ServerProcess,
    addr: SocketAddr,
    log: PathBuf,
}

impl TlsServed {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `herald serve` with `config` and waits until `/healthz` answers
/// over TLS to a client trusting `ca` (and presenting `identity`).
async fn serve_tls(
    dir: &Path,
    config: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> TlsServed {
    let config_path = dir.join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let addr = free_addr();
    let log = dir.join("serve.log");
    let mut process = spawn_server(&config_path, &dir.join("herald.db"), addr, &log);
    let served_url = format!("https://localhost:{}/healthz", addr.port());
    let http = https_trusting(ca, identity);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = http.get(&served_url).send().await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(
            process.try_wait().unwrap().is_none(),
            "herald serve exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "herald never answered over TLS: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TlsServed { process, addr, log }
}

fn herald_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(HERALD)
        .args(args)
        .env_remove("HERALD_SERVER")
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_CACERT")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_api_answers_over_tls_and_the_cli_trusts_the_ca_it_is_given() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path(), "one");
    let (cert, key) = pki.issue("server", "serverAuth");
    let served = serve_tls(
        dir.path(),
        &(tls_server_toml(&cert, &key, None) + SOME_DESTINATION),
        &pki.ca(),
        None,
    )
    .await;

    // The API itself, through the library's client with the CA.
    let client = Client::with_trust(&served.url("/"), None, Some(&pki.ca())).unwrap();
    assert_eq!(client.destinations().await.unwrap().len(), 1);
    // Plain HTTP on the TLS port gets no answer.
    let plain = herald::connector::http_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(plain
        .get(format!("http://{}/healthz", served.addr))
        .send()
        .await
        .is_err());

    // The CLI with --cacert, and with HERALD_CACERT.
    let server = served.url("");
    let ca = pki.ca().display().to_string();
    let listed = herald_cli(&["list", "--server", &server, "--cacert", &ca], &[]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed = herald_cli(
        &["destinations", "--server", &server],
        &[("HERALD_CACERT", &ca)],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // The container's health check: `herald ready` over TLS.
    let ready = herald_cli(&["ready", "--server", &server, "--cacert", &ca], &[]);
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ready.stdout).trim(), "ready");

    // A client given the server's config file takes https from it.
    let client_config = dir.path().join("client.toml");
    std::fs::write(
        &client_config,
        format!(
            "[server]\nlisten = \"{}\"\ntls_cert_file = \"{}\"\n",
            served.addr,
            cert.display()
        ),
    )
    .unwrap();
    let listed = herald_cli(
        &[
            "list",
            "--config",
            &client_config.display().to_string(),
            "--cacert",
            &ca,
        ],
        &[],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // Without it the certificate is not trusted: a clear error, at once.
    let started = Instant::now();
    let refused = herald_cli(&["list", "--server", &server], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("over TLS"), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(stderr.contains("--cacert"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    let error = Client::with_trust(&served.url("/"), None, None)
        .unwrap()
        .destinations()
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Tls { .. }), "{error}");

    // A CA file that holds no certificate is named.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "nothing here\n").unwrap();
    let refused = herald_cli(
        &[
            "list",
            "--server",
            &server,
            "--cacert",
            &bogus.display().to_string(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("--cacert") && stderr.contains("bogus.pem"),
        "{stderr}"
    );
    drop(served.process);
}

#[tokio::test]
async fn mtls_accepts_a_client_certificate_from_the_ca_and_refuses_others() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path(), "one");
    let other = Pki::new(dir.path(), "other");
    let (cert, key) = pki.issue("server", "serverAuth");
    let (client_cert, client_key) = pki.issue("client", "clientAuth");
    let (stranger_cert, stranger_key) = other.issue("client", "clientAuth");
    let served = serve_tls(
        dir.path(),
        &(tls_server_toml(&cert, &key, Some(&pki.ca())) + SOME_DESTINATION),
        &pki.ca(),
        Some((&client_cert, &client_key)),
    )
    .await;

    let good = https_trusting(&pki.ca(), Some((&client_cert, &client_key)));
    let answer = good
        .get(served.url("/v1/destinations"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let anonymous = https_trusting(&pki.ca(), None);
    let refused = anonymous.get(served.url("/healthz")).send().await;
    assert!(refused.is_err(), "answered without a client certificate");
    let stranger = https_trusting(&pki.ca(), Some((&stranger_cert, &stranger_key)));
    let refused = stranger.get(served.url("/healthz")).send().await;
    assert!(refused.is_err(), "answered a certificate from another CA");

    // The CLI without a client certificate is told why.
    let refused = herald_cli(
        &[
            "list",
            "--server",
            &served.url(""),
            "--cacert",
            &pki.ca().display().to_string(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("over TLS"), "{stderr}");
    drop(served.process);
}

/// Reads the stream until `needle` arrives (at most 20 s).
async fn read_until(stream: &mut reqwest::Response, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} on the stream; so far:\n{seen}"))
            .expect("the event stream broke")
            .unwrap_or_else(|| panic!("the stream ended before {needle:?}; so far:\n{seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_while_open_streams_go_on() {
    let dir = temp_dir();
    let first = Pki::new(dir.path(), "first");
    let second = Pki::new(dir.path(), "second");
    let (cert, key) = first.issue("server", "serverAuth");
    let mock = start_mock(&[]).await;
    let destination = destination_toml(&mock, "hook", "hook");
    let served_cert = dir.path().join("served.pem");
    let served_key = dir.path().join("served.key");
    std::fs::copy(&cert, &served_cert).unwrap();
    std::fs::copy(&key, &served_key).unwrap();
    let config = format!(
        "{}{destination}",
        tls_server_toml(&served_cert, &served_key, None)
    );
    let served = serve_tls(dir.path(), &config, &first.ca(), None).await;
    let old_trust = https_trusting(&first.ca(), None);
    let new_trust = https_trusting(&second.ca(), None);
    let client = Client::with_trust(&served.url("/"), None, Some(&first.ca())).unwrap();

    // A broadcast that waits (its destination paused), and its event
    // stream open on a connection made with the first certificate.
    client
        .pause_destination("hook", None, "held for the test".into())
        .await
        .unwrap();
    let broadcast = client.send(&request("held", &["hook"])).await.unwrap();
    let mut stream = old_trust
        .get(served.url(&format!("/v1/broadcasts/{}/events", broadcast.id)))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "pending").await;

    // A file that is not a certificate: the reload is refused, naming the
    // key and the file, and the first certificate is still served.
    std::fs::write(&served_cert, "not a certificate\n").unwrap();
    let refused = client.reload_config().await.unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("server.tls_cert_file") && message.contains("served.pem"),
        "{message}"
    );
    // (A new client each time: a pooled connection would be an old one.)
    let fresh_old_trust = https_trusting(&first.ca(), None);
    assert_eq!(
        fresh_old_trust
            .get(served.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // An idle kept-alive connection, made before the reload.
    assert_eq!(
        old_trust
            .get(served.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The second CA's certificate, then SIGHUP.
    let (cert, key) = second.issue("server", "serverAuth");
    std::fs::copy(&cert, &served_cert).unwrap();
    std::fs::copy(&key, &served_key).unwrap();
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(served.process.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while new_trust.get(served.url("/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served: {}",
            served.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New connections get the new certificate only, while the old
    // client's kept-alive connection still works.
    let fresh_old_trust = https_trusting(&first.ca(), None);
    assert!(fresh_old_trust
        .get(served.url("/healthz"))
        .send()
        .await
        .is_err());
    assert_eq!(
        old_trust
            .get(served.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The stream opened before the reload goes on: the resumed
    // destination's delivery shows up on it.
    let new_client = Client::with_trust(&served.url("/"), None, Some(&second.ca())).unwrap();
    new_client.resume_destination("hook").await.unwrap();
    read_until(&mut stream, &mut seen, "confirmed").await;
    drop(served.process);
}

#[tokio::test]
async fn check_config_names_the_key_and_the_file_of_a_bad_certificate_or_key() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path(), "one");
    let (cert, key) = pki.issue("server", "serverAuth");
    let (other_cert, _) = pki.issue("other", "serverAuth");
    let config = dir.path().join("herald.toml");
    let check = |text: String| {
        std::fs::write(&config, text + SOME_DESTINATION).unwrap();
        let output = herald_cli(&["check-config", &config.display().to_string()], &[]);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };

    let (ok, text) = check(tls_server_toml(&cert, &key, Some(&pki.ca())));
    assert!(ok, "{text}");

    let missing = dir.path().join("missing.pem");
    let (ok, text) = check(tls_server_toml(&missing, &key, None));
    assert!(!ok);
    assert!(
        text.contains("server.tls_cert_file: cannot read") && text.contains("missing.pem"),
        "{text}"
    );

    // The key of one certificate with another certificate.
    let (ok, text) = check(tls_server_toml(&other_cert, &key, None));
    assert!(!ok);
    assert!(
        text.contains("server.tls_key_file") && text.contains("one-server.key"),
        "{text}"
    );

    // A certificate where the key should be.
    let (ok, text) = check(tls_server_toml(&cert, &cert, None));
    assert!(!ok);
    assert!(
        text.contains("server.tls_key_file") && text.contains("no PEM private key"),
        "{text}"
    );

    let (ok, text) = check(format!(
        "[server]\ntls_cert_file = \"{}\"\n",
        cert.display()
    ));
    assert!(!ok);
    assert!(text.contains("server.tls_key_file: missing"), "{text}");

    // `herald serve` refuses to start on it.
    let mut process = spawn_server(
        &config,
        &dir.path().join("herald.db"),
        free_addr(),
        &dir.path().join("serve.log"),
    );
    let status = process.wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("server.tls_key_file: missing"), "{log}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_at_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir();
    let pki = Pki::new(dir.path(), "one");
    let (cert, key) = pki.issue("server", "serverAuth");
    let config = tls_server_toml(&cert, &key, None)
        .replace("[server]\n", "[server]\nheader_read_timeout_ms = 500\n")
        + SOME_DESTINATION;
    let served = serve_tls(dir.path(), &config, &pki.ca(), None).await;
    let mut silent = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer))
        .await
        .expect("the server kept a silent TLS connection open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    drop(served.process);
}
