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

    // 8 MiB stacks as the main thread's: a worker's future nests the copy,
    // the COPY pipe and the stuck-server watch, and unoptimized builds keep
    // them large.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    // copy and verify finish their in-flight chunks at the first signal;
    // every other command stops at once.
    let finishes_in_flight = matches!(cli.command, Command::Copy(_) | Command::Verify(_));
    let code = runtime.block_on(async {
        let shutdown = Shutdown::default();
        // Listening before anything else runs, for the whole run: a signal
        // that arrives while no listener exists is lost (a second press
        // 200 ms after the first, on a busy machine, once was).
        tokio::spawn(watch_signals(
            Signals::new(),
            shutdown.clone(),
            finishes_in_flight,
        ));
        let run = hyperfill::run(cli, shutdown.clone());
        tokio::pin!(run);
        let finished = tokio::select! {
            biased;
            r = &mut run => Some(r),
            _ = stopped(&shutdown, finishes_in_flight) => None,
        };
        // Stopped by a signal: give the command a moment to print its own
        // summary, then leave whatever it still waits on (a silent server).
        let finished = match finished {
            Some(r) => Some(r),
            None if finishes_in_flight => tokio::time::timeout(GRACE, &mut run).await.ok(),
            None => None,
        };
        let result = finished.unwrap_or_else(|| {
            ui::clear_progress();
            Err(hyperfill::error::Error::Interrupted {
                abandoned: shutdown.hard.is_cancelled(),
            })
        });
        match result {
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

/// How long a stopped `copy` or `verify` may take to print its summary.
const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Resolves when the process should stop whatever the command is doing:
/// at the second signal; at the first for commands without in-flight
/// chunks, or once no worker has a chunk in flight (the command may then
/// be waiting on a server that does not answer).
async fn stopped(shutdown: &Shutdown, finishes_in_flight: bool) {
    shutdown.graceful.cancelled().await;
    if !finishes_in_flight {
        return;
    }
    while shutdown.in_flight() > 0 {
        tokio::select! {
            _ = shutdown.hard.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
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

/// Logs go to stderr, coloured only on a terminal (and not with NO_COLOR),
/// never in `--log-format json`.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::stderr().is_terminal()
        && !std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.with_ansi(false).json().init(),
    }
}

/// First ctrl-c (or SIGTERM): `copy` and `verify` finish their in-flight
/// chunks and stop; other commands stop at once. Second: stop at once.
async fn watch_signals(signals: Option<Signals>, shutdown: Shutdown, finishes_in_flight: bool) {
    let Some(mut signals) = signals else {
        return;
    };
    let mut first = true;
    loop {
        if !signals.next().await {
            return;
        }
        if first {
            let n = shutdown.in_flight();
            if finishes_in_flight && n > 0 {
                ui::notice(&format!(
                    "Stopping: {n} in-flight chunk(s) are being finished; press ctrl-c again to abandon them."
                ));
            } else {
                ui::notice("Stopping.");
            }
            shutdown.graceful.cancel();
            first = false;
        } else {
            let n = shutdown.in_flight();
            if n > 0 {
                ui::notice(&format!(
                    "Abandoning the {n} in-flight chunk(s): their transactions roll back."
                ));
            } else {
                ui::notice("Stopping now.");
            }
            shutdown.hard.cancel();
            return;
        }
    }
}

/// SIGINT and SIGTERM, listened to for the whole run.
#[cfg(unix)]
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
        })
    }

    /// The next signal; false when none can come any more.
    async fn next(&mut self) -> bool {
        tokio::select! {
            s = self.int.recv() => s.is_some(),
            s = self.term.recv() => s.is_some(),
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> Option<Signals> {
        Some(Signals)
    }

    async fn next(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
