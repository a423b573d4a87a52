#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::args::Cli;
use herald::client::ClientError;

mod cli;

/// mimalloc rather than the C library's allocator: a profile of a burst
/// showed a fifth of the server's CPU in glibc's malloc and free (arena locks
/// taken when one thread frees what another allocated, as the store's writer
/// and the async workers do all the time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {error}"
            );
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            let mut stderr = std::io::stderr();
            let _ = writeln!(stderr, "error: {}", describe(&error));
            if let Some(ClientError::Api { status: 401, .. }) = error.downcast_ref() {
                let _ = writeln!(stderr, "hint: this herald requires a token: set HERALD_TOKEN or pass --token (`herald token` makes one)");
            }
            ExitCode::from(2)
        }
    };
    herald::logging::flush();
    code
}

/// The error and its causes on one line, each said once: a cause whose
/// text its outer error already includes is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}
