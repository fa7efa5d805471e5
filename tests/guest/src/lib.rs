//! Scenario guests: small multiboot kernels that L0 boots as the cloud VM
//! and that check, from the inside, what L0 promises. The scenario is
//! chosen by `test=NAME` on the kernel's command line.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod check;
#[cfg(target_os = "none")]
pub mod faults;
pub mod hv;
pub mod io;
pub mod mb1;
#[cfg(target_os = "none")]
pub mod scenarios;
pub mod serial;
#[cfg(target_os = "none")]
pub mod smp;
pub mod spy;
pub mod ucall_model;

use core::sync::atomic::{AtomicPtr, Ordering};

static CURRENT: AtomicPtr<&'static str> = AtomicPtr::new(core::ptr::null_mut());

/// The running test's name, for failure lines from fault and panic handlers.
pub fn current_test() -> &'static str {
    let p = CURRENT.load(Ordering::Relaxed);
    // SAFETY: only ever set to a leaked 'static reference.
    if p.is_null() {
        "?"
    } else {
        unsafe { *p }
    }
}

pub fn set_current_test(name: &'static &'static str) {
    CURRENT.store(name as *const _ as *mut _, Ordering::Relaxed);
}
