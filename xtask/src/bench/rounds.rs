//! Side-by-side measurement shared by the workloads: every round runs each configuration once,
//! in a rotated order, so that slow drifts of the machine spread over all of them.

use anyhow::Context as _;
use serde::Serialize;

use super::{
    bpf_stats,
    config::{Config, Tools},
    tracer::{self, Poker, Tracer, TracerSample},
};

/// One configuration measured once.
#[derive(Serialize)]
pub struct RoundResult<T> {
    pub round: usize,
    pub config: Config,
    /// What the workload generator printed.
    pub workload: T,
    pub tracer: Option<TracerSample>,
}

/// What every traced run needs.
pub struct Setup<'a> {
    pub tools: &'a Tools,
    pub poker: &'a Poker,
}

impl Setup<'_> {
    /// Starts the configuration's tracer and waits until it traces; None when untraced.
    pub fn start_tracer(&self, config: Config) -> anyhow::Result<Option<Tracer>> {
        let Some(command) = config.tracer_command(self.tools) else {
            return Ok(None);
        };
        let poker = config.needs_pokes().then_some(self.poker);
        Tracer::start(config.label(), command, poker).map(Some)
    }
}

/// Runs `workload` under each of `configs` once per round; `rate` says how a run went, for the
/// progress lines.
pub fn round_robin<T>(
    name: &str,
    configs: &[Config],
    rounds: u32,
    setup: &Setup<'_>,
    mut workload: impl FnMut() -> anyhow::Result<T>,
    rate: impl Fn(&T) -> String,
) -> anyhow::Result<Vec<RoundResult<T>>> {
    let mut results = Vec::new();
    for round in 0..rounds as usize {
        for index in 0..configs.len() {
            let config = configs[(round + index) % configs.len()];
            let (result, tracer) = traced(config, setup, &mut workload)
                .with_context(|| format!("{name}: round {}, {}", round + 1, config.label()))?;
            let ready = tracer.as_ref().map_or(String::new(), |t| {
                format!(" (tracer ready after {:.1} s)", t.ready_after_s)
            });
            eprintln!(
                "bench: {name} round {}/{rounds} {:<36} {:>14}{ready}",
                round + 1,
                config.label(),
                rate(&result)
            );
            results.push(RoundResult { round, config, workload: result, tracer });
        }
    }
    Ok(results)
}

/// Starts the configuration's tracer (if any) and waits until it traces, runs the workload,
/// samples the tracer and stops it.
fn traced<T>(
    config: Config,
    setup: &Setup<'_>,
    workload: &mut impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Option<TracerSample>)> {
    let Some(tracer) = setup.start_tracer(config)? else {
        return Ok((workload()?, None));
    };
    let _stats = config.counts_bpf_time().then(bpf_stats::enable).transpose()?;
    let window = tracer.begin_window()?;
    let result = workload()?;
    let sample = tracer.finish(window)?;
    if config.is_connwatch() {
        tracer::check_connwatch_lines(&sample)?;
    }
    Ok((result, Some(sample)))
}

/// The median of the finite `values` (the mean of the middle two for an even count); `None`
/// when there are none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_finite_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0, f64::INFINITY]), Some(5.0));
        assert_eq!(median(vec![]), None);
    }
}
