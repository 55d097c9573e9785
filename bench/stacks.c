// stacks: 262,144 distinct call stacks, each keeping one block, for the `stacks` workload of
// `cargo xtask bench` (the tracer must hold them all within --max-memory 128M and write its reports in
// seconds once the target exits).
//
// Block i walks LEVELS (18) levels of non-inlined left()/right() calls chosen by the bits of i and keeps
// one malloc'd block of BLOCK (64) bytes at the end: 2^18 = 262,144 distinct stacks, each with exactly one
// block (64 B) outstanding, 16 MiB in all. Nothing is freed: every stack holds outstanding memory, so none
// may be forgotten to stay within the budget. Built with -O2 -fno-omit-frame-pointer (the tracer walks
// frame pointers).
//
// Usage: stacks [LINGER_MS]   (default 1000: time for the tracer to drain its events before the exit)
//
// Prints when its blocks are all kept, then lingers and exits:
//
//   stacks paths 262144 block_bytes 64 kept_bytes 16777216 pid 4242
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define LEVELS 18
#define PATHS (1u << LEVELS)
#define BLOCK 64
#define NOINLINE __attribute__((noinline))

static void *blocks[PATHS];
static unsigned kept;

static NOINLINE void step(int depth, unsigned path);

static NOINLINE void left(int depth, unsigned path) {
    step(depth, path);
    __asm__ volatile("" ::: "memory"); // not a tail call: the frame stays on the stack
}

static NOINLINE void right(int depth, unsigned path) {
    step(depth, path);
    __asm__ volatile("" ::: "memory");
}

static NOINLINE void step(int depth, unsigned path) {
    if (depth == 0) {
        blocks[kept++] = malloc(BLOCK);
        return;
    }
    if (path & 1) {
        left(depth - 1, path >> 1);
    } else {
        right(depth - 1, path >> 1);
    }
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    long linger = argc > 1 ? atol(argv[1]) : 1000;
    for (unsigned path = 0; path < PATHS; path++) {
        step(LEVELS, path);
    }
    // Counting the blocks reads them: without a use, the compiler may drop the mallocs altogether.
    unsigned held = 0;
    for (unsigned i = 0; i < kept; i++) {
        held += blocks[i] != NULL;
    }
    printf("stacks paths %u block_bytes %d kept_bytes %lu pid %d\n", held, BLOCK, (unsigned long)held * BLOCK,
           (int)getpid());
    fflush(stdout);
    struct timespec pause = {linger / 1000, (linger % 1000) * 1000000L};
    while (nanosleep(&pause, &pause) != 0) {
    }
    return held == PATHS ? 0 : 1;
}
