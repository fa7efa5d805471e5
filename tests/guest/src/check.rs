//! Pass/fail lines in the one format the harness reads:
//! `CHECK <name> ok|FAIL <detail>` per check, `TEST <test> PASS|FAIL` at the end.

use core::fmt;

pub struct Checks {
    test: &'static str,
    failed: u32,
    run: u32,
    /// Prefix check names with `cpuN-` (the SMP scenarios).
    cpu: Option<usize>,
}

impl Checks {
    pub fn new(test: &'static str) -> Self {
        crate::println!("TEST {test} START");
        Checks {
            test,
            failed: 0,
            run: 0,
            cpu: None,
        }
    }

    /// One CPU's checks of a test [`Checks::new`] started: names are
    /// printed as `cpuN-NAME`; [`Checks::merge`] adds them to the test's.
    pub fn for_cpu(test: &'static str, cpu: usize) -> Self {
        Checks {
            test,
            failed: 0,
            run: 0,
            cpu: Some(cpu),
        }
    }

    /// (failed, run) so far.
    pub fn counts(&self) -> (u32, u32) {
        (self.failed, self.run)
    }

    /// Adds another CPU's counts (from [`Checks::counts`]).
    pub fn merge(&mut self, (failed, run): (u32, u32)) {
        self.failed += failed;
        self.run += run;
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments) {
        self.run += 1;
        let name = Named(self.cpu, name);
        if ok {
            crate::println!("CHECK {name} ok {detail}");
        } else {
            self.failed += 1;
            crate::println!("CHECK {name} FAIL {detail}");
        }
    }

    /// Fails each of `names` for one reason (what they needed failed
    /// before they could run).
    pub fn fail_all(&mut self, names: &[&str], why: fmt::Arguments) {
        for n in names {
            self.check(n, false, why);
        }
    }

    /// A check the capabilities (or the environment) rule out: it counts
    /// as passed and says why it did not run.
    pub fn skip(&mut self, name: &str, why: fmt::Arguments) {
        self.run += 1;
        let name = Named(self.cpu, name);
        crate::println!("CHECK {name} ok skipped: {why}");
    }

    /// Prints the verdict.
    pub fn finish(self) {
        if self.failed == 0 && self.run > 0 {
            crate::println!("TEST {} PASS ({} checks)", self.test, self.run);
        } else {
            crate::println!(
                "TEST {} FAIL ({} of {} checks failed)",
                self.test,
                self.failed,
                self.run
            );
        }
    }
}

/// A check's name, with `cpuN-` before it for one CPU's checks.
struct Named<'a>(Option<usize>, &'a str);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(cpu) => write!(f, "cpu{cpu}-{}", self.1),
            None => f.write_str(self.1),
        }
    }
}
