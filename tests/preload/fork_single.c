/* Fork handlers that wait for a second thread. A process forks while it has one thread, then
 * again while a second thread allocates and frees. The engine registers its fork handlers
 * only once the process has a second thread (until then the forking thread is the only one,
 * so no lock can be held): the statistics say which, and every child allocates, frees and
 * exits cleanly. A child that inherited a lock in the locked state would hang: alarm() kills
 * it and the parent reports it. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* jemalloc's, which the preload exports; weak, so that the program links without it. */
extern void malloc_stats_print(void (*cb)(void *, const char *), void *opaque, const char *opts)
    __attribute__((weak));

static char report[1 << 16];
static size_t used;

static void collect(void *opaque, const char *s) {
  (void)opaque;
  size_t n = strlen(s);
  if (used + n < sizeof report) {
    memcpy(report + used, s, n);
    used += n;
    report[used] = 0;
  }
}

/* What the statistics say of the fork handlers: "registered" or "waiting...". */
static const char *handlers(void) {
  used = 0;
  report[0] = 0;
  if (!malloc_stats_print) return "(no malloc_stats_print)";
  malloc_stats_print(collect, NULL, NULL);
  const char *p = strstr(report, "fork handlers: ");
  return p ? p + strlen("fork handlers: ") : "(not reported)";
}

static int child_work(int round) {
  alarm(20);
  void *blocks[300];
  for (int i = 0; i < 300; i++) {
    size_t n = (size_t)((i * 37 + round) % 5000) + 1;
    blocks[i] = malloc(n);
    if (!blocks[i]) return 2;
    memset(blocks[i], i & 0xff, n);
  }
  for (int i = 0; i < 300; i++) free(blocks[i]);
  return 0;
}

/* Forks `n` children that allocate and exit; the number that failed. */
static int fork_children(int n) {
  int failed = 0;
  for (int round = 0; round < n; round++) {
    pid_t pid = fork();
    if (pid < 0) return n;
    if (pid == 0) _exit(child_work(round));
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "child %d: status %#x\n", round, status);
      failed++;
    }
  }
  return failed;
}

static volatile int stop;
static volatile long ops;

/* Allocates and frees blocks of many sizes, 512 live at a time, until told to stop. */
static void *churn(void *arg) {
  void **slots = arg;
  for (size_t i = 0; !stop; i++) {
    free(slots[i % 512]);
    slots[i % 512] = malloc(i * 7 % 3000 + 1);
    ops++;
  }
  return NULL;
}

int main(void) {
  char *keep = malloc(100);
  strcpy(keep, "kept");
  const char *before = handlers();
  int single = strncmp(before, "waiting", 7) == 0;
  int failed = fork_children(20);

  static void *slots[512];
  pthread_t t;
  if (pthread_create(&t, NULL, churn, slots) != 0) return 2;
  while (ops < 100000) sched_yield();
  const char *after = handlers();
  int threaded = strncmp(after, "registered", 10) == 0;
  failed += fork_children(40);
  stop = 1;
  pthread_join(t, NULL);
  for (int i = 0; i < 512; i++) free(slots[i]);

  printf("one thread: %.10s; two: %.10s; failed children: %d; %s\n", single ? "waiting" : before,
         threaded ? "registered" : after, failed, keep);
  free(keep);
  if (!single || !threaded || failed) return 1;
  puts("fork handlers ok");
  return 0;
}
