/* Compiled by gcc under the preload, then run without it. */
#include <stdio.h>
#include <stdlib.h>

struct node {
  struct node *next;
  int value;
};

int main(void) {
  struct node *head = NULL;
  for (int i = 1; i <= 100; i++) {
    struct node *n = malloc(sizeof *n);
    n->value = i;
    n->next = head;
    head = n;
  }
  int sum = 0;
  while (head) {
    struct node *n = head;
    sum += n->value;
    head = n->next;
    free(n);
  }
  printf("hello %d\n", sum);
  return 0;
}
