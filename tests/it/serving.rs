//! `herald serve` as a long-running process: SIGTERM with event streams
//! open, `send --wait` across a restart, connection timeouts and the cap,
//! and `/readyz` on a full disk. Real processes, real signals, raw TCP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use herald::mock::Faults;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A bound on waits for things that must happen, so a regression fails
/// instead of hanging; never a measured time.
const PATIENCE: Duration = Duration::from_secs(60);

fn write_config(dir: &Path, server: &str, destinations: &str) -> PathBuf {
    let path = dir.join("herald.toml");
    std::fs::write(&path, format!("[server]\n{server}\n{destinations}")).unwrap();
    path
}

/// A webhook destination nobody listens at: its deliveries keep retrying.
const UNREACHABLE_DESTINATION: &str =
    "[destinations.down]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/down\"\n";

fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the process to exit, for at most `PATIENCE`.
async fn wait_exit(child: &mut std::process::Child, log: &Path) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "herald still running {PATIENCE:?} after SIGTERM; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `GET path` and reads the response head: the stream is then open.
async fn open_event_stream(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: herald\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed in the head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// Reads until the server closes the connection (EOF or reset).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => text.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was still open after {PATIENCE:?}; it had sent {:?}",
        String::from_utf8_lossy(&text)
    );
    String::from_utf8_lossy(&text).into_owned()
}

async fn post_broadcast(addr: SocketAddr, title: &str, to: &str) -> reqwest::Response {
    herald::connector::http_client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .post(format!("http://{addr}/v1/broadcasts"))
        .json(&serde_json::json!({"title": title, "destinations": [to]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_event_streams_with_a_shutdown_event_and_exits_zero() {
    let dir = temp_dir();
    let config = write_config(dir.path(), "", UNREACHABLE_DESTINATION);
    let (database, log, addr) = (
        dir.path().join("herald.db"),
        dir.path().join("herald.log"),
        free_addr(),
    );
    let mut server = spawn_server(&config, &database, addr, &log);
    wait_healthy(addr).await;
    let accepted = post_broadcast(addr, "INC-1 stays delivering", "down").await;
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Like `curl -N`: one stream of everything, one of the broadcast.
    let mut all = open_event_stream(addr, "/v1/events").await;
    let mut one = open_event_stream(addr, &format!("/v1/broadcasts/{id}/events")).await;
    terminate(&server);
    let status = wait_exit(&mut server, &log).await;
    assert!(status.success(), "exit status {status:?}");

    for (name, stream) in [("/v1/events", &mut all), ("broadcast events", &mut one)] {
        let text = read_until_closed(stream).await;
        assert!(
            text.contains("event: shutdown"),
            "{name} got no shutdown event: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_reconnects_across_a_restart_and_exits_with_the_final_state() {
    let dir = temp_dir();
    let mock = start_mock(&[
        (
            "/hooks/held",
            Faults {
                fail_first: u32::MAX,
                fail_status: 503,
                ..Faults::default()
            },
        ),
        (
            "/hooks/gone",
            Faults {
                fail_first: u32::MAX,
                fail_status: 404,
                ..Faults::default()
            },
        ),
    ])
    .await;
    let destinations = ["held", "gone"]
        .map(|name| {
            format!(
                "[destinations.{name}]\nkind = \"webhook\"\nurl = \"{}\"\n\
                 [destinations.{name}.retry]\nbase_ms = 100\ncap_ms = 1000\nattempts_max = 100\n",
                mock.url(&format!("/hooks/{name}"))
            )
        })
        .join("");
    let config = write_config(dir.path(), "", &destinations);
    let (database, log, addr) = (
        dir.path().join("herald.db"),
        dir.path().join("herald.log"),
        free_addr(),
    );
    let mut server = spawn_server(&config, &database, addr, &log);
    wait_healthy(addr).await;

    let mut send = Command::new(HERALD)
        .args([
            "send",
            "--to",
            "held",
            "--to",
            "gone",
            "--title",
            "INC-7 db down",
        ])
        .args(["--wait", "--server", &format!("http://{addr}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its stdout says when it follows the broadcast: `gone` failed, `held`
    // is retrying.
    let stdout = send.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line.unwrap_or_default());
        }
    });
    let mut printed = String::new();
    while !(printed.contains("gone: failed") && printed.contains("held: retrying")) {
        let line = tokio::time::timeout(PATIENCE, lines.recv())
            .await
            .expect("send --wait printed nothing more")
            .expect("send --wait ended early");
        printed.push_str(&line);
        printed.push('\n');
    }

    terminate(&server);
    let status = wait_exit(&mut server, &log).await;
    assert!(status.success(), "exit status {status:?}");
    mock.set_faults("/hooks/held", Faults::default());
    drop(server);
    let _server = spawn_server(&config, &database, addr, &log);

    let send = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = send.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut send.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "send --wait never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (status, stderr) = send.await.unwrap();
    while let Ok(line) = lines.try_recv() {
        printed.push_str(&line);
        printed.push('\n');
    }
    assert_eq!(status.code(), Some(1), "{printed}\n{stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
    assert!(printed.contains("held: confirmed"), "{printed}");
    assert!(printed.contains(": partial"), "{printed}");
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_head_and_an_idle_keep_alive_connection_are_closed() {
    let dir = temp_dir();
    let config = write_config(
        dir.path(),
        "header_read_timeout_ms = 500\nidle_timeout_ms = 1000",
        UNREACHABLE_DESTINATION,
    );
    let (database, log, addr) = (
        dir.path().join("herald.db"),
        dir.path().join("herald.log"),
        free_addr(),
    );
    let _server = spawn_server(&config, &database, addr, &log);
    wait_healthy(addr).await;

    // One byte of the head every 100 ms: it never completes.
    let trickle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = b"GET /healthz HTTP/1.1\r\nHost: herald\r\nX-Slow: ".repeat(100);
        let deadline = Instant::now() + PATIENCE;
        for byte in head {
            assert!(Instant::now() < deadline, "still open after {PATIENCE:?}");
            if stream.write_all(&[byte]).await.is_err() {
                return;
            }
            let mut buffer = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => panic!("an incomplete head got an answer"),
                Err(_) => {}
            }
        }
        panic!("the server read the whole trickled head");
    });

    // A keep-alive connection that made one request, then says nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await
        .unwrap();
    let text = read_until_closed(&mut idle).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");

    trickle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_and_slow_connections_do_not_stop_healthz_or_a_post() {
    let dir = temp_dir();
    // Only the cap protects here: the timeouts are as long as allowed.
    let config = write_config(
        dir.path(),
        "header_read_timeout_ms = 600000\nidle_timeout_ms = 3600000",
        UNREACHABLE_DESTINATION,
    );
    let (database, log, addr) = (
        dir.path().join("herald.db"),
        dir.path().join("herald.log"),
        free_addr(),
    );
    // The common open-file limit, soft and hard.
    let log_file = std::fs::File::create(&log).unwrap();
    let _server = KilledOnDrop(
        Command::new("prlimit")
            .args(["--nofile=1024:1024", "--"])
            .arg(HERALD)
            .args(["serve", "--listen", &addr.to_string(), "--config"])
            .arg(&config)
            .arg("--database")
            .arg(&database)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    wait_healthy(addr).await;

    let mut held = Vec::new();
    for i in 0..1_200 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if i % 6 == 0 {
            // Slow: half a head.
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHo")
                .await
                .unwrap();
        }
        held.push(stream);
    }

    let http = herald::connector::http_client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("/healthz answers");
    assert_eq!(health.status(), 200);
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("/readyz answers");
    assert_eq!(ready.status(), 200);
    let accepted = post_broadcast(addr, "INC-3 under a connection flood", "down").await;
    assert_eq!(accepted.status(), 202);
    drop(held);
}

/// A child process killed when dropped, so a failing test leaves none.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// None (with the reason printed) when this user cannot mount.
    fn mount(path: PathBuf, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(&path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        if !output.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&output.stderr)
            );
            return None;
        }
        Some(SmallDisk { path })
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_while_the_disk_is_full_and_ready_again_once_freed() {
    let dir = temp_dir();
    let Some(disk) = SmallDisk::mount(dir.path().join("disk"), "2m") else {
        return;
    };
    let config = write_config(dir.path(), "", UNREACHABLE_DESTINATION);
    let (database, log, addr) = (
        disk.path.join("herald.db"),
        dir.path().join("herald.log"),
        free_addr(),
    );
    let mut server = spawn_server(&config, &database, addr, &log);
    wait_healthy(addr).await;
    let readyz = |addr: SocketAddr| async move {
        let response = herald::connector::http_client_builder()
            .build()
            .unwrap()
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(readyz(addr).await.0, 200);

    let filler = disk.fill();
    // The WAL may still have room for a few commits; the disk is full once
    // one is refused.
    let mut refused = false;
    for i in 0..10_000 {
        let response = post_broadcast(addr, &format!("INC-{i} disk full"), "down").await;
        if response.status() == 503 {
            refused = true;
            break;
        }
        assert_eq!(response.status(), 202);
    }
    assert!(refused, "no POST was refused on a full disk");
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not_ready") && body.contains("full"),
        "{body}"
    );

    std::fs::remove_file(filler).unwrap();
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 200, "{body}");
    let accepted = post_broadcast(addr, "INC-after disk freed", "down").await;
    assert_eq!(accepted.status(), 202);

    terminate(&server);
    assert!(wait_exit(&mut server, &log).await.success());
    drop(server);
}
