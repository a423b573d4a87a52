use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::api::wire::{Broadcast, SendRequest};
use herald::client::Client;
use herald::config::{Config, Destination, Target};
use herald::domain::RetryPolicy;
use herald::mock::{Faults, FaultsFile, RunningMock};
use herald::server::RunningServer;
use tokio::net::TcpListener;

pub async fn start_mock(paths: &[(&str, Faults)]) -> RunningMock {
    let mut file = FaultsFile::default();
    for (path, faults) in paths {
        file.paths.insert((*path).to_owned(), faults.clone());
    }
    // SMTP on the port after HTTP's, where `mock_destination` looks.
    let (http, smtp) = herald::mock::bind_pair(std::net::Ipv4Addr::LOCALHOST.into())
        .await
        .unwrap();
    herald::mock::start_with_smtp(http, smtp, file).unwrap()
}

/// A webhook destination at the mock's `/hooks/NAME`, with quick retries.
pub fn webhook(mock: &RunningMock, name: &str) -> Destination {
    Destination {
        name: name.to_owned(),
        target: Target::Webhook {
            rendering: Default::default(),
            url: mock.url(&format!("/hooks/{name}")).parse().unwrap(),
            secret: None,
        },
        timeout_ms: 1_000,
        concurrency: 8,
        policy: RetryPolicy {
            attempts_max: 8,
            base_ms: 100,
            cap_ms: 2_000,
            deadline_ms: None,
        },
        isolation: Default::default(),
    }
}

pub async fn start_server(database: &Path, destinations: Vec<Destination>) -> RunningServer {
    let config = Config {
        database: database.to_path_buf(),
        destinations,
        ..Config::default()
    };
    herald::server::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap()
}

pub fn client(server: &RunningServer) -> Client {
    Client::new(&format!("http://{}", server.addr)).unwrap()
}

pub fn request(title: &str, destinations: &[&str]) -> SendRequest {
    SendRequest {
        title: title.to_owned(),
        body: None,
        severity: Some("P1".into()),
        thread: None,
        resolved: false,
        destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
        ..SendRequest::default()
    }
}

/// Polls until the broadcast is final, for at most `limit`.
pub async fn wait_final(client: &Client, id: &str, limit: Duration) -> Broadcast {
    let deadline = Instant::now() + limit;
    loop {
        let broadcast = client.status(id).await.unwrap();
        if broadcast.is_final() {
            return broadcast;
        }
        assert!(
            Instant::now() < deadline,
            "broadcast {id} still delivering after {limit:?}: {broadcast:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts rows of a table in a database file, read-only.
pub fn count_rows(database: &Path, table: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("herald-test-")
        .tempdir()
        .unwrap()
}

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `herald serve` child process, killed when dropped, so a failing test
/// leaves no server behind.
pub struct ServerProcess(Child);

impl std::ops::Deref for ServerProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_server(
    config: &Path,
    database: &Path,
    listen: SocketAddr,
    log: &Path,
) -> ServerProcess {
    spawn_server_with_env(config, database, listen, log, &[])
}

pub fn spawn_server_with_env(
    config: &Path,
    database: &Path,
    listen: SocketAddr,
    log: &Path,
    env: &[(&str, &str)],
) -> ServerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    ServerProcess(
        Command::new(HERALD)
            .args(["serve", "--listen", &listen.to_string(), "--config"])
            .arg(config)
            .arg("--database")
            .arg(database)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

pub async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://{addr}/healthz");
    let http = herald::connector::http_client_builder().build().unwrap();
    while Instant::now() < deadline {
        if let Ok(response) = http.get(&url).send().await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("herald did not become healthy at {addr}");
}

/// The PostgreSQL the tests use; `HERALD_TEST_POSTGRES` overrides it.
pub fn postgres_base_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A client on the test PostgreSQL; None (with the reason printed) when it
/// cannot be reached, except on CI (`CI=true`), where that fails the test.
pub async fn test_postgres() -> Option<tokio_postgres::Client> {
    let base = postgres_base_url();
    let connected = async {
        let (client, connection) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&base, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok::<_, String>(client)
    }
    .await;
    match connected {
        Ok(client) => Some(client),
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL at {base} is required on CI: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: PostgreSQL at {base} is not reachable ({reason}); CI=true makes this a failure");
            None
        }
    }
}

/// A fresh schema on the test PostgreSQL, dropped when this is dropped (a
/// failing test too).
pub struct PgSchema {
    pub name: String,
    /// The base URL with `search_path` set to this schema.
    pub url: String,
}

impl PgSchema {
    /// None (with the reason printed) when PostgreSQL cannot be reached,
    /// except on CI (`CI=true`), where that fails the test.
    pub async fn create() -> Option<PgSchema> {
        let base = postgres_base_url();
        let client = test_postgres().await?;
        let name = format!("herald_test_{:016x}", rand::random::<u64>());
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create the schema {name} at {base}: {e}"));
        Some(PgSchema {
            url: format!("{base}?options=-csearch_path%3D{name}"),
            name,
        })
    }

    /// A client on this schema, for checks.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (postgres_base_url(), self.name.clone());
        // Drop runs outside async code: a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&base, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                    .await;
            })
        });
        let _ = dropped.join();
    }
}

/// `/metrics` as text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    herald::connector::http_client_builder()
        .build()
        .unwrap()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample of `series` in `/metrics`: a family name,
/// or a name with its labels (`herald_backlog{destination="a"}`).
pub async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    metrics_text(addr)
        .await
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(['{', ' ']))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// `openssl` (the command line) in `dir`, which must succeed; the TLS
/// tests make their certificates with it.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line is needed for the TLS tests (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A self-signed CA `NAME-ca.pem` (and its key `NAME-ca.key`) in `dir`.
pub fn make_ca(dir: &Path, name: &str) -> std::path::PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=herald test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
        ],
    );
    dir.join(format!("{name}-ca.pem"))
}
