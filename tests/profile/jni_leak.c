/* The native side of JniLeak: each call leaks one block from a helper that is kept out of line,
 * so the helper (not a tail-called or inlined copy) is the profile's first frame. Each block
 * starts with a marker string (for prof_peek, tests/peek.rs), the rest is 'Z'. */
#include <jni.h>
#include <stdlib.h>
#include <string.h>

#define MARKER "JNI-LEAK-MARKER"

__attribute__((noinline, noclone, visibility("default"))) void *jni_leak_helper(size_t bytes) {
  char *p = malloc(bytes);
  if (p) {
    memset(p, 0x5a, bytes);
    if (bytes >= sizeof MARKER) memcpy(p, MARKER, sizeof MARKER); /* with its NUL */
  }
  __asm__ volatile("" ::: "memory"); /* no tail call */
  return p;
}

JNIEXPORT jlong JNICALL Java_JniLeak_leak(JNIEnv *env, jclass cls, jint bytes) {
  (void)env;
  (void)cls;
  void *p = jni_leak_helper((size_t)bytes);
  __asm__ volatile("" ::: "memory"); /* no tail call: the JNI function is in the stack */
  return (jlong)(size_t)p;
}
