//! Skips that could hide regressions: the scenario guest's checks that a
//! native run (`NAME-native`, Bochs's VMX) runs and the same scenario under
//! L0 (`NAME`) skips. A check skipped under L0 counts as passed, so a
//! feature L0 stopped offering by accident would pass the same way; when
//! both runs of a pair ran in one `cargo xtask test`, every check skipped
//! under L0 but not natively must be in [`L0_ONLY_SKIPS`], or the pair
//! fails. The other direction (run under L0, skipped natively: `l0-alive`)
//! is fine.

use crate::verdict::Tests;

/// A check L0 skips by design, and why (docs/testing.md, "Skips").
pub struct Allowed {
    pub check: &'static str,
    pub reason: &'static str,
}

/// The only checks a scenario may skip under L0 and run natively: none
/// (L0 offers everything the scenario guests use where Bochs has it).
pub const L0_ONLY_SKIPS: &[Allowed] = &[];

/// The native run of an L0 scenario and the L0 run of a native one.
pub fn partner(name: &str) -> String {
    match name.strip_suffix("-native") {
        Some(l0) => l0.to_string(),
        None => format!("{name}-native"),
    }
}

/// What one pair's skip sets show.
#[derive(Debug, Default, PartialEq)]
pub struct Comparison {
    /// Skipped under L0, run natively, allowed: (test, check, the
    /// allow-list's reason).
    pub allowed: Vec<(String, String, &'static str)>,
    /// Skipped under L0, run natively, not allowed: (test, check, why L0
    /// skipped it).
    pub unexpected: Vec<(String, String, String)>,
}

/// Compares the checks each test of the L0 run skipped with the native
/// run's: what L0 alone skips is allowed only through `allow`.
pub fn compare(native: &Tests, l0: &Tests, allow: &[Allowed]) -> Comparison {
    let mut c = Comparison::default();
    for t in &l0.tests {
        let native_skips = native.get(&t.name).map(|n| &n.skipped);
        for (check, why) in &t.skipped {
            let skipped_natively =
                native_skips.is_some_and(|s| s.iter().any(|(name, _)| name == check));
            if skipped_natively {
                continue;
            }
            if let Some(a) = allow.iter().find(|a| a.check == check) {
                c.allowed.push((t.name.clone(), check.clone(), a.reason));
            } else {
                c.unexpected
                    .push((t.name.clone(), check.clone(), why.clone()));
            }
        }
    }
    c
}

impl Comparison {
    /// Why the pair fails, if it does.
    pub fn problem(&self, l0: &str, native: &str) -> Option<String> {
        if self.unexpected.is_empty() {
            return None;
        }
        let mut s = format!(
            "{l0} skipped {} check(s) that {native} ran, not in the allow-list \
             (xtask/src/skips.rs, docs/testing.md):",
            self.unexpected.len()
        );
        for (test, check, why) in &self.unexpected {
            s.push_str(&format!("\n    {test}: {check} (under L0: skipped: {why})"));
        }
        Some(s)
    }

    /// One line for the run's output.
    pub fn summary(&self) -> String {
        let names = |v: Vec<&String>| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        match (self.unexpected.is_empty(), self.allowed.is_empty()) {
            (true, true) => "no L0-only skips".into(),
            (true, false) => format!(
                "L0-only skips all allowed: {}",
                self.allowed
                    .iter()
                    .map(|(_, check, why)| format!("{check} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (false, _) => format!(
                "L0-only skips NOT allowed: {}",
                names(self.unexpected.iter().map(|u| &u.1).collect())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::parse;

    const ALLOW: &[Allowed] = &[Allowed {
        check: "ept-ad-bits",
        reason: "test",
    }];

    fn run(test: &str, checks: &[&str]) -> Tests {
        let mut s = format!("TEST {test} START\n");
        for c in checks {
            s.push_str(&format!("CHECK {c}\n"));
        }
        s.push_str(&format!("TEST {test} PASS ({} checks)\n", checks.len()));
        parse(&s)
    }

    #[test]
    fn pairs_by_name() {
        assert_eq!(partner("nested-ept"), "nested-ept-native");
        assert_eq!(partner("nested-ept-paged-native"), "nested-ept-paged");
        assert_eq!(partner("nested-basic-noept"), "nested-basic-noept-native");
    }

    #[test]
    fn same_skips_pass() {
        let native = run("t", &["a ok 1", "b ok skipped: no x"]);
        let l0 = run("t", &["a ok 1", "b ok skipped: no x"]);
        let c = compare(&native, &l0, ALLOW);
        assert_eq!(c, Comparison::default());
        assert_eq!(c.problem("t", "t-native"), None);
        assert_eq!(c.summary(), "no L0-only skips");
    }

    #[test]
    fn allowed_l0_only_skip_passes() {
        let native = run("nested-ept", &["ept-ad-bits ok dirty set"]);
        let l0 = run("nested-ept", &["ept-ad-bits ok skipped: A/D not offered"]);
        let c = compare(&native, &l0, ALLOW);
        assert_eq!(
            c.allowed,
            [("nested-ept".to_string(), "ept-ad-bits".to_string(), "test")]
        );
        assert_eq!(c.problem("nested-ept", "nested-ept-native"), None);
        assert_eq!(c.summary(), "L0-only skips all allowed: ept-ad-bits (test)");
    }

    #[test]
    fn unlisted_l0_only_skip_fails_naming_the_check() {
        let native = run("nested-basic", &["tsc-offset ok 5", "hlt-exit ok 12"]);
        let l0 = run(
            "nested-basic",
            &[
                "tsc-offset ok skipped: TSC offsetting not offered",
                "hlt-exit ok 12",
            ],
        );
        let c = compare(&native, &l0, ALLOW);
        assert!(c.allowed.is_empty());
        let p = c.problem("nested-basic", "nested-basic-native").unwrap();
        assert_eq!(
            p,
            "nested-basic skipped 1 check(s) that nested-basic-native ran, not in the \
             allow-list (xtask/src/skips.rs, docs/testing.md):\n    \
             nested-basic: tsc-offset (under L0: skipped: TSC offsetting not offered)"
        );
        assert_eq!(c.summary(), "L0-only skips NOT allowed: tsc-offset");
        // The same skip is fine once listed.
        let listed = [Allowed {
            check: "tsc-offset",
            reason: "test",
        }];
        assert_eq!(compare(&native, &l0, &listed).problem("a", "b"), None);
    }

    #[test]
    fn skipped_natively_and_run_under_l0_is_fine() {
        let native = run("nested-basic", &["l0-alive ok skipped: running natively"]);
        let l0 = run("nested-basic", &["l0-alive ok EBX 0x7948304c"]);
        assert_eq!(compare(&native, &l0, &[]), Comparison::default());
    }

    #[test]
    fn a_check_missing_natively_counts_as_run_there() {
        // The native run never printed it (it failed early, or the guests
        // differ): the L0 skip is still L0's alone.
        let native = run("t", &["a ok 1"]);
        let l0 = run("t", &["a ok 1", "b ok skipped: no b"]);
        assert_eq!(compare(&native, &l0, &[]).unexpected.len(), 1);
    }

    #[test]
    fn the_allow_list_is_documented() {
        let doc = include_str!("../../docs/testing.md");
        let start = "<!-- allow-list: keep in step with L0_ONLY_SKIPS";
        let table = doc.split(start).nth(1).expect("the allow-list table");
        let table = table.split("<!-- end of allow-list -->").next().unwrap();
        let rows = table.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            L0_ONLY_SKIPS.len(),
            "docs/testing.md lists other checks"
        );
        let mut seen = Vec::new();
        for a in L0_ONLY_SKIPS {
            assert!(
                !a.reason.is_empty() && !a.reason.contains('\n'),
                "{}",
                a.check
            );
            assert!(!seen.contains(&a.check), "{} listed twice", a.check);
            seen.push(a.check);
            assert!(
                table.contains(&format!("| `{}` | {} |", a.check, a.reason)),
                "{} is not in docs/testing.md's allow-list table",
                a.check
            );
        }
    }
}
