//! Hand-rolled command-line flags for the networking examples (no argument-parsing crate).
//!
//! Flags are `--name value` or `--name=value`; a flag followed by another flag (or by nothing)
//! is a switch. `--help` (or `-h`) prints the usage and exits with status 0; a bad or unknown
//! flag prints the error and the usage and exits with status 2, as command-line tools do.
//!
//! Each example includes this file with `#[path = "..."] mod cli;` and uses what it needs.
#![allow(dead_code)] // each example uses a subset

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// The command line, parsed into flags that the example then takes one by one.
pub(crate) struct Flags {
    usage: &'static str,
    flags: Vec<(String, Option<String>)>,
}

impl Flags {
    /// Parses the process's arguments; exits on `--help` or on a stray positional argument.
    pub(crate) fn from_env(usage: &'static str) -> Flags {
        match Flags::parse(usage, std::env::args().skip(1)) {
            Ok(flags) => flags,
            Err(e) => fail(usage, e),
        }
    }

    /// Parses `args` (without the program name).
    pub(crate) fn parse(
        usage: &'static str,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Flags, String> {
        let mut flags: Vec<(String, Option<String>)> = Vec::new();
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            match flag.split_once('=') {
                Some((name, value)) => flags.push((name.to_string(), Some(value.to_string()))),
                None => {
                    let value = args.next_if(|next| !next.starts_with("--"));
                    flags.push((flag.to_string(), value));
                }
            }
        }
        Ok(Flags { usage, flags })
    }

    /// Takes `--name`'s value, parsed; `None` if the flag is absent. The last occurrence wins.
    pub(crate) fn opt<T>(&mut self, name: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let mut found = None;
        while let Some(i) = self.flags.iter().position(|(n, _)| n == name) {
            found = Some(self.flags.remove(i).1);
        }
        let value = found?.unwrap_or_else(|| fail(self.usage, format!("--{name} needs a value")));
        match value.parse() {
            Ok(v) => Some(v),
            Err(e) => fail(self.usage, format!("--{name} {value:?}: {e}")),
        }
    }

    /// Takes `--name`'s value, or `default` if it is absent.
    pub(crate) fn get<T>(&mut self, name: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: Display,
    {
        self.opt(name).unwrap_or(default)
    }

    /// Takes the switch `--name` (a flag without a value).
    pub(crate) fn switch(&mut self, name: &str) -> bool {
        let mut found = false;
        while let Some(i) = self.flags.iter().position(|(n, _)| n == name) {
            let (_, value) = self.flags.remove(i);
            if let Some(v) = value {
                fail(self.usage, format!("--{name} takes no value (got {v:?})"));
            }
            found = true;
        }
        found
    }

    /// Ends parsing: any flag not taken is an error.
    pub(crate) fn finish(self) {
        if let Some((name, _)) = self.flags.first() {
            fail(self.usage, format!("unknown flag --{name}"));
        }
    }
}

/// Prints `error` and the usage, and exits with status 2.
pub(crate) fn fail(usage: &str, error: impl Display) -> ! {
    eprintln!("error: {error}\n\n{usage}");
    std::process::exit(2);
}

/// A duration written as a number and a unit: `250ms`, `1.5s`, `2m`, `100us`; a bare number is
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: f64 = number.parse().map_err(|_| format!("not a duration: {s:?} (try 250ms or 2s)"))?;
        let scale = match unit {
            "" | "s" => 1.0,
            "ms" => 1e-3,
            "us" => 1e-6,
            "m" => 60.0,
            _ => return Err(format!("unknown unit {unit:?} in {s:?} (use us, ms, s or m)")),
        };
        Duration::try_from_secs_f64(number * scale).map(Dur).map_err(|e| format!("{s:?}: {e}"))
    }
}
