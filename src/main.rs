//! The `hyperfill` binary: logging, argument parsing, signals, exit code.

use std::process::ExitCode;

use clap::Parser;
use hyperfill::cli::Cli;
use hyperfill::Shutdown;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(hyperfill::error::exit::INTERNAL);
        }
    };
    let code = runtime.block_on(async {
        let shutdown = Shutdown::default();
        tokio::spawn(watch_signals(shutdown.clone()));
        match hyperfill::run(cli, shutdown).await {
            Ok(()) => hyperfill::error::exit::OK,
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        }
    });
    // Do not wait for in-flight futures of a hard shutdown: dropping the
    // runtime closes their connections, and the servers roll back.
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// First ctrl-c (or SIGTERM): finish in-flight chunks and stop. Second: stop at once.
async fn watch_signals(shutdown: Shutdown) {
    let mut first = true;
    loop {
        if !next_signal().await {
            return;
        }
        if first {
            eprintln!("Shutting down: waiting for in-flight chunks to finish (press ctrl-c again to abort them)...");
            shutdown.graceful.cancel();
            first = false;
        } else {
            eprintln!("Aborting in-flight chunks: their transactions roll back.");
            shutdown.hard.cancel();
            return;
        }
    }
}

#[cfg(unix)]
async fn next_signal() -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return false;
    };
    tokio::select! {
        _ = int.recv() => true,
        _ = term.recv() => true,
    }
}

#[cfg(not(unix))]
async fn next_signal() -> bool {
    tokio::signal::ctrl_c().await.is_ok()
}
