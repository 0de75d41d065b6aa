/* Threads come and go: short-lived threads allocate blocks that others free after they have
 * exited; producer/consumer pairs free across threads at volume; a thread started before
 * main allocates; and main exits while threads are still allocating. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- a bounded queue of pointers --- */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full;
  void *items[1024];
  size_t head, len;
} queue;

static void q_init(queue *q) {
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->not_empty, NULL);
  pthread_cond_init(&q->not_full, NULL);
  q->head = q->len = 0;
}
static void q_push(queue *q, void *p) {
  pthread_mutex_lock(&q->mu);
  while (q->len == 1024) pthread_cond_wait(&q->not_full, &q->mu);
  q->items[(q->head + q->len++) % 1024] = p;
  pthread_cond_signal(&q->not_empty);
  pthread_mutex_unlock(&q->mu);
}
static void *q_pop(queue *q) {
  pthread_mutex_lock(&q->mu);
  while (q->len == 0) pthread_cond_wait(&q->not_empty, &q->mu);
  void *p = q->items[q->head];
  q->head = (q->head + 1) % 1024;
  q->len--;
  pthread_cond_signal(&q->not_full);
  pthread_mutex_unlock(&q->mu);
  return p;
}

/* --- a thread started by a constructor, before main --- */
static pthread_t early;
static void *early_thread(void *arg) {
  (void)arg;
  void *v[100];
  for (int r = 0; r < 100; r++) {
    for (int i = 0; i < 100; i++) v[i] = malloc((size_t)(16 * i + r));
    for (int i = 0; i < 100; i++) free(v[i]);
  }
  return malloc(77);
}
__attribute__((constructor)) static void before_main(void) {
  if (pthread_create(&early, NULL, early_thread, NULL)) abort();
}

/* --- short-lived threads whose blocks outlive them --- */
#define SHORT_THREADS 200
#define PER_THREAD 64
static void *short_lived(void *arg) {
  void **out = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    size_t n = (size_t)((i * 131) % 3000 + 1);
    out[i] = malloc(n);
    memset(out[i], 0x5a, n);
  }
  out[PER_THREAD] = malloc(200000); /* a large block too */
  memset(out[PER_THREAD], 0x5a, 200000);
  return NULL;
}

static void *free_second_half(void *arg) {
  void *(*blocks)[PER_THREAD + 1] = arg;
  for (int t = SHORT_THREADS / 2; t < SHORT_THREADS; t++)
    for (int i = 0; i <= PER_THREAD; i++) {
      if (((unsigned char *)blocks[t][i])[0] != 0x5a) return blocks[t][i];
      free(blocks[t][i]);
    }
  return NULL;
}

/* --- cross-thread free at volume --- */
#define PAIRS 2
#define BLOCKS 200000
static queue queues[PAIRS];
static void *producer(void *arg) {
  queue *q = arg;
  unsigned x = (unsigned)(uintptr_t)arg;
  for (int i = 0; i < BLOCKS; i++) {
    x = x * 1103515245 + 12345;
    size_t n = (x >> 16) % 16 == 0 ? (x >> 8) % 60000 : (x >> 16) % 512;
    unsigned char *p = malloc(n + 1);
    p[0] = (unsigned char)i;
    q_push(q, p);
  }
  q_push(q, NULL);
  return NULL;
}
static void *consumer(void *arg) {
  queue *q = arg;
  unsigned char expect = 0;
  for (;;) {
    unsigned char *p = q_pop(q);
    if (!p) break;
    if (p[0] != expect++) abort();
    free(p);
  }
  return NULL;
}

/* --- threads still allocating when main returns --- */
static void *forever(void *arg) {
  (void)arg;
  for (unsigned x = 1;; x++) free(malloc(x % 4096));
  return NULL;
}

int main(void) {
  void *r;
  pthread_join(early, &r);
  free(r);

  static void *blocks[SHORT_THREADS][PER_THREAD + 1];
  for (int round = 0; round < SHORT_THREADS; round += 20) {
    pthread_t t[20];
    for (int i = 0; i < 20; i++)
      if (pthread_create(&t[i], NULL, short_lived, blocks[round + i])) return 3;
    for (int i = 0; i < 20; i++) pthread_join(t[i], NULL);
  }
  /* Every producer has exited; free what they allocated, from this thread and another. */
  for (int t = 0; t < SHORT_THREADS / 2; t++)
    for (int i = 0; i <= PER_THREAD; i++) free(blocks[t][i]);
  pthread_t freer;
  if (pthread_create(&freer, NULL, free_second_half, blocks)) return 3;
  void *bad;
  pthread_join(freer, &bad);
  if (bad) return 1;

  pthread_t p[PAIRS], c[PAIRS];
  for (int i = 0; i < PAIRS; i++) {
    q_init(&queues[i]);
    pthread_create(&p[i], NULL, producer, &queues[i]);
    pthread_create(&c[i], NULL, consumer, &queues[i]);
  }
  for (int i = 0; i < PAIRS; i++) {
    pthread_join(p[i], NULL);
    pthread_join(c[i], NULL);
  }

  pthread_t bg[2];
  for (int i = 0; i < 2; i++) pthread_create(&bg[i], NULL, forever, NULL);
  printf("threads ok\n");
  fflush(stdout);
  return 0; /* exit() runs while bg threads still allocate */
}
