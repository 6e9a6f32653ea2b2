/* A program that exits at once, with no C library: a launch of it costs what the launcher
 * spends and the kernel's process creation, without the started program's own start-up. On a
 * virtual machine a glibc program's start-up can be most of /bin/true's time: glibc sizes the
 * caches at every start by asking the CPU (cpuid) dozens of times, and each question traps to
 * the hypervisor. bench/bpsh.sh launches it beside /bin/true to show where a launch's time
 * goes.
 *
 *   cc -static -nostdlib -o exit0 exit0.c
 */
void _start(void) {
#if defined(__x86_64__)
    __asm__ volatile("mov $231, %eax\n\txor %edi, %edi\n\tsyscall"); /* exit_group(0) */
#elif defined(__aarch64__)
    __asm__ volatile("mov x8, #94\n\tmov x0, #0\n\tsvc #0"); /* exit_group(0) */
#else
#error "exit0.c: add this architecture's exit_group system call"
#endif
    for (;;) {
    }
}
