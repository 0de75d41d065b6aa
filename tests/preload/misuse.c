/* Misuse that sampalloc must detect: each mode prints the offending pointer as
 * "ptr 0x..." on stdout, then makes the bad call, which must abort the process. */
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *(*volatile opaque)(void *); /* keeps the compiler from reasoning about pointers */
static void *pass(void *p) { return p; }

static void announce(void *p) {
  printf("ptr %p\n", p);
  fflush(stdout);
}

/* A second thread (so of another arena than main's, which stays in use) frees every other one
 * of main's first `n` small blocks, then the first again: its remote buffer holds it, or, after
 * the others pushed it out (n > 512), its slab, which the blocks left live keep in use. */
enum { REMOTE_MAX = 1200 };
static void *remote_blocks[REMOTE_MAX];
static int remote_n;
static void *remote_frees(void *unused) {
  (void)unused;
  for (int i = 0; i < remote_n; i += 2) free(remote_blocks[i]);
  free(opaque(remote_blocks[0]));
  return NULL;
}
static void double_free_remote(int n) {
  remote_n = n;
  for (int i = 0; i < n; i++) remote_blocks[i] = malloc(16);
  announce(remote_blocks[0]);
  pthread_t t;
  pthread_create(&t, NULL, remote_frees, NULL);
  pthread_join(t, NULL);
}

/* A second thread frees all of main's PARKED_N blocks of 64 bytes (a line each, so none goes
 * through the remote buffer), then block PARKED_AGAIN again. Its cache of that class holds 128
 * blocks: each overflow sent home the 64 it had taken last, and the first 1,024 of those wait
 * in the bin's transfer array for main's next refill, that block among them. The second free
 * must be caught there and then: the sweep that puts parked blocks back in their slab would
 * catch it too, but later, after the block was handed out again. The thread starts first
 * (thread start-up may sweep the arenas, which empties the arrays), and main allocates while it
 * waits. */
enum { PARKED_N = 2000, PARKED_AGAIN = 300 };
static void *parked_blocks[PARKED_N];
static pthread_barrier_t parked_ready;
static void *free_all_then_one_again(void *unused) {
  (void)unused;
  free(malloc(1000)); /* this thread's cache is set up (another class: using this one grows it) */
  pthread_barrier_wait(&parked_ready);
  pthread_barrier_wait(&parked_ready);
  for (int i = 0; i < PARKED_N; i++) free(parked_blocks[i]);
  free(opaque(parked_blocks[PARKED_AGAIN]));
  printf("survived\n");
  fflush(stdout);
  return NULL;
}
static void double_free_parked(void) {
  pthread_barrier_init(&parked_ready, NULL, 2);
  pthread_t t;
  pthread_create(&t, NULL, free_all_then_one_again, NULL);
  pthread_barrier_wait(&parked_ready);
  for (int i = 0; i < PARKED_N; i++) parked_blocks[i] = malloc(64);
  announce(parked_blocks[PARKED_AGAIN]);
  pthread_barrier_wait(&parked_ready);
  pthread_join(t, NULL);
}

int main(int argc, char **argv) {
  opaque = pass;
  if (argc != 2) return 2;
  const char *mode = argv[1];
  char local[64];
  memset(local, 0, sizeof local);
  if (!strcmp(mode, "free-stack")) {
    void *p = opaque(local + 16);
    announce(p);
    free(p);
  } else if (!strcmp(mode, "free-interior")) {
    char *p = opaque(malloc(64));
    announce(p + 8);
    free(opaque(p + 8));
  } else if (!strcmp(mode, "free-interior-large")) {
    char *p = opaque(malloc(100000));
    announce(p + 8);
    free(opaque(p + 8));
  } else if (!strcmp(mode, "free-large-second-page")) {
    /* page-aligned, inside a cached large block but not its first page */
    char *p = opaque(malloc(100000));
    announce(p + 4096);
    free(opaque(p + 4096));
  } else if (!strcmp(mode, "free-segment-header")) {
    /* inside the 4 MiB segment that holds a small block, in its header pages */
    uintptr_t seg = (uintptr_t)opaque(malloc(64)) & ~(uintptr_t)((4 << 20) - 1);
    announce((void *)(seg + 256));
    free(opaque((void *)(seg + 256)));
  } else if (!strcmp(mode, "double-free-released-slab")) {
    /* the block's slab empties and goes back to the page heap before the second free */
    void *p = opaque(malloc(12000));
    announce(p);
    free(p);
    malloc_trim(0);
    free(opaque(p));
  } else if (!strcmp(mode, "free-interior-huge")) {
    char *p = opaque(malloc(5 << 20));
    announce(p + 8);
    free(opaque(p + 8));
  } else if (!strcmp(mode, "double-free")) {
    void *p = opaque(malloc(48));
    announce(p);
    free(p);
    free(opaque(p));
  } else if (!strcmp(mode, "double-free-later")) {
    /* The block leaves the thread cache (flushed by the frees after it) before the second
     * free, so the slab, not the cache, must catch it. */
    enum { N = 4096 };
    void **others = malloc(N * sizeof *others);
    for (int i = 0; i < N; i++) others[i] = malloc(48);
    void *p = opaque(malloc(48));
    announce(p);
    free(p);
    for (int i = 0; i < N; i++) free(others[i]);
    free(opaque(p));
  } else if (!strcmp(mode, "double-free-large")) {
    void *p = opaque(malloc(300000));
    announce(p);
    free(p);
    free(opaque(p));
  } else if (!strcmp(mode, "double-free-huge")) {
    void *p = opaque(malloc(5 << 20));
    announce(p);
    free(p);
    free(opaque(p));
  } else if (!strcmp(mode, "double-free-remote")) {
    double_free_remote(2);
  } else if (!strcmp(mode, "double-free-remote-later")) {
    double_free_remote(REMOTE_MAX);
  } else if (!strcmp(mode, "double-free-parked")) {
    double_free_parked();
  } else if (!strcmp(mode, "realloc-invalid")) {
    char *p = opaque(malloc(64));
    announce(p + 16);
    p = realloc(opaque(p + 16), 128);
    printf("realloc returned %p\n", (void *)p);
  } else if (!strcmp(mode, "realloc-zero-invalid")) {
    char *p = opaque(malloc(64));
    announce(p + 16);
    p = realloc(opaque(p + 16), 0);
    printf("realloc returned %p\n", (void *)p);
  } else if (!strcmp(mode, "realloc-zero-double-free")) {
    /* realloc(p, 0) frees: a second one is a double free, reported as realloc's. */
    void *p = opaque(malloc(48));
    announce(p);
    free(p);
    p = realloc(opaque(p), 0);
    printf("realloc returned %p\n", p);
  } else if (!strcmp(mode, "realloc-zero-double-free-huge")) {
    void *p = opaque(malloc(5 << 20));
    announce(p);
    free(p);
    p = realloc(opaque(p), 0);
    printf("realloc returned %p\n", p);
  } else if (!strcmp(mode, "realloc-stack")) {
    void *p = opaque(local);
    announce(p);
    p = realloc(p, 128);
    printf("realloc returned %p\n", p);
  } else if (!strcmp(mode, "usable-size-invalid")) {
    void *p = opaque(local + 8);
    announce(p);
    printf("usable %zu\n", malloc_usable_size(p));
  } else {
    return 2;
  }
  printf("survived\n");
  return 0;
}
