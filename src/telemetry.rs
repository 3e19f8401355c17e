//! Logging: human-readable locally, JSON in production. `RUST_LOG` overrides the filter.

use tracing_subscriber::EnvFilter;

use crate::configuration::LogFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,actix_server=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init`: tests and embedders may have installed a subscriber already.
    let _ = if format == LogFormat::Json {
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    };
}
