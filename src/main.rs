//! The `hyperfill` binary: logging, argument parsing, signals, exit code.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use hyperfill::cli::{Cli, Command, LogFormat, Output};
use hyperfill::error::exit;
use hyperfill::{ui, Shutdown};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions(a) => {
            clap_complete::generate(
                a.shell,
                &mut Cli::command(),
                "hyperfill",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the man page: {e}");
                    ExitCode::from(exit::INTERNAL)
                }
            };
        }
        _ => {}
    }
    let json = cli.output == Output::Json;
    ui::init(ui::Mode {
        json,
        progress: !cli.no_progress,
    });
    init_logging(cli.log_format);
    let name = command_name(&cli.command);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = runtime.block_on(async {
        let shutdown = Shutdown::default();
        tokio::spawn(watch_signals(shutdown.clone()));
        match hyperfill::run(cli, shutdown).await {
            Ok(result) => {
                if json {
                    ui::json(&serde_json::json!({
                        "command": name, "ok": true, "exit_code": 0, "result": result
                    }));
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                if json {
                    let result = e.report().cloned().unwrap_or_default();
                    ui::json(&serde_json::json!({
                        "command": name, "ok": false, "exit_code": e.exit_code(),
                        "error": e.to_string(), "result": result
                    }));
                }
                e.exit_code()
            }
        }
    });
    // Do not wait for in-flight futures of a hard shutdown: dropping the
    // runtime closes their connections, and the servers roll back.
    runtime.shutdown_background();
    ExitCode::from(code)
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Stage(_) => "stage",
        Command::Copy(_) => "copy",
        Command::Verify(_) => "verify",
        Command::RefreshCaggs(_) => "refresh-caggs",
        Command::Status(_) => "status",
        Command::Check(_) => "check",
        Command::Clean(_) => "clean",
        Command::Completions(_) => "completions",
        Command::Man => "man",
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
