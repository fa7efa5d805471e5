//! The ultracall ABI shared by L0 and guest tools (issue 3 fills this crate).
#![cfg_attr(not(test), no_std)]
