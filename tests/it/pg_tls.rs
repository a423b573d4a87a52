//! TLS to PostgreSQL: a throwaway cluster started by the test (initdb and
//! pg_ctl from the machine's PostgreSQL, run as the `postgres` user when the
//! test runs as root) on a loopback port, with `ssl = on`, a certificate
//! made by the test with the `openssl` command line, and `hostssl` lines
//! only in pg_hba.conf: a client without TLS is refused. Each `sslmode` is
//! tried against it as libpq would behave, and herald serves a broadcast
//! through `verify-full` with every connection, the LISTEN one included,
//! encrypted. Without the PostgreSQL server programs the tests are skipped,
//! except under CI=true, where that fails them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herald::config::Config;
use herald::server::ServeError;
use tokio::net::TcpListener;

use crate::support::*;

/// `server.crt` and `server.key` for localhost and 127.0.0.1, signed by
/// the CA `ca`.
fn make_server_certificate(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
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
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// The newest PostgreSQL server programs on this machine.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL cluster of its own on a loopback port that takes TLS
/// connections only; stopped when dropped.
struct TlsCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl TlsCluster {
    /// None (with the reason printed) when the server programs are
    /// missing, except under CI=true, where that fails the test. A
    /// cluster that cannot start fails the test.
    fn start() -> Option<TlsCluster> {
        let Some(bin) = postgres_bin_dir() else {
            let reason = "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the PostgreSQL TLS tests need a cluster of their own: {reason}");
            }
            eprintln!("skipped: {reason}; CI=true makes this a failure");
            return None;
        };
        let dir = temp_dir();
        let root = dir.path().to_path_buf();
        let root = root.as_path();
        make_ca(root, "good");
        make_ca(root, "other");
        make_server_certificate(root, "good");
        // initdb refuses to run as root: the cluster then belongs to the
        // `postgres` user, who must own its files and may read the key.
        let as_postgres = rustix::process::getuid().is_root();
        let cluster = TlsCluster {
            bin,
            port: free_addr().port(),
            as_postgres,
            dir,
        };
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(root)
                .status()
                .unwrap();
            assert!(chown.success(), "chown of the cluster's folder failed");
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ],
        );
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n\
             max_connections = 60\nshared_buffers = 16MB\n",
            cluster.port,
            root.display(),
            root.join("server.crt").display(),
            root.join("server.key").display(),
        );
        let mut config = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        config.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), config).unwrap();
        // TLS only over TCP; the test's own checks use the Unix socket.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all scram 127.0.0.1/32 scram-sha-256\n\
             hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let log = root.join("postgres.log");
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}-ca.pem"))
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command.args(args).output().unwrap();
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\nserver log:\n{log}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A database URL with `params` (`sslmode=...`).
    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }

    /// A check connection over the Unix socket (no TLS needed there).
    async fn socket_client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().display(),
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
        }));
    }
}

/// Opens herald's store on `url` as `herald serve` does: Ok, or its error
/// as the operator reads it.
async fn open_store(url: &str) -> Result<(), String> {
    let config = Config {
        database: url.into(),
        ..Config::default()
    };
    match herald::server::open_store(&config).await {
        Ok(_) => Ok(()),
        Err(error @ ServeError::Store { .. }) => Err(error.to_string()),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sslmode_against_a_server_that_takes_only_tls_connections() {
    let Some(cluster) = TlsCluster::start() else {
        return;
    };
    let good_ca = format!("sslrootcert={}", cluster.ca("good").display());
    let other_ca = format!("sslrootcert={}", cluster.ca("other").display());
    // Accepted: encrypted, and checked as far as the mode says.
    for url in [
        cluster.url("localhost", &format!("sslmode=verify-full&{good_ca}")),
        cluster.url("127.0.0.1", &format!("sslmode=verify-full&{good_ca}")),
        // verify-ca checks the chain, not the name.
        cluster.url(
            "wrong.invalid",
            &format!("hostaddr=127.0.0.1&sslmode=verify-ca&{good_ca}"),
        ),
        // require without a CA encrypts without checking.
        cluster.url("127.0.0.1", "sslmode=require"),
        // prefer (also the default) takes TLS when the server offers it.
        cluster.url("127.0.0.1", "sslmode=prefer"),
        cluster.url("127.0.0.1", "application_name=x"),
        // allow tries plain first, then TLS when plain is refused.
        cluster.url("127.0.0.1", "sslmode=allow"),
    ] {
        if let Err(error) = open_store(&url).await {
            panic!("{url} was refused: {error}");
        }
    }

    // Password authentication bound to the TLS session (SCRAM with
    // tls-server-end-point): the server refuses it unless herald sends
    // the certificate's hash.
    cluster
        .socket_client()
        .await
        .batch_execute("CREATE ROLE scram SUPERUSER LOGIN PASSWORD 'scram-password'")
        .await
        .unwrap();
    let bound = format!(
        "postgres://scram:scram-password@127.0.0.1:{}/postgres?sslmode=require&channel_binding=require",
        cluster.port
    );
    if let Err(error) = open_store(&bound).await {
        panic!("channel binding was refused: {error}");
    }

    // A wrong host name under verify-full.
    let error = open_store(&cluster.url(
        "wrong.invalid",
        &format!("hostaddr=127.0.0.1&sslmode=verify-full&{good_ca}"),
    ))
    .await
    .unwrap_err();
    assert!(
        error.contains("TLS with PostgreSQL at wrong.invalid failed")
            && error.contains("not valid for name")
            && error.contains("names the host of the URL"),
        "{error}"
    );

    // A CA that did not sign the server's certificate.
    for mode in ["verify-ca", "verify-full", "require"] {
        let error = open_store(&cluster.url("localhost", &format!("sslmode={mode}&{other_ca}")))
            .await
            .unwrap_err();
        assert!(
            error.contains("not signed by a CA in sslrootcert"),
            "sslmode={mode}: {error}"
        );
    }

    // No TLS against a server that requires it.
    let error = open_store(&cluster.url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        error.contains("no encryption") && error.contains("accepts only TLS connections"),
        "{error}"
    );

    // Bad settings are named before anything connects, without the URL's
    // password.
    let error = open_store(&format!(
        "postgres://postgres:hunter2@localhost:{}/postgres?sslmode=verify-full",
        cluster.port
    ))
    .await
    .unwrap_err();
    assert!(
        error.contains("sslmode=verify-full") && error.contains("add sslrootcert="),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
    let missing = cluster.dir.path().join("missing.pem");
    let error = open_store(&cluster.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", missing.display()),
    ))
    .await
    .unwrap_err();
    assert!(
        error.contains(&format!("sslrootcert: cannot read {}", missing.display())),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn herald_serves_a_broadcast_through_verify_full_on_encrypted_connections_only() {
    let Some(cluster) = TlsCluster::start() else {
        return;
    };
    let mock = start_mock(&[]).await;
    let config = Config {
        database: cluster
            .url(
                "localhost",
                &format!(
                    "sslmode=verify-full&sslrootcert={}",
                    cluster.ca("good").display()
                ),
            )
            .into(),
        node_id: Some("tls-node".into()),
        destinations: vec![webhook(&mock, "hook")],
        ..Config::default()
    };
    let server = herald::server::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    let client = client(&server);
    let accepted = client.send(&request("over TLS", &["hook"])).await.unwrap();
    let broadcast = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
    assert_eq!(mock.stats().path("/hooks/hook").distinct, 1);

    // Every session of this node, the LISTEN one included, is encrypted.
    let check = cluster.socket_client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = check
            .query(
                "SELECT a.query LIKE 'LISTEN%', s.ssl FROM pg_stat_activity a
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'herald tls-node'",
                &[],
            )
            .await
            .unwrap();
        let sessions: Vec<(bool, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if sessions.iter().any(|(listen, _)| *listen) {
            assert!(
                sessions.iter().all(|(_, ssl)| *ssl),
                "a session without TLS: {sessions:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no LISTEN session of herald: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}
