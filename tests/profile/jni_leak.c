/* The native side of JniLeak: each call leaks one block from a helper that is kept out of line,
 * so the helper (not a tail-called or inlined copy) is the profile's first frame. */
#include <jni.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline, noclone, visibility("default"))) void *jni_leak_helper(size_t bytes) {
  char *p = malloc(bytes);
  if (p) memset(p, 0x5a, bytes);
  __asm__ volatile("" ::: "memory"); /* no tail call */
  return p;
}

JNIEXPORT jlong JNICALL Java_JniLeak_leak(JNIEnv *env, jclass cls, jint bytes) {
  (void)env;
  (void)cls;
  return (jlong)(size_t)jni_leak_helper((size_t)bytes);
}
