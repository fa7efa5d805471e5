//! The scenario guest's results, read from its COM1 text by test name
//! (the format of tests/guest/src/check.rs): `TEST <name> START`, one
//! `CHECK <check> ok|FAIL <detail>` per check, then `TEST <name> PASS (<n>
//! checks)` or `TEST <name> FAIL <why>`. Other lines may come in between.

/// How a test ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Passed {
        checks: u32,
    },
    /// The rest of the verdict line: `(1 of 9 checks failed)`, `panic`...
    Failed(String),
}

#[derive(Debug, Default, PartialEq)]
pub struct Test {
    pub name: String,
    /// How often `TEST <name> START` appeared: more than once means the
    /// guest ran it again (a reset), which no scenario intends.
    pub starts: u32,
    pub ended: Option<Ended>,
    /// Its `CHECK ... FAIL ...` lines.
    pub failed_checks: Vec<String>,
    /// Its checks that did not run: `CHECK <check> ok skipped: <why>` as
    /// (check, why), in order.
    pub skipped: Vec<(String, String)>,
}

/// Every test COM1 mentions, in the order they first appear.
#[derive(Debug, Default)]
pub struct Tests {
    pub tests: Vec<Test>,
    /// `CHECK ... FAIL` lines printed while no test was running.
    pub stray_failed_checks: Vec<String>,
}

/// Where a `TEST ` or `CHECK ` marker begins in a line: at its start, or
/// after the text of a line someone else left unterminated.
fn marker(line: &str) -> Option<&str> {
    let at = |word: &str| {
        line.match_indices(word)
            .map(|(i, _)| i)
            .find(|&i| i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric())
    };
    let i = match (at("TEST "), at("CHECK ")) {
        (Some(t), Some(c)) => t.min(c),
        (t, c) => t.or(c)?,
    };
    Some(&line[i..])
}

pub fn parse(com1: &str) -> Tests {
    let mut r = Tests::default();
    // The test the next CHECK line belongs to: the last one started and
    // not yet ended.
    let mut running: Option<usize> = None;
    for line in com1.lines().filter_map(marker) {
        let line = line.trim_end();
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("TEST"), Some(name), Some(what)) => {
                let rest = words.next().unwrap_or("");
                let i = r.index(name);
                let t = &mut r.tests[i];
                match what {
                    "START" => {
                        t.starts += 1;
                        running = Some(i);
                    }
                    "PASS" => {
                        // A FAIL printed before (a panic after the checks)
                        // is not undone by a later PASS.
                        if !matches!(t.ended, Some(Ended::Failed(_))) {
                            t.ended = Some(Ended::Passed {
                                checks: pass_count(rest),
                            });
                        }
                        running = running.filter(|&j| j != i);
                    }
                    "FAIL" => {
                        t.ended = Some(Ended::Failed(rest.to_string()));
                        running = running.filter(|&j| j != i);
                    }
                    _ => {}
                }
            }
            (Some("CHECK"), Some(_), Some("FAIL")) => match running {
                Some(i) => r.tests[i].failed_checks.push(line.to_string()),
                None => r.stray_failed_checks.push(line.to_string()),
            },
            (Some("CHECK"), Some(check), Some("ok")) => {
                let rest = words.next().unwrap_or("");
                if let (Some(why), Some(i)) = (rest.strip_prefix("skipped:"), running) {
                    let why = why.trim().to_string();
                    r.tests[i].skipped.push((check.to_string(), why));
                }
            }
            _ => {}
        }
    }
    r
}

/// `(14 checks)` -> 14.
fn pass_count(rest: &str) -> u32 {
    rest.trim_start_matches('(')
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Tests {
    fn index(&mut self, name: &str) -> usize {
        match self.tests.iter().position(|t| t.name == name) {
            Some(i) => i,
            None => {
                self.tests.push(Test {
                    name: name.to_string(),
                    ..Test::default()
                });
                self.tests.len() - 1
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Test> {
        self.tests.iter().find(|t| t.name == name)
    }

    /// Whether something failed already (a FAIL verdict or check, or a
    /// test run twice): the run cannot pass any more.
    pub fn failing(&self) -> bool {
        !self.stray_failed_checks.is_empty()
            || self.tests.iter().any(|t| {
                t.starts > 1
                    || !t.failed_checks.is_empty()
                    || matches!(t.ended, Some(Ended::Failed(_)))
            })
    }

    /// Whether every test that started has printed its verdict.
    pub fn settled(&self) -> bool {
        self.tests
            .iter()
            .all(|t| t.starts == 0 || t.ended.is_some())
    }

    /// Why the run fails, one line per problem: an expected test that did
    /// not start, or started and did not pass; any test that failed.
    pub fn problems(&self, expected: &[&str]) -> Vec<String> {
        let mut v = Vec::new();
        for name in expected {
            match self.get(name) {
                None | Some(Test { starts: 0, .. }) => v.push(format!(
                    "test {name} never started (no \"TEST {name} START\" on COM1)"
                )),
                Some(t) if t.ended.is_none() => v.push(with_checks(
                    format!("test {name} started but printed no verdict"),
                    &t.failed_checks,
                )),
                _ => {}
            }
        }
        for t in &self.tests {
            let name = &t.name;
            if t.starts > 1 {
                v.push(format!("test {name} started {} times", t.starts));
            }
            match &t.ended {
                Some(Ended::Failed(why)) => v.push(with_checks(
                    format!("test {name} failed: {why}"),
                    &t.failed_checks,
                )),
                Some(Ended::Passed { .. }) if !t.failed_checks.is_empty() => v.push(with_checks(
                    format!("test {name} passed with failed checks"),
                    &t.failed_checks,
                )),
                _ => {}
            }
        }
        if !self.stray_failed_checks.is_empty() {
            v.push(with_checks(
                "checks failed outside any test".into(),
                &self.stray_failed_checks,
            ));
        }
        v
    }
}

fn with_checks(mut s: String, checks: &[String]) -> String {
    for c in checks {
        s.push_str("\n    ");
        s.push_str(c);
    }
    s
}

/// The tests a scenario's COM1 markers name (`TEST <name> START` or
/// `TEST <name> PASS`): each must start and pass.
pub fn expected(markers: &[&'static str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for m in markers {
        let mut w = m.split(' ');
        if let (Some("TEST"), Some(name), Some("START" | "PASS")) = (w.next(), w.next(), w.next()) {
            if !v.contains(&name) {
                v.push(name);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_among_other_lines() {
        let com1 = "guest: started\r\nTEST boot START\r\nL2 says hi\r\n\
                    CHECK a ok 1\r\nCHECK b ok skipped: no VMX\r\nTEST boot PASS (2 checks)\r\n";
        let r = parse(com1);
        assert_eq!(r.tests.len(), 1);
        let t = r.get("boot").unwrap();
        assert_eq!(
            (t.starts, &t.ended),
            (1, &Some(Ended::Passed { checks: 2 }))
        );
        assert!(r.problems(&["boot"]).is_empty() && r.settled() && !r.failing());
        assert_eq!(t.skipped, [("b".to_string(), "no VMX".to_string())]);
    }

    #[test]
    fn skipped_checks_by_test() {
        let r = parse(
            "CHECK early ok skipped: before any test\nTEST a START\nCHECK x ok 3\n\
             CHECK y ok skipped: EPT A/D not offered\nCHECK z ok skipped:\n\
             CHECK w ok not skipped: only at the start\nTEST a PASS (4 checks)\n\
             TEST b START\nCHECK y ok fine\nTEST b PASS (1 checks)\n",
        );
        let a = r.get("a").unwrap();
        assert_eq!(
            a.skipped,
            [
                ("y".to_string(), "EPT A/D not offered".to_string()),
                ("z".to_string(), String::new())
            ]
        );
        assert!(r.get("b").unwrap().skipped.is_empty());
        assert!(!r.failing());
    }

    #[test]
    fn a_marker_after_unterminated_text() {
        let r = parse("half a lineTEST x START\nnoise CHECK c FAIL bad\n");
        // "lineTEST" is not a marker; "noise CHECK" is.
        assert!(r.tests.is_empty());
        assert_eq!(r.stray_failed_checks, ["CHECK c FAIL bad"]);
        let r = parse("boot: half a line TEST x START\nTEST x PASS (1 checks)\n");
        assert!(r.problems(&["x"]).is_empty());
    }

    #[test]
    fn a_fail_lists_its_failed_checks() {
        let r = parse(
            "TEST x START\nCHECK a ok\nCHECK b FAIL got 3\nL0 log\nCHECK c FAIL got 4\n\
             TEST x FAIL (2 of 3 checks failed)\n",
        );
        assert!(r.failing());
        assert_eq!(
            r.problems(&["x"]),
            ["test x failed: (2 of 3 checks failed)\n    CHECK b FAIL got 3\n    CHECK c FAIL got 4"]
        );
    }

    #[test]
    fn a_test_without_verdict() {
        let r = parse("TEST x START\nCHECK a ok\nCHECK b FAIL hung\n");
        assert!(!r.settled());
        assert_eq!(
            r.problems(&["x"]),
            ["test x started but printed no verdict\n    CHECK b FAIL hung"]
        );
    }

    #[test]
    fn a_test_that_never_started() {
        let r = parse("guest: started\nTEST other START\nTEST other PASS (1 checks)\n");
        assert_eq!(
            r.problems(&["x"]),
            ["test x never started (no \"TEST x START\" on COM1)"]
        );
        // A verdict alone (the guest's "no such scenario") is no start.
        let r = parse("TEST x FAIL no such scenario in this guest\n");
        let p = r.problems(&["x"]);
        assert_eq!(p.len(), 2);
        assert!(p[0].contains("never started"));
        assert_eq!(p[1], "test x failed: no such scenario in this guest");
    }

    #[test]
    fn duplicate_names() {
        // Run twice (a reset): fails even though both runs passed.
        let r =
            parse("TEST x START\nTEST x PASS (1 checks)\nTEST x START\nTEST x PASS (1 checks)\n");
        assert!(r.failing());
        assert_eq!(r.problems(&["x"]), ["test x started 2 times"]);
        // A panic after the PASS: the FAIL stays.
        let r = parse("TEST x START\nTEST x FAIL panic\nTEST x PASS (1 checks)\n");
        assert_eq!(r.problems(&["x"]), ["test x failed: panic"]);
    }

    #[test]
    fn checks_belong_to_the_running_test() {
        let r = parse(
            "TEST a START\nCHECK one FAIL x\nTEST a FAIL (1 of 1 checks failed)\n\
             TEST b START\nCHECK two ok\nTEST b PASS (1 checks)\n",
        );
        assert_eq!(r.get("a").unwrap().failed_checks, ["CHECK one FAIL x"]);
        assert!(r.get("b").unwrap().failed_checks.is_empty());
        // An unexpected test that failed fails the run too.
        assert_eq!(r.problems(&["b"]).len(), 1);
    }

    #[test]
    fn expected_tests_from_markers() {
        assert_eq!(
            expected(&[
                "TEST x START",
                "forced by the command line",
                "CHECK a ok",
                "TEST x PASS"
            ]),
            ["x"]
        );
        assert!(expected(&["L1INIT ok", "L1DONE"]).is_empty());
    }
}
