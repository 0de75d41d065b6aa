/* C allocation API conformance under LD_PRELOAD, in the spirit of scudo's wrappers_c_test.cpp.
 * Prints "conformance ok" and exits 0, or names the first failed check and exits 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *__libc_malloc(size_t);
void __libc_free(void *);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void *__libc_valloc(size_t);
void *__libc_pvalloc(size_t);

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "conformance: %s:%d: check failed: %s (errno %d)\n",       \
              __FILE__, __LINE__, #cond, errno);                                 \
      exit(1);                                                                   \
    }                                                                            \
  } while (0)

/* Opaque to the optimiser so that no call below is folded away. */
static size_t (*volatile id)(size_t);
static size_t ident(size_t v) { return v; }
#define V(x) (id((size_t)(x)))

static const size_t HUGE_SIZE = (size_t)1 << 50; /* beyond the 47-bit address space */
static size_t page;

static int aligned_to(void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static void fill_and_check(void *p, size_t n, unsigned char v) {
  memset(p, v, n);
  unsigned char *c = p;
  for (size_t i = 0; i < n; i += 1 + n / 64) CHECK(c[i] == v);
  if (n) CHECK(c[n - 1] == v);
}

static const size_t sizes[] = {0,     1,      7,       8,       15,      16,       17,
                               31,    100,    1000,    4095,    4096,    4097,     16384,
                               20000, 32768,  40000,   100000,  1 << 20, 2 << 20,  (2 << 20) + 1,
                               3000000, 5 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void test_malloc(void) {
  void *a = malloc(V(0)), *b = malloc(V(0));
  CHECK(a && b && a != b);
  CHECK(aligned_to(a, 16) && aligned_to(b, 16));
  free(a);
  free(b);
  free(NULL);
  for (size_t i = 0; i < NSIZES; i++) {
    size_t n = sizes[i];
    void *p = malloc(V(n));
    CHECK(p);
    CHECK(aligned_to(p, 16));
    CHECK(malloc_usable_size(p) >= n);
    fill_and_check(p, malloc_usable_size(p), 0xa5);
    free(p);
  }
  CHECK(malloc_usable_size(NULL) == 0);
  errno = 0;
  CHECK(malloc(V(SIZE_MAX)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(malloc(V(SIZE_MAX - 4096)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(malloc(V(HUGE_SIZE)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(malloc(V((size_t)PTRDIFF_MAX + 1)) == NULL && errno == ENOMEM);
  /* cfree is a link-time compat symbol in glibc >= 2.26: reach ours through dlsym. */
  void (*cfree_fn)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
  CHECK(cfree_fn != NULL);
  cfree_fn(malloc(V(10)));
}

static void test_calloc(void) {
  for (size_t i = 0; i < NSIZES; i++) {
    size_t n = sizes[i];
    /* Dirty a block of the same size first so that a recycled block must be cleared. */
    unsigned char *d = malloc(V(n));
    CHECK(d);
    memset(d, 0xff, malloc_usable_size(d));
    free(d);
    unsigned char *p = calloc(V(1), V(n));
    CHECK(p && aligned_to(p, 16));
    for (size_t j = 0; j < n; j++) CHECK(p[j] == 0);
    free(p);
  }
  unsigned char *p = calloc(V(10), V(10));
  CHECK(p);
  for (int j = 0; j < 100; j++) CHECK(p[j] == 0);
  free(p);
  p = calloc(V(0), V(10));
  CHECK(p);
  free(p);
  errno = 0;
  CHECK(calloc(V(SIZE_MAX / 2), V(3)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(calloc(V((size_t)1 << 33), V((size_t)1 << 33)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(calloc(V(1), V(HUGE_SIZE)) == NULL && errno == ENOMEM);
}

static void test_realloc(void) {
  /* realloc(NULL, n) is malloc(n). */
  char *p = realloc(NULL, V(100));
  CHECK(p && aligned_to(p, 16) && malloc_usable_size(p) >= 100);
  /* Grow and shrink through every size, keeping the contents. */
  size_t have = 100;
  for (size_t i = 0; i < 100; i++) p[i] = (char)i;
  for (size_t i = 0; i < NSIZES; i++) {
    size_t n = sizes[i] ? sizes[i] : 1;
    char *q = realloc(p, V(n));
    CHECK(q && aligned_to(q, 16) && malloc_usable_size(q) >= n);
    size_t keep = have < n ? have : n;
    for (size_t j = 0; j < keep && j < 100; j++) CHECK(q[j] == (char)j);
    if (keep < 100)
      for (size_t j = keep; j < 100 && j < n; j++) q[j] = (char)j;
    for (size_t j = 0; j < 100 && j < n; j++) q[j] = (char)j;
    have = n;
    p = q;
  }
  for (size_t i = NSIZES; i-- > 0;) {
    size_t n = sizes[i] ? sizes[i] : 1;
    char *q = realloc(p, V(n));
    CHECK(q);
    for (size_t j = 0; j < 100 && j < n && j < have; j++) CHECK(q[j] == (char)j);
    for (size_t j = 0; j < 100 && j < n; j++) q[j] = (char)j;
    have = n;
    p = q;
  }
  free(p);

  /* realloc(p, 0) frees p and returns NULL (glibc). */
  p = malloc(V(64));
  CHECK(p);
  CHECK(realloc(p, V(0)) == NULL);

  /* A failed realloc keeps the block and sets ENOMEM: small, large and huge blocks. */
  const size_t starts[] = {64, 100000, 5 << 20};
  const size_t fails[] = {HUGE_SIZE, SIZE_MAX, SIZE_MAX - 4096, SIZE_MAX - 8191,
                          (size_t)PTRDIFF_MAX + 1};
  for (size_t s = 0; s < 3; s++) {
    unsigned char *b = malloc(V(starts[s]));
    CHECK(b);
    memset(b, 0x5a, starts[s]);
    for (size_t f = 0; f < sizeof fails / sizeof fails[0]; f++) {
      errno = 0;
      CHECK(realloc(b, V(fails[f])) == NULL && errno == ENOMEM);
      CHECK(malloc_usable_size(b) >= starts[s]);
      CHECK(b[0] == 0x5a && b[starts[s] - 1] == 0x5a);
    }
    free(b);
  }

  /* reallocarray */
  p = reallocarray(NULL, V(10), V(10));
  CHECK(p && malloc_usable_size(p) >= 100);
  memset(p, 7, 100);
  char *q = reallocarray(p, V(100), V(100));
  CHECK(q && q[99] == 7 && malloc_usable_size(q) >= 10000);
  errno = 0;
  CHECK(reallocarray(q, V(SIZE_MAX / 2), V(3)) == NULL && errno == ENOMEM);
  CHECK(q[0] == 7 && malloc_usable_size(q) >= 10000); /* untouched */
  errno = 0;
  CHECK(reallocarray(NULL, V((size_t)1 << 40), V((size_t)1 << 40)) == NULL && errno == ENOMEM);
  free(q);
}

static void test_posix_memalign(void) {
  void *p;
  /* EINVAL: not a power of two, or not a multiple of sizeof(void *); errno untouched. */
  const size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 100, 4095, SIZE_MAX, (SIZE_MAX >> 1) + 2};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    p = (void *)0x1234;
    errno = 4242;
    CHECK(posix_memalign(&p, V(bad[i]), V(16)) == EINVAL);
    CHECK(errno == 4242 && p == (void *)0x1234);
  }
  for (size_t a = sizeof(void *); a <= ((size_t)4 << 20); a <<= 1) {
    const size_t ns[] = {0, 1, 10, 100, 4096, 40000, 3000000};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
      p = NULL;
      CHECK(posix_memalign(&p, V(a), V(ns[i])) == 0);
      CHECK(p && aligned_to(p, a) && aligned_to(p, 16));
      CHECK(malloc_usable_size(p) >= ns[i]);
      fill_and_check(p, ns[i], 0x3c);
      free(p);
    }
  }
  /* ENOMEM leaves *memptr untouched. */
  p = (void *)0x1234;
  CHECK(posix_memalign(&p, V(64), V(HUGE_SIZE)) == ENOMEM && p == (void *)0x1234);
  CHECK(posix_memalign(&p, V(4096), V(SIZE_MAX)) == ENOMEM && p == (void *)0x1234);
  CHECK(posix_memalign(&p, V((size_t)1 << 62), V(16)) == ENOMEM && p == (void *)0x1234);
}

static void test_aligned(void) {
  for (size_t a = 1; a <= ((size_t)4 << 20); a <<= 1) {
    const size_t ns[] = {1, 64, 1000, 8192, 100000, 3000000};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
      size_t n = (ns[i] + a - 1) / a * a;
      void *p = aligned_alloc(V(a), V(n));
      CHECK(p && aligned_to(p, a) && aligned_to(p, 16) && malloc_usable_size(p) >= n);
      fill_and_check(p, n, 0x11);
      free(p);
      p = memalign(V(a), V(ns[i]));
      CHECK(p && aligned_to(p, a) && aligned_to(p, 16) && malloc_usable_size(p) >= ns[i]);
      fill_and_check(p, ns[i], 0x22);
      free(p);
      p = __libc_memalign(V(a), V(ns[i]));
      CHECK(p && aligned_to(p, a) && malloc_usable_size(p) >= ns[i]);
      free(p);
    }
  }
  /* aligned_alloc: a non-power-of-two alignment is EINVAL (C17; glibc >= 2.38). */
  errno = 0;
  CHECK(aligned_alloc(V(3), V(30)) == NULL && errno == EINVAL);
  errno = 0;
  CHECK(aligned_alloc(V(0), V(30)) == NULL && errno == EINVAL);
  errno = 0;
  CHECK(aligned_alloc(V(48), V(96)) == NULL && errno == EINVAL);
  errno = 0;
  CHECK(aligned_alloc(V(64), V(HUGE_SIZE)) == NULL && errno == ENOMEM);
  /* memalign rounds the alignment up to a power of two (glibc 2.36). */
  void *p = memalign(V(24), V(100));
  CHECK(p && aligned_to(p, 32));
  free(p);
  p = memalign(V(3000), V(100));
  CHECK(p && aligned_to(p, 4096));
  free(p);
  p = memalign(V(0), V(100));
  CHECK(p && aligned_to(p, 16));
  free(p);
  errno = 0;
  CHECK(memalign(V((SIZE_MAX >> 1) + 2), V(16)) == NULL && errno == EINVAL);
  errno = 0;
  CHECK(memalign(V(SIZE_MAX), V(16)) == NULL && errno == EINVAL);
  errno = 0; /* the largest power of two is a valid alignment, but there is no such memory */
  CHECK(memalign(V((SIZE_MAX >> 1) + 1), V(16)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(aligned_alloc(V((SIZE_MAX >> 1) + 1), V(PTRDIFF_MAX)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(memalign(V(4096), V(HUGE_SIZE)) == NULL && errno == ENOMEM);

  /* valloc: page aligned; pvalloc: page aligned, size rounded up to whole pages. */
  const size_t ns[] = {0, 1, 100, 4096, 4097, 100000, 3000000};
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
    void *v = valloc(V(ns[i]));
    CHECK(v && aligned_to(v, page) && malloc_usable_size(v) >= ns[i]);
    fill_and_check(v, ns[i], 0x33);
    free(v);
    v = __libc_valloc(V(ns[i]));
    CHECK(v && aligned_to(v, page));
    free(v);
    size_t rounded = ns[i] ? (ns[i] + page - 1) / page * page : page;
    v = pvalloc(V(ns[i]));
    CHECK(v && aligned_to(v, page) && malloc_usable_size(v) >= rounded);
    fill_and_check(v, rounded, 0x44);
    free(v);
    v = __libc_pvalloc(V(ns[i]));
    CHECK(v && aligned_to(v, page) && malloc_usable_size(v) >= rounded);
    free(v);
  }
  errno = 0;
  CHECK(valloc(V(HUGE_SIZE)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(pvalloc(V(SIZE_MAX)) == NULL && errno == ENOMEM);
}

static void test_libc_aliases(void) {
  /* These must be ours: malloc_usable_size aborts on a pointer that is not. */
  void *p = __libc_malloc(V(100));
  CHECK(p && malloc_usable_size(p) >= 100);
  p = __libc_realloc(p, V(5000));
  CHECK(p && malloc_usable_size(p) >= 5000);
  free(p);
  unsigned char *c = __libc_calloc(V(100), V(3));
  CHECK(c && malloc_usable_size(c) >= 300);
  for (int i = 0; i < 300; i++) CHECK(c[i] == 0);
  __libc_free(c);
  p = malloc(V(10));
  CHECK(__libc_realloc(p, V(0)) == NULL);
  errno = 0;
  CHECK(__libc_malloc(V(HUGE_SIZE)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(__libc_calloc(V(SIZE_MAX), V(2)) == NULL && errno == ENOMEM);
}

static void test_info(void) {
  void *keep[64];
  for (int i = 0; i < 64; i++) CHECK((keep[i] = malloc(V(1000))) != NULL);
  void *big = malloc(V(5 << 20));
  CHECK(big);
  struct mallinfo2 m2 = mallinfo2();
  CHECK(m2.uordblks >= 64 * 1000);
  CHECK(m2.hblkhd >= (5 << 20));
  CHECK(m2.arena >= m2.uordblks);
  struct mallinfo m = mallinfo();
  CHECK(m.uordblks >= 64 * 1000 && m.hblkhd >= (5 << 20));
  for (int i = 0; i < 64; i++) free(keep[i]);
  free(big);
  CHECK(mallopt(M_ARENA_MAX, 2) == 1);
  CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1);
  int t = malloc_trim(0);
  CHECK(t == 0 || t == 1);
  malloc_stats(); /* a report on stderr, checked by the test */
}

/* malloc_trim says whether it released memory: 1 after freeing tens of megabytes of small,
 * large and huge blocks, then 0 at once, when nothing is left to release. */
static void test_trim(void) {
  enum { N = 4096 };
  static void *blocks[N];
  for (int i = 0; i < N; i++) {
    size_t n = i % 64 == 0 ? 100000 : 4000;
    CHECK((blocks[i] = malloc(V(n))) != NULL);
    memset(blocks[i], 0x77, n);
  }
  void *big = malloc(V(8 << 20));
  CHECK(big);
  memset(big, 0x77, 8 << 20);
  for (int i = 0; i < N; i++) free(blocks[i]);
  free(big);
  CHECK(malloc_trim(0) == 1);
  CHECK(malloc_trim(0) == 0);
  CHECK(mallinfo2().keepcost == 0); /* no dirty pages or cached huge blocks left */
}

/* jemalloc's API, answered by the preload (looked up at run time: nothing links it). */
static int (*mallctl)(const char *, void *, size_t *, void *, size_t);
static size_t (*nallocx)(size_t, int);
static void *(*mallocx)(size_t, int);
static size_t (*sallocx)(const void *, int);
static void (*dallocx)(void *, int);

static size_t stat(const char *name) {
  uint64_t epoch = 1;
  size_t sz = sizeof epoch, v = 0;
  CHECK(mallctl("epoch", &epoch, &sz, &epoch, sz) == 0);
  sz = sizeof v;
  CHECK(mallctl(name, &v, &sz, NULL, 0) == 0);
  return v;
}

static void test_jemalloc_api(void) {
  CHECK((mallctl = (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl")));
  CHECK((nallocx = (size_t (*)(size_t, int))dlsym(RTLD_DEFAULT, "nallocx")));
  CHECK((mallocx = (void *(*)(size_t, int))dlsym(RTLD_DEFAULT, "mallocx")));
  CHECK((sallocx = (size_t (*)(const void *, int))dlsym(RTLD_DEFAULT, "sallocx")));
  CHECK((dallocx = (void (*)(void *, int))dlsym(RTLD_DEFAULT, "dallocx")));
  size_t before = stat("stats.allocated");
  void *big = malloc(V(8 << 20));
  CHECK(big);
  CHECK(stat("stats.allocated") >= before + (8 << 20));
  free(big);
  CHECK(stat("stats.allocated") < before + (8 << 20));
  void *p = malloc(V(100));
  CHECK(nallocx(100, 0) == malloc_usable_size(p));
  free(p);
  for (size_t i = 0; i < NSIZES; i++)
    for (int la = 0; la <= 16; la += 4) {
      void *q = mallocx(sizes[i], la | 0x40);
      CHECK(q && aligned_to(q, (size_t)1 << la));
      CHECK(sallocx(q, 0) == nallocx(sizes[i], la));
      CHECK(malloc_usable_size(q) == nallocx(sizes[i], la));
      CHECK(((unsigned char *)q)[sizes[i] ? sizes[i] - 1 : 0] == 0);
      dallocx(q, 0);
    }
  size_t v, sz = sizeof v - 1;
  CHECK(mallctl("stats.active", &v, &sz, NULL, 0) == EINVAL);
  sz = sizeof v;
  CHECK(mallctl("no.such.name", &v, &sz, NULL, 0) == ENOENT);
  CHECK(mallctl("stats.active", &v, &sz, &v, sz) == EPERM);
  CHECK(mallctl("arena.4096.purge", NULL, NULL, NULL, 0) == 0);
  const char *version = NULL;
  sz = sizeof version;
  CHECK(mallctl("version", &version, &sz, NULL, 0) == 0 && version && version[0] == '5');
}

int main(void) {
  id = ident;
  page = (size_t)sysconf(_SC_PAGESIZE);
  test_malloc();
  test_calloc();
  test_realloc();
  test_posix_memalign();
  test_aligned();
  test_libc_aliases();
  test_info();
  test_trim();
  test_jemalloc_api();
  printf("conformance ok\n");
  return 0;
}
