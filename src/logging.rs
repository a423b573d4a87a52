//! Logging that can never fail a request, block the engine or panic.
//!
//! An event is formatted on the thread that logs it (text or JSON lines)
//! and handed to a bounded queue with `try_send`; one dedicated thread
//! writes the queue to stderr. A full queue (a stalled pipe, a slow
//! terminal) or a failed write (a closed pipe, a full disk) drops the line
//! and counts it in [`LOG_LINES_DROPPED`] (`herald_log_lines_dropped_total`).
//! Nothing here panics on a write, and no caller ever waits for stderr.
//!
//! Warnings and errors repeated from one place are kept to
//! [`REPEATS_LOGGED_PER_INTERVAL`] lines per [`REPEAT_INTERVAL_MS`]; the
//! rest are counted and summed up in one line once the interval is over:
//! "... (repeated 2,931 times in the last 10 s)".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::domain::format_rfc3339_ms;

/// Lines waiting for the writer thread; beyond this, lines are dropped.
pub const LOG_QUEUE_LINES_MAX: usize = 8_192;
/// The window in which a warning or error from one place is rate limited.
pub const REPEAT_INTERVAL_MS: u64 = 10_000;
/// Lines one place may log per window before the rest are only counted.
pub const REPEATS_LOGGED_PER_INTERVAL: u64 = 5;
/// How long `flush` waits at exit for the queue to be written.
pub const LOG_FLUSH_AT_EXIT_MS: u64 = 2_000;

/// Log lines dropped since start: the queue was full or the write failed.
pub static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines queued and not yet written or dropped, for `flush`.
static LOG_LINES_PENDING: AtomicU64 = AtomicU64::new(0);
/// The installed logger, for `flush`.
static LOGGER: OnceLock<LineLayer> = OnceLock::new();

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-12-02T03:58:20.123Z  INFO herald::server: herald serving addr=...`
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and
    /// every field of the event at the top level.
    Json,
}

impl LogFormat {
    pub fn parse(text: &str) -> Option<LogFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Whether text lines get ANSI colours: only on a terminal, and never
/// when `NO_COLOR` is set to anything (https://no-color.org).
pub fn colour_wanted(no_color: Option<&str>) -> bool {
    use std::io::IsTerminal;
    no_color.is_none_or(str::is_empty) && std::io::stderr().is_terminal()
}

/// Installs the process's logger: `filter` is `RUST_LOG`'s syntax
/// (`RUST_LOG` itself wins when set). Call once, at start.
pub fn init(default_filter: &str, format: LogFormat, colour: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let (sender, receiver) = std::sync::mpsc::sync_channel(LOG_QUEUE_LINES_MAX);
    let shared = Arc::new(Shared {
        format,
        colour,
        repeats: Mutex::new(HashMap::new()),
    });
    let writer_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("herald-log".into())
        .spawn(move || write_lines(receiver, &writer_shared, &mut std::io::stderr()));
    if spawned.is_err() {
        // No thread, no logs: herald still works.
        return;
    }
    let layer = LineLayer { sender, shared };
    let _ = LOGGER.set(LineLayer {
        sender: layer.sender.clone(),
        shared: layer.shared.clone(),
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// Sums up the repeats counted so far, then waits (at most
/// `LOG_FLUSH_AT_EXIT_MS`) for queued lines to be written, so the last
/// lines before an exit are not lost.
pub fn flush() {
    if let Some(logger) = LOGGER.get() {
        let now = Instant::now();
        let summaries: Vec<Record> = match logger.shared.repeats.lock() {
            Ok(mut repeats) => repeats
                .values_mut()
                .filter(|entry| entry.suppressed > 0)
                .filter_map(|entry| entry.close_window(now))
                .collect(),
            Err(_) => Vec::new(),
        };
        for record in summaries {
            logger.enqueue(format_record(
                &record,
                logger.shared.format,
                logger.shared.colour,
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_millis(LOG_FLUSH_AT_EXIT_MS);
    while LOG_LINES_PENDING.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Shared {
    format: LogFormat,
    colour: bool,
    /// Per call site of a warning or error: its current window.
    repeats: Mutex<HashMap<tracing::callsite::Identifier, Repeats>>,
}

struct Repeats {
    window_started: Instant,
    logged: u64,
    suppressed: u64,
    /// The last suppressed event, summed up when the window closes.
    last: Option<Record>,
}

/// One event, ready to format.
#[derive(Clone)]
struct Record {
    at_ms: i64,
    level: Level,
    target: String,
    message: String,
    fields: Vec<(&'static str, serde_json::Value)>,
}

struct LineLayer {
    sender: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let record = Record {
            at_ms: crate::clock::now_ms(),
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            message: visitor.message,
            fields: visitor.fields,
        };
        if *metadata.level() <= Level::WARN {
            let mut summary = None;
            {
                let Ok(mut repeats) = self.shared.repeats.lock() else {
                    return;
                };
                let now = Instant::now();
                let entry = repeats
                    .entry(metadata.callsite())
                    .or_insert_with(|| Repeats {
                        window_started: now,
                        logged: 0,
                        suppressed: 0,
                        last: None,
                    });
                if now.duration_since(entry.window_started)
                    >= Duration::from_millis(REPEAT_INTERVAL_MS)
                {
                    summary = entry
                        .close_window(now)
                        .map(|r| format_record(&r, self.shared.format, self.shared.colour));
                }
                if entry.logged >= REPEATS_LOGGED_PER_INTERVAL {
                    entry.suppressed += 1;
                    entry.last = Some(record);
                    drop(repeats);
                    if let Some(summary) = summary {
                        self.enqueue(summary);
                    }
                    return;
                }
                entry.logged += 1;
            }
            if let Some(summary) = summary {
                self.enqueue(summary);
            }
        }
        self.enqueue(format_record(
            &record,
            self.shared.format,
            self.shared.colour,
        ));
    }
}

impl Repeats {
    /// Starts a new window; returns the event summing up the old one, if
    /// it had suppressed events.
    fn close_window(&mut self, now: Instant) -> Option<Record> {
        let elapsed_secs = now.duration_since(self.window_started).as_secs().max(1);
        let summary = self.last.take().map(|mut last| {
            let _ = write!(
                last.message,
                " (repeated {} times in the last {elapsed_secs} s)",
                group_thousands(self.suppressed)
            );
            last.fields.push(("repeated", self.suppressed.into()));
            last.at_ms = crate::clock::now_ms();
            last
        });
        self.window_started = now;
        self.logged = 0;
        self.suppressed = 0;
        summary
    }
}

impl LineLayer {
    fn enqueue(&self, line: Vec<u8>) {
        LOG_LINES_PENDING.fetch_add(1, Ordering::AcqRel);
        match self.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                LOG_LINES_PENDING.fetch_sub(1, Ordering::AcqRel);
                LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread: writes each line, and once per interval the
/// summaries of windows that closed without a later event.
fn write_lines(receiver: Receiver<Vec<u8>>, shared: &Shared, out: &mut dyn std::io::Write) {
    let interval = Duration::from_millis(REPEAT_INTERVAL_MS);
    let mut reported_dropped = 0;
    loop {
        match receiver.recv_timeout(interval / 2) {
            Ok(line) => {
                if out.write_all(&line).is_err() {
                    LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                LOG_LINES_PENDING.fetch_sub(1, Ordering::AcqRel);
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                let mut summaries = Vec::new();
                if let Ok(mut repeats) = shared.repeats.lock() {
                    for entry in repeats.values_mut() {
                        if entry.suppressed > 0
                            && now.duration_since(entry.window_started) >= interval
                        {
                            summaries.extend(
                                entry
                                    .close_window(now)
                                    .map(|r| format_record(&r, shared.format, shared.colour)),
                            );
                        }
                    }
                }
                let dropped = LOG_LINES_DROPPED.load(Ordering::Relaxed);
                if dropped > reported_dropped {
                    let record = Record {
                        at_ms: crate::clock::now_ms(),
                        level: Level::WARN,
                        target: module_path!().to_owned(),
                        message: format!(
                            "{} log lines were dropped (the log queue was full or a write failed)",
                            group_thousands(dropped - reported_dropped)
                        ),
                        fields: vec![("dropped_total", dropped.into())],
                    };
                    summaries.push(format_record(&record, shared.format, shared.colour));
                }
                for line in summaries {
                    if out.write_all(&line).is_ok() {
                        reported_dropped = LOG_LINES_DROPPED.load(Ordering::Relaxed);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Collects an event's message and fields.
#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Vec<(&'static str, serde_json::Value)>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name(), value.into()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), text.into()));
        }
    }
}

/// One line, newline included.
fn format_record(record: &Record, format: LogFormat, colour: bool) -> Vec<u8> {
    match format {
        LogFormat::Json => {
            // Written by hand to keep the order: timestamp, level, target,
            // message, then the event's fields as they were given.
            let mut line = String::with_capacity(128);
            let mut put = |name: &str, value: &serde_json::Value| {
                line.push(if line.is_empty() { '{' } else { ',' });
                line.push_str(&serde_json::Value::from(name).to_string());
                line.push(':');
                line.push_str(&value.to_string());
            };
            put("timestamp", &format_rfc3339_ms(record.at_ms).into());
            put("level", &record.level.as_str().into());
            put("target", &record.target.as_str().into());
            put("message", &record.message.as_str().into());
            for (name, value) in &record.fields {
                put(name, value);
            }
            line.push_str("}\n");
            line.into_bytes()
        }
        LogFormat::Text => {
            let mut line = format_rfc3339_ms(record.at_ms);
            let level = record.level.as_str();
            if colour {
                let code = match record.level {
                    Level::ERROR => "31",
                    Level::WARN => "33",
                    Level::INFO => "32",
                    Level::DEBUG => "34",
                    Level::TRACE => "35",
                };
                let _ = write!(line, " \x1b[{code}m{level:>5}\x1b[0m ");
            } else {
                let _ = write!(line, " {level:>5} ");
            }
            let _ = write!(line, "{}: {}", record.target, record.message);
            for (name, value) in &record.fields {
                match value {
                    // Quoted, as tracing's own formatter does, so a value
                    // with spaces stays one value.
                    serde_json::Value::String(text)
                        if text.contains([' ', '"', '=']) || text.is_empty() =>
                    {
                        let _ = write!(line, " {name}={text:?}");
                    }
                    serde_json::Value::String(text) => {
                        let _ = write!(line, " {name}={text}");
                    }
                    other => {
                        let _ = write!(line, " {name}={other}");
                    }
                }
            }
            // One event, one line: a newline inside a value would let
            // anyone who controls it forge log lines.
            let mut line = line.replace(['\n', '\r'], " ");
            line.push('\n');
            line.into_bytes()
        }
    }
}

/// `2931` as `2,931`.
fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> Record {
        Record {
            at_ms: 1_764_648_000_123,
            level: Level::ERROR,
            target: "herald::api".into(),
            message: message.into(),
            fields: vec![
                ("broadcast", "01JABC".into()),
                ("error", "disk full: no space".into()),
                ("attempt", 3u64.into()),
            ],
        }
    }

    #[test]
    fn text_lines_are_one_line_without_colour_unless_asked() {
        let line =
            String::from_utf8(format_record(&record("a\nforged"), LogFormat::Text, false)).unwrap();
        assert_eq!(
            line,
            "2025-12-02T04:00:00.123Z ERROR herald::api: a forged broadcast=01JABC error=\"disk full: no space\" attempt=3\n"
        );
        let coloured =
            String::from_utf8(format_record(&record("x"), LogFormat::Text, true)).unwrap();
        assert!(coloured.contains("\x1b[31mERROR\x1b[0m"), "{coloured}");
    }

    #[test]
    fn json_lines_carry_every_field() {
        let line = format_record(&record("cannot"), LogFormat::Json, true);
        assert_eq!(line.last(), Some(&b'\n'));
        assert!(
            line.starts_with(b"{\"timestamp\":\"2025-12-02T04:00:00.123Z\",\"level\":\"ERROR\"")
        );
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["level"], "ERROR");
        assert_eq!(value["message"], "cannot");
        assert_eq!(value["broadcast"], "01JABC");
        assert_eq!(value["attempt"], 3);
        assert_eq!(value["timestamp"], "2025-12-02T04:00:00.123Z");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(2_931), "2,931");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn a_closed_window_sums_up_what_it_suppressed() {
        let start = Instant::now();
        let mut repeats = Repeats {
            window_started: start,
            logged: REPEATS_LOGGED_PER_INTERVAL,
            suppressed: 2_931,
            last: Some(record("store error")),
        };
        let summary = repeats
            .close_window(start + Duration::from_millis(REPEAT_INTERVAL_MS))
            .unwrap();
        assert_eq!(
            summary.message,
            "store error (repeated 2,931 times in the last 10 s)"
        );
        assert_eq!((repeats.logged, repeats.suppressed), (0, 0));
        assert!(repeats.close_window(start).is_none());
    }

    /// A writer that fails every write, as a closed pipe or a full disk.
    struct Broken;

    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn failed_writes_are_counted_not_fatal() {
        let (sender, receiver) = std::sync::mpsc::sync_channel(4);
        let shared = Shared {
            format: LogFormat::Text,
            colour: false,
            repeats: Mutex::new(HashMap::new()),
        };
        let before = LOG_LINES_DROPPED.load(Ordering::Relaxed);
        LOG_LINES_PENDING.fetch_add(2, Ordering::AcqRel);
        sender.send(b"one\n".to_vec()).unwrap();
        sender.send(b"two\n".to_vec()).unwrap();
        drop(sender);
        write_lines(receiver, &shared, &mut Broken);
        assert!(LOG_LINES_DROPPED.load(Ordering::Relaxed) >= before + 2);
    }
}
