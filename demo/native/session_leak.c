/*
 * A small stand-in for a server with a leak, for `cargo xtask demo`.
 *
 * Each simulated request:
 *   - retain_session_buffer(): maps 128 KiB for the reply and keeps it forever (the leak);
 *   - render_reply():          maps 256 KiB of scratch space and unmaps it before returning;
 *   - cache_reply():           keeps the last 8 replies in a bounded cache, unmapping the oldest.
 * 300 requests, 10 ms apart, on two worker threads. At exit the leak holds 300 * 128 KiB = 37.5 MiB, the
 * cache 8 * 32 KiB = 256 KiB, the scratch space nothing. (The two thread stacks, 8 MiB each, stay mapped
 * too: glibc keeps them for reuse.)
 */
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define REQUESTS_PER_WORKER 150
#define SESSION_BYTES (128 * 1024)
#define SCRATCH_BYTES (256 * 1024)
#define CACHE_SLOTS 8
#define CACHE_BYTES (32 * 1024)

/* Inlined, so that each caller is the call site. */
static inline __attribute__((always_inline)) void *map_bytes(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void *sessions[2 * REQUESTS_PER_WORKER];
static int session_count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

__attribute__((noinline)) void retain_session_buffer(void) {
    void *buffer = map_bytes(SESSION_BYTES);
    pthread_mutex_lock(&lock);
    sessions[session_count++] = buffer; /* never released */
    pthread_mutex_unlock(&lock);
}

__attribute__((noinline)) void render_reply(void) {
    char *scratch = map_bytes(SCRATCH_BYTES);
    if (scratch) {
        memset(scratch, 'x', 4096);
        munmap(scratch, SCRATCH_BYTES);
    }
}

static void *cache[CACHE_SLOTS];
static int cache_next;

__attribute__((noinline)) void cache_reply(void) {
    void *reply = map_bytes(CACHE_BYTES);
    pthread_mutex_lock(&lock);
    void *evicted = cache[cache_next];
    cache[cache_next] = reply;
    cache_next = (cache_next + 1) % CACHE_SLOTS;
    pthread_mutex_unlock(&lock);
    if (evicted)
        munmap(evicted, CACHE_BYTES);
}

__attribute__((noinline)) void handle_request(void) {
    render_reply();
    cache_reply();
    retain_session_buffer();
}

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < REQUESTS_PER_WORKER; i++) {
        handle_request();
        usleep(10 * 1000);
    }
    return NULL;
}

int main(void) {
    pthread_t workers[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&workers[i], NULL, worker, NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(workers[i], NULL);
    return 0;
}
