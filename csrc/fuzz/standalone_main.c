/*
 * Standalone driver for the fuzz targets where libFuzzer is not available (gcc builds):
 * replays every file named on the command line, or every file in a named directory, through
 * LLVMFuzzerTestOneInput. Build it with -fsanitize=address,undefined so a bad input aborts.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return 1;
    }
    long n = ftell(f);
    rewind(f);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1u);
    if (buf == NULL || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)(n > 0 ? n : 0));
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    int bad = 0;
    long runs = 0;
    for (int a = 1; a < argc; a++) {
        struct stat sb;
        if (argv[a][0] == '-')
            continue; /* libFuzzer-style flags are ignored */
        if (stat(argv[a], &sb) != 0) {
            perror(argv[a]);
            bad = 1;
            continue;
        }
        if (!S_ISDIR(sb.st_mode)) {
            bad |= run_file(argv[a]);
            runs++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
            char path[4096];
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
                bad |= run_file(path);
                runs++;
            }
        }
        if (d != NULL)
            closedir(d);
    }
    printf("replayed %ld input(s)\n", runs);
    return bad;
}
