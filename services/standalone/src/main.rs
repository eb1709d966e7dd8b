//! `herald`: the standalone node. Reads its configuration, starts telemetry, builds the app,
//! serves until SIGTERM or SIGINT, then drains. `herald token ...` mints a token instead;
//! `herald publish ...` and `herald tail ...` use the API of a running server.

use std::process::ExitCode;

use anyhow::Context;
use herald_standalone::{App, Config, Options};

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args_os()
        .nth(1)
        .and_then(|a| a.into_string().ok())
        .as_deref()
    {
        Some("token") => return token(),
        Some("publish") => {
            return client(|a: herald_standalone::client::PublishArgs| a.run()).await;
        }
        Some("tail") => return client(|a: herald_standalone::client::TailArgs| a.run()).await,
        _ => {}
    }
    let config =
        Config::resolve(herald_config::parse::<Options>()).unwrap_or_else(|e| e.exit("herald"));
    let (log, format, traces) = (config.log.clone(), config.log_format, config.traces);
    herald_runtime::serve::main("herald", &log, format, traces, run(config)).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let signals = herald_runtime::signal::Signals::install()?;
    let (listen, admin_listen) = (config.listen, config.admin_listen);
    let scheme = config.serve.scheme();
    config.serve.check_tls()?;
    let app = App::build(config).await?;
    let listener =
        herald_runtime::serve::bind(listen).with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let admin = match admin_listen {
        Some(at) => Some(
            herald_runtime::serve::bind(at)
                .with_context(|| format!("binding the admin listener {at}"))?,
        ),
        None => None,
    };
    tracing::info!(%addr, "listening");
    // Stable lines on stdout for people and scripts (tests read the port from the first).
    println!("herald listening on {scheme}://{addr}");
    if let Some(admin) = &admin {
        let at = admin.local_addr().context("reading the admin address")?;
        tracing::info!(%at, "admin listening");
        println!("herald admin listening on http://{at}");
    }
    app.run(listener, admin, async {
        let signal = signals.recv().await;
        tracing::info!(signal, "shutdown requested");
    })
    .await
}

/// `herald token`: prints a token signed with the HMAC key file.
fn token() -> ExitCode {
    use clap::Parser;
    let args = herald_auth::TokenArgs::parse_from(std::env::args_os().skip(1));
    match args.mint() {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `herald publish` / `herald tail`: parses the arguments after the command's name and runs it.
async fn client<A: clap::Parser, F: Future<Output = anyhow::Result<()>>>(
    run: impl FnOnce(A) -> F,
) -> ExitCode {
    let args = A::parse_from(std::env::args_os().skip(1));
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
