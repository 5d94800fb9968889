//! A parsed command line back into arguments, for the child processes this binary starts
//! (`convsweep run`'s workers, a worker's trial processes): the child gets the very struct its
//! parent filled in, so that a renamed field or flag changes both ends at once and no flag
//! name is written out as a string.
//!
//! The struct is serialised with serde and every field is matched to the clap argument of the
//! same id (clap names an argument after its field, as serde does): `None` is left out, a
//! `SetTrue` flag is given when true, a list repeats its flag, anything else is `--flag=value`;
//! a subcommand (an enum serialised as `{"name": {...}}`) is given by its name and its own
//! fields. Tests parse what this makes and get the struct back.

use std::ffi::OsString;

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches};
use serde::Serialize;
use serde_json::Value;

/// The arguments (without the program) that make clap parse `value` again.
pub fn of<T: CommandFactory + Serialize>(value: &T) -> Result<Vec<OsString>> {
    let json = serde_json::to_value(value).context("cannot write the command line of a child process")?;
    let mut out = Vec::new();
    push_args(&T::command(), &json, &mut out)?;
    Ok(out)
}

/// A flags struct parsed from `args` alone: every other field at the default its `#[arg]`
/// attribute gives it, environment variables ignored. The attributes stay the one place a
/// default is written; code that fills in a struct to start a child starts from these.
pub fn defaults<T: Args + FromArgMatches>(args: &[&str]) -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|a| a.env(None::<&str>));
    let matches = command
        .try_get_matches_from(std::iter::once("defaults").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("the defaults of a flags struct with {args:?} parse: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("the defaults of a flags struct fill it: {e}"))
}

fn scalar(v: &Value) -> Result<String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => bail!("{other} is not a value a flag takes"),
    })
}

fn push_args(cmd: &clap::Command, json: &Value, out: &mut Vec<OsString>) -> Result<()> {
    let Value::Object(fields) = json else {
        bail!("the arguments of `{}` are not a struct", cmd.get_name());
    };
    let mut positionals = Vec::new();
    let mut subcommand = None;
    for (id, value) in fields {
        if value.is_null() {
            continue;
        }
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id().as_str() == id) else {
            // Not an argument: the field that holds the subcommand.
            if let Value::Object(variant) = value
                && variant.len() == 1
                && let Some((name, args)) = variant.iter().next()
                && let Some(sub) = cmd.find_subcommand(name)
            {
                subcommand = Some((sub.clone(), args.clone()));
                continue;
            }
            bail!("`{}` has no argument for the field {id:?}", cmd.get_name());
        };
        let values: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        let Some(long) = arg.get_long() else {
            positionals.push((arg.get_index().unwrap_or(usize::MAX), values));
            continue;
        };
        for v in values {
            match arg.get_action() {
                ArgAction::SetTrue => {
                    if v.as_bool() == Some(true) {
                        out.push(format!("--{long}").into());
                    }
                }
                ArgAction::SetFalse => {
                    if v.as_bool() == Some(false) {
                        out.push(format!("--{long}").into());
                    }
                }
                _ => out.push(format!("--{long}={}", scalar(v)?).into()),
            }
        }
    }
    positionals.sort_by_key(|(index, _)| *index);
    for (_, values) in positionals {
        for v in values {
            out.push(scalar(v)?.into());
        }
    }
    if let Some((sub, args)) = subcommand {
        out.push(sub.get_name().into());
        push_args(&sub, &args, out)?;
    }
    Ok(())
}
