//! How many user VMs and VMCS12s the shadow tables hold: fixed caps, and
//! what L0's heap can hold below them (docs/shadow-devices.md, "Scale").
//!
//! A VM is charged its worst case when it is created — four UARTs with
//! full console rings, a full restore journal, its IOAPIC copy, its map
//! entries — so that nothing it does later can run the heap dry: L0's
//! allocations cannot fail gracefully (a full heap is a panic), so a VM
//! the heap cannot hold is refused up front, never half-built.

/// The most user VMs tracked at once.
pub const MAX_VMS: usize = 1024;
/// The most VMCS12s (vCPUs) one VM is known by; a VM with more trades its
/// oldest for each new one.
pub const MAX_VMCS_PER_VM: usize = 256;
/// VMCS12s budgeted per VM on average: the total bound is this many times
/// the VM bound (one VM may still use up to [`MAX_VMCS_PER_VM`]).
pub const VMCS_PER_VM_BUDGET: usize = 16;

/// Heap bytes one VM may hold at most, VMCS12s aside: 4 × (4096-byte
/// output ring + 1024-byte input ring + the UART) = 21 KiB, the restore
/// journal (4096 writes of 4 bytes, 16 KiB), the IOAPIC copy, the platform
/// state and the map entries. Measured by `worst_case_vm_fits` in
/// shadow/tests.rs.
pub const VM_BYTES: usize = 40 << 10;
/// Heap bytes one tracked VMCS12 holds at most (its entries in the
/// identity maps, its posted-interrupt route and that route in its VM's
/// cell, `vm_irqs.rs`). Measured as above.
pub const VMCS_BYTES: usize = 256;

/// The share of L0's heap the shadow tables may fill: the rest is for
/// everything else L0 allocates (vCPUs, nested caches, the console).
const HEAP_SHARE_DIV: usize = 2;

/// Bounds in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// User VMs at once.
    pub vms: usize,
    /// VMCS12s of all VMs at once.
    pub vmcs: usize,
}

impl Limits {
    /// The caps alone (what a large enough heap holds).
    pub const MAX: Limits = Limits {
        vms: MAX_VMS,
        vmcs: MAX_VMS * VMCS_PER_VM_BUDGET,
    };

    /// What a heap of `heap` bytes holds: each VM with its budget of
    /// VMCS12s in half of it, up to the caps (at least one VM).
    pub fn for_heap(heap: usize) -> Limits {
        let vms = (heap / HEAP_SHARE_DIV / (VM_BYTES + VMCS_PER_VM_BUDGET * VMCS_BYTES))
            .clamp(1, MAX_VMS);
        Limits {
            vms,
            vmcs: vms * VMCS_PER_VM_BUDGET,
        }
    }

    /// The heap a VM's admission must leave free: its own worst case with
    /// its VMCS12 budget.
    pub const fn vm_reserve() -> usize {
        VM_BYTES + VMCS_PER_VM_BUDGET * VMCS_BYTES
    }
}
