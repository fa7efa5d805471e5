//! Boot: multiboot entry, boot information, L1 loaders.
#![cfg_attr(not(test), no_std)]
