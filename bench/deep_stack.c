// deep_stack: the stack-walk workload of `cargo xtask bench` (the walk section). Recurses DEPTH frames, then
// mallocs COUNT blocks of 64 bytes and keeps them (no free: each allocator entry the tracer runs is a malloc
// with its stack), or with "touch" maps COUNT pages and touches each once (a page fault each), or with "memset" the
// same through libc's memset (the fault in the C runtime, in code without frame pointers, as most of a Bun
// server's are). Starts at SIGUSR1, prints "done BLOCKS" after, then waits to be killed, so the
// benchmark reads the kernel's BPF statistics around exactly these calls while the tracer is attached.
//
// Usage: deep_stack DEPTH COUNT [touch|memset]
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

static void *volatile sink;
static int touch_pages;
static int touch_by_memset;
// Read at each call, so that the compiler calls memset rather than storing the bytes itself.
static volatile size_t memset_bytes = 8;

__attribute__((noinline)) static void allocate(long count) {
    if (touch_pages) {
        volatile char *pages = mmap(NULL, count * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (pages == MAP_FAILED)
            exit(1);
        for (long i = 0; i < count; i++) {
            if (touch_by_memset)
                memset((char *)pages + i * 4096, 1, memset_bytes);
            else
                pages[i * 4096] = 1;
        }
        return;
    }
    for (long i = 0; i < count; i++)
        sink = malloc(64);
}

// Not a tail call (the store after it): every level keeps its frame.
__attribute__((noinline)) static void descend(int depth, long blocks) {
    if (depth > 0)
        descend(depth - 1, blocks);
    else
        allocate(blocks);
    sink = (void *)(long)depth;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: deep_stack DEPTH COUNT [touch|memset]\n");
        return 2;
    }
    touch_by_memset = argc == 4 && strcmp(argv[3], "memset") == 0;
    touch_pages = touch_by_memset || (argc == 4 && strcmp(argv[3], "touch") == 0);
    // A fault per page: no transparent huge pages.
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    int depth = atoi(argv[1]);
    long blocks = atol(argv[2]);
    // Blocked first, so that a signal sent before the wait is not lost.
    sigset_t start;
    sigemptyset(&start);
    sigaddset(&start, SIGUSR1);
    sigprocmask(SIG_BLOCK, &start, NULL);
    printf("ready\n");
    fflush(stdout);
    int signal_number;
    sigwait(&start, &signal_number);
    descend(depth, blocks);
    printf("done %ld\n", blocks);
    fflush(stdout);
    for (;;)
        pause();
}
