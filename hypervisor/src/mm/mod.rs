//! L0's memory: who owns what, the frame allocator over L0's pool, the
//! heap, and the table mapper shared by L0's page tables and EPT.

pub mod frames;
pub mod layout;
pub mod paging;
