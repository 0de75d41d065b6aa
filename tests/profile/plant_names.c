/* Plants the names its own final heap profile would take, then exits normally so that
 * prof_final dumps: `plant_names PREFIX TARGET COUNT` takes <PREFIX>.<pid>.<seq>.f.heap for
 * seq 0..COUNT-1 with a symlink to TARGET, except seq 1, a regular file holding
 * "existing\n", and seq 2, a dangling symlink to TARGET.through-link. It sets the umask to 0
 * first, so that the profile's mode is the engine's own. Prints its pid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void *volatile keep[64];

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: plant_names PREFIX TARGET COUNT\n");
        return 64;
    }
    const char *prefix = argv[1], *target = argv[2];
    int count = atoi(argv[3]);
    umask(0);
    for (int i = 0; i < 64; i++) keep[i] = malloc(4096 + i);
    char name[4096], dangling[4096];
    snprintf(dangling, sizeof dangling, "%s.through-link", target);
    for (int seq = 0; seq < count; seq++) {
        snprintf(name, sizeof name, "%s.%d.%d.f.heap", prefix, (int)getpid(), seq);
        int rc;
        if (seq == 1) {
            FILE *f = fopen(name, "wx");
            rc = f && fputs("existing\n", f) >= 0 && fclose(f) == 0 ? 0 : -1;
        } else {
            rc = symlink(seq == 2 ? dangling : target, name);
        }
        if (rc != 0) {
            perror(name);
            return 65;
        }
    }
    printf("pid %d planted %d\n", (int)getpid(), count);
    fflush(stdout);
    return 0;
}
