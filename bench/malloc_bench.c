// malloc_bench: the allocator-heavy workload of `cargo xtask bench`.
//
// PAIRS malloc/free pairs of 16..512 bytes (a fixed pseudo-random mix), every RETAIN_EVERY-th block kept
// until the end (a small "leak" for a tracer to find). Prints its own elapsed wall time, measured around
// the loop only, so process start, tracer attach and detach are not in it:
//
//     malloc_bench pairs 2000000 retained 2000 retained_bytes 527104 seconds 0.051234
//
// Usage: malloc_bench [PAIRS [RETAIN_EVERY]]   (defaults 2000000 and 1000)
//
// Built by the xtask with -O2 -fno-omit-frame-pointer: the tracers walk frame pointers.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

// Stores to a volatile keep the compiler from pairing malloc with free and removing both.
static void *volatile sink;

// A tiny LCG: the same size sequence on every run, no libc call inside the loop.
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static size_t next_size(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return 16 + (size_t)((rng_state >> 33) % 497);  // 16..512
}

// Separate, non-inlined call sites: each shows up as a frame of its own in a tracer's stacks.
__attribute__((noinline)) static char *make_block(size_t size) {
    char *block = malloc(size);
    if (block == NULL) {
        fprintf(stderr, "malloc_bench: out of memory\n");
        exit(1);
    }
    block[0] = (char)size;  // touch it, as real code would
    block[size - 1] = 1;
    sink = block;
    return block;
}

__attribute__((noinline)) static void drop_block(char *block) {
    free(block);
}

// Not a tail call (the store after it), so that it keeps its frame: the retained blocks' stacks show it.
__attribute__((noinline)) static char *keep_block(size_t size) {
    char *block = make_block(size);
    block[0] = 'k';
    return block;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse_positive(const char *text, const char *what) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value <= 0) {
        fprintf(stderr, "malloc_bench: %s must be a positive integer, got \"%s\"\n", what, text);
        exit(2);
    }
    return value;
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? parse_positive(argv[1], "PAIRS") : 2000000;
    long retain_every = argc > 2 ? parse_positive(argv[2], "RETAIN_EVERY") : 1000;

    long retained_cap = pairs / retain_every + 1;
    char **retained = calloc((size_t)retained_cap, sizeof *retained);
    if (retained == NULL) {
        fprintf(stderr, "malloc_bench: out of memory\n");
        return 1;
    }
    long retained_count = 0;
    size_t retained_bytes = 0, allocated_bytes = 0;

    double start = now_seconds();
    for (long i = 1; i <= pairs; i++) {
        size_t size = next_size();
        allocated_bytes += size;
        if (i % retain_every == 0) {
            retained[retained_count++] = keep_block(size);
            retained_bytes += size;
        } else {
            drop_block(make_block(size));
        }
    }
    double elapsed = now_seconds() - start;

    printf("malloc_bench pairs %ld retained %ld retained_bytes %zu seconds %.6f allocated_bytes %zu\n", pairs,
           retained_count, retained_bytes, elapsed, allocated_bytes);
    fflush(stdout);
    return 0;  // the retained blocks stay allocated to the end, on purpose
}
