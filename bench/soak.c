// soak: a steady leaker with many stacks, for the `soak` workload of `cargo xtask bench` (the tracer's
// periodic work must not grow with the trace's age).
//
// Every TICK_MS (10 ms) it mallocs and frees CHURN (20) blocks of 64 B to 4 KiB, each at the end of a call
// path drawn at random among PATHS (2^14 = 16,384: LEVELS non-inlined left()/right() calls chosen by the
// bits of a hash), and keeps one block of KEEP_BYTES (256) from another random path (the leak). Churn and
// leak end in different functions, so they come from up to 32,768 distinct allocator stacks; at 2,000
// churn draws a second every path has been seen within the first half minute, and every path holds a
// kept block after about three minutes. About 4,100 allocator events a second (twice the 1.9k events/s
// of the Bun streaming server of issue 16), a leak of 25.6 KB a second, for SECONDS (or until killed).
// Built with -O2 -fno-omit-frame-pointer (the tracer walks frame pointers).
//
// Usage: soak [SECONDS]   (default 3600)
//
// Prints its pid when it starts, and a summary when done:
//
//   soak pid 4242
//   soak ticks 60000 churn 1200000 kept 60000 kept_bytes 15360000
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define LEVELS 14
#define TICK_MS 10
#define CHURN 20
#define KEEP_BYTES 256
#define NOINLINE __attribute__((noinline))

// Kept blocks are chained through their first word: a use of every block, so none can be optimized away.
static void *kept_head;
static unsigned long kept;

// splitmix64: a well-mixed 64-bit hash of (tick, draw), so that paths come in no particular order.
static uint64_t mix(uint64_t tick, uint64_t draw) {
    uint64_t z = tick * 0x9e3779b97f4a7c15ull + draw * 0xbf58476d1ce4e5b9ull + 0x94d049bb133111ebull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static NOINLINE void churn_at_end(size_t size) {
    volatile char *block = malloc(size);
    if (block != NULL) {
        block[0] = 1;
    }
    free((void *)block);
}

static NOINLINE void keep_at_end(void) {
    void **block = malloc(KEEP_BYTES);
    if (block != NULL) {
        *block = kept_head;
        kept_head = block;
        kept++;
    }
}

static NOINLINE void step(int depth, uint64_t path, int keep, size_t size);

static NOINLINE void left(int depth, uint64_t path, int keep, size_t size) {
    step(depth, path, keep, size);
    __asm__ volatile("" ::: "memory"); // not a tail call: the frame stays on the stack
}

static NOINLINE void right(int depth, uint64_t path, int keep, size_t size) {
    step(depth, path, keep, size);
    __asm__ volatile("" ::: "memory");
}

static NOINLINE void step(int depth, uint64_t path, int keep, size_t size) {
    if (depth == 0) {
        if (keep) {
            keep_at_end();
        } else {
            churn_at_end(size);
        }
        return;
    }
    if (path & 1) {
        left(depth - 1, path >> 1, keep, size);
    } else {
        right(depth - 1, path >> 1, keep, size);
    }
    __asm__ volatile("" ::: "memory");
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long seconds = argc > 1 ? atol(argv[1]) : 3600;
    printf("soak pid %d\n", (int)getpid());
    fflush(stdout);
    double start = now();
    unsigned long ticks = 0, churned = 0;
    // Ticks keep to the clock (not to the sleeps), so a slow tick does not lower the rate.
    while (now() - start < seconds) {
        for (int draw = 0; draw < CHURN; draw++) {
            uint64_t hash = mix(ticks, draw);
            step(LEVELS, hash, 0, 64 + (hash >> 32) % 4033);
            churned++;
        }
        step(LEVELS, mix(ticks, CHURN), 1, 0);
        ticks++;
        double next = start + ticks * (TICK_MS / 1000.0), left = next - now();
        if (left > 0) {
            struct timespec pause = {(time_t)left, (long)((left - (time_t)left) * 1e9)};
            nanosleep(&pause, NULL);
        }
    }
    printf("soak ticks %lu churn %lu kept %lu kept_bytes %lu\n", ticks, churned, kept, kept * KEEP_BYTES);
    return kept_head != NULL ? 0 : 1;
}
