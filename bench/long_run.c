// long_run: hours of dispatch-server's memory traffic, replayed in a couple of minutes, for the long-run
// memory benchmark of `cargo xtask bench` (the tracer's own memory must stay under --max-memory however
// long it runs).
//
// What it stands for. dispatch-server (a Bun backend) grew 2.5 GB an hour in production. Traced in
// page-fault mode, one orchestrator turn of the Bun demo makes about 1,400 page faults (measured there);
// assume one turn a second in production. Each turn here makes the same 1,400 first touches, each from a
// call stack chosen at random among 65,536, as a JIT-compiled server's faults come from many stacks:
//
//   - an arena of FAULTS - MMAPS pages (1,384) is mapped, and each of its pages touched once (a page fault)
//     at the end of a call path of its own (see below);
//   - MMAPS (16) regions of one page are mapped and touched, each at the end of a call path of its own
//     (so mmaps too come from many stacks);
//   - at the end of the turn the arena is unmapped but for its first KEEP_PAGES (4) pages, which are kept
//     (the leak: 16 KiB a turn, from 4 stacks), and the regions are all unmapped (the churn);
//   - 16 malloc/free pairs of 64 B to 4 KiB, and one 256-byte block kept (a small malloc leak; glibc serves
//     these from its heap, so in page-fault mode they show only as brk and the faults of new heap pages).
//
// Per turn the tracer (page-fault mode) gets 1,400 page faults, 17 mmaps and 17 munmaps: about 1,434
// events. The default 7,200 turns stand for 2 hours of production at a turn a second: 10.1 million page
// faults and 122,400 mmaps. Each of the 65,536 paths can end in a touch of the arena or in an mmap of its
// own, so the faults come from up to 131,072 distinct stacks and the mmaps from up to 65,536 more. 28,800
// pages are kept (112.5 MiB) from about 23,000 stacks, and 7,200 malloc blocks (1.8 MiB). Production grew
// faster (2.5 GB an hour, mostly in the allocator's own arenas); what weighs on the tracer is the number of
// stacks and of outstanding pages, not their size.
//
// The call paths: touch i of turn t walks LEVELS (16) levels of non-inlined left()/right() calls chosen by
// the bits of a hash of (t, i), in no particular order, and touches (or maps) at the end of that path: the
// tracer must intern these stacks, and may evict those with nothing outstanding to stay within its budget.
// Built with -O2 -fno-omit-frame-pointer (the tracer walks frame pointers).
//
// Usage: long_run [TURNS [FAULTS [MMAPS]]]   (defaults 7200 1400 16)
//
// Prints when done, then exits:
//
//   long_run turns 7200 faults 10080000 mmaps 122400 munmaps 122400 kept_bytes 119808000 seconds 21.345
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LEVELS 16
#define KEEP_PAGES 4
#define NOINLINE __attribute__((noinline))

static size_t page_size;

// splitmix64: a well-mixed 64-bit hash of (turn, touch), so that paths come in no particular order.
static uint64_t mix(uint64_t turn, uint64_t touch) {
    uint64_t z = turn * 0x9e3779b97f4a7c15ull + touch * 0xbf58476d1ce4e5b9ull + 0x94d049bb133111ebull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void *map_pages(size_t pages) {
    void *region = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) {
        perror("long_run: mmap");
        exit(1);
    }
    return region;
}

// The ends of the paths: touch a page of the arena (one page fault), or map a page and touch it (an mmap
// and a page fault).
NOINLINE static char *touch_page(char *page) {
    *(volatile char *)page = 1;
    return page;
}

NOINLINE static char *map_and_touch(void) {
    char *region = map_pages(1);
    *(volatile char *)region = 1;
    return region;
}

NOINLINE static char *left(uint64_t path, int level, char *page);
NOINLINE static char *right(uint64_t path, int level, char *page);

// `page`: the arena page to touch; NULL: map a page of its own.
NOINLINE static char *step(uint64_t path, int level, char *page) {
    if (level == LEVELS)
        return page ? touch_page(page) : map_and_touch();
    return (path >> level) & 1 ? right(path, level + 1, page) : left(path, level + 1, page);
}

// The asm after the call keeps each a real frame (no tail call), so every path is a distinct stack of
// return addresses. The two differ (one nop, two), so that the compiler cannot fold them into one function
// (GCC's -fipa-icf, on at -O2, would: every path would then be the same stack).
NOINLINE static char *left(uint64_t path, int level, char *page) {
    char *result = step(path, level, page);
    __asm__ volatile("nop" ::: "memory");
    return result;
}

NOINLINE static char *right(uint64_t path, int level, char *page) {
    char *result = step(path, level, page);
    __asm__ volatile("nop\n\tnop" ::: "memory");
    return result;
}

// Stores to a volatile keep the compiler from pairing malloc with free and removing both.
static void *volatile sink;

static void *checked_malloc(size_t size) {
    char *block = malloc(size);
    if (block == NULL) {
        fprintf(stderr, "long_run: out of memory\n");
        exit(1);
    }
    block[0] = 1;
    sink = block;
    return block;
}

NOINLINE static void malloc_churn(uint64_t turn) {
    for (uint64_t i = 0; i < 16; i++)
        free(checked_malloc(64 + (size_t)(mix(turn, 1u << 20 | i) % 4033)));  // 64..4096 bytes
    checked_malloc(256);  // the malloc leak: never freed
}

static long parse_positive(const char *text, const char *what) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value <= 0) {
        fprintf(stderr, "long_run: %s must be a positive integer, got \"%s\"\n", what, text);
        exit(2);
    }
    return value;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long turns = argc > 1 ? parse_positive(argv[1], "TURNS") : 7200;
    long faults = argc > 2 ? parse_positive(argv[2], "FAULTS") : 1400;
    long mmaps = argc > 3 ? parse_positive(argv[3], "MMAPS") : 16;
    if (faults - mmaps <= KEEP_PAGES) {
        fprintf(stderr, "long_run: FAULTS must exceed MMAPS + %d\n", KEEP_PAGES);
        return 2;
    }
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    size_t arena_pages = (size_t)(faults - mmaps);

    char **regions = calloc((size_t)mmaps, sizeof *regions);
    if (regions == NULL) {
        fprintf(stderr, "long_run: out of memory\n");
        return 1;
    }
    double start = now_seconds();
    for (long turn = 0; turn < turns; turn++) {
        char *arena = map_pages(arena_pages);
        for (size_t i = 0; i < arena_pages; i++)
            step(mix((uint64_t)turn, i), 0, arena + i * page_size);
        for (long i = 0; i < mmaps; i++)
            regions[i] = step(mix((uint64_t)turn, arena_pages + (uint64_t)i), 0, NULL);
        // The first pages of the arena are the turn's leak; the rest is its working set, released at its end.
        munmap(arena + KEEP_PAGES * page_size, (arena_pages - KEEP_PAGES) * page_size);
        for (long i = 0; i < mmaps; i++)
            munmap(regions[i], page_size);
        malloc_churn((uint64_t)turn);
    }
    double elapsed = now_seconds() - start;

    unsigned long long n = (unsigned long long)turns;
    printf("long_run turns %llu faults %llu mmaps %llu munmaps %llu kept_bytes %llu seconds %.3f\n", n,
           n * (unsigned long long)faults, n * (unsigned long long)(mmaps + 1), n * (unsigned long long)(mmaps + 1),
           n * (KEEP_PAGES * (unsigned long long)page_size + 256), elapsed);
    fflush(stdout);
    return 0;  // the kept pages and blocks stay to the end, on purpose
}
