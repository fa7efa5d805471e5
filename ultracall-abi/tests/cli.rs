//! Runs the real `ultracall` binary. On a machine without L0 (CI, a
//! developer's box) every command that needs L0 must end with exit code 2
//! and a plain message, never with SIGILL; under L0, `ping` must succeed.

use std::process::{Command, Output};

use ultracall_abi::cli::{EXIT_NOT_UNDER_L0, EXIT_OK, EXIT_USAGE};
use ultracall_abi::client::Client;
use ultracall_abi::Error;

fn ultracall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ultracall"))
        .args(args)
        .output()
        .expect("spawn ultracall")
}

fn under_l0() -> bool {
    match Client::detect() {
        Ok(_) => true,
        Err(Error::NoHypervisor | Error::OtherHypervisor { .. } | Error::NotIntel { .. }) => false,
        Err(e) => panic!("unexpected detection result: {e}"),
    }
}

fn assert_not_under_l0(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `code()` is None when a signal (SIGILL) killed the process.
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_NOT_UNDER_L0)),
        "stderr: {stderr}"
    );
    assert!(
        stderr.starts_with("ultracall: error: not running under L0"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn ping_reports_absence_of_l0_plainly_or_succeeds_under_l0() {
    let out = ultracall(&["ping"]);
    if under_l0() {
        assert_eq!(out.status.code(), Some(i32::from(EXIT_OK)));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("L0 ABI "));
    } else {
        assert_not_under_l0(&out);
    }
}

#[test]
fn every_l0_command_checks_for_l0_before_vmcall() {
    if under_l0() {
        return; // the ping test covers this machine
    }
    for args in [
        &["list"][..],
        &["tag", "vm-1"],
        &["save", "--tag", "vm-1", "--out", "/nonexistent-dir/blob"],
        &["restore", "--tag", "vm-1", "--in", "/nonexistent-file"],
    ] {
        assert_not_under_l0(&ultracall(args));
    }
}

#[test]
fn help_exits_zero_and_lists_exit_codes() {
    let out = ultracall(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("EXIT CODES"));
    assert!(text.contains("2   not running under L0"));
}

#[test]
fn usage_errors_exit_one() {
    for args in [
        &[][..],
        &["bogus"],
        &["tag", "no spaces allowed"],
        &["save", "--tag", "x"],
    ] {
        let out = ultracall(args);
        assert_eq!(out.status.code(), Some(i32::from(EXIT_USAGE)), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("ultracall: error: "));
    }
}

#[test]
fn version_names_the_abi() {
    let out = ultracall(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let want = format!("ultracall ABI {}", ultracall_abi::ABI_VERSION);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&want));
}
