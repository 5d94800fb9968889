//! `convsweep export` and `convsweep report`: results from an export folder, a state folder
//! (read-only, safe beside a live coordinator) or a running coordinator's `Export` stream.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use convsweep_proto::client::Connection;
use convsweep_proto::pb;
use serde::Serialize;

use crate::Access;
use crate::flags::refused;

/// Flags of `convsweep report`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct ReportArgs {
    /// An export folder (Parquet files) or a coordinator's state folder (read-only).
    #[arg(required_unless_present_any = ["coordinator", "store"], conflicts_with_all = ["coordinator", "store"])]
    pub dir: Option<PathBuf>,
    /// Report from a running coordinator instead (its Export stream).
    #[arg(long, conflicts_with = "store")]
    pub coordinator: Option<String>,
    /// Report from a coordinator's PostgreSQL state instead (`postgres://...`, read-only).
    #[arg(long, env = "CONVSWEEP_STORE_URL")]
    pub store: Option<String>,
    /// Folder to write the report into.
    #[arg(long)]
    pub out: PathBuf,
    /// The sweep to report on (needed when the source holds several).
    #[arg(long)]
    pub sweep: Option<String>,
}

/// Flags of `convsweep export`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct ExportArgs {
    /// The coordinator's state folder.
    #[arg(
        long,
        env = "CONVSWEEP_STATE_DIR",
        required_unless_present_any = ["coordinator", "store"],
        conflicts_with_all = ["coordinator", "store"]
    )]
    pub state_dir: Option<PathBuf>,
    /// Export from a running coordinator instead (its Export stream, in chunks).
    #[arg(long, conflicts_with = "store")]
    pub coordinator: Option<String>,
    /// Export from a coordinator's PostgreSQL state instead (`postgres://...`, read-only: safe
    /// beside live coordinators).
    #[arg(long, env = "CONVSWEEP_STORE_URL")]
    pub store: Option<String>,
    /// Folder to write the Parquet files into.
    #[arg(long, required_unless_present = "tensorboard")]
    pub out: Option<PathBuf>,
    /// Folder to write TensorBoard logs into: one run per trial (named by its factors), its
    /// epoch scalars and final figures, and the sweep's hyper-parameters (`tensorboard --logdir
    /// DIR`; one folder per sweep when there are several).
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
    /// Only this sweep.
    #[arg(long)]
    pub sweep: Option<String>,
}

/// Where results come from: a folder (an export or a state), a PostgreSQL state or a running
/// coordinator.
#[derive(Debug)]
pub enum Source {
    /// An export folder (Parquet) or a coordinator's state folder (read read-only).
    Dir(PathBuf),
    /// A coordinator's PostgreSQL state (read read-only).
    Store(String),
    /// A coordinator's Export stream.
    Remote(Connection),
}

impl Source {
    /// The source the flags name (clap makes sure exactly one is given).
    pub fn of(dir: Option<&Path>, store: Option<&str>, coordinator: Option<&str>, access: &Access) -> Result<Source> {
        match (dir, store, coordinator) {
            (Some(d), None, None) => Ok(Source::Dir(d.to_owned())),
            (None, Some(url), None) if convsweep_coordinator::store::is_postgres_url(url) => {
                Ok(Source::Store(url.to_owned()))
            }
            (None, Some(_), None) => bail!("--store must be a postgres:// URL (a state folder is given as a folder)"),
            (None, None, Some(url)) => Ok(Source::Remote(access.connection(url)?)),
            _ => bail!("give one of a folder, --store URL or --coordinator URL"),
        }
    }

    #[cfg_attr(not(feature = "analysis"), allow(dead_code))]
    fn describe(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Store(url) => {
                use convsweep_coordinator::store::Backend;
                convsweep_coordinator::store::PostgresBackend::new(url.clone()).describe()
            }
            Source::Remote(c) => c.url.clone(),
        }
    }
}

/// Every result row a coordinator's Export stream sends (one sweep's, or all).
pub async fn remote_results(conn: &Connection, sweep: Option<&str>) -> Result<convsweep_proto::results::Results> {
    let what = format!("export from {}", conn.url);
    let mut stream = super::admin::admin_of(conn)
        .await?
        .export(pb::ExportRequest {
            sweep_id: sweep.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| refused(&what, s))?
        .into_inner();
    let mut results = convsweep_proto::results::Results::default();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| refused(format!("{what} stopped"), s))?
    {
        convsweep_proto::convert::add_export_chunk(&mut results, chunk)
            .with_context(|| format!("{what} sent a row that does not fit"))?;
    }
    Ok(results)
}

#[cfg(feature = "analysis")]
mod imp {
    use convsweep_analysis::Frames;
    use convsweep_coordinator::store::{Backend, PostgresBackend, SqliteBackend};

    use super::*;

    /// The result frames of one sweep (or all) of a state folder, read-only: safe beside a live
    /// coordinator, never a migration.
    pub fn state_frames(state_dir: &Path, sweep: Option<&str>) -> Result<Frames> {
        backend_frames(&SqliteBackend::new(state_dir), sweep)
    }

    /// The result frames of one sweep (or all) of a state, read-only.
    fn backend_frames(backend: &dyn Backend, sweep: Option<&str>) -> Result<Frames> {
        let results = backend.open_reader()?.results(sweep)?;
        Ok(Frames::from_results(&results)?)
    }

    /// The frames of `source`, all sweeps.
    async fn frames(source: &Source) -> Result<Frames> {
        Ok(match source {
            Source::Dir(dir) if Frames::is_export(dir) => Frames::read_parquet(dir)?,
            Source::Dir(dir) => state_frames(dir, None)?,
            Source::Store(url) => {
                let backend = PostgresBackend::new(url.clone());
                tokio::task::spawn_blocking(move || backend_frames(&backend, None)).await??
            }
            Source::Remote(conn) => Frames::from_results(&remote_results(conn, None).await?)?,
        })
    }

    /// The sweeps of `frames`, and the one asked for (or the only one).
    fn pick_sweep(frames: &Frames, sweep: Option<&str>, source: &Source) -> Result<String> {
        let sweeps: std::collections::BTreeSet<String> = {
            let c = frames.trials.column("sweep")?.str()?.clone();
            (0..c.len()).filter_map(|i| c.get(i).map(str::to_owned)).collect()
        };
        let from = source.describe();
        Ok(match (sweep, sweeps.len()) {
            (Some(s), _) if sweeps.contains(s) => s.to_owned(),
            (Some(s), _) => bail!(
                "no sweep {s:?} in {from}; it holds: {}",
                sweeps.into_iter().collect::<Vec<_>>().join(", ")
            ),
            (None, 1) => sweeps.into_iter().next().expect("one sweep"),
            (None, 0) => bail!("{from} holds no trials"),
            (None, _) => bail!(
                "{from} holds several sweeps ({}); choose one with --sweep",
                sweeps.into_iter().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// `convsweep export`.
    pub async fn export(args: &ExportArgs, access: &Access) -> Result<ExitCode> {
        let source = Source::of(
            args.state_dir.as_deref(),
            args.store.as_deref(),
            args.coordinator.as_deref(),
            access,
        )?;
        let mut frames = frames(&source).await?;
        if let Some(s) = &args.sweep {
            let name = pick_sweep(&frames, Some(s), &source)?;
            frames = frames.for_sweep(&name)?;
        }
        if let Some(out) = &args.out {
            for path in frames.write_parquet(out)? {
                println!("{}", path.display());
            }
        }
        if let Some(dir) = &args.tensorboard {
            let written = convsweep_analysis::tensorboard::write(&frames, dir)?;
            for logdir in &written.logdirs {
                println!("{}", logdir.display());
            }
            eprintln!(
                "TensorBoard: {} runs, {} scalars; view with `tensorboard --logdir {}`",
                written.runs,
                written.scalars,
                written.logdirs.first().unwrap_or(dir).display()
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `convsweep report`.
    pub async fn report(args: &ReportArgs, access: &Access) -> Result<ExitCode> {
        let source = Source::of(
            args.dir.as_deref(),
            args.store.as_deref(),
            args.coordinator.as_deref(),
            access,
        )?;
        let frames = frames(&source).await?;
        let name = pick_sweep(&frames, args.sweep.as_deref(), &source)?;
        let frames = frames.for_sweep(&name)?;
        let report = convsweep_analysis::Report::build(&frames, &name)?;
        let written = report.write(&args.out)?;
        println!("{}", written.html.display());
        println!("{}", written.markdown.display());
        eprintln!(
            "{} tables (CSV and Parquet) and {} plots in {}",
            written.tables.len() / 2,
            written.plots.len(),
            args.out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(feature = "analysis")]
pub use imp::{export, report, state_frames};

/// `convsweep report` in a build without Polars.
#[cfg(not(feature = "analysis"))]
pub async fn report(_: &ReportArgs, _: &Access) -> Result<ExitCode> {
    Err(super::without_analysis("report"))
}

/// `convsweep export` in a build without Polars.
#[cfg(not(feature = "analysis"))]
pub async fn export(_: &ExportArgs, _: &Access) -> Result<ExitCode> {
    Err(super::without_analysis("export"))
}
