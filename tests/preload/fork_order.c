/* Fork handlers of the program's own that allocate: registered before the allocator's (before
 * any allocation, with `first`) or after its start but before the process has a second thread
 * (with `later`, when the engine has not registered its own yet). glibc runs the prepare
 * handlers in the reverse order of registration and the parent and child ones in order, so
 * the engine's must be registered before the program's: else the program's prepare handler
 * allocates after the engine took every lock, or its child handler before the engine reset
 * them, and waits for ever. Each handler allocates enough blocks of classes not used before
 * to need the engine's locks. A handler that hangs is reported, its process killed. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *blocks[4096];

/* Allocates and frees 4,096 blocks of about `size` bytes. */
static void churn(size_t size) {
  for (int i = 0; i < 4096; i++) {
    blocks[i] = malloc(size + (size_t)(i & 7));
    if (!blocks[i]) _exit(2);
    memset(blocks[i], i & 0xff, 16);
  }
  for (int i = 0; i < 4096; i++) free(blocks[i]);
}

static void prepare(void) { churn(3000); }
static void parent(void) { churn(1500); }
static void child(void) { churn(700); }

static void *thread(void *arg) {
  free(malloc(64));
  return arg;
}

/* Waits up to 20 s for `pid`; its exit status, or -1 (killed) if it hangs. */
static int wait_for(pid_t pid) {
  for (int i = 0; i < 2000; i++) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    struct timespec ten_ms = {0, 10 * 1000 * 1000};
    nanosleep(&ten_ms, NULL);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "fork order: the parent hung in a fork handler\n";
  if (write(2, msg, sizeof msg - 1) < 0) _exit(4);
  _exit(3);
}

int main(int argc, char **argv) {
  int first = argc > 1 && strcmp(argv[1], "first") == 0;
  if (!first) free(malloc(32));
  if (pthread_atfork(prepare, parent, child) != 0) return 2;
  pthread_t t;
  if (pthread_create(&t, NULL, thread, NULL) != 0) return 2;
  pthread_join(t, NULL);
  /* The parent's own handlers could hang too: the alarm reports that. */
  signal(SIGALRM, on_alarm);
  alarm(20);
  int failed = 0;
  for (int round = 0; round < 3; round++) {
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
      churn(200);
      _exit(0);
    }
    int status = wait_for(pid);
    if (status != 0) {
      fprintf(stderr, "fork order (%s): child %d: %s %d\n", argv[1], round,
              status < 0 ? "hung" : "status", status);
      failed++;
    }
  }
  if (failed) return 1;
  printf("fork order ok (%s)\n", first ? "first" : "later");
  return 0;
}
