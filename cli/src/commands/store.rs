//! `convsweep store`: a coordinator's state moved between stores. `store copy` copies a stopped
//! coordinator's SQLite state folder into an empty PostgreSQL database and verifies it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// `convsweep store`'s subcommands.
#[derive(Debug, Clone, PartialEq, clap::Subcommand, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreCommand {
    /// Copy a stopped coordinator's SQLite state (its --state-dir) into an empty PostgreSQL
    /// database, in one transaction, and verify every table (row count and SHA-256 of its
    /// values) against the original. Start coordinators on the copy with --store afterwards.
    Copy(CopyArgs),
}

/// Flags of `convsweep store copy`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct CopyArgs {
    /// The SQLite state folder (a stopped coordinator's --state-dir; it is only read).
    #[arg(long)]
    pub from: PathBuf,
    /// The PostgreSQL database to copy into (`postgres://...`; it must hold no state yet).
    #[arg(
        long,
        env = "CONVSWEEP_STORE_URL",
        required_unless_present = "to_file",
        conflicts_with = "to_file"
    )]
    pub to: Option<String>,
    /// A file that holds the --to URL.
    #[arg(long)]
    pub to_file: Option<PathBuf>,
}

/// `convsweep store ...`.
pub async fn store(command: &StoreCommand) -> Result<ExitCode> {
    match command {
        StoreCommand::Copy(args) => copy(args).await,
    }
}

async fn copy(args: &CopyArgs) -> Result<ExitCode> {
    let to = match (&args.to, &args.to_file) {
        (Some(url), _) => url.trim().to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --to-file {}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => bail!("give --to URL or --to-file"),
    };
    if !convsweep_coordinator::store::is_postgres_url(&to) {
        bail!("--to must be a postgres:// (or postgresql://) URL");
    }
    let from = args.from.clone();
    let started = std::time::Instant::now();
    let tables = tokio::task::spawn_blocking(move || convsweep_coordinator::store::copy_sqlite_to_postgres(&from, &to))
        .await?
        .with_context(|| format!("copying {}", args.from.display()))?;
    let rows: u64 = tables.iter().map(|t| t.rows).sum();
    for t in &tables {
        println!("{:<15} {:>10} rows  sha256 {}", t.table, t.rows, t.sha256);
    }
    eprintln!(
        "copied {rows} rows of {} tables in {:.1} s; every table's row count and checksum match the original",
        tables.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
