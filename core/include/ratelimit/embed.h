// Text in another language (the Lua scripts, the dashboard page) lives in a file of its own and
// is embedded at build time by the assembler's .incbin, so the bytes sent or served are the
// file's. RATELIMIT_SOURCE_DIR, the source tree's absolute path, comes from each build: `config`
// (nginx), CMakeLists.txt (core and tests), the Makefile (fuzz targets); each also lists the
// embedded files as dependencies of the objects that embed them, so an edit rebuilds them.
#pragma once

#include <cstdint>
#include <string_view>

#ifndef RATELIMIT_SOURCE_DIR
#error "RATELIMIT_SOURCE_DIR (absolute path of the source tree, a string) is set by the build"
#endif

// Defines `std::string_view name()` holding the bytes of the file at `path` (relative to the
// source tree). At namespace scope, once per file and name; the name is one symbol of the whole
// build (a file embedded in two places takes two names, or one function that returns it).
#define RATELIMIT_EMBED(name, path)                                                           \
    extern "C" __attribute__((visibility("hidden"))) const char ratelimit_embed_##name[];    \
    extern "C" __attribute__((visibility("hidden"))) const char ratelimit_embed_##name##_end[]; \
    asm(".pushsection .rodata,\"a\"\n"                                                        \
        ".globl ratelimit_embed_" #name "\n"                                                  \
        ".hidden ratelimit_embed_" #name "\n"                                                 \
        ".globl ratelimit_embed_" #name "_end\n"                                              \
        ".hidden ratelimit_embed_" #name "_end\n"                                             \
        "ratelimit_embed_" #name ":\n"                                                        \
        ".incbin \"" RATELIMIT_SOURCE_DIR "/" path "\"\n"                                     \
        "ratelimit_embed_" #name "_end:\n"                                                    \
        ".byte 0\n"                                                                           \
        ".popsection\n");                                                                     \
    static std::string_view name()                                                            \
    {                                                                                         \
        auto begin = reinterpret_cast<std::uintptr_t>(ratelimit_embed_##name);                \
        auto end = reinterpret_cast<std::uintptr_t>(ratelimit_embed_##name##_end);            \
        return std::string_view(ratelimit_embed_##name, end - begin);                         \
    }
