//! What both throughput benchmarks share: repeated rounds, and the
//! statistics that summarize them.

use std::error::Error;
use std::time::Duration;

/// Rounds per concurrency level when `BENCH_ROUNDS` is unset (`--bench`).
pub const DEFAULT_ROUNDS: usize = 3;
const MAX_ROUNDS: usize = 20;

/// `BENCH_ROUNDS`: how many times each concurrency level's workloads run in
/// turn, 1 to 20; one for a smoke run (it checks that the benchmark works),
/// [`DEFAULT_ROUNDS`] otherwise.
pub fn rounds_setting(smoke: bool) -> Result<usize, Box<dyn Error + Send + Sync>> {
    match std::env::var("BENCH_ROUNDS") {
        Ok(value) => value
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=MAX_ROUNDS).contains(n))
            .ok_or_else(|| format!("BENCH_ROUNDS={value:?}: want 1 to {MAX_ROUNDS}").into()),
        Err(std::env::VarError::NotPresent) => Ok(if smoke { 1 } else { DEFAULT_ROUNDS }),
        Err(e) => Err(format!("BENCH_ROUNDS: {e}").into()),
    }
}

/// `BENCH_CONCURRENCY`: a comma-separated subset of `levels` (say `64`, for
/// a profile of one level); all of them when unset.
pub fn concurrency_setting(levels: &[usize]) -> Result<Vec<usize>, Box<dyn Error + Send + Sync>> {
    let value = match std::env::var("BENCH_CONCURRENCY") {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Ok(levels.to_vec()),
        Err(e) => return Err(format!("BENCH_CONCURRENCY: {e}").into()),
    };
    value
        .split(',')
        .map(|part| {
            part.trim()
                .parse()
                .ok()
                .filter(|n| levels.contains(n))
                .ok_or_else(|| {
                    format!(
                        "BENCH_CONCURRENCY={value:?}: want a comma-separated subset of {levels:?}"
                    )
                    .into()
                })
        })
        .collect()
}

/// `BENCH_WORKLOADS`: a comma-separated subset of `all`, named by `key`
/// (say one workload, for a profile of it), kept in the order of `all`;
/// all of them when unset.
pub fn workloads_setting<W: Copy + PartialEq>(
    all: &[W],
    key: impl Fn(W) -> &'static str,
) -> Result<Vec<W>, Box<dyn Error + Send + Sync>> {
    let value = match std::env::var("BENCH_WORKLOADS") {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Ok(all.to_vec()),
        Err(e) => return Err(format!("BENCH_WORKLOADS: {e}").into()),
    };
    let mut chosen = Vec::new();
    for part in value.split(',') {
        let workload = all
            .iter()
            .copied()
            .find(|&w| key(w) == part.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|&w| key(w)).collect();
                format!("BENCH_WORKLOADS={value:?}: want a comma-separated subset of {names:?}")
            })?;
        chosen.push(workload);
    }
    Ok(all.iter().copied().filter(|w| chosen.contains(w)).collect())
}

/// `runs` grouped by `key`, the groups in the order their keys first
/// appear (for a report: each workload and level once, in running order).
pub fn groups<R, K: PartialEq + Copy>(runs: &[R], key: impl Fn(&R) -> K) -> Vec<(K, Vec<&R>)> {
    let mut groups: Vec<(K, Vec<&R>)> = Vec::new();
    for run in runs {
        let k = key(run);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(run),
            None => groups.push((k, vec![run])),
        }
    }
    groups
}

/// A duration from a number of seconds (zero if not one, e.g. NaN).
pub fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or_default()
}

/// The median of some rounds' values and their range.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// NaN throughout if there are no values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_unstable_by(f64::total_cmp);
        let median = match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `0.42 (0.38–0.47)`, or just the median when the rounds agree or
    /// there was one; `–` with no ratio (its reference was not run).
    pub fn ratio_text(&self) -> String {
        if self.median.is_nan() {
            "–".into()
        } else if self.min == self.max {
            format!("{:.2}", self.median)
        } else {
            format!("{:.2} ({:.2}–{:.2})", self.median, self.min, self.max)
        }
    }
}
