//! `ultracall`: the guest-side CLI for L0's ultracalls. See `--help` and
//! docs/ultracall-abi.md; the logic lives in `ultracall_abi::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(ultracall_abi::cli::main_with_args(
        std::env::args_os().skip(1),
    ))
}
