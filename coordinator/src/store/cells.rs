//! Where each exported trial sits in its sweep's stopping design (its group, configuration and
//! whether it is exempt), from the spec the sweep was submitted with: what the report needs to
//! measure rank fidelity, and what the coordinator's stopping pass decides over.

use convsweep_proto::results::Results;

use crate::error::Result;
use crate::sweep::SweepSpec;

/// Fills `cell` of every trial whose sweep (`specs`: id and spec text) has a stopping rule.
pub(crate) fn place(results: &mut Results, specs: &[(String, String)]) -> Result<()> {
    for (sweep, toml) in specs {
        // A stored spec was checked when it was submitted; one this version cannot read has no
        // rule it knows.
        let Ok(spec) = SweepSpec::from_toml(toml) else { continue };
        if spec.stopping.is_none() {
            continue;
        }
        let cells = spec.stopping_cells()?;
        for t in results.trials.iter_mut().filter(|t| &t.sweep_id == sweep) {
            t.cell = cells.get(&t.trial_id).cloned();
        }
    }
    Ok(())
}
