// deep_stack: the stack-walk workload of `cargo xtask bench` (the walk section). Recurses DEPTH frames, then
// mallocs BLOCKS blocks of 64 bytes and keeps them (no free: each allocator entry the tracer runs is a
// malloc with its stack). Starts at SIGUSR1, prints "done BLOCKS" after, then waits to be killed, so the
// benchmark reads the kernel's BPF statistics around exactly these calls while the tracer is attached.
//
// Usage: deep_stack DEPTH BLOCKS
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *volatile sink;

__attribute__((noinline)) static void allocate(long blocks) {
    for (long i = 0; i < blocks; i++)
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
    if (argc != 3) {
        fprintf(stderr, "usage: deep_stack DEPTH BLOCKS\n");
        return 2;
    }
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
