//! The test hypervisor's memory: static page-aligned arrays in .bss (the
//! guest is identity-mapped, so an address here is also the physical
//! address the processor and EPT12 see). Every access goes through the
//! bounds-checked volatile helpers below: L2 and the processor change this
//! memory behind the compiler's back.
//!
//! Each CPU has its own pool and 2 MiB page (`page` and `big` answer for
//! the CPU that asks, [`crate::smp::cpu`]), so the test hypervisor runs on
//! every CPU at once with the same page numbers; one more page is shared
//! by all CPUs ([`shared`]).

use core::ptr::addr_of;

use crate::smp::{cpu, MAX_CPUS};

pub const PAGE: u64 = 4096;
pub const BIG: u64 = 2 << 20;

/// Page indices in the pool.
pub mod pg {
    pub const VMXON: usize = 0;
    /// Four VMCS regions: A, B (the second L2), S (scratch), X (spare).
    pub const VMCS_A: usize = 1;
    pub const VMCS_B: usize = 2;
    pub const VMCS_S: usize = 3;
    pub const VMCS_X: usize = 4;
    pub const MSR_BITMAP: usize = 5;
    pub const IO_A: usize = 6;
    pub const IO_B: usize = 7;
    /// Entry MSR-load list at 0, exit MSR-store at 0x400, exit MSR-load at 0x800.
    pub const MSR_LISTS: usize = 8;
    /// A copy of L1's PML4 to serve as the host CR3 (so its load is visible).
    pub const HOST_PML4: usize = 9;
    /// L2's memory, in L2 layout order (see `l2::LAYOUT`).
    pub const L2_FIRST: usize = 10;
    pub const L2_PAGES: usize = 18;
    pub const EPT_POOL: usize = L2_FIRST + L2_PAGES;
    pub const EPT_POOL_PAGES: usize = 112;
    /// The 64-bit L2s' memory (`l2x`): `X_SLOTS` slots of `X_SLOT_PAGES`
    /// pages each, one slot per user VM, so no two VMs share a page
    /// (eight: `shadow-many` runs eight VMs at once).
    pub const X_FIRST: usize = EPT_POOL + EPT_POOL_PAGES;
    pub const X_SLOT_PAGES: usize = 10;
    pub const X_SLOTS: usize = 8;
    /// One more VMCS region per slot, for scenarios with more VMs than
    /// the four VMCS pages above.
    pub const VMCS_SLOT: usize = X_FIRST + X_SLOTS * X_SLOT_PAGES;
    pub const COUNT: usize = VMCS_SLOT + X_SLOTS;
}

#[repr(C, align(4096))]
struct Pool([[u8; PAGE as usize]; pg::COUNT]);

/// L2's 2 MiB page (an EPT12 2 MiB leaf needs a 2 MiB-aligned L1 frame).
#[repr(C, align(2097152))]
struct Big([u8; BIG as usize]);

#[repr(C, align(4096))]
struct Page([u8; PAGE as usize]);

static mut POOL: [Pool; MAX_CPUS] = [const { Pool([[0; PAGE as usize]; pg::COUNT]) }; MAX_CPUS];
static mut BIG_PAGE: [Big; MAX_CPUS] = [const { Big([0; BIG as usize]) }; MAX_CPUS];
static mut SHARED: Page = Page([0; PAGE as usize]);

fn pool() -> u64 {
    addr_of!(POOL) as u64 + (cpu() * core::mem::size_of::<Pool>()) as u64
}

/// The physical address of this CPU's pool page `i`.
pub fn page(i: usize) -> u64 {
    assert!(i < pg::COUNT);
    pool() + i as u64 * PAGE
}

/// The physical address of this CPU's 2 MiB page.
pub fn big() -> u64 {
    addr_of!(BIG_PAGE) as u64 + cpu() as u64 * BIG
}

/// The page every CPU shares (the SMP scenarios' meeting place).
pub fn shared() -> u64 {
    addr_of!(SHARED) as u64
}

/// Address ranges L2s own (their pages and the 2 MiB page): whatever an
/// L2 wrote lives there, so L1's own memory is everything else.
pub fn l2_ranges() -> [(u64, u64); 3] {
    let l2 = page(pg::L2_FIRST);
    let x = page(pg::X_FIRST);
    [
        (l2, l2 + pg::L2_PAGES as u64 * PAGE),
        (x, x + (pg::X_SLOTS * pg::X_SLOT_PAGES) as u64 * PAGE),
        (big(), big() + BIG),
    ]
}

fn owned(pa: u64, len: u64) -> bool {
    let (p, b, s) = (pool(), big(), shared());
    (pa >= p && pa + len <= p + pg::COUNT as u64 * PAGE)
        || (pa >= b && pa + len <= b + BIG)
        || (pa >= s && pa + len <= s + PAGE)
}

macro_rules! accessors {
    ($rd:ident, $wr:ident, $t:ty) => {
        pub fn $rd(pa: u64) -> $t {
            assert!(
                owned(pa, core::mem::size_of::<$t>() as u64),
                "{pa:#x} is not test-hypervisor memory"
            );
            // SAFETY: inside our own static arrays (checked above), aligned by the callers' layouts.
            unsafe { core::ptr::read_volatile(pa as *const $t) }
        }
        pub fn $wr(pa: u64, v: $t) {
            assert!(
                owned(pa, core::mem::size_of::<$t>() as u64),
                "{pa:#x} is not test-hypervisor memory"
            );
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(pa as *mut $t, v) }
        }
    };
}
accessors!(rd8, wr8, u8);
accessors!(rd32, wr32, u32);
accessors!(rd64, wr64, u64);

pub fn fill(pa: u64, len: u64, byte: u8) {
    assert!(owned(pa, len));
    // SAFETY: inside our own static arrays (checked above).
    unsafe { core::ptr::write_bytes(pa as *mut u8, byte, len as usize) };
}

pub fn zero_page(pa: u64) {
    fill(pa, PAGE, 0);
}

pub fn copy_in(pa: u64, src: &[u8]) {
    assert!(owned(pa, src.len() as u64));
    // SAFETY: inside our own static arrays (checked above); `src` is
    // image data, not overlapping.
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), pa as *mut u8, src.len()) };
}
