//! Which scenarios run together, and on how many emulators at once.
//!
//! Bochs is one thread even with two emulated CPUs, so a machine with N
//! cores runs N scenarios at once. A scenario that starts from another's
//! disk (`Disk::From`) runs after it on the same worker: the scenarios form
//! chains, and a worker takes whole chains, longest first (by their
//! wall-clock limits, the only cost every scenario states), so the long
//! Linux chains start early and the short ones fill in at the end.

use std::sync::Mutex;

use crate::scenario::{Disk, Scenario};

/// How many scenarios run at once: `XTASK_JOBS` if set (at least 1), else
/// one per core, at most 2 (CI's machines have 2 cores; more Bochs
/// processes than cores only slow each one down past its limits).
pub fn jobs() -> usize {
    match std::env::var("XTASK_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => n.max(1),
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(2),
    }
}

/// `list` as chains: each scenario whose disk comes from another scenario
/// of `list` joins that scenario's chain, after it; chains in the order a
/// worker should take them.
pub fn chains(list: Vec<Scenario>) -> Vec<Vec<Scenario>> {
    let mut chains: Vec<Vec<Scenario>> = Vec::new();
    let mut waiting: Vec<(&str, Scenario)> = Vec::new();
    for s in list {
        match s.disk {
            Disk::From(source) => waiting.push((source, s)),
            _ => chains.push(vec![s]),
        }
    }
    for (source, s) in waiting {
        match chains
            .iter_mut()
            .find(|c| c.iter().any(|x| x.name == source))
        {
            Some(chain) => chain.push(s),
            // Its source is not in this run: the scenario runs it first
            // itself (scenario::prepare_disk).
            None => chains.push(vec![s]),
        }
    }
    // Stable: equal costs keep the list's order.
    chains
        .sort_by_key(|c| std::cmp::Reverse(c.iter().map(|s| s.limit).sum::<std::time::Duration>()));
    chains
}

/// Runs `each` on every scenario of `chains` with `jobs` workers, a chain
/// at a time per worker; `each` sees the scenarios of one chain in order,
/// with the name of its disk's source if that failed before it (then its
/// disk is not there: `each` should not run it), and says whether it
/// passed.
pub fn run<F>(chains: Vec<Vec<Scenario>>, jobs: usize, each: F)
where
    F: Fn(&Scenario, Option<&'static str>) -> bool + Sync,
{
    let queue = Mutex::new(chains.into_iter());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let Some(chain) = queue.lock().unwrap().next() else {
                    break;
                };
                // Only a scenario whose disk's source failed is told: a
                // failed sibling from the same source leaves that disk as
                // it was.
                let mut failed: Vec<&'static str> = Vec::new();
                for s in &chain {
                    let source_failed = match s.disk {
                        Disk::From(source) => failed.iter().copied().find(|&f| f == source),
                        _ => None,
                    };
                    if !each(s, source_failed) {
                        failed.push(s.name);
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario;

    fn names(chains: &[Vec<Scenario>]) -> Vec<Vec<&'static str>> {
        chains
            .iter()
            .map(|c| c.iter().map(|s| s.name).collect())
            .collect()
    }

    #[test]
    fn a_scenario_runs_after_the_one_whose_disk_it_takes() {
        let all: Vec<_> = scenario::all()
            .into_iter()
            .chain(scenario::linux())
            .collect();
        let chains = names(&chains(all));
        let chain = chains
            .iter()
            .find(|c| c.contains(&"migrate-two-hosts"))
            .expect("migrate-two-hosts is in a chain");
        assert_eq!(chain[0], "migrate-source");
        assert!(chain.contains(&"migrate-other-key"));
        // Every scenario is in exactly one chain.
        let total: usize = chains.iter().map(Vec::len).sum();
        let count = scenario::all().len() + scenario::linux().len();
        assert_eq!(total, count);
    }

    #[test]
    fn a_dependent_alone_runs_alone() {
        let only = vec![scenario::find("migrate-two-hosts").unwrap()];
        assert_eq!(names(&chains(only)), vec![vec!["migrate-two-hosts"]]);
    }

    /// What each of migrate-source, -two-hosts and -other-key is told
    /// when the one named `failing` fails.
    fn told_when_failing(failing: &str) -> Vec<(&'static str, Option<&'static str>)> {
        let list = vec![
            scenario::find("migrate-source").unwrap(),
            scenario::find("migrate-two-hosts").unwrap(),
            scenario::find("migrate-other-key").unwrap(),
        ];
        let told = Mutex::new(Vec::new());
        run(chains(list), 2, |s, failed| {
            told.lock().unwrap().push((s.name, failed));
            s.name != failing
        });
        told.into_inner().unwrap()
    }

    #[test]
    fn after_a_failure_the_rest_of_its_chain_hears_of_it() {
        assert_eq!(
            told_when_failing("migrate-source"),
            vec![
                ("migrate-source", None),
                ("migrate-two-hosts", Some("migrate-source")),
                ("migrate-other-key", Some("migrate-source")),
            ]
        );
    }

    #[test]
    fn a_failed_sibling_does_not_stop_the_others_from_the_same_source() {
        assert_eq!(
            told_when_failing("migrate-two-hosts"),
            vec![
                ("migrate-source", None),
                ("migrate-two-hosts", None),
                ("migrate-other-key", None),
            ]
        );
    }

    #[test]
    fn longest_chains_first() {
        let list = vec![
            scenario::find("boot").unwrap(),
            scenario::find("migrate-two-hosts").unwrap(),
            scenario::find("migrate-source").unwrap(),
        ];
        let chains = names(&chains(list));
        assert_eq!(chains[0], vec!["migrate-source", "migrate-two-hosts"]);
        assert_eq!(chains[1], vec!["boot"]);
    }

    #[test]
    fn every_scenario_runs_once_whatever_the_workers() {
        let list: Vec<_> = scenario::all().into_iter().take(9).collect();
        let want: Vec<_> = list.iter().map(|s| s.name).collect();
        for jobs in [1, 2, 5] {
            let seen = Mutex::new(Vec::new());
            run(
                chains(scenario::all().into_iter().take(9).collect()),
                jobs,
                |s, _| {
                    seen.lock().unwrap().push(s.name);
                    true
                },
            );
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            let mut want = want.clone();
            want.sort();
            assert_eq!(seen, want, "{jobs} workers");
        }
    }
}
