/* preload_floor.c — a shared library with nothing in it, preloaded as run.py's `preload-floor`
 * configuration: glibc's malloc, plus what loading any preload library costs a process (the
 * library's own pages, the loader's bookkeeping for one more object). Its page faults are the
 * floor under every preloaded allocator's on the small rows, which glibc itself does not pay.
 * Build (runners.py does): cc -O2 -shared -fPIC preload_floor.c -o libpreload_floor.so
 */
int sampalloc_preload_floor(void) { return 0; }
