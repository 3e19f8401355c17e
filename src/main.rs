use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use storefront::auth::tokens;
use storefront::cli::{Cli, Command, MigrateAction, TokensAction};
use storefront::configuration::{
    ConfigError, DatabaseSettings, KeysOnly, LogFormat, Settings, Sources,
};
use storefront::crypto::TokenCipher;
use storefront::db::{self, migrations};
use storefront::startup::Application;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources::from_process();
    // `serve` needs every setting; the database commands only `[database]`, so a DBA can run
    // them with nothing but `DATABASE_URL`.
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match sources.settings() {
            Ok(settings) => execute(settings.server.log_format, serve(settings)),
            Err(e) => configuration_error(e),
        },
        Command::Tokens { action } => match sources.keys_only() {
            Ok(only) => execute(only.server.log_format, tokens_command(action, only)),
            Err(e) => configuration_error(e),
        },
        command => match sources.database_only() {
            Ok(only) => execute(
                only.server.log_format,
                database_command(command, only.database),
            ),
            Err(e) => configuration_error(e),
        },
    }
}

/// A bad configuration is one clear line and a non-zero exit, never a backtrace.
fn configuration_error(e: ConfigError) -> ExitCode {
    eprintln!("storefront: {e}");
    ExitCode::from(2)
}

fn execute(log_format: LogFormat, job: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    storefront::telemetry::init(log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("storefront: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storefront: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn database_command(command: Command, database: DatabaseSettings) -> anyhow::Result<()> {
    let pool = db::lazy_pool(&database).context("database.url")?;
    match command {
        Command::Serve | Command::Tokens { .. } => {
            unreachable!("main runs these with their own settings")
        }
        Command::Migrate { action: None } => {
            let applied = migrations::apply(&pool).await?;
            println!("applied {applied} migration(s); the schema is up to date");
        }
        Command::Migrate {
            action: Some(MigrateAction::Status),
        } => {
            let status = migrations::status(&pool).await?;
            for m in &status {
                println!(
                    "{:<16} {:<18} {}",
                    m.version,
                    format!("{:?}", m.state),
                    m.description
                );
            }
            print_compatibility(&pool, &status).await?;
        }
        Command::Migrate {
            action: Some(MigrateAction::Revert),
        } => match migrations::revert_last(&pool).await? {
            Some(m) => println!("reverted {} {}", m.version, m.description),
            None => println!("nothing to revert"),
        },
        Command::DemoData => {
            migrations::check_ready(
                &migrations::status(&pool).await?,
                migrations::min_binary_version(&pool).await?,
            )?;
            let n = storefront::shop::demo::load(&pool).await?;
            println!("demo catalogue loaded: {n} products");
        }
    }
    Ok(())
}

async fn tokens_command(action: TokensAction, only: KeysOnly) -> anyhow::Result<()> {
    let pool = db::lazy_pool(&only.database).context("database.url")?;
    migrations::check_ready(
        &migrations::status(&pool).await?,
        migrations::min_binary_version(&pool).await?,
    )?;
    let cipher = TokenCipher::new(only.tokens.keys());
    if let TokensAction::Rekey = action {
        let report = tokens::rekey_all(&pool, &cipher, 500).await?;
        println!(
            "re-sealed {} login(s) under key {}; {} could not be read with the configured keys",
            report.resealed,
            cipher.current_key_id(),
            report.unreadable
        );
    }
    let usage = tokens::key_usage(&pool).await?;
    for u in &usage {
        let role = if u.key_id == only.tokens.key_id {
            "current"
        } else if only.tokens.previous_keys.iter().any(|k| k.id == u.key_id) {
            "previous"
        } else {
            "not configured: these logins cannot be read"
        };
        println!("{:<12} {:>10} login(s)  {role}", u.key_id, u.logins);
    }
    let retired: Vec<&str> = only
        .tokens
        .previous_keys
        .iter()
        .map(|k| k.id.as_str())
        .filter(|id| !usage.iter().any(|u| u.key_id == *id))
        .collect();
    if !retired.is_empty() {
        println!(
            "no login uses {}: remove it from tokens.previous_keys",
            retired.join(", ")
        );
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let pool = db::serve_pool(&settings.database).context("database.url")?;
    if settings.database.migrate_on_start {
        // Without the request timeouts: a migration may rightly take long.
        let schema = db::lazy_pool(&settings.database).context("database.url")?;
        let applied = migrations::apply(&schema).await?;
        schema.close().await;
        if applied > 0 {
            tracing::info!(applied, "Applied pending migrations");
        }
    }
    let status = migrations::status(&pool)
        .await
        .context("checking the database schema")?;
    migrations::check_ready(&status, migrations::min_binary_version(&pool).await?)?;
    let app = Application::build(settings, pool).await?;
    tracing::info!(port = app.port(), "storefront listening");
    let state = app.state().clone();
    let stop = CancellationToken::new();
    let tasks = app.spawn_background_tasks(stop.clone());
    // On SIGINT/SIGTERM: drain (readiness fails, connections close after their response),
    // then stop accepting and finish the requests in flight. Then the background tasks stop
    // (refresh calls in flight finish and are written), then the pools.
    tokio::spawn(drain_and_stop(state.clone(), app.server_handle()));
    let result = app.run_until_stopped().await;
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Application::close_pools(&state).await;
    result.context("HTTP server")
}

/// Waits for SIGTERM or SIGINT, fails readiness for `server.drain_secs`, then stops the
/// server gracefully (in-flight requests get `server.shutdown_timeout_secs`).
async fn drain_and_stop(state: storefront::state::State, server: actix_web::dev::ServerHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let drain = std::time::Duration::from_secs(state.settings.server.drain_secs);
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(drain_secs = drain.as_secs(), "Stopping: draining first");
    tokio::time::sleep(drain).await;
    server.stop(true).await;
}

/// After the migration list: this binary, what the schema allows, and every running instance
/// with whether it can serve the schema as it is now.
async fn print_compatibility(
    pool: &sqlx::PgPool,
    status: &[migrations::MigrationStatus],
) -> anyhow::Result<()> {
    let min = migrations::min_binary_version(pool).await?;
    let binary = migrations::binary_version();
    let verdict = |version: i64| match migrations::compatible(status, version, min) {
        Ok(()) => "compatible".to_owned(),
        Err(why) => format!("INCOMPATIBLE: {why}"),
    };
    println!();
    match min {
        Some(min) => println!("schema: serves binaries of version {min} or newer"),
        None => println!("schema: no compatibility record (older than 20261207000003)"),
    }
    println!("this binary: version {binary}, {}", verdict(binary));
    let running = storefront::db::instances::running(pool).await?;
    if running.is_empty() {
        println!("running instances: none seen in the last 45 s");
    }
    for i in running {
        println!(
            "running instance {} pid {} (since {}): version {}, {}",
            i.host,
            i.pid,
            i.started_at.format("%Y-%m-%d %H:%M:%S"),
            i.binary_version,
            verdict(i.binary_version)
        );
    }
    Ok(())
}
