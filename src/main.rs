//! The binary's edge: parse flags, set up logging, run a subcommand, turn signals
//! into the shutdown signal, and report errors with context.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use waitroom_worker::settings::{Cli, Command, Settings, redact_url};
use waitroom_worker::shutdown;
use waitroom_worker::worker::Worker;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let settings = args.settings().context("invalid setting")?;
            run(settings).await
        }
        Command::Enqueue(args) => {
            let keys = args.redis.keys().context("invalid setting")?;
            if args.event.is_empty() || args.event.contains(['{', '}']) {
                anyhow::bail!("invalid setting: --event must be non-empty, without braces");
            }
            let mut conn =
                waitroom_worker::store::connect(&args.redis.redis_url, args.redis.redis_timeout)
                    .await
                    .with_context(|| {
                        format!("connecting to {}", redact_url(&args.redis.redis_url))
                    })?;
            let ids = waitroom_worker::enqueue::enqueue(
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
                ids.len(),
                args.event,
                ids.first().map(String::as_str).unwrap_or("-"),
                ids.last().map(String::as_str).unwrap_or("-")
            );
            Ok(())
        }
        Command::Demo(args) => {
            waitroom_worker::demo::run(args).await.context("demo")?;
            Ok(())
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let (trigger, mut listener) = shutdown::channel();
    let grace = settings.shutdown_timeout;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(timeout = ?grace, "shutdown signal received, finishing the cycle in flight");
        trigger.trigger();
        tokio::time::sleep(grace).await;
        tracing::warn!(
            "shutdown timeout elapsed; exiting, unacknowledged entries stay in the outbox"
        );
        std::process::exit(0);
    });
    let Some(worker) = Worker::start(settings, &mut listener)
        .await
        .context("starting the worker")?
    else {
        return Ok(());
    };
    worker.run(listener).await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
