//! Tracing, set up once per process: `RUST_LOG` filters (default `info`, with the RPC stack
//! quiet), text or JSON lines, to stderr; a command that owns the terminal (`convsweep run`'s
//! progress bar) moves the same subscriber to a file.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

type Output = Box<dyn Layer<Registry> + Send + Sync>;

/// The process's logging, to move it later.
pub struct Logging {
    format: Format,
    output: Option<reload::Handle<Output, Registry>>,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging")
            .field("format", &self.format)
            .field("installed", &self.output.is_some())
            .finish()
    }
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,tonic=warn"))
}

fn to_stderr(format: Format) -> Output {
    use std::io::IsTerminal;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        Format::Text => layer.boxed(),
        Format::Json => layer.json().boxed(),
    }
}

fn to_file(format: Format, file: std::fs::File) -> Output {
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(Mutex::new(file));
    match format {
        Format::Text => layer.boxed(),
        Format::Json => layer.json().boxed(),
    }
}

impl Logging {
    /// Logs to stderr from now on. Once per process: a second call (a test that already set
    /// a subscriber) leaves the first in place.
    pub fn init(format: Format) -> Logging {
        let (output, handle) = reload::Layer::new(to_stderr(format));
        let installed = tracing_subscriber::registry()
            .with(output)
            .with(filter())
            .try_init()
            .is_ok();
        Logging {
            format,
            output: installed.then_some(handle),
        }
    }

    /// A handle that logs nowhere new (library callers and tests).
    pub fn none(format: Format) -> Logging {
        Logging { format, output: None }
    }

    /// Moves the log lines to the end of `path` (created with its folder when missing).
    pub fn to_file(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        if let Some(handle) = &self.output {
            handle
                .reload(to_file(self.format, file))
                .map_err(|e| std::io::Error::other(format!("cannot move the log to {}: {e}", path.display())))?;
        }
        Ok(())
    }
}
