//! The command line, the top layer: parse flags, set up logging, run a subcommand,
//! turn signals into the shutdown signal, and report errors with context.
//!
//! It lives in the binary, not in the library: the library knows no flags. The
//! flags become the library's typed settings through its builders ([`args`]).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use waitroom_worker::error_chain::Chain;
use waitroom_worker::probe::ProbeError;
use waitroom_worker::{Config, Worker, log_limit, shutdown};

mod args;

use args::{Cli, Command, LogFormat, RedisArgs};

/// An environment variable set to the empty string means unset, for every setting
/// (`REDIS_CLUSTER_URLS=` in a compose file must not select a cluster of no nodes).
fn drop_empty_settings_from_env() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(k, v)| {
            v.is_empty()
                && k.to_str().is_some_and(|k| {
                    ["QUEUE_", "REDIS_", "KAFKA_"]
                        .iter()
                        .any(|p| k.starts_with(p))
                })
        })
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        // SAFETY: called first thing in main, before the runtime or any other thread
        // exists, so nothing can read the environment concurrently.
        unsafe { std::env::remove_var(k) };
    }
}

/// Run the command line; the process's exit code.
pub(crate) fn main() -> ExitCode {
    drop_empty_settings_from_env();
    let cli = Cli::parse();
    // The demo draws its own progress; the worker's per-user log lines would drown it,
    // so it logs warnings only unless asked (--verbose), whatever RUST_LOG says.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok());
    let filter = match (&cli.command, from_env) {
        #[cfg(feature = "tools")]
        (Command::Demo(d), _) if !d.verbose => EnvFilter::new("warn"),
        #[cfg(feature = "tools")]
        (Command::Bench(_), None) => EnvFilter::new("error"),
        (_, Some(f)) => f,
        (_, None) => EnvFilter::new("info"),
    };
    let format = cli.log_format;
    init_logging(format, filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let e = anyhow::Error::new(e).context("cannot start the async runtime");
            report_failure(format, &e);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Counts of repeated warnings still owed are written before the process ends.
    log_limit::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // An answer that is not a failure to run (claim's too_late): already printed.
        Err(e) if e.downcast_ref::<Answered>().is_some() => {
            ExitCode::from(e.downcast_ref::<Answered>().map_or(1, |a| a.0))
        }
        Err(e) => {
            report_failure(format, &e);
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr: text for people, coloured only when stderr is a terminal
/// and NO_COLOR (https://no-color.org) is unset, so a pipe or a file gets no escape
/// codes; or one JSON object per line, the event's fields as keys beside
/// `timestamp`, `level`, `target` and `message`, and the span it happened in (the
/// event a pass was working on: `"span": {"name": "event", "event_id": ...}`).
fn init_logging(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// The error that ends the process, each cause once: `error: context: cause` on
/// stderr, or, in the JSON format, one more JSON line at level ERROR.
fn report_failure(format: LogFormat, e: &anyhow::Error) {
    let chain = Chain(e.as_ref());
    match format {
        LogFormat::Text => eprintln!("error: {chain}"),
        // The target the line always had (the binary's root), whatever module writes it.
        LogFormat::Json => tracing::error!(target: "waitroom_worker", "{chain}"),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = args.config().context("invalid setting")?;
            run(config).await
        }
        #[cfg(feature = "tools")]
        Command::Enqueue(args) => {
            let keys = args.keys().context("invalid setting")?;
            let mut conn = connect(&args.redis).await?;
            let done = waitroom_worker::enqueue::enqueue(
                &mut conn,
                &keys,
                &args.event,
                args.users,
                args.session_ttl,
            )
            .await
            .context("queueing users")?;
            println!(
                "queued {} users for {} (first {}, last {})",
                done.count,
                args.event,
                done.first.as_deref().unwrap_or("-"),
                done.last.as_deref().unwrap_or("-")
            );
            Ok(())
        }
        Command::Status(args) => {
            let keys = args.keys().context("invalid setting")?;
            let mut conn = connect(&args.redis).await?;
            let s = waitroom_worker::report::status(
                &mut conn,
                &keys,
                &args.events,
                args.max_concurrent,
                args.max_unpublished_age,
            )
            .await
            .context("reading status")?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).context("encoding JSON")?
                );
            } else {
                print!("{}", waitroom_worker::report::render_status(&s));
            }
            Ok(())
        }
        Command::Inspect(args) => {
            let keys = args.redis.keys().context("invalid setting")?;
            if keys.layout() == waitroom_worker::KeyLayout::Cluster && args.event.is_none() {
                anyhow::bail!("invalid setting: --event is required with --key-layout cluster");
            }
            let mut conn = connect(&args.redis).await?;
            let mut v = waitroom_worker::report::inspect(
                &mut conn,
                &keys,
                &args.session,
                args.event.as_deref(),
            )
            .await
            .context("reading the session")?;
            if !args.show_token {
                v.shorten_token();
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).context("encoding JSON")?
                );
            } else {
                print!("{}", waitroom_worker::report::render_session(&v));
            }
            Ok(())
        }
        Command::Claim(args) => {
            let keys = args.redis.keys().context("invalid setting")?;
            let event = waitroom_worker::EventId::parse(&args.event)
                .map_err(|e| anyhow::anyhow!("invalid --event: {e}"))?;
            if args.session.is_empty() {
                anyhow::bail!("invalid setting: SESSION must not be empty");
            }
            let mut conn = connect(&args.redis).await?;
            let scripts = waitroom_worker::scripts::Scripts::new();
            let answer = waitroom_worker::scripts::claim::claim(
                &scripts.claim,
                &mut conn,
                &keys,
                event.as_str(),
                &args.session,
            )
            .await
            .context("claiming")?;
            println!("{}", answer.as_str());
            use waitroom_worker::scripts::claim::Claimed;
            match answer {
                Claimed::Claimed | Claimed::AlreadyClaimed => Ok(()),
                Claimed::TooLate => Err(Answered(3).into()),
                Claimed::NotAdmitted => Err(Answered(4).into()),
            }
        }
        #[cfg(feature = "tools")]
        Command::Bench(args) => {
            let json = args.json;
            // SIGINT/SIGTERM drop the bench where it is: its servers go with it (their
            // Drop), and the process exits 130/143 without a report.
            let mut stop = Stop::listen().context("bench: listening for SIGINT and SIGTERM")?;
            if args.sharing {
                use waitroom_worker::bench::replicas;
                let report = tokio::select! {
                    r = replicas::run(args.sharing_options()) => r.context("bench --sharing")?,
                    sig = stop.next() => {
                        eprintln!("bench: {}: stopped, no report", sig.name());
                        return Err(Answered(sig.exit_code()).into());
                    }
                };
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).context("encoding JSON")?
                    );
                } else {
                    print!("{}", replicas::render(&report));
                }
                return Ok(());
            }
            let options = args.options();
            let run = async {
                if options.only_admission {
                    let r = waitroom_worker::bench::run_admission_only(options).await?;
                    return Ok(if json {
                        serde_json::to_string_pretty(&r).map(|j| j + "\n")
                    } else {
                        Ok(waitroom_worker::bench::render_admission_only(&r))
                    });
                }
                if options.only_cluster {
                    let r = waitroom_worker::bench::run_cluster_only(options).await?;
                    return Ok(if json {
                        serde_json::to_string_pretty(&r).map(|j| j + "\n")
                    } else {
                        Ok(waitroom_worker::bench::render_cluster_only(&r))
                    });
                }
                let r = waitroom_worker::bench::run(options).await?;
                Ok::<_, waitroom_worker::bench::BenchError>(if json {
                    serde_json::to_string_pretty(&r).map(|j| j + "\n")
                } else {
                    Ok(waitroom_worker::bench::render(&r))
                })
            };
            let report = tokio::select! {
                r = run => r.context("bench")?.context("encoding JSON")?,
                sig = stop.next() => {
                    eprintln!("bench: {}: stopped, no report", sig.name());
                    return Err(Answered(sig.exit_code()).into());
                }
            };
            print!("{report}");
            Ok(())
        }
        #[cfg(feature = "tools")]
        Command::Demo(args) => {
            let options = args.options().context("demo")?;
            // Listening before anything starts: a signal while the servers start is
            // not lost. The first stops the demo, which prints its summary so far and
            // returns, so its servers are stopped; the process then exits 130/143.
            let stop = Stop::listen().context("demo: listening for SIGINT and SIGTERM")?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(stop.first_then_exit(tx));
            let interrupt = async move {
                match rx.await {
                    Ok(sig) => sig.name().to_owned(),
                    Err(_) => std::future::pending().await,
                }
            };
            match waitroom_worker::demo::run_until(options, interrupt).await {
                Ok(summary) => match summary.interrupted.as_deref() {
                    Some(sig) => Err(Answered(StopSignal::from_name(sig).exit_code()).into()),
                    None => Ok(()),
                },
                Err(waitroom_worker::demo::DemoError::Interrupted(sig)) => {
                    Err(Answered(StopSignal::from_name(&sig).exit_code()).into())
                }
                Err(e) => Err(anyhow::Error::new(e).context("demo")),
            }
        }
        Command::Health(args) => {
            let line = waitroom_worker::probe::check(&args.url, args.timeout)
                .await
                .map_err(|e| match e {
                    ProbeError::BadUrl { url, reason } => {
                        anyhow::anyhow!("invalid --url (QUEUE_HEALTH_URL) {url:?}: {reason}")
                    }
                    e => e.into(),
                })?;
            println!("{line}");
            Ok(())
        }
        #[cfg(not(feature = "tools"))]
        Command::Enqueue(_) => Err(not_built("enqueue")),
        #[cfg(not(feature = "tools"))]
        Command::Bench(_) => Err(not_built("bench")),
        #[cfg(not(feature = "tools"))]
        Command::Demo(_) => Err(not_built("demo")),
    }
}

/// A command's answer that maps to an exit code of its own (printed already, not
/// reported as a failure).
#[derive(Debug)]
struct Answered(u8);

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Answered {}

/// A tool asked of a binary built without the `tools` feature (the production
/// image): what is missing, and where it is.
#[cfg(not(feature = "tools"))]
fn not_built(tool: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{tool}` is not in this binary: it was built without the `tools` feature (as the \
         production image is), so it carries only the worker; bench, demo and enqueue are in \
         the default build (cargo build --release)"
    )
}

async fn connect(r: &RedisArgs) -> anyhow::Result<waitroom_worker::store::RedisConn> {
    let endpoint = r.endpoint().context("invalid setting")?;
    waitroom_worker::store::connect(&endpoint, r.redis_timeout)
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let (trigger, mut listener) = shutdown::channel();
    let grace = config.worker.shutdown_timeout;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(timeout = ?grace, "shutdown signal received, finishing the cycle in flight");
        trigger.trigger();
        tokio::time::sleep(grace).await;
        tracing::warn!(
            "shutdown timeout elapsed; exiting, unacknowledged entries stay in the outbox"
        );
        log_limit::flush();
        std::process::exit(0);
    });
    let Some(worker) = Worker::start(config, &mut listener)
        .await
        .context("starting the worker")?
    else {
        return Ok(());
    };
    worker.run(listener).await;
    Ok(())
}

async fn wait_for_signal() {
    match Stop::listen() {
        Ok(mut stop) => {
            stop.next().await;
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A signal that asks a command to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    Int,
    Term,
}

// Without the tools only `run` listens, and it needs no names or exit codes.
#[cfg_attr(not(feature = "tools"), allow(dead_code))]
impl StopSignal {
    fn name(self) -> &'static str {
        match self {
            StopSignal::Int => "SIGINT",
            StopSignal::Term => "SIGTERM",
        }
    }

    fn from_name(name: &str) -> Self {
        if name == "SIGTERM" {
            StopSignal::Term
        } else {
            StopSignal::Int
        }
    }

    /// The shell's code for a process ended by the signal: 128 + its number.
    fn exit_code(self) -> u8 {
        match self {
            StopSignal::Int => 130,
            StopSignal::Term => 143,
        }
    }
}

/// SIGINT and SIGTERM, caught from [`Stop::listen`] on. Catching SIGINT also undoes
/// an inherited "ignore" (a shell starts a background job, `demo &`, with SIGINT
/// ignored): `kill -INT` stops the demo however it was started.
struct Stop {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> std::io::Result<Stop> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Stop {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Stop {})
        }
    }

    /// The next signal.
    async fn next(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => StopSignal::Int,
                _ = self.term.recv() => StopSignal::Term,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Int
        }
    }

    /// Hands the first signal to `first`; a second one ends the process at once (a
    /// stop that hangs must not need SIGKILL). That skips `Drop`: on Linux the
    /// servers die with the process all the same (their parent-death signal, see
    /// src/tools/redis_server.rs).
    #[cfg(feature = "tools")]
    async fn first_then_exit(mut self, first: tokio::sync::oneshot::Sender<StopSignal>) {
        let sig = self.next().await;
        let _ = first.send(sig);
        let again = self.next().await;
        eprintln!("{}: a second signal: exiting now", again.name());
        log_limit::flush();
        std::process::exit(i32::from(again.exit_code()));
    }
}
