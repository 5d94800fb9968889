//! Random search: axes with distributions beside the grid (`[search]`), each sample's values
//! drawn from the sweep's search seed, crossed with the grid and the seeds.
//!
//! ```toml
//! [search]
//! samples = 32                                   # draws, crossed with the grid and the seeds
//! seed = 0                                       # the draws' seed (default 0)
//! "train.lr" = { loguniform = [1e-3, 1e-1] }
//! "train.weight_decay" = { uniform = [0.0, 1e-3] }
//! "train.batch_size" = { int_uniform = [64, 256] }
//! init = { choice = ["kaiming-uniform", "kaiming-normal"] }
//! ```
//!
//! A draw depends on the seed, the sample's number and the axis's name only: the same spec
//! gives the same trials (ids stay content-addressed on the drawn values), a larger `samples`
//! adds only the new draws, and adding an axis leaves the others' draws as they were. Floats are
//! kept to 6 significant digits, so that they read and compare as written.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use convsweep_proto::FieldError;

/// Most samples one `[search]` may ask for.
pub const MAX_SAMPLES: u32 = 1_000_000;

/// A distribution of one searched field.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// Uniform on `[low, high)`.
    Uniform(f64, f64),
    /// Log-uniform on `[low, high)`, both > 0.
    LogUniform(f64, f64),
    /// Uniform over the integers `low..=high`.
    IntUniform(i64, i64),
    /// One of the values, each as likely.
    Choice(Vec<Json>),
}

/// One searched field.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchAxis {
    /// Its name as written (an axis alias or a dotted path).
    pub name: String,
    /// The trial-spec field it sets.
    pub path: String,
    /// What it is drawn from.
    pub dist: Distribution,
}

/// A parsed `[search]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// Draws.
    pub samples: u32,
    /// Seed of the draws.
    pub seed: u64,
    /// Searched fields, by name.
    pub axes: Vec<SearchAxis>,
}

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(format!("search.{field}"), message)
}

/// `samples` of a `[search]` table, for the size check before anything is parsed (1 when
/// absent or not a number: the parse names the problem).
pub fn samples_of(table: &toml::Table) -> u64 {
    table
        .get("samples")
        .and_then(toml::Value::as_integer)
        .map_or(1, |n| n.max(1) as u64)
}

fn number(v: &toml::Value) -> Option<f64> {
    v.as_float()
        .or_else(|| v.as_integer().map(|i| i as f64))
        .filter(|f| f.is_finite())
}

impl Search {
    /// Parses a `[search]` table. `resolve` maps a name to the field it sets; `taken` are the
    /// fields the grid already sets (a field is searched or gridded, not both).
    pub fn parse(
        table: toml::Table,
        resolve: &dyn Fn(&str) -> Option<String>,
        taken: &[&str],
        json: &dyn Fn(toml::Value) -> Json,
    ) -> Result<Search, FieldError> {
        let mut samples = None;
        let mut seed = 0u64;
        let mut axes = Vec::new();
        for (name, value) in table {
            match name.as_str() {
                "samples" => match value.as_integer() {
                    Some(n) if (1..=i64::from(MAX_SAMPLES)).contains(&n) => samples = Some(n as u32),
                    _ => {
                        return Err(err(
                            "samples",
                            format!("a number of draws in 1..={MAX_SAMPLES}, got {value}"),
                        ));
                    }
                },
                "seed" => match value.as_integer() {
                    Some(n) if n >= 0 => seed = n as u64,
                    _ => return Err(err("seed", format!("a number >= 0, got {value}"))),
                },
                _ => {
                    let Some(path) = resolve(&name) else {
                        return Err(err(
                            &name,
                            "unknown field; use an axis name (lr, weight_decay, init, ...) or a dotted path such as \"train.lr\"",
                        ));
                    };
                    if path == "seed" {
                        return Err(err(&name, "seeds are the top-level `seeds`, not a searched field"));
                    }
                    if taken.contains(&path.as_str()) {
                        return Err(err(
                            &name,
                            format!("{path} is a [grid] axis too; search it or grid it, not both"),
                        ));
                    }
                    if let Some(other) = axes.iter().find(|a: &&SearchAxis| a.path == path) {
                        return Err(err(
                            &name,
                            format!("sets the same field ({path}) as search.{}", other.name),
                        ));
                    }
                    let dist = Self::distribution(&name, value, json)?;
                    axes.push(SearchAxis { name, path, dist });
                }
            }
        }
        let Some(samples) = samples else {
            return Err(err("samples", "missing: how many draws, e.g. samples = 32"));
        };
        if axes.is_empty() {
            return Err(err(
                "samples",
                "no field to search: add one, e.g. \"train.lr\" = { loguniform = [1e-3, 1e-1] }",
            ));
        }
        axes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Search { samples, seed, axes })
    }

    fn distribution(
        name: &str,
        value: toml::Value,
        json: &dyn Fn(toml::Value) -> Json,
    ) -> Result<Distribution, FieldError> {
        const KINDS: &str = "one of { uniform = [low, high] }, { loguniform = [low, high] }, { int_uniform = [low, high] }, { choice = [...] }";
        let toml::Value::Table(t) = value else {
            return Err(err(name, format!("a distribution: {KINDS}")));
        };
        let mut entries = t.into_iter();
        let (Some((kind, args)), None) = (entries.next(), entries.next()) else {
            return Err(err(name, format!("exactly one distribution: {KINDS}")));
        };
        let field = format!("{name}.{kind}");
        let pair = |args: &toml::Value| -> Result<(f64, f64), FieldError> {
            match args
                .as_array()
                .map(|a| a.iter().map(number).collect::<Vec<_>>())
                .as_deref()
            {
                Some([Some(a), Some(b)]) if a < b => Ok((*a, *b)),
                _ => Err(err(
                    &field,
                    format!("[low, high] with low < high, both finite numbers; got {args}"),
                )),
            }
        };
        match kind.as_str() {
            "uniform" => pair(&args).map(|(a, b)| Distribution::Uniform(a, b)),
            "loguniform" => match pair(&args)? {
                (a, b) if a > 0.0 => Ok(Distribution::LogUniform(a, b)),
                _ => Err(err(
                    &field,
                    format!("both bounds must be > 0 on a log scale; got {args}"),
                )),
            },
            "int_uniform" => match args
                .as_array()
                .map(|a| a.iter().map(toml::Value::as_integer).collect::<Vec<_>>())
                .as_deref()
            {
                Some([Some(a), Some(b)]) if a <= b => Ok(Distribution::IntUniform(*a, *b)),
                _ => Err(err(
                    &field,
                    format!("[low, high] integers with low <= high; got {args}"),
                )),
            },
            "choice" => {
                let values: Vec<Json> = match args {
                    toml::Value::Array(a) if !a.is_empty() => a.into_iter().map(json).collect(),
                    other => return Err(err(&field, format!("a non-empty list of values; got {other}"))),
                };
                for (i, v) in values.iter().enumerate() {
                    if values[..i].contains(v) {
                        return Err(err(&field, format!("value {v} is listed twice")));
                    }
                }
                Ok(Distribution::Choice(values))
            }
            other => Err(err(name, format!("unknown distribution {other:?}; {KINDS}"))),
        }
    }

    /// The values of sample `i` (0-based), one per searched field, in field order.
    pub fn draw(&self, i: u32) -> Vec<(&SearchAxis, Json)> {
        self.axes
            .iter()
            .map(|a| {
                let u = unit(self.seed, i, &a.name);
                let v = match &a.dist {
                    Distribution::Uniform(lo, hi) => Json::from(round6(lo + u * (hi - lo))),
                    Distribution::LogUniform(lo, hi) => Json::from(round6((lo.ln() + u * (hi.ln() - lo.ln())).exp())),
                    Distribution::IntUniform(lo, hi) => {
                        let span = (hi - lo) as f64 + 1.0;
                        Json::from(lo + ((u * span) as i64).min(hi - lo))
                    }
                    Distribution::Choice(values) => {
                        values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone()
                    }
                };
                (a, v)
            })
            .collect()
    }
}

/// A uniform number in [0, 1) from the seed, the sample and the field's name (SHA-256: the same
/// on every platform, independent of everything else drawn).
fn unit(seed: u64, sample: u32, name: &str) -> f64 {
    let digest = Sha256::digest(format!("convsweep-search/{seed}/{sample}/{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// `x` to 6 significant digits.
fn round6(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    format!("{x:.5e}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Search, FieldError> {
        let table: toml::Table = text.parse().unwrap();
        let resolve = |n: &str| match n {
            "lr" => Some("train.lr".to_owned()),
            "init" => Some("model.init".to_owned()),
            n if n.contains('.') => Some(n.to_owned()),
            _ => None,
        };
        Search::parse(table, &resolve, &["model.kernel_size"], &|v| match v {
            toml::Value::String(s) => Json::String(s),
            toml::Value::Integer(i) => Json::from(i),
            other => Json::String(other.to_string()),
        })
    }

    #[test]
    fn draws_are_reproducible_in_range_and_independent_of_the_sample_count() {
        let s = parse(
            "samples = 200\nlr = { loguniform = [1e-3, 1e-1] }\n\"train.weight_decay\" = { uniform = [0.0, 0.001] }\n\
             \"train.batch_size\" = { int_uniform = [64, 66] }\ninit = { choice = [\"kaiming-uniform\", \"kaiming-normal\"] }",
        )
        .unwrap();
        let mut seen_batch = std::collections::BTreeSet::new();
        let mut below_1e2 = 0;
        for i in 0..200 {
            let d = s.draw(i);
            let get = |name: &str| d.iter().find(|(a, _)| a.name == name).unwrap().1.clone();
            let lr = get("lr").as_f64().unwrap();
            assert!((1e-3..1e-1).contains(&lr), "{lr}");
            if lr < 1e-2 {
                below_1e2 += 1;
            }
            let wd = get("train.weight_decay").as_f64().unwrap();
            assert!((0.0..0.001).contains(&wd), "{wd}");
            seen_batch.insert(get("train.batch_size").as_i64().unwrap());
            assert!(get("init").is_string());
            assert_eq!(format!("{lr:.5e}").parse::<f64>().unwrap(), lr, "6 significant digits");
        }
        assert_eq!(seen_batch.into_iter().collect::<Vec<_>>(), vec![64, 65, 66]);
        // Log-uniform: about half the draws below the geometric middle (1e-2).
        assert!((70..130).contains(&below_1e2), "{below_1e2}");
        const FIELDS: &str = "lr = { loguniform = [1e-3, 1e-1] }\n\"train.weight_decay\" = { uniform = [0.0, 0.001] }\n\
             \"train.batch_size\" = { int_uniform = [64, 66] }\ninit = { choice = [\"kaiming-uniform\", \"kaiming-normal\"] }";
        let fewer = parse(&format!("samples = 3\n{FIELDS}")).unwrap();
        for i in 0..3 {
            assert_eq!(fewer.draw(i), s.draw(i), "sample {i} does not depend on the count");
        }
        let other_seed = parse("samples = 3\nseed = 1\nlr = { loguniform = [1e-3, 1e-1] }").unwrap();
        assert_ne!(other_seed.draw(0)[0].1, s.draw(0)[0].1);
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field, says) in [
            (
                "lr = { loguniform = [0.0, 1.0] }\nsamples = 2",
                "search.lr.loguniform",
                "> 0",
            ),
            (
                "lr = { uniform = [1.0, 0.5] }\nsamples = 2",
                "search.lr.uniform",
                "low < high",
            ),
            (
                "lr = { gaussian = [1.0, 0.5] }\nsamples = 2",
                "search.lr",
                "unknown distribution",
            ),
            ("lr = 0.1\nsamples = 2", "search.lr", "a distribution"),
            ("lr = { uniform = [0.1, 0.2] }", "search.samples", "missing"),
            ("lr = { uniform = [0.1, 0.2] }\nsamples = 0", "search.samples", "1..="),
            ("samples = 2", "search.samples", "no field to search"),
            (
                "\"model.kernel_size\" = { choice = [3, 5] }\nsamples = 2",
                "search.model.kernel_size",
                "[grid] axis too",
            ),
            ("init = { choice = [] }\nsamples = 2", "search.init.choice", "non-empty"),
            ("bogus = { choice = [1] }\nsamples = 2", "search.bogus", "unknown field"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.field == field && e.message.contains(says), "{text}: {e}");
        }
    }
}
