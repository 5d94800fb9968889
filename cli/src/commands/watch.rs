//! `convsweep watch`: a coordinator's `Watch` stream as a live view, as a Ray Tune user gets
//! from its status table: a bar per sweep with ETA, the running trials with attempt, epoch and
//! current test accuracy, and the last failures with their reasons. On a terminal, each running
//! trial's test accuracy per epoch and each configuration's mean over its seeds are drawn as
//! sparklines (the status page's curves, in a line each). `convsweep run` follows its sweep
//! through the same stream.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use convsweep_proto::TrialState;
use convsweep_proto::client::Connection;
use convsweep_proto::pb;
use convsweep_proto::pb::watch_event::Event;
use serde::Serialize;

use crate::Access;
use crate::flags::refused;

/// Flags of `convsweep watch`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct WatchArgs {
    /// Coordinator URL.
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
    /// Only this sweep.
    #[arg(long)]
    pub sweep: Option<String>,
}

/// Failures shown under each sweep.
const LAST_FAILURES: usize = 5;
/// Running trials shown.
const RUNNING_SHOWN: usize = 12;
/// Configuration curves shown per sweep (on a terminal).
const CURVES_SHOWN: usize = 12;
/// Epochs a sparkline shows at most (the last ones).
const SPARK_EPOCHS: usize = 30;

/// Accuracies (fractions) as a sparkline on the absolute scale 0..1, so that lines compare:
/// `▁` is below 1/8, `█` 7/8 and above; the last [`SPARK_EPOCHS`] values.
pub fn sparkline(accs: impl IntoIterator<Item = f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let accs: Vec<f64> = accs.into_iter().collect();
    accs[accs.len().saturating_sub(SPARK_EPOCHS)..]
        .iter()
        .map(|a| BARS[(a.clamp(0.0, 1.0) * 8.0).floor().min(7.0) as usize])
        .collect()
}

fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done as usize * width).div_ceil(total as usize).min(width)
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// Trials of a sweep that are done ([`TrialState::is_done`]).
pub fn done(s: &pb::SweepStatus) -> u32 {
    s.counts.unwrap_or_default().done()
}

/// Whether the sweeps of `snapshot` are all done (and there is at least one).
pub fn finished(snapshot: &pb::WatchSnapshot) -> bool {
    let sweeps = snapshot
        .status
        .as_ref()
        .map(|s| s.sweeps.as_slice())
        .unwrap_or_default();
    !sweeps.is_empty() && sweeps.iter().all(|s| s.total > 0 && done(s) == s.total)
}

/// The view of one snapshot, as lines of text; with `curves` (a terminal), sparklines of the
/// running trials' and the configurations' test accuracy per epoch.
pub fn render(snapshot: &pb::WatchSnapshot, curves: bool) -> String {
    let mut out = String::new();
    let status = snapshot.status.clone().unwrap_or_default();
    out.push_str(&format!("workers alive: {}\n", status.workers_alive));
    if status.sweeps.is_empty() {
        out.push_str("no sweeps yet\n");
    }
    for s in &status.sweeps {
        let c = s.counts.unwrap_or_default();
        let eta = if s.eta_seconds >= 0.0 && done(s) < s.total {
            format!(", ETA {}", convsweep_proto::numbers::duration(s.eta_seconds))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{} {} {}/{} done | running {} pending {} failed {}{eta}\n",
            s.sweep_id,
            bar(done(s), s.total, 30),
            done(s),
            s.total,
            c.active(),
            c.queued(),
            c.failed,
        ));
        let running: Vec<&pb::ActiveTrial> = snapshot.active.iter().filter(|a| a.sweep_id == s.sweep_id).collect();
        for a in running.iter().take(RUNNING_SHOWN) {
            let acc = if a.epoch > 0 {
                format!("test acc {:>5}%", convsweep_proto::numbers::percent(a.test_acc * 100.0))
            } else {
                "starting".to_owned()
            };
            let acc = if curves && !a.curve.is_empty() {
                format!("{acc} {}", sparkline(a.curve.iter().map(|p| p.test_acc)))
            } else {
                acc
            };
            out.push_str(&format!(
                "  {} {:<44} attempt {} epoch {:>3}/{:<3} {acc}\n",
                &a.trial_id[..a.trial_id.len().min(8)],
                shorten(&a.label, 44),
                a.attempt,
                a.epoch,
                a.epochs,
            ));
        }
        if running.len() > RUNNING_SHOWN {
            out.push_str(&format!("  ... and {} more running\n", running.len() - RUNNING_SHOWN));
        }
        let configs: Vec<&pb::ConfigCurve> = snapshot.curves.iter().filter(|c| c.sweep_id == s.sweep_id).collect();
        if curves && !configs.is_empty() {
            out.push_str("  mean test accuracy per epoch over seeds:\n");
            for c in configs.iter().take(CURVES_SHOWN) {
                let last = c.points.last().map_or(0.0, |p| p.mean);
                out.push_str(&format!(
                    "    {:<36} {:>5}% ({} seeds) {}\n",
                    shorten(&c.label, 36),
                    convsweep_proto::numbers::percent(last * 100.0),
                    c.trials,
                    sparkline(c.points.iter().map(|p| p.mean))
                ));
            }
            if configs.len() > CURVES_SHOWN {
                out.push_str(&format!(
                    "    ... and {} more configurations\n",
                    configs.len() - CURVES_SHOWN
                ));
            }
        }
        for f in s.failures.iter().rev().take(LAST_FAILURES) {
            out.push_str(&format!(
                "  failed {} (attempt {}): {}\n",
                &f.trial_id[..f.trial_id.len().min(8)],
                f.attempt,
                shorten(&f.reason, 120)
            ));
        }
    }
    out
}

/// A line for the events worth a line of their own (trials that are done, workers joining or
/// lost).
pub fn event_line(event: &Event) -> Option<String> {
    match event {
        Event::Trial(t) => {
            let state = TrialState::from_wire(t.state, "state").ok().filter(|s| s.is_done())?;
            Some(format!(
                "trial {} {state}{}",
                &t.trial_id[..t.trial_id.len().min(8)],
                if t.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", shorten(&t.reason, 120))
                }
            ))
        }
        Event::Worker(w) => Some(format!(
            "worker {} ({}) {}",
            w.name,
            &w.worker_id[..w.worker_id.len().min(10)],
            if w.joined { "joined" } else { "lost" }
        )),
        _ => None,
    }
}

/// Follows the `Watch` stream of `sweep` (every sweep when `None`), calling `on_snapshot` with
/// each snapshot and `on_event` with the other events, until every sweep shown is done; returns
/// the last snapshot.
pub async fn follow(
    conn: &Connection,
    sweep: Option<&str>,
    mut on_snapshot: impl FnMut(&pb::WatchSnapshot),
    mut on_event: impl FnMut(&Event),
) -> Result<pb::WatchSnapshot> {
    let mut stream = super::admin::admin_of(conn)
        .await?
        .watch(pb::WatchRequest {
            sweep_id: sweep.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| refused(format!("watch {}", conn.url), s))?
        .into_inner();
    loop {
        let Some(event) = stream
            .message()
            .await
            .map_err(|s| refused(format!("the watch stream from {} broke", conn.url), s))?
        else {
            anyhow::bail!("the coordinator at {} ended the watch stream", conn.url);
        };
        match event.event {
            Some(Event::Snapshot(s)) => {
                on_snapshot(&s);
                if finished(&s) {
                    return Ok(s);
                }
            }
            Some(other) => on_event(&other),
            None => {}
        }
    }
}

/// `convsweep watch`.
pub async fn watch(args: &WatchArgs, access: &Access) -> Result<ExitCode> {
    let conn = &access.connection(&args.coordinator)?;
    let sweep = args.sweep.as_deref();
    let tty = std::io::stdout().is_terminal();
    let drawn = std::cell::Cell::new(0usize);
    let mut last_counts: Option<Vec<(u32, u32)>> = None;
    let last = follow(
        conn,
        sweep,
        |s| {
            let view = render(s, tty);
            let mut out = std::io::stdout().lock();
            if tty {
                // Redraw in place.
                if drawn.get() > 0 {
                    let _ = write!(out, "\x1b[{}A\x1b[J", drawn.get());
                }
                let _ = write!(out, "{view}");
                drawn.set(view.lines().count());
            } else {
                // Without a terminal, print a view only when the counts moved.
                let counts: Vec<(u32, u32)> = s
                    .status
                    .as_ref()
                    .map(|st| st.sweeps.iter().map(|x| (done(x), x.total)).collect())
                    .unwrap_or_default();
                if last_counts.as_ref() != Some(&counts) {
                    let _ = write!(out, "{view}");
                    last_counts = Some(counts);
                }
            }
            let _ = out.flush();
        },
        |e| {
            if let Some(line) = event_line(e) {
                let mut out = std::io::stdout().lock();
                if tty && drawn.get() > 0 {
                    let _ = write!(out, "\x1b[{}A\x1b[J", drawn.get());
                    drawn.set(0);
                }
                let _ = writeln!(out, "{line}");
            }
        },
    )
    .await?;
    let failed: u32 = last
        .status
        .as_ref()
        .map(|s| s.sweeps.iter().map(|x| x.counts.unwrap_or_default().failed).sum())
        .unwrap_or(0);
    println!(
        "done{}",
        if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(total: u32, succeeded: u32, failed: u32) -> pb::SweepStatus {
        pb::SweepStatus {
            sweep_id: "demo".into(),
            total,
            counts: Some(pb::StateCounts {
                succeeded,
                failed,
                running: 1,
                pending: total - succeeded - failed - 1,
                ..Default::default()
            }),
            trials_per_hour: 60.0,
            eta_seconds: 125.0,
            failures: vec![pb::TrialFailure {
                trial_id: "0123456789abcdef".into(),
                attempt: 2,
                reason: "non-finite training loss (NaN) in epoch 3".into(),
            }],
        }
    }

    #[test]
    fn the_view_shows_bar_eta_running_trials_and_failures() {
        let snapshot = pb::WatchSnapshot {
            status: Some(pb::GetStatusResponse {
                sweeps: vec![sweep(8, 3, 1)],
                workers_alive: 2,
            }),
            active: vec![pb::ActiveTrial {
                sweep_id: "demo".into(),
                trial_id: "fedcba9876543210".into(),
                label: "resnet-8-16 k=5 frozen kaiming-normal seed=0".into(),
                state: TrialState::Running.to_wire(),
                attempt: 1,
                worker_id: "w-1".into(),
                epoch: 3,
                epochs: 5,
                test_acc: 0.4217,
                curve: [0.12, 0.3, 0.4217]
                    .iter()
                    .enumerate()
                    .map(|(i, a)| pb::CurvePoint {
                        epoch: i as u32 + 1,
                        test_acc: *a,
                        train_acc: *a,
                    })
                    .collect(),
            }],
            accuracy: vec![],
            curves: vec![pb::ConfigCurve {
                sweep_id: "demo".into(),
                label: "k=5 frozen".into(),
                trials: 2,
                points: [0.1, 0.55, 0.99]
                    .iter()
                    .enumerate()
                    .map(|(i, m)| pb::BandPoint {
                        epoch: i as u32 + 1,
                        mean: *m,
                        lo: *m,
                        hi: *m,
                        seeds: 2,
                        train_mean: *m,
                    })
                    .collect(),
            }],
            curves_left_out: 0,
        };
        let plain = render(&snapshot, false);
        assert!(!plain.contains('▁') && !plain.contains("mean test accuracy"), "{plain}");
        let view = render(&snapshot, true);
        assert!(view.contains("test acc  42.2% ▁▃▄"), "{view}");
        assert!(
            view.contains("k=5 frozen") && view.contains("99.0% (2 seeds) ▁▅█"),
            "{view}"
        );
        assert!(
            view.contains("demo [###############---------------] 4/8 done"),
            "{view}"
        );
        assert!(view.contains("ETA 2m05s"), "{view}");
        assert!(
            view.contains("fedcba98 resnet-8-16 k=5 frozen kaiming-normal seed=0 attempt 1"),
            "{view}"
        );
        assert!(view.contains("attempt 1 epoch   3/5   test acc  42.2%"), "{view}");
        assert!(
            view.contains("failed 01234567 (attempt 2): non-finite training loss (NaN) in epoch 3"),
            "{view}"
        );
        assert!(!finished(&snapshot));
        let done = pb::WatchSnapshot {
            status: Some(pb::GetStatusResponse {
                sweeps: vec![pb::SweepStatus {
                    counts: Some(pb::StateCounts {
                        succeeded: 7,
                        failed: 1,
                        ..Default::default()
                    }),
                    ..sweep(8, 7, 0)
                }],
                workers_alive: 0,
            }),
            ..Default::default()
        };
        assert!(finished(&done));
        assert!(!finished(&pb::WatchSnapshot::default()), "no sweep yet: keep watching");
    }
}
