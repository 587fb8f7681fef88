/* libFuzzer target for the configuration file parser: any bytes as a file
 * (sdw_config_parse from memory), and their first line as a command-line
 * override (sdw_config_set). A file that parses must dump to text that
 * parses back to a configuration that dumps the same (config.h promises
 * the dump parses back). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "fuzz.h"

static char *dump(const sdw_config *c, size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (!f || sdw_config_dump(c, f) < 0 || fclose(f) != 0)
        abort();
    return text;
}

int fuzz_config_one(const uint8_t *data, size_t size)
{
    static sdw_config c, back;
    sdw_error e = { 0 };
    size_t line = 0;
    while (line < size && data[line] != '\n')
        line++;
    char *assignment = fuzz_strndup(data, line);
    if (!assignment)
        abort();
    sdw_config_defaults(&c);
    sdw_config_set(&c, assignment, &e);
    free(assignment);

    sdw_config_defaults(&c);
    int rc = sdw_config_parse(&c, (const char *)data, size, "fuzz.conf", "/etc/sdworker", &e);
    if (rc < 0)
        return rc;
    sdw_config_validate(&c, &e);
    size_t len, len2;
    char *text = dump(&c, &len);
    sdw_config_defaults(&back);
    if (sdw_config_parse(&back, text, len, "dump", NULL, &e) < 0) {
        fprintf(stderr, "the dump does not parse back: %s\n", e.msg);
        abort();
    }
    char *again = dump(&back, &len2);
    if (len != len2 || memcmp(text, again, len)) {
        fprintf(stderr, "the dump parses back to another configuration\n");
        abort();
    }
    free(again);
    free(text);
    return 0;
}

SDW_FUZZ_ENTRY(fuzz_config_one)
