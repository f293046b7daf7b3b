/* Run a program as a CPU with less ISA than this one: a preloaded library that turns on the
 * kernel's CPUID faulting (arch_prctl ARCH_SET_CPUID, x86 Linux, the cpuid_fault flag) and
 * answers every CPUID instruction of the process itself, with the feature bits of the level in
 * the environment variable MASKED_ISA cleared:
 *
 *   avx2    AVX2 + FMA only: no AVX-512, VNNI (either encoding), AMX, BF16, FP16, GFNI, VAES,
 *           VPCLMULQDQ (AMD Zen 2, Intel Haswell to Comet Lake)
 *   avx512  AVX-512 F/CD/BW/DQ/VL without VNNI, BF16, FP16, AMX and the later extensions
 *           (Intel Skylake-SP)
 *
 * Libraries that pick kernels by CPUID (ONNX Runtime's MLAS, numpy, oneDNN) then pick the
 * masked level's kernels; they run on this CPU's cores. The setting is per thread, kept by
 * threads and forks, reset by execve (the constructor runs again in every program that keeps
 * LD_PRELOAD). A program that later installs its own SIGSEGV handler (faulthandler) takes the
 * faults over: run such programs without it. Built and used by masked_isa.py beside it. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

/* Leaf 7 sub-leaf 0 and 1 bits cleared at each level (Intel SDM vol. 2A, CPUID). */
static uint32_t clear7_ebx, clear7_ecx, clear7_edx, clear71_eax, clear71_edx;

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)sig;
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {  /* CPUID */
        uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX], r[4];
        real_cpuid(leaf, sub, r);
        if (leaf == 7 && sub == 0) {
            r[1] &= ~clear7_ebx;
            r[2] &= ~clear7_ecx;
            r[3] &= ~clear7_edx;
        } else if (leaf == 7 && sub == 1) {
            r[0] &= ~clear71_eax;
            r[3] &= ~clear71_edx;
        }
        g[REG_RAX] = r[0];
        g[REG_RBX] = r[1];
        g[REG_RCX] = r[2];
        g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        return;
    }
    signal(SIGSEGV, SIG_DFL);  /* a real fault: return and take it */
}

__attribute__((constructor)) static void start(void) {
    const char *level = getenv("MASKED_ISA");
    if (level == NULL || (strcmp(level, "avx2") != 0 && strcmp(level, "avx512") != 0)) {
        fprintf(stderr, "cpuid_mask: MASKED_ISA must be avx2 or avx512, not %s\n",
                level ? level : "unset");
        _exit(70);
    }
    /* Both: IFMA, PF, ER; VBMI, VBMI2, GFNI, VAES, VPCLMULQDQ, VNNI, BITALG, VPOPCNTDQ;
     * 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8; AVX-VNNI,
     * AVX512-BF16, AMX-FP16, AVX-IFMA; AVX-VNNI-INT8, AVX-NE-CONVERT, AMX-COMPLEX,
     * AVX-VNNI-INT16, AVX10. */
    clear7_ebx = BIT(21) | BIT(26) | BIT(27);
    clear7_ecx = BIT(1) | BIT(6) | BIT(8) | BIT(9) | BIT(10) | BIT(11) | BIT(12) | BIT(14);
    clear7_edx = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
    clear71_eax = BIT(4) | BIT(5) | BIT(21) | BIT(23);
    clear71_edx = BIT(4) | BIT(5) | BIT(8) | BIT(10) | BIT(19);
    if (strcmp(level, "avx2") == 0)  /* AVX-512 F, DQ, CD, BW, VL */
        clear7_ebx |= BIT(16) | BIT(17) | BIT(28) | BIT(30) | BIT(31);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        perror("cpuid_mask: arch_prctl(ARCH_SET_CPUID, 0)");
        _exit(70);
    }
}
