//! L0.
#![cfg_attr(not(test), no_std)]
