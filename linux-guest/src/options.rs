//! `workload`'s command line. Every bad option is an error naming it.

use std::fmt;

/// The usage text (`workload --help`).
pub const USAGE: &str = "\
workload: a known working set with a checksum pattern (Thermocline)

USAGE: workload [OPTIONS]

  --size-mib N        Region size in MiB (default 64)
  --hot-percent P     Part of the region kept hot, 0-100 (default 10)
  --phases K          Times the hot part moves during the run (default 4)
  --passes N          Run N passes over the hot part (default 100)
  --seconds S         Run for S seconds instead of a number of passes
  --seed X            Pattern seed (default 1)
  --report-hot-pfns   After the first pass of each phase, print the
                      physical frames of the hot part (/proc/self/pagemap;
                      needs root)
  --help              Print this text

Exit status: 0 when every byte read back as written, 1 on mismatches,
2 on a bad command line.
";

/// How long a run lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// This many passes over the hot part.
    Passes(u64),
    /// This many seconds of passes.
    Seconds(u64),
}

/// A run's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Region size in MiB.
    pub size_mib: u64,
    /// Percentage of the region kept hot.
    pub hot_percent: u32,
    /// Number of phases (positions of the hot part).
    pub phases: u32,
    /// Passes or seconds.
    pub length: Length,
    /// Pattern seed.
    pub seed: u64,
    /// Print the hot part's physical frames each phase.
    pub report_hot_pfns: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            size_mib: 64,
            hot_percent: 10,
            phases: 4,
            length: Length::Passes(100),
            seed: 1,
            report_hot_pfns: false,
        }
    }
}

/// What the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run with these options.
    Run(Options),
    /// Print [`USAGE`].
    Help,
}

/// A bad command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionsError {
    /// An argument that is no option.
    Unknown(String),
    /// An option given without its value.
    MissingValue(&'static str),
    /// A value that is no number.
    NotANumber {
        /// The option.
        option: &'static str,
        /// What was given.
        value: String,
    },
    /// A number outside what the option takes.
    OutOfRange {
        /// The option.
        option: &'static str,
        /// What was given.
        value: u64,
        /// What it takes.
        allowed: &'static str,
    },
    /// `--passes` and `--seconds` together.
    PassesAndSeconds,
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(arg) => write!(f, "unknown argument `{arg}` (see --help)"),
            Self::MissingValue(option) => write!(f, "{option} needs a value"),
            Self::NotANumber { option, value } => {
                write!(f, "{option} {value}: not a number")
            }
            Self::OutOfRange {
                option,
                value,
                allowed,
            } => write!(f, "{option} {value}: must be {allowed}"),
            Self::PassesAndSeconds => write!(f, "give --passes or --seconds, not both"),
        }
    }
}

/// Largest region, in MiB: 1 TiB, far beyond any guest; the kernel's
/// out-of-memory handling decides what actually fits.
const MAX_SIZE_MIB: u64 = 1 << 20;

fn number(
    option: &'static str,
    value: Option<String>,
    min: u64,
    max: u64,
    allowed: &'static str,
) -> Result<u64, OptionsError> {
    let value = value.ok_or(OptionsError::MissingValue(option))?;
    let parsed = value
        .parse::<u64>()
        .map_err(|_| OptionsError::NotANumber { option, value })?;
    if parsed < min || parsed > max {
        return Err(OptionsError::OutOfRange {
            option,
            value: parsed,
            allowed,
        });
    }
    Ok(parsed)
}

/// Parses the arguments after the program name.
///
/// # Errors
/// An [`OptionsError`] naming the first bad argument.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, OptionsError> {
    let mut o = Options::default();
    let (mut passes, mut seconds) = (None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--size-mib" => {
                o.size_mib = number("--size-mib", args.next(), 1, MAX_SIZE_MIB, "1 to 1048576")?;
            }
            "--hot-percent" => {
                o.hot_percent = number("--hot-percent", args.next(), 0, 100, "0 to 100")? as u32;
            }
            "--phases" => {
                o.phases = number(
                    "--phases",
                    args.next(),
                    1,
                    u64::from(u32::MAX),
                    "at least 1",
                )? as u32;
            }
            "--passes" => {
                passes = Some(number("--passes", args.next(), 1, u64::MAX, "at least 1")?);
            }
            "--seconds" => {
                seconds = Some(number("--seconds", args.next(), 1, u64::MAX, "at least 1")?);
            }
            "--seed" => o.seed = number("--seed", args.next(), 0, u64::MAX, "a u64")?,
            "--report-hot-pfns" => o.report_hot_pfns = true,
            _ => return Err(OptionsError::Unknown(arg)),
        }
    }
    o.length = match (passes, seconds) {
        (Some(_), Some(_)) => return Err(OptionsError::PassesAndSeconds),
        (Some(n), None) => Length::Passes(n),
        (None, Some(s)) => Length::Seconds(s),
        (None, None) => o.length,
    };
    Ok(Command::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, OptionsError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_every_option() {
        assert_eq!(p(&[]), Ok(Command::Run(Options::default())));
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        let got = p(&[
            "--size-mib",
            "128",
            "--hot-percent",
            "25",
            "--phases",
            "3",
            "--seconds",
            "20",
            "--seed",
            "9",
            "--report-hot-pfns",
        ]);
        assert_eq!(
            got,
            Ok(Command::Run(Options {
                size_mib: 128,
                hot_percent: 25,
                phases: 3,
                length: Length::Seconds(20),
                seed: 9,
                report_hot_pfns: true,
            }))
        );
        assert!(matches!(
            p(&["--passes", "7"]),
            Ok(Command::Run(Options {
                length: Length::Passes(7),
                ..
            }))
        ));
    }

    #[test]
    fn bad_options_are_named() {
        let cases: [(&[&str], OptionsError); 8] = [
            (
                &["--sizemib", "4"],
                OptionsError::Unknown("--sizemib".into()),
            ),
            (&["--size-mib"], OptionsError::MissingValue("--size-mib")),
            (
                &["--size-mib", "64M"],
                OptionsError::NotANumber {
                    option: "--size-mib",
                    value: "64M".into(),
                },
            ),
            (
                &["--size-mib", "0"],
                OptionsError::OutOfRange {
                    option: "--size-mib",
                    value: 0,
                    allowed: "1 to 1048576",
                },
            ),
            (
                &["--hot-percent", "101"],
                OptionsError::OutOfRange {
                    option: "--hot-percent",
                    value: 101,
                    allowed: "0 to 100",
                },
            ),
            (
                &["--phases", "0"],
                OptionsError::OutOfRange {
                    option: "--phases",
                    value: 0,
                    allowed: "at least 1",
                },
            ),
            (
                &["--passes", "-1"],
                OptionsError::NotANumber {
                    option: "--passes",
                    value: "-1".into(),
                },
            ),
            (
                &["--passes", "3", "--seconds", "4"],
                OptionsError::PassesAndSeconds,
            ),
        ];
        for (args, want) in cases {
            let got = p(args).unwrap_err();
            assert_eq!(got, want, "{args:?}");
            assert!(!got.to_string().is_empty());
        }
        assert_eq!(
            p(&["--hot-percent", "101"]).unwrap_err().to_string(),
            "--hot-percent 101: must be 0 to 100"
        );
    }
}
