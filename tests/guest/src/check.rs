//! Pass/fail lines in the one format the harness reads:
//! `CHECK <name> ok|FAIL <detail>` per check, `TEST <test> PASS|FAIL` at the end.

use core::fmt;

pub struct Checks {
    test: &'static str,
    failed: u32,
    run: u32,
}

impl Checks {
    pub fn new(test: &'static str) -> Self {
        crate::println!("TEST {test} START");
        Checks {
            test,
            failed: 0,
            run: 0,
        }
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments) {
        self.run += 1;
        if ok {
            crate::println!("CHECK {name} ok {detail}");
        } else {
            self.failed += 1;
            crate::println!("CHECK {name} FAIL {detail}");
        }
    }

    /// A check the capabilities (or the environment) rule out: it counts
    /// as passed and says why it did not run.
    pub fn skip(&mut self, name: &str, why: fmt::Arguments) {
        self.run += 1;
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
