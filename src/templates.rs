//! Tera, loaded once at start-up, with autoescaping on for every `.html` template.

use std::path::Path;

use anyhow::Context as _;
use tera::Tera;

pub fn load(dir: &Path) -> anyhow::Result<Tera> {
    let glob = dir.join("**").join("*.html");
    let mut tera = Tera::new(&glob.to_string_lossy())
        .with_context(|| format!("loading templates from {}", dir.display()))?;
    tera.autoescape_on(vec![".html"]);
    Ok(tera)
}
