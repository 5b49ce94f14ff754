//! The seccomp filter of the compile sandbox: a classic BPF program handed to
//! `bwrap --seccomp FD`.
//!
//! Not deny-by-default (rustc and its linker use a wide, version-dependent set of system calls),
//! but every call a compiler never makes fails with `EPERM`: debugging other processes, mounts,
//! kernel modules, BPF, perf events, key rings, namespaces, io_uring, clock and swap changes,
//! terminal input injection. `clone3` returns `ENOSYS` (its flags live in memory a filter
//! cannot read, and libc then falls back to `clone`), and `clone` with a namespace flag fails.
//! A call made with another architecture's convention (x32, 32-bit) kills the process.

/// `EPERM`: what a denied call returns.
const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` returns, so that libc retries with `clone`.
const ENOSYS: u32 = 38;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

// Offsets into `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// Low 32 bits of argument `i` (little-endian).
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// The x32 ABI marks its system-call numbers with this bit.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Calls a compiler never needs.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_vhangup,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
];

/// `clone` flags that create namespaces.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | 0x80) as u32; // CLONE_NEWTIME

/// `ioctl` requests that push input into a terminal.
const DENIED_IOCTLS: &[u32] = &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

/// One `struct sock_filter`.
#[derive(Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// Where a jump goes before offsets are known.
#[derive(Clone, Copy)]
enum Target {
    Next,
    Deny,
    Enosys,
    Kill,
    CheckClone,
    CheckIoctl,
}

fn insn(code: u16, k: u32) -> (Insn, Target, Target) {
    (
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        },
        Target::Next,
        Target::Next,
    )
}

fn jump(code: u16, k: u32, jt: Target, jf: Target) -> (Insn, Target, Target) {
    (
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        },
        jt,
        jf,
    )
}

/// The filter as a list of instructions.
fn program() -> Vec<Insn> {
    use Target::*;
    let mut p = vec![
        insn(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH, Next, Kill),
        insn(LD_W_ABS, NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.push(jump(JGE_K, X32_SYSCALL_BIT, Kill, Next));
    for &nr in DENIED {
        p.push(jump(JEQ_K, nr as u32, Deny, Next));
    }
    p.push(jump(JEQ_K, libc::SYS_clone3 as u32, Enosys, Next));
    p.push(jump(JEQ_K, libc::SYS_clone as u32, CheckClone, Next));
    p.push(jump(JEQ_K, libc::SYS_ioctl as u32, CheckIoctl, Next));
    p.push(insn(RET_K, RET_ALLOW));
    let check_clone = p.len();
    // clone(flags, …) on both architectures: the flags are argument 0.
    p.push(insn(LD_W_ABS, arg_lo(0)));
    p.push(jump(JSET_K, NAMESPACE_FLAGS, Deny, Next));
    p.push(insn(RET_K, RET_ALLOW));
    let check_ioctl = p.len();
    // The kernel reads an ioctl request as 32 bits: the low word is the whole request.
    p.push(insn(LD_W_ABS, arg_lo(1)));
    for &req in DENIED_IOCTLS {
        p.push(jump(JEQ_K, req, Deny, Next));
    }
    p.push(insn(RET_K, RET_ALLOW));
    let deny = p.len();
    p.push(insn(RET_K, RET_ERRNO | EPERM));
    let enosys = p.len();
    p.push(insn(RET_K, RET_ERRNO | ENOSYS));
    let kill = p.len();
    p.push(insn(RET_K, RET_KILL_PROCESS));
    let resolve = |at: usize, t: Target| -> u8 {
        let to = match t {
            Next => at + 1,
            Deny => deny,
            Enosys => enosys,
            Kill => kill,
            CheckClone => check_clone,
            CheckIoctl => check_ioctl,
        };
        u8::try_from(to - at - 1).expect("BPF jumps are short: the program is < 256 instructions")
    };
    p.iter()
        .enumerate()
        .map(|(at, &(mut i, jt, jf))| {
            if i.code & 0x07 == 0x05 {
                i.jt = resolve(at, jt);
                i.jf = resolve(at, jf);
            }
            i
        })
        .collect()
}

/// The filter in the binary form `bwrap --seccomp` reads (an array of `struct sock_filter`).
pub(super) fn bpf() -> Vec<u8> {
    program()
        .iter()
        .flat_map(|i| {
            let mut b = Vec::with_capacity(8);
            b.extend_from_slice(&i.code.to_ne_bytes());
            b.push(i.jt);
            b.push(i.jf);
            b.extend_from_slice(&i.k.to_ne_bytes());
            b
        })
        .collect()
}

/// The system calls the filter refuses with `EPERM` (for tests and documentation).
pub fn denied_syscalls() -> &'static [libc::c_long] {
    DENIED
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter of the instructions this module emits.
    fn run(nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let p = program();
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                JEQ_K | JGE_K | JSET_K => {
                    let hit = match i.code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn denies_what_a_compiler_never_needs_and_allows_the_rest() {
        let sys = |n: libc::c_long| n as u32;
        let a = [0u64; 6];
        for &nr in DENIED {
            assert_eq!(run(sys(nr), AUDIT_ARCH, a), RET_ERRNO | EPERM, "{nr}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_mmap,
            libc::SYS_futex,
        ] {
            assert_eq!(run(sys(nr), AUDIT_ARCH, a), RET_ALLOW, "{nr}");
        }
        assert_eq!(
            run(sys(libc::SYS_clone3), AUDIT_ARCH, a),
            RET_ERRNO | ENOSYS
        );
        // A thread is fine; a new user namespace is not.
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(
            run(sys(libc::SYS_clone), AUDIT_ARCH, [thread, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        let userns = libc::CLONE_NEWUSER as u64;
        assert_eq!(
            run(sys(libc::SYS_clone), AUDIT_ARCH, [userns, 0, 0, 0, 0, 0]),
            RET_ERRNO | EPERM
        );
        let tiocsti = libc::TIOCSTI;
        assert_eq!(
            run(sys(libc::SYS_ioctl), AUDIT_ARCH, [0, tiocsti, 0, 0, 0, 0]),
            RET_ERRNO | EPERM
        );
        assert_eq!(
            run(sys(libc::SYS_ioctl), AUDIT_ARCH, [0, 0x5401, 0, 0, 0, 0]),
            RET_ALLOW
        );
        // Another architecture's calling convention is killed.
        assert_eq!(run(0, 0x4000_0003, a), RET_KILL_PROCESS);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(run(X32_SYSCALL_BIT | 1, AUDIT_ARCH, a), RET_KILL_PROCESS);
        assert_eq!(bpf().len(), program().len() * 8);
    }
}
