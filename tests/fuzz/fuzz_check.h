// CHECK for fuzz targets: a failed property is a crash libFuzzer records.
#pragma once

#define CHECK(cond) \
    do { \
        if (!(cond)) { \
            __builtin_trap(); \
        } \
    } while (0)
