//! The `storefront` command line.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "storefront",
    version,
    about = "An OpenID Connect web shop (backend for frontend)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check migrations, then serve HTTP and run the background tasks (the default).
    Serve,
    /// Apply pending migrations (or inspect / revert them).
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Load the demo catalogue (idempotent).
    DemoData,
    /// The keys that seal tokens at rest.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// How many logins each key seals, and whether previous keys can be retired.
    Status,
    /// Re-seal every token under the current key (`tokens.key_id`).
    Rekey,
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// List every migration and whether it is applied.
    Status,
    /// Revert the most recently applied migration.
    Revert,
}
