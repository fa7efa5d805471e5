//! Whether a run's logs pass its scenario: the scenario guest's tests by
//! name (crate::verdict), the markers in order on COM1 and COM2, no failure
//! marker, and the user VMs' console transcript (`console.log`).

use crate::emulator::Logs;
use crate::scenario::{ConsoleCheck, Scenario};
use crate::verdict;

/// Why a finished run fails `s`, if it does; `unfinished` is what the
/// operator meant to type and did not. What stops a run early (a failure
/// marker, a forbidden console line) is named before what the early stop
/// then left missing.
pub fn run(s: &Scenario, l: &Logs, unfinished: Option<String>) -> Option<String> {
    if let Some(m) = forbidden(s, l.com1, l.com2) {
        return Some(format!("failure marker \"{m}\" appeared"));
    }
    console_forbidden(&s.console, l.console)
        .or_else(|| serial(s, l.com1, l.com2))
        .or(unfinished)
        .or_else(|| console(&s.console, l.console))
}

/// Why the serial logs fail `s`, failure markers aside.
fn serial(s: &Scenario, com1: &str, com2: &str) -> Option<String> {
    let problems = tests(s, com1);
    if !problems.is_empty() {
        return Some(problems.join("\n"));
    }
    if !in_order(com1, s.com1) {
        return Some(format!("COM1 lacks (in order) {:?}", s.com1));
    }
    if !in_order(com2, s.com2) {
        return Some(format!("COM2 lacks (in order) {:?}", s.com2));
    }
    None
}

/// What is wrong with the tests a scenario's COM1 markers name. Scenarios
/// that name none (the Linux ones) have their own markers, not tests.
fn tests(s: &Scenario, com1: &str) -> Vec<String> {
    let expected = verdict::expected(s.com1);
    if expected.is_empty() {
        return Vec::new();
    }
    verdict::parse(com1).problems(&expected)
}

const WHERE: &str = "the user VMs' consoles (console.log)";

fn console_forbidden(c: &ConsoleCheck, transcript: &str) -> Option<String> {
    let m = c.forbidden.iter().find(|m| transcript.contains(*m))?;
    Some(format!("{WHERE} show {m:?}, which must not appear"))
}

/// Why the console transcript fails `c`, forbidden lines aside.
fn console(c: &ConsoleCheck, transcript: &str) -> Option<String> {
    if let Some(m) = c.expect.iter().find(|m| !transcript.contains(*m)) {
        return Some(format!("{WHERE} lack {m:?}"));
    }
    match first_out_of_order(transcript, c.ordered) {
        Some(0) => Some(format!("{WHERE} lack {:?}", c.ordered[0])),
        Some(i) => Some(format!(
            "{WHERE} lack {:?} after {:?}",
            c.ordered[i],
            c.ordered[i - 1]
        )),
        None => None,
    }
}

/// How a run stands while it goes on.
pub enum Now {
    Passing,
    /// It cannot pass any more; `settled` once the guest has printed its
    /// verdicts (until then it may still print the rest of its checks).
    Failed {
        settled: bool,
    },
    Undecided,
}

pub fn now(s: &Scenario, l: &Logs) -> Now {
    let expected = verdict::expected(s.com1);
    // (Scenarios without tests skip the parse: Linux's COM1 is long.)
    let tests = match expected.is_empty() {
        true => verdict::Tests::default(),
        false => verdict::parse(l.com1),
    };
    if forbidden(s, l.com1, l.com2).is_some()
        || tests.failing()
        || console_forbidden(&s.console, l.console).is_some()
    {
        let settled = !expected.is_empty()
            && tests.settled()
            && expected
                .iter()
                .all(|n| tests.get(n).is_some_and(|t| t.ended.is_some()));
        return Now::Failed { settled };
    }
    if serial(s, l.com1, l.com2).is_none() && console(&s.console, l.console).is_none() {
        return Now::Passing;
    }
    Now::Undecided
}

/// Whether `markers` all appear in `log` in this order.
fn in_order(log: &str, markers: &[&str]) -> bool {
    first_out_of_order(log, markers).is_none()
}

/// The index of the first of `markers` not found after the ones before it.
fn first_out_of_order(log: &str, markers: &[&str]) -> Option<usize> {
    let mut rest = log;
    for (i, m) in markers.iter().enumerate() {
        match rest.find(m) {
            Some(at) => rest = &rest[at + m.len()..],
            None => return Some(i),
        }
    }
    None
}

/// The first failure marker in either serial log.
fn forbidden(s: &Scenario, com1: &str, com2: &str) -> Option<&'static str> {
    s.forbidden
        .iter()
        .copied()
        .find(|m| com1.contains(m) || com2.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_in_order() {
        assert!(in_order("a\nb\nc\n", &["a", "c"]));
        assert!(!in_order("a\nb\nc\n", &["c", "a"]));
        assert!(in_order("anything", &[]));
        assert!(!in_order("a", &["a", "a"]));
        assert_eq!(first_out_of_order("a\nb\nc\n", &["b", "a"]), Some(1));
    }

    fn com2_of(s: &Scenario) -> String {
        s.com2.join("\n")
    }

    #[test]
    fn guest_scenarios_are_judged_by_test_name() {
        let s = crate::scenario::find("nested-basic-native").unwrap();
        let pass = "TEST nested-basic START\nCHECK a ok\nTEST nested-basic PASS (1 checks)\n";
        assert_eq!(serial(&s, pass, ""), None);
        let wrong = "TEST nested-exits START\nTEST nested-exits PASS (1 checks)\n";
        assert_eq!(
            serial(&s, wrong, "").unwrap(),
            "test nested-basic never started (no \"TEST nested-basic START\" on COM1)"
        );
        let failed = "TEST nested-basic START\nCHECK a FAIL 3\nTEST nested-basic FAIL (1 of 1 checks failed)\n";
        assert_eq!(
            serial(&s, failed, "").unwrap(),
            "test nested-basic failed: (1 of 1 checks failed)\n    CHECK a FAIL 3"
        );
        // Under L0 the same, with COM2's markers there.
        let s = crate::scenario::find("boot").unwrap();
        let cut = "TEST boot START\nCHECK cpuid-signature ok\n";
        assert!(serial(&s, cut, &com2_of(&s))
            .unwrap()
            .contains("test boot started but printed no verdict"));
    }

    #[test]
    fn linux_scenarios_have_no_tests_to_judge() {
        let s = crate::scenario::linux()
            .into_iter()
            .find(|s| s.name == "linux-l1-boot")
            .unwrap();
        let com1 = "L1INIT ok\nKVM ept=Y vpid=Y\nCHECK x FAIL\nCLOCK ok\nL1DONE\n";
        assert_eq!(serial(&s, com1, &com2_of(&s)), None);
    }

    fn check(ordered: &'static [&'static str], forbidden: &'static [&'static str]) -> ConsoleCheck {
        ConsoleCheck {
            ordered,
            forbidden,
            ..crate::scenario::NO_CONSOLE
        }
    }

    #[test]
    fn console_order_and_forbidden_lines() {
        let c = check(&["beta-42-slept", "backlog-42"], &["A-late-42"]);
        let good = "vm1| beta-42-ok\nvm1| beta-42-slept\nattached to alpha\nvm2| backlog-42\n";
        assert_eq!(console(&c, good), None);
        assert_eq!(console_forbidden(&c, good), None);
        // The backlog line shown while the operator was on beta.
        let early = "vm2| backlog-42\nvm1| beta-42-slept\n";
        assert_eq!(
            console(&c, early).unwrap(),
            "the user VMs' consoles (console.log) lack \"backlog-42\" after \"beta-42-slept\""
        );
        assert_eq!(
            console(&c, "vm1| nothing\n").unwrap(),
            "the user VMs' consoles (console.log) lack \"beta-42-slept\""
        );
        let leaked = format!("{good}vm2| A-late-42-cx\n");
        assert_eq!(
            console_forbidden(&c, &leaked).unwrap(),
            "the user VMs' consoles (console.log) show \"A-late-42\", which must not appear"
        );
    }

    #[test]
    fn a_forbidden_console_line_fails_the_run_at_once() {
        let s = crate::scenario::linux()
            .into_iter()
            .find(|s| s.name == "migrate-other-key")
            .unwrap();
        let logs = |console| Logs {
            com1: "L1INIT ok\n",
            com2: "",
            console,
        };
        assert!(matches!(now(&s, &logs("vm 2 tag=alpha\n")), Now::Undecided));
        assert!(matches!(
            now(&s, &logs("vm2| A-late-42-cx\n")),
            Now::Failed { settled: false }
        ));
    }

    #[test]
    fn shadow_console_wants_the_backlog_after_the_reattach() {
        let s = crate::scenario::linux()
            .into_iter()
            .find(|s| s.name == "linux-shadow-console")
            .unwrap();
        let story = [
            "[vm 1 tag=beta]",
            "[vm 2 tag=alpha]",
            "[2 VM(s)]",
            "edit-42-ok",
            "rc-130",
            "beta-42-ok",
            "beta-42-slept",
            "[attached to vm 2 port 0x3f8]",
            "alpha# backlog-42",
        ];
        assert_eq!(console(&s.console, &story.join("\n")), None);
        // The background job's line shown on beta's console meanwhile.
        let mut leaked = story;
        leaked.swap(6, 8);
        assert!(console(&s.console, &leaked.join("\n"))
            .unwrap()
            .ends_with("lack \"backlog-42\" after \"beta-42-slept\""));
    }

    #[test]
    fn a_forbidden_console_line_is_the_reason_given() {
        let s = crate::scenario::linux()
            .into_iter()
            .find(|s| s.name == "migrate-other-key")
            .unwrap();
        // Stopped early: COM1 and COM2 lack their last markers too.
        let l = Logs {
            com1: "L1INIT ok\n",
            com2: "",
            console: "vm2| A-late-42-cx\n",
        };
        assert_eq!(
            run(&s, &l, None).unwrap(),
            "the user VMs' consoles (console.log) show \"A-late-42\", which must not appear"
        );
    }
}
