/* regrow.c — one buffer built up by small steps, as a string builder or an appending parser does.
 *
 * Usage: regrow [buffers=200000] [max=65536]
 * Each buffer starts as malloc(8) and grows by about 1/8 of its size per realloc (8 B to `max`,
 * 73 reallocs for 64 KiB), each new part filled as an appended chunk whose first and last bytes
 * are checked at the end (exit 3 if a realloc lost data), then freed. glibc grows such a block in place at the top of
 * its heap; an allocator with size-class slabs must move it, so this row shows what that costs.
 * One op = one realloc.
 * Prints one RESULT line (see common.h). Build: cc -O2 -pthread regrow.c -o regrow
 */
#include "common.h"

static unsigned char pattern(size_t i) { return (unsigned char)(i * 151u + (i >> 8)); }

int main(int argc, char **argv) {
    long buffers = arg_long(argc, argv, 1, 200000);
    size_t max = (size_t)arg_long(argc, argv, 2, 65536);
    long long ops = 0;
    double t0 = now_seconds();
    for (long b = 0; b < buffers; b++) {
        size_t n = 8;
        unsigned char *p = xmalloc(n);
        for (size_t i = 0; i < n; i++) p[i] = pattern(i);
        while (n < max) {
            size_t old = n;
            n += n / 8 + 1;
            p = realloc(p, n);
            if (!p) { fprintf(stderr, "regrow: realloc failed\n"); return 2; }
            memset(p + old, (int)pattern(old), n - old); /* an appended chunk */
            p[n - 1] = pattern(n - 1);
            ops++;
        }
        /* Every chunk starts with its own start's pattern byte and ends with its end's. */
        size_t start = 8, end;
        for (size_t i = 0; i < 8; i++)
            if (p[i] != pattern(i)) die_corrupt("regrow", p, n);
        while (start < n) {
            end = start + start / 8 + 1;
            if (p[start] != pattern(start)) die_corrupt("regrow", p, n);
            if (p[end - 1] != pattern(end - 1)) die_corrupt("regrow", p, n);
            start = end;
        }
        free(p);
    }
    double t1 = now_seconds();
    print_result("regrow", 1, ops, t1 - t0, rss_kb(), "");
    return 0;
}
