//! Ultracalls: `vmcall` with the magic in RAX, from L1 or L2, answered by L0
//! in registers (docs/ultracall-abi.md). Buffers are guest-virtual: L0
//! walks the caller's page tables (L1's; buffers are L1-only), then EPT01
//! (identity for L1's RAM), page by page; anything that is not L1 RAM,
//! non-canonical or unmapped is refused and nothing changes.
//!
//! Which ultracalls take the machine's lock is decided per op by
//! [`needs_machine`]: only those that read or change machine-wide state.
//! A refused request (bad magic, level, version or tag) takes none.

use alloc::vec;

use owner_session::server::Outcome;
use ultracall_abi::{CallerLevel, InRegs, Op, Request, Response, Status, MAX_RELAY_MESSAGE};

use super::{Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::guest_mem::walk::{self, pfec, Access, WalkError};
use crate::machine::shared::MachineLock;
use crate::nested::l1_state::l1_state;
use crate::nested::VmcsSet;
use crate::vmx::inject::skip_instruction;

const R8: usize = 8;

fn in_regs(g: &GuestRegs) -> InRegs {
    InRegs {
        rax: g.gpr[GuestRegs::RAX],
        rcx: g.gpr[GuestRegs::RCX],
        rdx: g.gpr[GuestRegs::RDX],
        rsi: g.gpr[GuestRegs::RSI],
        rdi: g.gpr[GuestRegs::RDI],
        r8: g.gpr[R8],
        r9: g.gpr[R8 + 1],
        r10: g.gpr[R8 + 2],
        r11: g.gpr[R8 + 3],
    }
}

/// The status for a buffer the walk refused.
fn buffer_status(f: walk::VirtFault) -> Status {
    match f.error {
        WalkError::PageFault { error_code }
            if error_code & pfec::PRESENT != 0 && error_code & pfec::WRITE != 0 =>
        {
            Status::BufferNotWritable
        }
        _ => Status::BufferFault,
    }
}

/// Whether an ultracall op takes the machine's lock: one row per op, so a
/// new op must be decided here (docs/architecture.md, "Who owns what").
pub fn needs_machine(op: Op) -> bool {
    match op {
        // Answers with the caller's level alone.
        Op::Ping => false,
        // Tags are unique across VMs (the registry's tag index); a tag the
        // VM holds already is answered under the VM's lock alone
        // (`Vcpu::tag_held_already`), before this table is asked.
        Op::RegisterTag => true,
        // The VM's keys and the heap's budget of console histories,
        // shared by all VMs.
        Op::OwnerKeyAdd => true,
        // Every VM, their endings due, the sealing key, the epoch ledger,
        // the nonce source: machine-wide by nature.
        Op::ListVms | Op::SaveDevices | Op::RestoreDevices => true,
        // L1's one relay vector and the edges of every VM.
        Op::SetIrqRelay | Op::TakeIrqs => true,
        // Owner sessions live in the machine's console.
        Op::OwnerIdentity | Op::OwnerRelay => true,
    }
}

impl Vcpu {
    /// Whether RAX holds the ultracall magic.
    pub fn is_ultracall(&self) -> bool {
        in_regs(&self.regs).is_ultracall()
    }

    /// Answers the ultracall on the current VMCS (VMCS01 for L1, VMCS02
    /// for L2) and moves past the `vmcall`.
    pub(super) fn ultracall<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
        level: CallerLevel,
    ) {
        let regs = in_regs(&self.regs);
        let mut rdi = None;
        let resp = match regs.decode(level) {
            Err(status) => Response::error(status),
            Ok(req) => match req.op {
                Op::Ping => Response::ok(0, level as u64),
                Op::RegisterTag if self.tag_held_already(m, &req) => {
                    Response::ok(0, self.com_vm_id().unwrap_or(0))
                }
                _ => {
                    debug_assert!(needs_machine(req.op));
                    self.ultracall_op(m, vs, p, level, &req, regs.rsi, &mut rdi)
                }
            },
        };
        if resp.status != Status::Ok {
            log::debug!(
                "ultracall {} from L{} -> {}",
                regs.rcx,
                level as u8,
                resp.status.name()
            );
        }
        let out = resp.to_regs();
        self.regs.gpr[GuestRegs::RAX] = out.rax;
        self.regs.gpr[GuestRegs::RCX] = out.rcx;
        self.regs.gpr[GuestRegs::RDX] = out.rdx;
        self.regs.gpr[GuestRegs::RSI] = out.rsi;
        if let Some(v) = rdi {
            self.regs.gpr[GuestRegs::RDI] = v;
        }
        skip_instruction(vs.current());
    }

    fn ultracall_op<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
        level: CallerLevel,
        req: &Request,
        raw_rsi: u64,
        rdi: &mut Option<u64>,
    ) -> Response {
        let s = l1_state(vs.current(), &self.regs, self.host.maxphyaddr);
        let access = Access {
            write: false,
            fetch: false,
            user: s.cpl == 3,
            ac: s.rflags & (1 << 18) != 0,
        };
        let buf = req.buffer;
        if buf.len > 0
            && (!s.ctx.is_canonical(buf.va)
                || !s.ctx.is_canonical(buf.va.wrapping_add(buf.len - 1)))
        {
            return Response::error(Status::BufferFault);
        }
        let m = &mut **m;
        match req.op {
            Op::Ping => Response::ok(0, level as u64),
            Op::RegisterTag => {
                let Some(vm) = self.current_l2_vm(m) else {
                    return Response::error(Status::Internal);
                };
                match m.shadow.register_tag(vm, req.tag.unwrap()) {
                    Ok(new) => {
                        if new {
                            log::info!("user VM {vm} registered tag {}", req.tag.unwrap().as_str());
                        }
                        Response::ok(0, vm)
                    }
                    Err(e) => Response::error(e.status()),
                }
            }
            Op::OwnerKeyAdd => {
                let Some(vm) = self.current_l2_vm(m) else {
                    return Response::error(Status::Internal);
                };
                let Some((key, access)) = req.owner_key else {
                    return Response::error(Status::Internal);
                };
                let registered = {
                    let mut devices = m.shadow.devices.vm(vm);
                    let first = devices.owner_keys().is_empty();
                    shadow_devices::owner_keys::register_first_key(&mut devices, key, access)
                        .map(|n| (n, first))
                };
                match registered {
                    Ok((n, first)) => {
                        let budget = m.console.owners.histories;
                        crate::owner::keep_history(&mut m.shadow, vm, budget);
                        // (An agent may repeat the call: logged once.)
                        if first {
                            log::info!("user VM {vm} set owner key {key} ({})", access.name());
                        }
                        Response::ok(0, n as u64)
                    }
                    Err(s) => Response::error(s),
                }
            }
            Op::ListVms => {
                m.shadow.expire(crate::arch::cpu::rdtsc());
                let mut out = vec![0u8; buf.len as usize];
                match m.shadow.list(&mut out) {
                    Ok(n) => {
                        match walk::write_virt(p.mem(), &s.paging, buf.va, &out[..n], access) {
                            Ok(()) => Response::ok(n as u64, m.shadow.vm_count() as u64),
                            Err(f) => Response::error(buffer_status(f)),
                        }
                    }
                    Err(shadow_devices::Error::BufferTooSmall { needed }) => {
                        Response::too_small(needed as u64)
                    }
                    Err(e) => Response::error(e.status()),
                }
            }
            Op::SaveDevices => {
                let tag = req.tag.unwrap();
                // The devices freeze only if the blob reached the buffer.
                let deliver = |blob: &[u8]| {
                    if blob.len() as u64 > buf.len {
                        return Err(Response::too_small(blob.len() as u64));
                    }
                    walk::write_virt(p.mem(), &s.paging, buf.va, blob, access)
                        .map_err(|f| Response::error(buffer_status(f)))
                };
                match m.shadow.save_with(&tag, deliver) {
                    Err(e) => Response::error(e.status()),
                    Ok(Err(refused)) => refused,
                    Ok(Ok(saved)) => {
                        // Logged at L0's next visit to the line, not while
                        // the VM's migration waits for this call.
                        m.shadow.note_saved(tag, saved.epoch, saved.len);
                        Response::ok(saved.len as u64, saved.epoch)
                    }
                }
            }
            Op::RestoreDevices => {
                let mut blob = vec![0u8; buf.len as usize];
                if let Err(f) = walk::read_virt(p.mem(), &s.paging, buf.va, &mut blob, access) {
                    return Response::error(buffer_status(f));
                }
                let tag = req.tag.unwrap();
                match m.shadow.restore(&tag, &blob) {
                    Ok(r) => {
                        let budget = m.console.owners.histories;
                        crate::owner::restored(&mut m.shadow, r.vm, budget);
                        Response::ok(buf.len, r.epoch)
                    }
                    // (Logged at L0's next visit to the line, as a success is.)
                    Err(e) => Response::error(e.status()),
                }
            }
            Op::SetIrqRelay => match raw_rsi {
                0 => {
                    m.shadow.irqs.relay_vector = None;
                    Response::ok(0, 0)
                }
                32..=255 => {
                    m.shadow.irqs.relay_vector = Some(raw_rsi as u8);
                    log::info!("L1 relays shadow-device interrupts on vector {raw_rsi:#x}");
                    Response::ok(0, raw_rsi)
                }
                _ => Response::error(Status::InvalidArgument),
            },
            Op::OwnerIdentity => {
                let text = m.console.owners.relay_identity();
                if text.len() as u64 > buf.len {
                    return Response::too_small(text.len() as u64);
                }
                match walk::write_virt(p.mem(), &s.paging, buf.va, text.as_bytes(), access) {
                    Ok(()) => Response::ok(text.len() as u64, 0),
                    Err(f) => Response::error(buffer_status(f)),
                }
            }
            Op::OwnerRelay => {
                let Some(relayed) = req.relay else {
                    return Response::error(Status::Internal);
                };
                if relayed.len == 0 {
                    m.console.owners.relay_forget(relayed.channel);
                    return Response::ok(0, 0);
                }
                // Room for any answer, checked before L0 acts on the message.
                if buf.len < MAX_RELAY_MESSAGE as u64 {
                    return Response::too_small(MAX_RELAY_MESSAGE as u64);
                }
                // The whole answer's room is read and written back as it
                // was before the session moves on: a buffer L0 could not
                // answer into fails here, with nothing acted on.
                let mut room = vec![0u8; MAX_RELAY_MESSAGE];
                if let Err(f) = walk::read_virt(p.mem(), &s.paging, buf.va, &mut room, access) {
                    return Response::error(buffer_status(f));
                }
                if let Err(f) = walk::write_virt(p.mem(), &s.paging, buf.va, &room, access) {
                    return Response::error(buffer_status(f));
                }
                let msg = &room[..relayed.len];
                match m
                    .console
                    .owners
                    .relay_message(&mut m.shadow, relayed.channel, msg)
                {
                    Outcome::Reply(answer) => {
                        match walk::write_virt(p.mem(), &s.paging, buf.va, &answer, access) {
                            Ok(()) => Response::ok(answer.len() as u64, 0),
                            Err(f) => Response::error(buffer_status(f)),
                        }
                    }
                    Outcome::End(r) => Response::ok(0, r as u64),
                }
            }
            Op::TakeIrqs => match m.shadow.take_irqs() {
                Some((vmcs, edges, levels)) => {
                    *rdi = Some(levels as u64);
                    Response::ok(vmcs, edges as u64)
                }
                None => Response::error(Status::NoDevice),
            },
        }
    }
}
