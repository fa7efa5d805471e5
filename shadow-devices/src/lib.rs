//! Shadow devices that L0 runs for user VMs (issue 3 fills this crate).
#![cfg_attr(not(test), no_std)]
